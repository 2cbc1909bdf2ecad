"""sd-webui-controlnet's inpaint units (issue 27): ``inpaint`` ("inpaint_global_harmonious"), ``inpaint_only``,
``inpaint_only+lama`` on a tiny inpaint ControlNet and the tiny SD 1 model, 64x64, 2-3 steps.

Expectations are its rules restated from its source (``scripts/hook.py``: the hint protocol ``rgb * (1 - m) - m``
and "Post-processing for restore"; ``scripts/controlnet.py``: the final pixel blend with the mask dilated and
box-blurred by ``control_net_inpaint_blur_sigma``, the img2img fallback, ``choose_input_image`` /
``try_crop_image_with_a1111_mask``; ``lama_inpaint.py`` / ``annotator/lama``), computed here from the inputs
with numpy / cv2 / diffusers' VAE / spandrel's LaMa generator, not from the product's functions.
"""

from __future__ import annotations

import base64
import io
import logging

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import StepRecorder, api_only, make_settings, own_models_root, registered
from tests.test_controlnet import b64, tiny_controlnet
from webui.controlnet.models import controlnet_to_original
from webui.pipeline.request import GenerationRequest

MODEL = "control_v11p_sd15_inpaint"
BASE = dict(prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler", save_images=False)


def _picture() -> Image.Image:
    rng = np.random.default_rng(0)  # many colours: the resize rules' "photo" branch
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _mask(box=(20, 20, 44, 44)) -> Image.Image:
    arr = np.zeros((64, 64), np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr)


def _tiny_lama(seed: int = 0) -> dict[str, torch.Tensor]:
    """A LaMa generator of big-lama's architecture (spandrel's FFCResNetGenerator) at a tiny size, random weights
    and batch-norm statistics, in ControlNetLama.pth's key layout (``model.<n>.…``)."""
    from spandrel.architectures.LaMa.__arch.LaMa import FFCResNetGenerator

    torch.manual_seed(seed)
    net = FFCResNetGenerator(4, 3, ngf=8, n_downsampling=2, n_blocks=1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.normal_(0, 0.2)
    return net.eval().state_dict()


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_sd1_file):
    from webui.context import build_context
    from webui.server import create_app

    models = own_models_root(tmp_path_factory, tiny_sd1_file)
    (models / "ControlNet").mkdir()
    save_file(controlnet_to_original(tiny_controlnet("sd1", 0)), models / "ControlNet" / f"{MODEL}.safetensors")
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    return {"ctx": ctx, "client": TestClient(create_app(api_only(ctx))), "models": models}


@pytest.fixture(scope="module")
def plain(env) -> np.ndarray:
    """The picture without any unit (BASE)."""
    return np.asarray(_run(env, []).images[0])


def _run(env, units, **kw):
    return env["ctx"].generate(GenerationRequest(**{**BASE, **kw}, alwayson_scripts={"controlnet": {"args": units}}))


def _unit(module, **kw):
    return {"module": module, "model": MODEL, "image": _picture(), "mask": _mask(), **kw}


@pytest.fixture
def hints(monkeypatch):
    """The hint each ControlNet unit gets, per prepared pass."""
    from webui.controlnet.patch import ControlNetPatch

    seen, original = [], ControlNetPatch.prepare

    def prepare(self, width, height, hires=False):
        original(self, width, height, hires)
        seen.append([None if u.hint is None else u.hint.detach().float().cpu().clone() for u in self.units])

    monkeypatch.setattr(ControlNetPatch, "prepare", prepare)
    return seen


def test_the_hint_is_the_picture_with_the_masked_pixels_at_minus_one(env, hints):
    """control_v11p_sd15_inpaint's protocol: masked pixels (mask > 127) are -1 in all channels, the others the
    picture in 0..1; the appended detected map shows the masked pixels half transparent."""
    result = _run(env, [_unit("inpaint_global_harmonious")], steps=1)
    hint = hints[0][0][0].numpy()
    masked = np.asarray(_mask()) > 127
    picture = np.asarray(_picture()).astype(np.float32).transpose(2, 0, 1) / 255
    assert np.all(hint[:, masked] == -1.0)
    assert np.allclose(hint[:, ~masked], picture[:, ~masked], atol=1e-6)
    shown, label = result.extra_images[0]
    alpha = np.asarray(shown.convert("RGBA"))[:, :, 3]
    assert label == "inpaint" and np.all(alpha[masked] == 128) and np.all(alpha[~masked] == 255)


def test_global_harmonious_weight_0_equals_no_unit(env, plain):
    assert np.array_equal(np.asarray(_run(env, [_unit("inpaint", weight=0.0)]).images[0]), plain)
    assert not np.array_equal(np.asarray(_run(env, [_unit("inpaint")]).images[0]), plain)


def _far_from_mask(margin: int) -> np.ndarray:
    """Pixels more than ``margin`` away (Chebyshev) from the masked square: where the blend mask is 0."""
    keep = np.ones((64, 64), bool)
    keep[20 - margin:44 + margin, 20 - margin:44 + margin] = False
    return keep


def test_inpaint_only_keeps_the_picture_outside_the_mask(env, plain):
    """The final blend ``m * x + (1 - m) * picture``, ``m`` the mask dilated by a ``s x s`` square and box-blurred
    ``s x s``: with ``control_net_inpaint_blur_sigma`` 0 every pixel outside the mask is the picture's exactly
    (rounded back from 0..1) while the masked area is generated; with the default 7 and weight 0 (no residuals,
    no restore: the decoded image is the no-unit one) the result is that blend of the no-unit image, pixel by
    pixel, to its 8-bit rounding."""
    picture = np.asarray(_picture())
    sharp = np.asarray(_run(env, [_unit("inpaint_only")],
                            override_settings={"control_net_inpaint_blur_sigma": 0}).images[0])
    outside = np.asarray(_mask()) == 0
    assert np.array_equal(sharp[outside], picture[outside])
    assert np.abs(sharp[28:36, 28:36].astype(int) - picture[28:36, 28:36]).mean() > 20
    m = cv2.blur(cv2.dilate((np.asarray(_mask()) / 255).astype(np.float32), np.ones((7, 7), np.uint8)), (7, 7))
    zero = np.asarray(_run(env, [_unit("inpaint_only", weight=0.0)]).images[0])
    blended = m[:, :, None] * plain + (1 - m[:, :, None]) * picture
    band = (m > 0) & (m < 1)
    assert band.sum() > 300 and np.abs(zero - blended).max() <= 1
    far = _far_from_mask(6)
    assert np.array_equal(m == 0, far) and np.array_equal(zero[far], picture[far])
    assert np.array_equal(zero[m == 1.0], plain[m == 1.0])


def test_inpaint_only_restores_the_latent_outside_the_mask_at_every_step(env):
    """Every step's denoised latent is the picture's VAE latent (diffusers' encoder, posterior mean times the
    scaling factor) where the mask max-pooled over 10x10 windows, stride 8, padding 1 is 0 (weight 1), and not
    in the other cells (the mask is latent-aligned, so the padded 10x10 windows mark one more ring of cells than
    8x8 ones would)."""
    ctx = env["ctx"]
    box = _mask((24, 24, 40, 40))
    with registered(ctx, StepRecorder(lambda state: state.denoised.detach().float().cpu().clone()), "denoised") as spy:
        _run(env, [_unit("inpaint_only", mask=box)])
    vae = ctx.models.current.components.vae
    pixels = torch.from_numpy(np.asarray(_picture()).astype(np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        x0 = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu() * vae.config.scaling_factor
    mask = np.asarray(box) > 127
    free = np.array([[not mask[max(8 * i - 1, 0):8 * i + 9, max(8 * j - 1, 0):8 * j + 9].any() for j in range(8)]
                     for i in range(8)])
    assert free.sum() == 64 - 16
    assert len(spy.seen) == 2
    for denoised in spy.seen:
        assert torch.allclose(denoised[0][:, torch.from_numpy(free)], x0[0][:, torch.from_numpy(free)], atol=1e-4)
        changed = (denoised[0] - x0[0]).abs().amax(dim=0) > 1e-3
        assert changed[torch.from_numpy(~free)].all()


def test_img2img_with_a_mask_turns_inpaint_only_into_global_harmonious(env, caplog):
    """sd-webui-controlnet: A1111's inpainting and inpaint_only together fall back to the global module (with
    its warning); the unit takes the img2img input and its mask."""
    kw = dict(mode="img2img", init_images=[_picture()], mask=_mask(), denoising_strength=0.6, steps=2,
              inpaint_full_res=False)
    with caplog.at_level(logging.WARNING, logger="webui.builtin.controlnet"):
        only = _run(env, [{"module": "inpaint_only", "model": MODEL}], **kw)
    assert "A1111 inpaint and ControlNet inpaint duplicated. Falls back to inpaint_global_harmonious." in caplog.text
    harmonious = _run(env, [{"module": "inpaint", "model": MODEL}], **kw)
    assert np.array_equal(np.asarray(only.images[0]), np.asarray(harmonious.images[0]))
    assert only.extra_images[0][1] == "inpaint"


def test_an_img2img_unit_takes_img2img_resize_mode_and_the_only_masked_crop(env, hints):
    """choose_input_image: without its own image a unit reads the img2img input resized by img2img's resize
    mode (here Just Resize, whatever the unit's); "Only masked" inpainting crops it to the generated region
    (the mask's box grown by the padding), unless ``inpaint_crop_input_image`` is false."""
    wide = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    kw = dict(mode="img2img", init_images=[wide], denoising_strength=0.5, steps=1)
    _run(env, [{"module": "none", "model": MODEL, "resize_mode": "Crop and Resize"}], resize_mode=0, **kw)
    expected = np.asarray(wide.resize((64, 64), Image.Resampling.LANCZOS)).astype(np.float32).transpose(2, 0, 1)
    assert np.allclose(hints[-1][0][0].numpy() * 255, expected, atol=1e-3)
    corner = np.zeros((64, 96), np.uint8)
    corner[8:24, 40:56] = 255  # a 16x16 box; padding 8 makes the region 32x32 at (32, 0)
    masked = dict(kw, mask=Image.fromarray(corner), inpaint_full_res=True, inpaint_full_res_padding=8,
                  mask_blur_x=0, mask_blur_y=0)
    _run(env, [{"module": "none", "model": MODEL}], **masked)
    region = wide.crop((32, 0, 64, 32)).resize((64, 64), Image.Resampling.LANCZOS)
    got = hints[-1][0][0].numpy() * 255
    assert np.allclose(got, np.asarray(region).astype(np.float32).transpose(2, 0, 1), atol=1e-3)
    _run(env, [{"module": "none", "model": MODEL, "inpaint_crop_input_image": False}], **masked)
    assert np.allclose(hints[-1][0][0].numpy() * 255, expected, atol=1e-3)


def _lama_reference(state: dict[str, torch.Tensor], picture: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's LaMa preprocessing, restated: short side to 256 (cubic up), edge-pad to 64, the
    generator on the colour with the masked pixels zeroed plus the mask, kept in the mask, 0..255 truncated,
    unpadded, resized back (bilinear), blended by the alpha."""
    from spandrel.architectures.LaMa.__arch.LaMa import FFCResNetGenerator

    net = FFCResNetGenerator(4, 3, ngf=8, n_downsampling=2, n_blocks=1)
    net.load_state_dict(state)
    net.eval()
    img = np.concatenate([picture, mask[:, :, None]], axis=2)
    big = cv2.resize(img, (256, 256), interpolation=cv2.INTER_CUBIC)  # 64 -> 256: already a multiple of 64
    color = big[:, :, :3].astype(np.float32) / 255
    m = (big[:, :, 3:4].astype(np.float32) / 255 > 0.5).astype(np.float32)
    color = color * (1 - m)
    with torch.no_grad():
        out = net(torch.from_numpy(color).permute(2, 0, 1)[None], torch.from_numpy(m).permute(2, 0, 1)[None])
    out = out[0].permute(1, 2, 0).numpy()
    filled = ((out * m + color * (1 - m)) * 255).clip(0, 255).astype(np.uint8)
    filled = cv2.resize(filled, (64, 64)).astype(np.float32)
    alpha = mask[:, :, None].astype(np.float32) / 255
    return (filled * alpha + picture.astype(np.float32) * (1 - alpha)).clip(0, 255).astype(np.uint8)


def _decode(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def test_inpaint_only_lama_needs_controlnet_lama_then_fills_the_mask_with_it(env):
    """Without ``ControlNetLama.pth`` in models/ControlNet/annotators both a generation and /controlnet/detect
    answer 4xx naming the file and the folder; with a LaMa generator file there, detect's output is LaMa's fill
    inside the mask and the picture outside (as sd-webui-controlnet computes it)."""
    client, folder = env["client"], env["models"] / "ControlNet" / "annotators"
    picture, mask = np.asarray(_picture()), np.asarray(_mask())
    body = {**BASE, "alwayson_scripts": {"controlnet": {"args": [
        {"module": "inpaint_only+lama", "model": MODEL, "image": b64(_picture()), "mask": b64(_mask())}]}}}
    detect = {"controlnet_module": "inpaint_only+lama", "controlnet_input_images": [b64(_picture())],
              "controlnet_masks": [b64(_mask())]}
    for response in (client.post("/sdapi/v1/txt2img", json=body), client.post("/controlnet/detect", json=detect)):
        assert 400 <= response.status_code < 500 and "ControlNetLama.pth" in response.text, response.text
        assert "annotators" in response.text
    folder.mkdir(parents=True, exist_ok=True)
    state = _tiny_lama()
    torch.save(state, folder / "ControlNetLama.pth")
    response = client.post("/controlnet/detect", json=detect)
    assert response.status_code == 200, response.text
    filled = _decode(response.json()["images"][0])
    assert np.array_equal(filled, _lama_reference(state, picture, mask))
    outside = mask == 0
    assert np.array_equal(filled[outside], picture[outside]) and not np.array_equal(filled, picture)


def test_inpaint_only_lama_starts_from_the_filled_picture_and_keeps_the_outside(env, monkeypatch):
    """The first pass's noise is ``sqrt(a) x0 + sqrt(1 - a) n`` with ``x0`` the LaMa-filled picture's latent and
    ``a`` the SD schedule's alpha-bar at timestep 999 (diffusers' scaled-linear DDPM schedule here)."""
    from diffusers import DDPMScheduler

    import webui.pipeline.generate as generate
    from webui.pipeline.noise import ImageRNG

    folder = env["models"] / "ControlNet" / "annotators"
    folder.mkdir(parents=True, exist_ok=True)
    state = _tiny_lama()
    torch.save(state, folder / "ControlNetLama.pth")
    drawn, real = [], generate.sample

    def sample(sampler, model_fn, ds, sigmas, rng, seeds, **kw):
        drawn.append(rng.first())
        return real(sampler, model_fn, ds, sigmas, ImageRNG((4, 8, 8), seeds, device=torch.device("cpu")), seeds,
                    **kw)

    monkeypatch.setattr(generate, "sample", sample)
    out = np.asarray(_run(env, [_unit("inpaint_only+lama")], steps=2).images[0])
    filled = _lama_reference(state, np.asarray(_picture()), np.asarray(_mask()))
    vae = env["ctx"].models.current.components.vae
    pixels = torch.from_numpy(filled.astype(np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        x0 = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    a = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod[999]
    noise = ImageRNG((4, 8, 8), [1], device=torch.device("cpu")).first()
    assert torch.allclose(drawn[0], a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-5)
    far = _far_from_mask(6)
    assert np.array_equal(out[far], np.asarray(_picture())[far])


def test_big_lama_layout_is_read_from_its_shapes():
    """ControlNetLama.pth is big-lama's generator (ngf 64, 3 downsamplings, 18 FFC blocks): its keys (spandrel's
    LaMa on the meta device, without the wrapper's ``model.``) give that configuration and the same keys."""
    from spandrel.architectures.LaMa import LaMa

    from webui.controlnet.lama import _generator_class, generator_config, generator_keys

    with torch.device("meta"):
        sd = LaMa(in_nc=4, out_nc=3).state_dict()
    keys = generator_keys(sd)
    config = generator_config(keys)
    assert config == {"input_nc": 4, "output_nc": 3, "ngf": 64, "n_downsampling": 3, "n_blocks": 18}
    with torch.device("meta"):
        built = _generator_class()(**config).state_dict()
    assert {k: tuple(v.shape) for k, v in built.items()} == {k: tuple(v.shape) for k, v in keys.items()}


def test_detect_and_module_list_know_the_inpaint_modules(env):
    client = env["client"]
    modules = client.get("/controlnet/module_list").json()["module_list"]
    assert {"inpaint", "inpaint_only", "inpaint_only+lama"} <= set(modules)
    aliased = client.get("/controlnet/module_list?alias_names=true").json()["module_list"]
    assert "inpaint_global_harmonious" in aliased
    types = client.get("/controlnet/control_types").json()["control_types"]["Inpaint"]
    assert types["default_option"] == "inpaint_only"
    assert set(types["module_list"]) >= {"inpaint_global_harmonious", "inpaint_only", "inpaint_only+lama"}
    assert any(m.startswith(MODEL) for m in types["model_list"])
    response = client.post("/controlnet/detect", json={"controlnet_module": "inpaint_only",
                                                       "controlnet_input_images": [b64(_picture())],
                                                       "controlnet_masks": [b64(_mask())]})
    assert response.status_code == 200, response.text
    shown = _decode(response.json()["images"][0])
    masked = np.asarray(_mask()) > 127
    assert shown.shape == (64, 64, 4) and np.all(shown[masked, 3] == 128) and np.all(shown[~masked, 3] == 255)
    assert np.array_equal(shown[:, :, :3], np.asarray(_picture()))
    bad = client.post("/controlnet/detect", json={"controlnet_module": "inpaint",
                                                  "controlnet_input_images": [b64(_picture())] * 2,
                                                  "controlnet_masks": [b64(_mask())]})
    assert bad.status_code == 422 and "controlnet_masks" in bad.text


def test_a_mask_on_another_module_is_the_scribble_it_reads(env, hints, caplog):
    """generation_test's test_masked_controlnet_* payloads (``image`` + ``mask_image`` on a non-inpaint unit):
    sd-webui-controlnet reads the mask itself as the picture ("Canvas scribble mode"), unless the mask is all
    but empty (every value <= 5) or all but full (>= 250), when it reads the image."""
    with caplog.at_level(logging.INFO, logger="webui.controlnet.inputs"):
        result = _run(env, [{"module": "none", "model": MODEL, "image": b64(_picture()), "mask_image": b64(_mask())}],
                      steps=1)
    assert "Canvas scribble mode. Using mask scribble as input." in caplog.text
    assert len(result.extra_images) == 1
    scribble = np.repeat((np.asarray(_mask()) / 255).astype(np.float32)[None], 3, axis=0)
    assert np.array_equal(hints[-1][0][0].numpy(), scribble)
    _run(env, [{"module": "none", "model": MODEL, "image": _picture(), "mask": Image.new("L", (64, 64), 3)}], steps=1)
    picture = np.asarray(_picture()).astype(np.float32).transpose(2, 0, 1) / 255
    assert np.allclose(hints[-1][0][0].numpy(), picture, atol=1e-6)


def test_lama_outpaint_payload_masks_and_fills_the_padding(env):
    """generation_test's test_lama_outpaint: ``inpaint_only+lama``, "Resize and Fill", no mask. The picture (64 wide,
    32 high) is first placed on the 64x64 canvas with the padding masked (its outpaint fix), so the detected map has
    the bands half transparent and the middle opaque, and the generated image keeps the picture in the middle
    (farther than the blur from the bands) exactly; the bands are filled by LaMa."""
    folder = env["models"] / "ControlNet" / "annotators"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(_tiny_lama(), folder / "ControlNetLama.pth")
    wide = Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 64, 3), dtype=np.uint8))
    result = _run(env, [{"module": "inpaint_only+lama", "model": MODEL, "image": wide,
                         "resize_mode": "Resize and Fill"}])
    shown = np.asarray(result.extra_images[0][0].convert("RGBA"))
    alpha = shown[:, :, 3]
    assert np.all(alpha[:16] == 128) and np.all(alpha[48:] == 128) and np.all(alpha[16:48] == 255)
    # the bands are LaMa's fill of the canvas padded with the borders' median colour (detectmap_proc's fill)
    picture = np.asarray(wide)
    borders = np.concatenate([picture[0], picture[-1], picture[:, 0], picture[:, -1]]).astype(np.float32)
    canvas = np.tile(np.floor(np.median(borders, axis=0)).astype(np.uint8), (64, 64, 1))
    canvas[16:48] = picture
    bands = np.full((64, 64), 255, np.uint8)
    bands[16:48] = 0
    assert np.array_equal(shown[:, :, :3], _lama_reference(_tiny_lama(), canvas, bands))
    out = np.asarray(result.images[0])
    assert np.array_equal(out[23:41], np.asarray(wide)[7:25])
