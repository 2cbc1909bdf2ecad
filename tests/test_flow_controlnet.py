"""ControlNets for SD 3.x and FLUX.1 (issue 21): the files people download load, and a unit steers the image as
diffusers' own ``StableDiffusion3ControlNetPipeline`` / ``FluxControlNetPipeline`` do on the same weights.

References, none of them our code: diffusers' ControlNet pipelines (same weights, same starting noise and
sigmas; their VAE encoding of the control image uses the posterior's mean here, as ours does, instead of a
random sample), diffusers' conversion script for Stability's SD 3.5 ControlNets read backwards and x-flux's
parameter names for XLabs' FLUX.1 ControlNets (the writers in ``flow_models.py``).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from flow_models import (
    flux_controlnet_to_xlabs,
    lay_out_flux,
    save_flux_files,
    save_sd3_file,
    sd3_controlnet_to_stability,
    tiny_flux,
    tiny_flux_controlnet,
    tiny_sd3,
    tiny_sd3_controlnet,
)
from PIL import Image
from safetensors.torch import save_file

from webui.controlnet.flow_patch import union_mode
from webui.controlnet.models import load_controlnet
from webui.models.loader import load_components
from webui.pipeline.flow_model import pack_flux
from webui.pipeline.noise import ImageRNG
from webui.pipeline.sample import sigmas_for
from webui.sampling.flow import flow_schedule, model_shift

SIZE = 64
CONTROL_FILES = {"sd3_instantx": "sd3_canny_instantx.safetensors", "sd35": "sd3.5_large_controlnet_canny.safetensors",
                 "flux_instantx": "flux_canny_instantx", "flux_union": "flux_union_pro.safetensors",
                 "flux_xlabs": "flux-canny-controlnet-v3.safetensors"}


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _control_image() -> Image.Image:
    rng = np.random.default_rng(3)
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    arr[16:48, 8:40] = 255
    arr[:, :, 1] = rng.integers(0, 255, (SIZE, SIZE))
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A models folder as users lay it out: the SD 3 single file and FLUX.1 dev's split files, and one
    ControlNet of each layout in models/ControlNet; a client of an API-only server on it."""
    from conftest import api_only, make_settings
    from fastapi.testclient import TestClient

    from webui.context import build_context
    from webui.server import create_app

    models = tmp_path_factory.mktemp("models")
    for folder in ("Stable-diffusion", "ControlNet"):
        (models / folder).mkdir()
    # block counts that tell diffusers' ways of spreading fewer ControlNet outputs over the blocks apart
    save_sd3_file(tiny_sd3(seed=30, sd35=True, layers=8), models / "Stable-diffusion" / "sd3_medium.safetensors")
    paths = save_flux_files(tiny_flux(seed=31, double=3, single=3), tmp_path_factory.mktemp("downloads"))
    lay_out_flux(paths, models)
    nets = {"sd3_instantx": tiny_sd3_controlnet(), "sd35": tiny_sd3_controlnet(stability=True),
            "flux_instantx": tiny_flux_controlnet(), "flux_union": tiny_flux_controlnet(union=True, seed=21),
            "flux_xlabs": tiny_flux_controlnet(xlabs=True, seed=22)}
    cn_dir = models / "ControlNet"
    save_file({k: v.contiguous() for k, v in nets["sd3_instantx"].state_dict().items()},
              str(cn_dir / CONTROL_FILES["sd3_instantx"]))
    save_file({k: v.contiguous() for k, v in sd3_controlnet_to_stability(nets["sd35"]).items()},
              str(cn_dir / CONTROL_FILES["sd35"]))
    nets["flux_instantx"].save_pretrained(cn_dir / CONTROL_FILES["flux_instantx"], safe_serialization=True)
    save_file({k: v.contiguous() for k, v in nets["flux_union"].state_dict().items()},
              str(cn_dir / CONTROL_FILES["flux_union"]))
    save_file({k: v.contiguous() for k, v in flux_controlnet_to_xlabs(nets["flux_xlabs"]).items()},
              str(cn_dir / CONTROL_FILES["flux_xlabs"]))
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=False)
    client = TestClient(create_app(api_only(ctx)))
    return {"models": models, "nets": nets, "client": client, "ctx": ctx, "flux_parts": paths}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:3]


