"""ControlNet's per-block scales and masks against sd-webui-controlnet's rules, and one image against diffusers'
``StableDiffusionControlNetPipeline``.

The rules are restated here from sd-webui-controlnet's source (Mikubill/sd-webui-controlnet, ``scripts/hook.py`` as of
commit efda6dd: ``UnetHook.hook.forward``, the "handle ControlNet / T2I_Adapter" loop, and ``scripts/controlnet.py``
where each unit becomes a ``ControlParams``):

* ``controlnet.py``: ``soft_injection = control_mode != BALANCED``, ``cfg_injection = control_mode == CONTROL``.
* ``hook.py``: every output starts at ``weight`` (``control_scales = [param.weight] * 13``); with soft injection output
  ``i`` gets ``weight * 0.825 ** (12 - i)`` (the middle block is the last output, ``i = 12`` on SD 1.5; SDXL keeps the
  first 10 of those 13 scales, ``control_scales[:10]``, so its middle block gets ``0.825 ** 3``), and T2I-Adapter
  feature ``i`` gets ``weight * (0.25, 0.62, 0.825, 1.0)[i]``; the outputs are then ``zip``-ped with the scales, so an
  output past the end of the list adds nothing.
* ``hook.py``: ``cfg_injection`` (or a global-average-pooling model) multiplies every output by ``cond_mark``: 1 on
  the conditional rows, 0 on the unconditional ones ("ControlNet is more important").
* ``hook.py``: in the hires-fix pass soft injection is forced when the preprocessor's name contains ``canny`` or
  ``mlsd`` (``high_res_fix_forced_soft_injection``), for every control mode.
* ``hook.py``: ``advanced_weighting`` replaces the scales (weight and soft injection) when given.
* ``hook.py`` ``guidance_schedule_handler``: a unit is stopped at step ``i`` of ``n`` when ``i / n < start`` or
  ``i / n > end``.
* ``ControlParams.apply_effective_region_mask`` (hook.py, 1.1.44x): each scaled output times the unit's effective
  region mask resized bilinearly to the output's size.
* The legacy ``guess_mode`` of sd-webui-controlnet 1.0 (hook.py before 1.1: soft scales and ``cfg_based_adder`` adding
  the control to the conditional half only) is "ControlNet is more important" under its old name.

What the patch applies is read through the ``unet_patches`` hook: a wrapper plugin (pluggy ``wrapper=True``) puts a
recording proxy around each patch the ControlNet plugin returns; the test then runs its own copy of the ControlNet on
the recorded U-Net inputs and divides.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import T2IAdapter
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import make_settings, registered
from tests.test_controlnet import picture, tiny_controlnet
from webui.context import build_context
from webui.controlnet.models import controlnet_to_original
from webui.hookspecs import hookimpl
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components
from webui.pipeline.request import GenerationRequest

SOFT = 0.825
BASE = dict(prompt="a red cube", negative_prompt="blurry", steps=2, width=64, height=64, seed=3, cfg_scale=5.0,
            sampler_name="Euler", save_images=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn-rules")
    (root / "Stable-diffusion").mkdir()
    (root / "ControlNet").mkdir()
    save_single_file(build_tiny_components("sd1", seed=1), root / "Stable-diffusion" / "tiny.safetensors")
    save_file(controlnet_to_original(_controlnet()), root / "ControlNet" / "control_tiny_canny.safetensors")
    _adapter().save_pretrained(root / "ControlNet" / "t2iadapter_tiny", safe_serialization=True)
    ctx = build_context(make_settings(tmp_path_factory.mktemp("cn-rules-data"), root), load_model=True)
    return ctx, _controlnet()


@torch.no_grad()
def _controlnet():
    """test_controlnet's tiny SD 1 ControlNet with a 4x stronger hint encoder: with the plain random weights the control
    image hardly changes the outputs (1e-6 of them), here it moves them by about 70 %, so a wrong hint shows."""
    cn = tiny_controlnet("sd1", 0).eval()
    for p in cn.controlnet_cond_embedding.parameters():
        p.mul_(4.0)
    return cn


def _adapter() -> T2IAdapter:
    """A T2I-Adapter for the tiny SD 1 U-Net (levels of 32 and 64 channels: two features)."""
    torch.manual_seed(4)
    return T2IAdapter(in_channels=3, channels=[32, 64], num_res_blocks=1, downscale_factor=8).eval()


class _Recording:
    """A patch as the pipeline sees it, which logs each ``residuals(call)`` (ControlNets) and
    ``adapter_residuals(call)`` (T2I-Adapters) with what the patch returned."""

    def __init__(self, patch, log, adapter_log):
        self._patch, self._log, self._adapter_log = patch, log, adapter_log

    def __getattr__(self, name):
        return getattr(self._patch, name)

    def residuals(self, call):
        out = self._patch.residuals(call)
        self._log.append((call, out))
        return out

    def adapter_residuals(self, call):
        out = self._patch.adapter_residuals(call)
        self._adapter_log.append((call, out))
        return out


class PatchRecorder:
    """Wraps the ``unet_patches`` hook: the patches of the other plugins, each behind a :class:`_Recording`."""

    def __init__(self):
        self.log, self.adapter_log = [], []

    @hookimpl(wrapper=True)
    def unet_patches(self, request, model, job):
        results = yield
        return [[_Recording(p, self.log, self.adapter_log) for p in patches] for patches in results]


def _unit(**kw):
    return {"module": "none", "model": "control_tiny_canny", "image": picture(), "resize_mode": "Just Resize", **kw}


def _record(ctx, units, adapters: bool = False, **kw):
    with registered(ctx, PatchRecorder(), "cn-patch-recorder") as rec:
        ctx.generate(GenerationRequest(**{**BASE, **kw}, alwayson_scripts={"controlnet": {"args": units}}))
    return rec.adapter_log if adapters else rec.log


def _hint(image: Image.Image, size: int) -> torch.Tensor:
    """The control image as a ControlNet reads it: RGB in [0, 1] (here already at the generation size)."""
    assert image.size == (size, size)
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@torch.no_grad()
def _applied(cn, call, out, hint) -> tuple[np.ndarray, list[torch.Tensor], list[torch.Tensor]]:
    """Per row and output, the factor between what the patch added and what the ControlNet itself gives on the
    recorded U-Net inputs: ``(scales [rows, outputs], applied outputs, raw outputs)``."""
    raw_down, raw_mid = cn(call.x, call.t, encoder_hidden_states=call.context,
                           controlnet_cond=hint.expand(call.x.shape[0], -1, -1, -1), return_dict=False)
    raw = [*raw_down, raw_mid]
    applied = [*out[0], out[1]]
    assert len(applied) == len(raw)
    scales = np.zeros((call.x.shape[0], len(raw)))
    for j, (a, r) in enumerate(zip(applied, raw)):
        for row in range(call.x.shape[0]):
            scales[row, j] = float((a[row] * r[row]).sum() / (r[row] * r[row]).sum())
    return scales, applied, raw


def _check(cn, log, hint, expected_rows, steps=None):
    """Every recorded call (of the listed steps) added ``raw * scale`` with ``expected_rows[row][output]``."""
    calls = [(c, o) for c, o in log if steps is None or c.step in steps]
    assert calls
    for call, out in calls:
        assert out is not None, f"no control at step {call.step}"
        scales, applied, raw = _applied(cn, call, out, hint)
        expected = np.asarray(expected_rows, dtype=np.float64)
        assert np.allclose(scales, expected, rtol=1e-5, atol=1e-7), (np.round(scales, 5), np.round(expected, 5))
        for j, (a, r) in enumerate(zip(applied, raw)):  # the whole output is scaled, not just on average
            want = r * torch.tensor(expected[:, j], dtype=r.dtype).view(-1, 1, 1, 1)
            torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-6)


def _soft(weight: float, count: int) -> list[float]:
    """sd-webui-controlnet's soft-injection scales, ``zip``-ped onto ``count`` outputs."""
    return [weight * SOFT ** float(12 - i) for i in range(13)][:count]