@pytest.mark.parametrize("name", list(CONTROL_FILES))
def test_each_layout_loads_the_same_weights(world, name):
    cn = load_controlnet(world["models"] / "ControlNet" / CONTROL_FILES[name], head_dim=16)
    source = world["nets"][name]
    assert type(cn) is type(source)
    for key in ("num_layers", "attention_head_dim", "num_attention_heads", "joint_attention_dim"):
        assert getattr(cn.config, key) == getattr(source.config, key), key
    _same_weights(cn, source)


def _unit(name: str, **kw):
    return {"enabled": True, "module": "none", "model": CONTROL_FILES[name].removesuffix(".safetensors"),
            "image": _b64(_control_image()), "resize_mode": "Just Resize", "weight": 0.8, **kw}


def _generate(world, checkpoint: str, units: list, **kw):
    body = {"prompt": "a red cube", "negative_prompt": "blurry", "steps": 3, "width": SIZE, "height": SIZE,
            "seed": 5, "sampler_name": "Euler", "scheduler": "Simple", "save_images": False,
            "override_settings": {"sd_model_checkpoint": checkpoint}, **kw}
    if units:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return world["client"].post("/sdapi/v1/txt2img", json=body)


def _image(response, index: int = 0) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["images"][index]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.float32) / 255