def test_balanced_scales_every_output_by_the_weight_on_both_halves(world):
    ctx, cn = world
    log = _record(ctx, [_unit(weight=0.7)])
    count = len(cn.controlnet_down_blocks) + 1
    assert count == 5  # conv_in, 2 on level 0 (resnet, downsampler), 1 on level 1; the middle block
    _check(cn, log, _hint(picture(), 64), [[0.7] * count] * 2)
    assert [c.step for c, _ in log] == [0, 1] and all(c.has_uncond and c.batch == 1 for c, _ in log)


def test_my_prompt_is_more_important_is_soft_injection_on_both_halves(world):
    ctx, cn = world
    log = _record(ctx, [_unit(weight=1.3, control_mode="My prompt is more important")])
    _check(cn, log, _hint(picture(), 64), [_soft(1.3, 5)] * 2)


@pytest.mark.parametrize("unit", [{"control_mode": "ControlNet is more important"}, {"guess_mode": True}])
def test_controlnet_is_more_important_leaves_the_unconditional_rows_without_control(world, unit):
    ctx, cn = world
    # batch of two: rows are [cond 0, cond 1, uncond 0, uncond 1]
    log = _record(ctx, [_unit(weight=0.9, **unit)], batch_size=2)
    assert all(c.x.shape[0] == 4 and c.batch == 2 for c, _ in log)
    _check(cn, log, _hint(picture(), 64), [_soft(0.9, 5)] * 2 + [[0.0] * 5] * 2)