def _reference(world, family: str, name: str, cfg: float, monkeypatch) -> np.ndarray:
    """diffusers' ControlNet pipeline on the checkpoint file's modules and the original ControlNet module."""
    import diffusers
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)
    models = world["models"] / "Stable-diffusion"
    if family == "sd3":
        c = load_components(models / "sd3_medium.safetensors")
    else:
        from webui.models.flow_loader import ModuleChoice

        parts = world["models"]
        c = load_components(models / world["flux_parts"]["transformer"].name, modules=ModuleChoice(
            [parts / "VAE" / "ae.safetensors", parts / "text_encoder" / "clip_l.safetensors",
             parts / "text_encoder" / "t5xxl.safetensors"]))
    ctx = world["ctx"]
    sampler, schedule = ctx.samplers.resolve("Euler", "simple")
    sigmas = sigmas_for(sampler, schedule, 3, flow_schedule(*model_shift(c.spec, SIZE, SIZE), c.spec.family))
    noise = ImageRNG((16, SIZE // 8, SIZE // 8), [5], device=torch.device("cpu"),
                     source=str(ctx.options.current.get("randn_source", "GPU"))).first()
    base = c.diffusers_pipeline()
    cn = world["nets"][name]
    kw = dict(prompt="a red cube", negative_prompt="blurry", num_inference_steps=3, height=SIZE, width=SIZE,
              sigmas=sigmas[:-1].tolist(), output_type="np", control_image=_control_image(),
              controlnet_conditioning_scale=0.8)
    if family == "sd3":
        pipe = diffusers.StableDiffusion3ControlNetPipeline(**base.components, controlnet=cn)
        kw.update(latents=noise, guidance_scale=cfg)
    else:
        pipe = diffusers.FluxControlNetPipeline(**base.components, controlnet=cn)
        kw.update(latents=pack_flux(noise), guidance_scale=3.5, max_sequence_length=c.t5_tokenizer.model_max_length)
        if name == "flux_union":
            kw["control_mode"] = 2  # depth
    pipe.set_progress_bar_config(disable=True)
    return pipe(**kw).images[0]


CASES = {"sd3_instantx": ("sd3", 4.0), "sd35": ("sd3", 4.0), "flux_instantx": ("flux", 1.0),
         "flux_union": ("flux", 1.0), "flux_xlabs": ("flux", 1.0)}


@pytest.mark.parametrize("name", list(CASES))
def test_a_unit_gives_what_the_diffusers_controlnet_pipeline_gives(world, name, monkeypatch):
    """SD 3 with CFG 4 (the ControlNet runs on both halves, as diffusers' pipeline does); FLUX.1 dev with
    distilled guidance only (diffusers' true CFG reuses the positive half's control outputs for the negative
    one, we run each row's own). Within 2/255 of the reference, and visibly different from no ControlNet."""
    family, cfg = CASES[name]
    checkpoint = "sd3_medium" if family == "sd3" else world["flux_parts"]["transformer"].stem
    extra = {"union_control_type": "Depth"} if name == "flux_union" else {}
    with_cn = _generate(world, checkpoint, [_unit(name, **extra)], cfg_scale=cfg)
    ours = _image(with_cn)
    assert len(with_cn.json()["images"]) == 2  # the detected map follows, as sd-webui-controlnet returns it
    without = _image(_generate(world, checkpoint, [], cfg_scale=cfg))
    reference = _reference(world, family, name, cfg, monkeypatch)
    assert ours.shape == reference.shape == (SIZE, SIZE, 3)
    assert np.abs(ours - reference).max() <= 2 / 255
    assert np.abs(ours - without).mean() > 2 / 255
    assert f"ControlNet 0: \"Module: none, Model: {CONTROL_FILES[name].removesuffix('.safetensors')}" \
        in with_cn.json()["info"].replace("\\\"", "\"")


def test_window_weight_modes_and_union_types(world):
    """Guidance window, weight 0, "ControlNet is more important" and the Union control type each change what
    the unit does; a Union unit without a type it can name is refused."""
    ckpt = world["flux_parts"]["transformer"].stem

    def run(name="flux_instantx", cfg=1.0, **kw):
        return _image(_generate(world, ckpt, [_unit(name, **kw)], cfg_scale=cfg))

    base = run()
    without = _image(_generate(world, ckpt, [], cfg_scale=1.0))
    assert np.array_equal(run(weight=0.0), without)
    assert np.array_equal(run(guidance_start=0.9, guidance_end=1.0), without)  # steps 0/3..2/3 < 0.9
    assert not np.array_equal(run(guidance_end=0.5), base)
    blocks = 3 + 3  # double, then single blocks of the checkpoint
    assert np.array_equal(run(advanced_weighting=[0.0] * blocks), without)
    assert np.array_equal(run(advanced_weighting=[0.8] * blocks), base)
    assert not np.array_equal(run(advanced_weighting=[0.8] * 3 + [0.0] * 3), base)  # the single blocks' part
    # one weight per block in block order; blocks past the end of a shorter list get 0
    assert np.array_equal(run(advanced_weighting=[0.8] * 3), run(advanced_weighting=[0.8] * 3 + [0.0] * 3))
    black, white = Image.new("L", (SIZE, SIZE), 0), Image.new("L", (SIZE, SIZE), 255)
    assert np.array_equal(run(effective_region_mask=_b64(black)), without)
    assert np.array_equal(run(effective_region_mask=_b64(white)), base)
    assert not np.array_equal(run(cfg=3.0), run(cfg=3.0, control_mode="ControlNet is more important"))
    depth, canny = run("flux_union", union_control_type="Depth"), run("flux_union", union_control_type="Canny")
    assert not np.array_equal(depth, canny)
    assert np.array_equal(run("flux_union", module="canny", threshold_a=50, threshold_b=150),
                          run("flux_union", module="canny", threshold_a=50, threshold_b=150,
                              union_control_type="Canny"))
    union = _generate(world, ckpt, [_unit("flux_union", union_control_type="Depth")], cfg_scale=1.0)
    infotext = union.json()["info"]
    assert "Union Control Type: Depth" in infotext
    from webui.controlnet.units import units_from_infotext
    from webui.infotext import parse_infotext

    unit = units_from_infotext(parse_infotext(__import__("json").loads(infotext)["infotexts"][0]))[0]
    assert unit["union_control_type"] == "Depth"
    replay = _generate(world, ckpt, [{**unit, "image": _b64(_control_image())}], cfg_scale=1.0)
    assert np.array_equal(_image(replay), depth)  # PNG Info / infotext replays the control type
    bad = _generate(world, ckpt, [_unit("flux_union")])
    assert bad.status_code == 422 and "union_control_type" in bad.text and "canny" in bad.text
    assert union_mode("OpenPose", "none") == 4 and union_mode("Unknown", "depth_midas") == 2
    assert union_mode("Unknown", "none") is None


def test_wrong_family_and_size_are_refused_by_name(world):
    flux = world["flux_parts"]["transformer"].stem
    wrong = _generate(world, flux, [_unit("sd3_instantx")])
    assert wrong.status_code == 422
    assert "args[0].model" in wrong.text and "SD 3" in wrong.text and "FLUX" in wrong.text
    other = _generate(world, "sd3_medium", [_unit("flux_xlabs")])
    assert other.status_code == 422 and "args[0].model" in other.text
    assert _generate(world, flux, []).status_code == 200  # and it keeps serving


@pytest.mark.parametrize("family,blocks,outputs,repeat", [("sd3", 8, 6, False), ("sd3", 9, 4, False),
                                                         ("flux", 3, 2, False), ("flux", 3, 2, True),
                                                         ("flux", 7, 3, False)])
def test_outputs_spread_over_the_blocks_as_diffusers_transformers_pick_them(family, blocks, outputs, repeat):
    """One residual per block gives what the transformer itself does with the shorter list (SD 3:
    ``int(i / (blocks / outputs))``, FLUX.1: ``i // ceil(blocks / outputs)``, XLabs: ``i % outputs``)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from webui.controlnet.flow_patch import _spread

    torch.manual_seed(0)
    if family == "sd3":
        model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=blocks,
                                      attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                      caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
                                      pos_embed_max_size=8).eval()
        inputs = dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 5, 16),
                      pooled_projections=torch.randn(1, 8), timestep=torch.tensor([500.0]))
        samples = [torch.randn(1, 16, 16) for _ in range(outputs)]
        ours = model(**inputs, block_controlnet_hidden_states=_spread(samples, blocks, False, ratio=True))[0]
        theirs = model(**inputs, block_controlnet_hidden_states=samples)[0]
    else:
        model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=blocks, num_single_layers=1,
                                       attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                       pooled_projection_dim=8, axes_dims_rope=(2, 2, 4)).eval()
        inputs = dict(hidden_states=torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 5, 16),
                      pooled_projections=torch.randn(1, 8), timestep=torch.tensor([0.5]),
                      img_ids=torch.randn(16, 3), txt_ids=torch.zeros(5, 3))
        samples = [torch.randn(1, 16, 16) for _ in range(outputs)]
        ours = model(**inputs, controlnet_block_samples=_spread(samples, blocks, repeat))[0]
        theirs = model(**inputs, controlnet_block_samples=samples, controlnet_blocks_repeat=repeat)[0]
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(ours, model(**inputs)[0], atol=1e-3)  # the residuals do reach the blocks


def test_hook_unet_patches_reaches_transformers_through_transformer_residuals(world):
    """A plugin's patch with ``transformer_residuals`` adds per-block hidden states on FLUX.1 (it sees the
    step, the batch layout and the latents); a U-Net-only patch is refused with a 422 naming it."""
    from webui.hookspecs import hookimpl

    seen = []

    class Shift:
        def prepare(self, width, height, hires=False):
            seen.append(("prepare", width, height, hires))

        def residuals(self, call):  # never called on a transformer
            raise AssertionError("U-Net path on a transformer")

        def transformer_residuals(self, call):
            seen.append((call.step, call.steps, tuple(call.x.shape), call.groups))
            tokens = (call.x.shape[-2] // 2) * (call.x.shape[-1] // 2)
            width = call.transformer.inner_dim
            blocks = len(call.transformer.transformer_blocks)
            ramp = torch.linspace(-1, 1, width)  # not a constant: LayerNorm would remove that
            return {"controlnet_block_samples": [ramp.expand(call.x.shape[0], tokens, width)] * blocks}

    class UNetOnly:
        def prepare(self, width, height, hires=False):
            pass

        def residuals(self, call):
            return None

    class Plugin:
        @hookimpl
        def unet_patches(self, request, model, job):
            wanted = request.alwayson_scripts.get("test_patch")
            return None if not wanted else [Shift() if wanted == {"args": ["shift"]} else UNetOnly()]

    ckpt = world["flux_parts"]["transformer"].stem
    plugins = world["ctx"].plugins
    assert plugins.register(Plugin(), "test_patch")
    try:
        base = _image(_generate(world, ckpt, [], cfg_scale=1.0))
        shifted = _image(_generate(world, ckpt, [], cfg_scale=1.0,
                                   alwayson_scripts={"test_patch": {"args": ["shift"]}}))
        assert np.abs(shifted - base).mean() > 2 / 255
        assert seen[0] == ("prepare", SIZE, SIZE, False)
        assert seen[1:] == [(i, 3, (1, 16, SIZE // 8, SIZE // 8), 1) for i in range(3)]
        refused = _generate(world, ckpt, [], alwayson_scripts={"test_patch": {"args": ["unet"]}})
        assert refused.status_code == 422 and "UNetOnly" in refused.text
    finally:
        plugins.unregister("test_patch")