def test_without_cfg_there_is_no_unconditional_row_to_spare(world):
    ctx, cn = world
    log = _record(ctx, [_unit(weight=0.9, control_mode=2)], cfg_scale=1.0)
    assert all(c.x.shape[0] == 1 and not c.has_uncond for c, _ in log)
    _check(cn, log, _hint(picture(), 64), [_soft(0.9, 5)])


def test_advanced_weighting_replaces_weight_and_soft_injection(world):
    ctx, cn = world
    hint = _hint(picture(), 64)
    log = _record(ctx, [_unit(weight=0.5, control_mode=1, advanced_weighting=[0.1, 0.2, 0.3, 0.4, 1.5])])
    _check(cn, log, hint, [[0.1, 0.2, 0.3, 0.4, 1.5]] * 2)
    # a shorter list: the outputs past its end add nothing (zip); "ControlNet is more important" still masks
    log = _record(ctx, [_unit(weight=0.5, control_mode=2, advanced_weighting=[0.6, 0.7])])
    _check(cn, log, hint, [[0.6, 0.7, 0.0, 0.0, 0.0], [0.0] * 5])


def test_a_unit_acts_at_the_steps_of_its_window(world):
    ctx, cn = world
    log = _record(ctx, [_unit(weight=0.8, guidance_start=0.25, guidance_end=0.5)], steps=8)
    # stopped when i/8 < 0.25 or i/8 > 0.5: steps 2, 3, 4 act (Euler: one U-Net call per step)
    assert [(c.step, c.steps, o is not None) for c, o in log] == [(i, 8, 2 <= i <= 4) for i in range(8)]
    _check(cn, log, _hint(picture(), 64), [[0.8] * 5] * 2, steps={2, 3, 4})


def test_effective_region_mask_scales_each_output_by_the_mask_at_its_size(world):
    ctx, cn = world
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    ramp[:20, :] = 0  # and a band without control
    mask = Image.fromarray(ramp, "L")
    log = _record(ctx, [_unit(weight=0.6, effective_region_mask=mask)])
    region = torch.from_numpy(ramp.astype(np.float32) / 255)[None, None]
    hint = _hint(picture(), 64)
    for call, out in log:
        _, applied, raw = _applied(cn, call, out, hint)
        for a, r in zip(applied, raw):
            scaled = torch.nn.functional.interpolate(region, size=r.shape[-2:], mode="bilinear")
            torch.testing.assert_close(a, r * 0.6 * scaled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module, soft", [("canny", True), ("none", False)])
def test_the_hires_pass_forces_soft_injection_for_canny_and_mlsd_only(world, module, soft):
    ctx, cn = world
    black = Image.new("RGB", (64, 64))  # canny finds no edges: the hint is 0 at any size, for either module
    log = _record(ctx, [{**_unit(weight=0.7, module=module, image=black)}], enable_hr=True, hr_scale=1.5,
                  hr_second_pass_steps=2, denoising_strength=0.6, hr_upscaler="Latent")
    first = [(c, o) for c, o in log if not c.hires]
    hires = [(c, o) for c, o in log if c.hires]
    assert first and hires and hires[0][0].x.shape[-1] == 12
    _check(cn, first, _hint(black, 64), [[0.7] * 5] * 2)
    _check(cn, hires, torch.zeros(1, 3, 96, 96), [_soft(0.7, 5) if soft else [0.7] * 5] * 2)


@pytest.mark.parametrize("unit, hires, rows", [
    ({"weight": 0.7}, False, [[0.7, 0.7]] * 2),
    ({"weight": 0.7, "control_mode": 1}, False, [[0.7 * 0.25, 0.7 * 0.62]] * 2),
    ({"weight": 0.7, "control_mode": 2}, False, [[0.7 * 0.25, 0.7 * 0.62], [0.0, 0.0]]),
    ({"weight": 0.7, "control_mode": 1, "advanced_weighting": [1.5]}, False, [[1.5, 0.0]] * 2),
    ({"weight": 0.7, "module": "canny", "image": Image.new("RGB", (64, 64))}, True, [[0.7 * 0.25, 0.7 * 0.62]] * 2),
])
def test_t2i_adapter_features_follow_the_same_rules(world, unit, hires, rows):
    """A T2I-Adapter's features (added inside the U-Net's down blocks) get the weight, the adapter's own soft scales
    (0.25, 0.62, 0.825, 1.0), the unconditional rows' zero and advanced weighting, per feature."""
    ctx, _ = world
    kw = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 1, "denoising_strength": 0.6,
          "hr_upscaler": "Latent"} if hires else {}
    log = _record(ctx, [_unit(model="t2iadapter_tiny", **unit)], adapters=True, **kw)
    size = 96 if hires else 64
    image = unit.get("image", picture())
    hint = torch.zeros(1, 3, size, size) if hires else _hint(image, 64)
    with torch.no_grad():
        raw = _adapter()(hint)
    calls = [(c, o) for c, o in log if c.hires == hires]
    assert calls and len(raw) == 2
    for call, out in calls:
        assert len(out) == 2
        for j, (a, r) in enumerate(zip(out, raw)):
            want = r.expand(call.x.shape[0], -1, -1, -1) * torch.tensor([row[j] for row in rows]).view(-1, 1, 1, 1)
            torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-6)


# --- one image against diffusers -------------------------------------------------------------------------------
def test_balanced_unit_gives_what_diffusers_controlnet_pipeline_gives(world):
    """Balanced mode is diffusers' plain ControlNet call (``controlnet_conditioning_scale`` on both halves of the
    CFG batch): same weights (built here, not read back), same starting noise and sigmas, Euler; within 2/255."""
    import diffusers

    from webui.pipeline.noise import ImageRNG
    from webui.pipeline.sample import sigmas_for
    from webui.sampling.denoiser import DiscreteSchedule

    ctx, _ = world
    steps, weight, cfg = 3, 0.8, 5.0
    kw = dict(BASE, steps=steps, cfg_scale=cfg)
    ours = ctx.generate(GenerationRequest(**kw, alwayson_scripts={"controlnet": {"args": [_unit(weight=weight)]}}))
    plain = ctx.generate(GenerationRequest(**kw))
    to_float = lambda im: np.asarray(im.convert("RGB"), dtype=np.float32) / 255  # noqa: E731
    ours_px, plain_px = to_float(ours.images[0]), to_float(plain.images[0])

    comps = build_tiny_components("sd1", seed=1)
    base = comps.diffusers_pipeline()
    pipe = diffusers.StableDiffusionControlNetPipeline(**base.components, controlnet=_controlnet())
    pipe.set_progress_bar_config(disable=True)
    sampler, schedule = ctx.samplers.resolve("Euler", "Automatic")
    sigmas = sigmas_for(sampler, schedule, steps, DiscreteSchedule(comps.alphas_cumprod, "sd1"))
    noise = ImageRNG((4, 8, 8), [BASE["seed"]], device=torch.device("cpu"),
                     source=str(ctx.options.current.get("randn_source", "GPU"))).first()
    pipe.scheduler.set_timesteps(sigmas=sigmas.tolist())
    # diffusers multiplies the latents by init_noise_sigma (sqrt(sigma_0^2 + 1) with "leading" spacing); A1111
    # starts from noise * sigma_0
    latents = noise * (float(sigmas[0]) / float(pipe.scheduler.init_noise_sigma))
    with torch.no_grad():
        reference = pipe(prompt=BASE["prompt"], negative_prompt=BASE["negative_prompt"], image=picture(),
                         height=64, width=64, guidance_scale=cfg, sigmas=sigmas.tolist(), latents=latents,
                         controlnet_conditioning_scale=weight, output_type="np").images[0]
    assert reference.shape == ours_px.shape == (64, 64, 3)
    assert np.abs(ours_px - reference).max() <= 2 / 255, np.abs(ours_px - reference).max() * 255
    change = np.abs(ours_px - plain_px)  # and the ControlNet matters at this tolerance
    assert change.mean() > 3 / 255 and change.max() > 20 / 255, (change.mean() * 255, change.max() * 255)
    assert math.isclose(float(sigmas[-1]), 0.0)


def test_two_units_add_their_residuals(world):
    """sd-webui-controlnet sums the units' outputs (hook.py: ``total_controlnet_embedding`` += each unit's): a
    balanced unit and a soft-injection one on the same picture give the sum of their scales."""
    ctx, cn = world
    log = _record(ctx, [_unit(weight=0.7), _unit(weight=0.4, control_mode="My prompt is more important")])
    mixed = [a + b for a, b in zip([0.7] * 5, _soft(0.4, 5))]
    _check(cn, log, _hint(picture(), 64), [mixed] * 2)


def test_two_adapter_units_add_their_features(world):
    ctx, _ = world
    log = _record(ctx, [_unit(model="t2iadapter_tiny", weight=0.7), _unit(model="t2iadapter_tiny", weight=0.5)],
                  adapters=True)
    with torch.no_grad():
        raw = _adapter()(_hint(picture(), 64))
    assert log
    for call, out in log:
        for a, r in zip(out, raw):
            torch.testing.assert_close(a, r.expand(call.x.shape[0], -1, -1, -1) * 1.2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", [1, 2])
def test_soft_injection_scales_of_controlnets_and_t2i_adapters(mode):
    """sd-webui-controlnet scripts/hook.py, soft injection: ``weight * 0.825 ** (12 - i)`` for the 13 ControlNet
    outputs, ``weight * (0.25, 0.62, 0.825, 1.0)`` for the four T2I-Adapter features; it zips outputs with the
    scales, so an output past the list's end gets nothing."""
    from webui.controlnet.patch import output_scales
    from webui.controlnet.units import ControlUnit

    unit = ControlUnit(weight=0.8, control_mode=mode)
    assert output_scales(unit, 14, hires=False) == pytest.approx([0.8 * 0.825 ** (12 - i) for i in range(13)] + [0.0])
    assert output_scales(unit, 4, hires=False, adapter=True) == pytest.approx([0.2, 0.8 * 0.62, 0.8 * 0.825, 0.8])
    assert output_scales(ControlUnit(weight=0.8), 4, hires=False, adapter=True) == [0.8] * 4  # Balanced
