"""A1111 1.10's img2img and sampler-parameter options on the tiny model.

Rules (A1111 1.10 sources):
- ``img2img_fix_steps``: ``modules/sd_samplers_common.py`` ``setup_img2img_steps``; the hires pass always
  passes its steps, so it always takes the "fixed" branch.
- ``img2img_extra_noise``: ``modules/sd_samplers_kdiffusion.py`` ``sample_img2img`` adds
  ``noise * img2img_extra_noise`` after the usual noising (the noise already carries the initial noise
  multiplier, ``StableDiffusionProcessingImg2Img.sample``) and writes "Extra noise", only when > 0.
- ``upscaler_for_img2img``: ``modules/images.py`` ``resize_image`` enlarges with the named upscaler, used by
  ``StableDiffusionProcessingImg2Img.init`` for the init images.
- ``img2img_color_correction``: ``modules/processing.py`` ``setup_color_correction`` (LAB of the processed
  init image), ``apply_color_correction`` (LAB histogram matching, then ``blendLayers(corrected, original,
  LUMINOSITY)``), applied before ``apply_overlay``; loopback passes the first init image's correction.
- ``s_churn``/``s_tmin``/``s_tmax``/``s_noise``: ``StableDiffusionProcessing.__post_init__`` (request, else
  option; s_tmax 0 = infinity) then ``Sampler.initialize`` in ``sd_samplers_common.py``: for samplers taking
  the parameter, an option that differs from the sampler default wins and is written ("Sigma churn"...).
- ``face_restoration``/``tiling``: ``process_images_inner`` uses them when the request leaves the field None.
"""

from __future__ import annotations

import base64
import io
import json
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import StepRecorder, registered, require
from webui.hookspecs import hookimpl
from webui.infotext import parse_infotext
from webui.jobs import Job
from webui.pipeline.color_correction import (
    apply_color_correction,
    color_reference,
    luminosity_blend,
    match_histograms,
)
from webui.pipeline.init_image import image_to_tensor
from webui.pipeline.request import GenerationRequest
from webui.pipeline.vae import decode_latents, encode_pixels
from webui.upscaling.registry import UpscalerDef

BASE = dict(prompt="a cat", steps=4, width=64, height=64, seed=7, sampler_name="Euler", save_images=False)
I2I = dict(BASE, mode="img2img", denoising_strength=0.5)


def picture(w: int = 64, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], -1)
    arr = arr + rng.integers(-20, 21, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def param(infotext: str, key: str) -> float | None:
    """The number ``key`` holds in an infotext's parameter line (None when absent)."""
    value = parse_infotext(infotext).get(key)
    return None if value is None else float(value)


def pixels(response: dict) -> bytes:
    """The pixels of the first image of an API answer (the PNG bytes also hold the infotext)."""
    return Image.open(io.BytesIO(base64.b64decode(response["images"][0]))).tobytes()


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def sigmas(ctx):
    """The sigma of every sampling step, in ``sigmas.seen``."""
    with registered(ctx, StepRecorder(lambda state: float(state.sigma)), "sigma-recorder") as plugin:
        yield plugin


# --------------------------------------------------------------------------- img2img_fix_steps


@pytest.mark.parametrize(("steps", "strength", "off", "on"), [
    # off: int(min(d, .999) * steps) + 1 steps of a `steps` schedule; on: `steps` steps of an
    # int(steps / min(d, .999)) schedule
    (4, 0.5, 3, 4),    # off: int(2.0) + 1 = 3; on: 4 steps of an 8-step schedule
    (3, 0.6, 2, 3),    # off: int(1.8) + 1 = 2; on: 3 steps of int(5.000000000000001) = 5
    (4, 1.0, 4, 4),    # off: int(0.999 * 4) + 1 = 4; on: 4 steps of int(4.004) = 4
])
def test_fix_steps_counts(ctx, counter, steps, strength, off, on):
    for fix, expected in ((False, off), (True, on)):
        counter.seen.clear()
        ctx.generate(GenerationRequest(**{**I2I, "steps": steps, "denoising_strength": strength},
                                      init_images=(picture(),), override_settings={"img2img_fix_steps": fix}))
        assert counter.seen == [(i, expected) for i in range(expected)], fix


def test_fix_steps_runs_the_tail_of_the_longer_schedule(ctx, sigmas):
    # on, steps 4, strength 0.5: the last 4 steps of an 8-step schedule; off with steps 8: int(0.5 * 8) + 1 = 5
    # steps of the same 8-step schedule -- so the fixed run visits that run's last 4 sigmas
    fixed = dict(I2I, init_images=(picture(),))
    ctx.generate(GenerationRequest(**fixed, override_settings={"img2img_fix_steps": True}))
    on = list(sigmas.seen)
    sigmas.seen.clear()
    ctx.generate(GenerationRequest(**{**fixed, "steps": 8}))
    assert len(on) == 4 and len(sigmas.seen) == 5
    assert on == sigmas.seen[1:]


def test_fix_steps_leaves_the_hires_pass_alone(ctx, counter):
    # A1111's hires pass always calls setup_img2img_steps with its steps: int(2 / 0.5) = 4-step schedule, 2 run
    req = dict(BASE, steps=2, enable_hr=True, hr_scale=1.0, hr_second_pass_steps=2, denoising_strength=0.5)
    images = []
    for fix in (False, True):
        counter.seen.clear()
        res = ctx.generate(GenerationRequest(**req, override_settings={"img2img_fix_steps": fix}))
        assert [t for _, t in counter.seen] == [2, 2, 2, 2]  # 2 first-pass steps + 2 hires steps
        images.append(res.images[0].tobytes())
    assert images[0] == images[1]


# --------------------------------------------------------------------------- img2img_extra_noise


def test_extra_noise_only_when_positive(ctx):
    req = dict(I2I, init_images=(picture(),))
    plain = ctx.generate(GenerationRequest(**req))
    zero = ctx.generate(GenerationRequest(**req, override_settings={"img2img_extra_noise": 0.0}))
    noisy = ctx.generate(GenerationRequest(**req, override_settings={"img2img_extra_noise": 0.5}))
    assert zero.images[0].tobytes() == plain.images[0].tobytes()
    assert "Extra noise" not in zero.infotexts[0] and "Extra noise" not in plain.infotexts[0]
    assert noisy.images[0].tobytes() != plain.images[0].tobytes()
    assert param(noisy.infotexts[0], "Extra noise") == 0.5


@pytest.mark.parametrize("multiplier", [1.0, 0.8])
def test_extra_noise_is_added_to_the_noised_init(ctx, sigmas, multiplier):
    # A1111: xi = x + noise * sigma_0, then xi += noise * e, where the noise already carries the initial noise
    # multiplier m: x + m * noise * (sigma_0 + e). With Euler (no churn) that is the same start as a
    # multiplier of m * (sigma_0 + e) / sigma_0 without extra noise.
    req = dict(I2I, init_images=(picture(),))
    extra = 0.5
    noisy = ctx.generate(GenerationRequest(**req, initial_noise_multiplier=multiplier,
                                          override_settings={"img2img_extra_noise": extra}))
    sigma_0 = sigmas.seen[0]
    same = ctx.generate(GenerationRequest(**req, initial_noise_multiplier=multiplier * (sigma_0 + extra) / sigma_0))
    assert np.abs(arr(noisy.images[0]) - arr(same.images[0])).max() <= 2


@pytest.fixture
def starts(monkeypatch):
    """The latents each img2img sampling run starts from (``x``) and its sigmas."""
    import webui.pipeline.generate as generate

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = generate.sample

    def spy(sampler, model_fn, ds, sigmas, rng, seeds, *, x=None, **kw):
        if x is not None:
            seen.append((x.detach().clone(), sigmas.detach().clone()))
        return real(sampler, model_fn, ds, sigmas, rng, seeds, x=x, **kw)

    monkeypatch.setattr(generate, "sample", spy)
    return seen


def test_initial_noise_multiplier_scales_the_noise_added_to_the_init_latents(ctx, starts):
    # A1111 (StableDiffusionProcessingImg2Img.sample, sd_samplers_kdiffusion.sample_img2img): x = rng noise * m,
    # start = init_latent + x * sigma_0 (+ x * extra noise). With m = 0 the start is the init latent itself: the
    # VAE encoding of the init image; the noise is then (start_m - init) / (m * sigma_0), the same for every m.
    image = picture()
    model = ctx.models.current
    init = encode_pixels(model, image_to_tensor(image))
    req = dict(I2I, steps=2, init_images=(image,))
    for m in (0.0, 1.0, 0.5):
        res = ctx.generate(GenerationRequest(**req, initial_noise_multiplier=m))
        assert (param(res.infotexts[0], "Noise multiplier") == m) == (m != 1.0)  # written only when not 1
    (x0, _), (x1, sig1), (xh, sigh) = starts
    torch.testing.assert_close(x0, init)
    noise = (x1 - init) / sig1[0]
    assert 0.8 < float(noise.std()) < 1.2  # unit noise
    torch.testing.assert_close(xh, init + 0.5 * noise * sigh[0], rtol=1e-4, atol=1e-4)
    starts.clear()
    ctx.generate(GenerationRequest(**req, override_settings={"initial_noise_multiplier": 0.25}))  # the option
    ctx.generate(GenerationRequest(**req, initial_noise_multiplier=0.25,
                                   override_settings={"img2img_extra_noise": 0.5}))
    (xo, sigo), (xe, sige) = starts
    torch.testing.assert_close(xo, init + 0.25 * noise * sigo[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xe, init + 0.25 * noise * (sige[0] + 0.5), rtol=1e-4, atol=1e-4)


def test_extra_noise_in_the_hires_pass(ctx):
    req = dict(BASE, steps=2, enable_hr=True, hr_scale=1.0, denoising_strength=0.5)
    plain = ctx.generate(GenerationRequest(**req))
    noisy = ctx.generate(GenerationRequest(**req, override_settings={"img2img_extra_noise": 0.25}))
    assert noisy.images[0].tobytes() != plain.images[0].tobytes()
    assert param(noisy.infotexts[0], "Extra noise") == 0.25 and "Extra noise" not in plain.infotexts[0]
    first_pass = ctx.generate(GenerationRequest(**BASE, override_settings={"img2img_extra_noise": 0.25}))
    assert "Extra noise" not in first_pass.infotexts[0]  # txt2img without hires: no img2img pass


# --------------------------------------------------------------------------- upscaler_for_img2img


class DoublerPlugin:
    """An upscaler that doubles with nearest-neighbour and records what it is given."""

    def __init__(self):
        self.calls: list[tuple[tuple[int, int], float]] = []

    @hookimpl
    def register_upscalers(self, settings):
        def double(image, scale, opts):
            self.calls.append((image.size, scale))
            return image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)

        return [UpscalerDef("Test Doubler", double, scale=2.0)]


@pytest.fixture
def doubler(ctx):
    with registered(ctx, DoublerPlugin(), "test-doubler") as plugin:
        ctx.refresh_upscalers()
        yield plugin
    ctx.refresh_upscalers()


def _vae_round_trip(ctx, image: Image.Image) -> Image.Image:
    model = ctx.models.current
    return decode_latents(model, encode_pixels(model, image_to_tensor(image)))[0]


def test_upscaler_enlarges_the_init_image(ctx, doubler):
    small = picture(32, 32)
    opts = {"upscaler_for_img2img": "Test Doubler"}
    res = ctx.generate(GenerationRequest(**{**I2I, "denoising_strength": 0.0}, init_images=(small,),
                                        override_settings=opts))
    assert doubler.calls == [((32, 32), 2.0)]  # "Just resize" 32 -> 64: one 2x enlargement
    # strength 0 returns the encoded init image: the nearest-neighbour enlargement, not Lanczos
    nearest = small.resize((64, 64), Image.Resampling.NEAREST)
    assert res.images[0].tobytes() == _vae_round_trip(ctx, nearest).tobytes()
    lanczos = ctx.generate(GenerationRequest(**{**I2I, "denoising_strength": 0.0}, init_images=(small,)))
    assert lanczos.images[0].tobytes() != res.images[0].tobytes()


def test_upscaler_in_crop_and_fill_modes_and_not_for_reductions(ctx, doubler):
    opts = {"upscaler_for_img2img": "Test Doubler"}
    # Crop and resize, 32x16 -> 64x64: covered at 128x64 (A1111: scale max(128/32, 64/16) = 4); the 2x model
    # runs twice (4, then 2 for the rest)
    ctx.generate(GenerationRequest(**I2I, init_images=(picture(32, 16),), resize_mode=1, override_settings=opts))
    assert doubler.calls == [((32, 16), 4.0), ((64, 32), 2.0)]
    doubler.calls.clear()
    # Resize and fill, 16x32 -> 64x64: fitted at 32x64, scale 2
    ctx.generate(GenerationRequest(**I2I, init_images=(picture(16, 32),), resize_mode=2, override_settings=opts))
    assert doubler.calls == [((16, 32), 2.0)]
    doubler.calls.clear()
    ctx.generate(GenerationRequest(**I2I, init_images=(picture(128, 128),), override_settings=opts))
    assert doubler.calls == []  # reductions are Lanczos resizes
    ctx.generate(GenerationRequest(**I2I, init_images=(picture(32, 32),),
                                  override_settings={"upscaler_for_img2img": "None"}))
    assert doubler.calls == []  # "None": Lanczos


def test_upscaler_for_the_only_masked_crop_and_paste_back(ctx, doubler):
    # A1111 resizes the "only masked" crop with resize mode 2 and pastes the result back with mode 1, both
    # through resize_image with the img2img upscaler
    opts = {"upscaler_for_img2img": "Test Doubler"}
    req = dict(I2I, init_images=(picture(128, 128),), inpaint_full_res=True, inpaint_full_res_padding=0,
               mask_blur_x=0, mask_blur_y=0, override_settings=opts)
    small = Image.new("L", (128, 128), 0)
    small.paste(255, (48, 48, 80, 80))  # a 32x32 region: enlarged to 64x64, the result reduced back
    ctx.generate(GenerationRequest(**req, mask=small))
    assert doubler.calls == [((32, 32), 2.0)]
    doubler.calls.clear()
    large = Image.new("L", (128, 128), 0)
    large.paste(255, (16, 16, 112, 112))  # a 96x96 region: reduced to 64x64, the result enlarged by 1.5
    res = ctx.generate(GenerationRequest(**req, mask=large))
    assert doubler.calls == [((64, 64), 1.5)] and res.images[0].size == (128, 128)


def test_unknown_upscaler_override_is_422(api_client):
    body = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "init_images": [b64(picture(32, 32))],
            "override_settings": {"upscaler_for_img2img": "No Such Upscaler"}}
    r = api_client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "override_settings.upscaler_for_img2img"]
    assert "No Such Upscaler" in r.json()["errors"] and "Lanczos" in r.json()["errors"]


def test_unknown_saved_upscaler_warns_and_uses_lanczos(ctx, caplog):
    from webui.pipeline.generate import generate

    req = GenerationRequest(**{**I2I, "denoising_strength": 0.0}, init_images=(picture(32, 32),))
    saved = ctx.options.current.replaced({"upscaler_for_img2img": "Gone Upscaler"})
    with caplog.at_level(logging.WARNING, logger="webui.pipeline.generate"):
        res = generate(ctx.pipeline_env(), ctx.models.current, req, Job(), saved)
    assert any("Gone Upscaler" in r.getMessage() for r in caplog.records)
    lanczos = picture(32, 32).resize((64, 64), Image.Resampling.LANCZOS)
    assert res.images[0].tobytes() == _vae_round_trip(ctx, lanczos).tobytes()


# --------------------------------------------------------------------------- colour correction maths


def w3c_luminosity(backdrop: np.ndarray, source: np.ndarray, weights=(0.299, 0.587, 0.114)) -> np.ndarray:
    """W3C Compositing and Blending Level 1, "luminosity": B(Cb, Cs) = SetLum(Cb, Lum(Cs)), pixel by pixel.
    The weights are those of the blend library A1111 calls (the W3C text has 0.3, 0.59, 0.11)."""
    def lum(c):
        return c[0] * weights[0] + c[1] * weights[1] + c[2] * weights[2]

    def clip_color(c):
        ll, n, x = lum(c), min(c), max(c)
        if n < 0:
            c = [ll + (v - ll) * ll / (ll - n) for v in c]
        if x > 1:
            c = [ll + (v - ll) * (1 - ll) / (x - ll) for v in c]
        return c

    out = np.zeros(backdrop.shape, dtype=np.uint8)
    for i in range(backdrop.shape[0]):
        for j in range(backdrop.shape[1]):
            cb = [float(v) / 255.0 for v in backdrop[i, j]]
            cs = [float(v) / 255.0 for v in source[i, j]]
            d = lum(cs) - lum(cb)
            c = clip_color([v + d for v in cb])
            out[i, j] = [min(max(round(v * 255.0), 0), 255) for v in c]
    return out


def test_histogram_matching_reaches_the_reference_histograms():
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 101, (20, 24, 3)).astype(np.uint8)
    # a strictly increasing map of the reference: matching must undo it exactly
    source = (reference.astype(np.int32) * 2 + 10).astype(np.uint8)[:, ::-1]
    matched = match_histograms(source, reference)
    for c in range(3):
        assert np.array_equal(np.bincount(matched[..., c].ravel(), minlength=256),
                              np.bincount(reference[..., c].ravel(), minlength=256))


def test_histogram_matching_equals_scikit_image():
    exposure = require("skimage.exposure", "the colour-correction oracle")
    rng = np.random.default_rng(4)
    for _ in range(5):
        source = rng.integers(0, 256, (19, 23, 3)).astype(np.uint8)
        reference = (rng.random((31, 13, 3)) ** 2 * 180 + 30).astype(np.uint8)
        assert np.array_equal(match_histograms(source, reference),
                              exposure.match_histograms(source, reference, channel_axis=2))


def test_luminosity_blend_is_the_w3c_formula():
    rng = np.random.default_rng(5)
    backdrop = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    source = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    backdrop[0, :3] = [[255, 255, 0], [0, 0, 255], [250, 10, 10]]  # saturated colours exercise ClipColor
    source[0, :3] = [[255, 255, 255], [0, 0, 0], [200, 200, 200]]
    out = np.asarray(luminosity_blend(Image.fromarray(backdrop), Image.fromarray(source)))
    assert np.array_equal(out, w3c_luminosity(backdrop, source))


def test_color_correction_end_to_end():
    exposure = require("skimage.exposure", "the colour-correction oracle")
    reference_image, image = picture(seed=1), picture(seed=2).rotate(90)
    image = Image.fromarray((np.asarray(image) * [0.6, 1.0, 0.8]).astype(np.uint8))  # a colour cast
    ref_lab = cv2.cvtColor(np.asarray(reference_image), cv2.COLOR_RGB2LAB)
    assert np.array_equal(color_reference(reference_image), ref_lab)
    lab = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2LAB)
    corrected = cv2.cvtColor(exposure.match_histograms(lab, ref_lab, channel_axis=2), cv2.COLOR_LAB2RGB)
    expected = w3c_luminosity(corrected, np.asarray(image))
    assert np.array_equal(np.asarray(apply_color_correction(ref_lab, image)), expected)


def independent_correction(reference: Image.Image, image: Image.Image) -> np.ndarray:
    exposure = require("skimage.exposure", "the colour-correction oracle")
    ref_lab = cv2.cvtColor(np.asarray(reference.convert("RGB")), cv2.COLOR_RGB2LAB)
    lab = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)
    corrected = cv2.cvtColor(exposure.match_histograms(lab, ref_lab, channel_axis=2), cv2.COLOR_LAB2RGB)
    return w3c_luminosity(corrected, np.asarray(image.convert("RGB")))


# --------------------------------------------------------------------------- colour correction in the pipeline


def test_color_correction_against_the_processed_init_image(ctx):
    init = picture(96, 96, seed=3)  # resized to 64x64 before encoding: that is the reference
    req = dict(I2I, init_images=(init,), batch_size=2)
    plain = ctx.generate(GenerationRequest(**req))
    corrected = ctx.generate(GenerationRequest(**req, override_settings={"img2img_color_correction": True}))
    reference = init.resize((64, 64), Image.Resampling.LANCZOS)
    for before, after in zip(plain.images, corrected.images):
        assert np.array_equal(np.asarray(after), independent_correction(reference, before))
    assert plain.infotexts[0] == corrected.infotexts[0]  # A1111 writes nothing for it


def test_color_correction_with_given_reference(ctx):
    # loopback: every loop is corrected to the first init image (A1111's p.color_corrections)
    init, first = picture(seed=4), picture(seed=5).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    req = dict(I2I, init_images=(init,))
    plain = ctx.generate(GenerationRequest(**req))
    corrected = ctx.generate(GenerationRequest(**req, color_correction_images=(first,),
                                              override_settings={"img2img_color_correction": True}))
    assert np.array_equal(np.asarray(corrected.images[0]), independent_correction(first, plain.images[0]))
    off = ctx.generate(GenerationRequest(**req, color_correction_images=(first,)))
    assert off.images[0].tobytes() == plain.images[0].tobytes()  # references without the option: nothing


def test_color_correction_comes_before_the_inpainting_overlay(ctx):
    init = picture(seed=6)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    req = dict(I2I, init_images=(init,), mask=mask, mask_blur_x=0, mask_blur_y=0, inpaint_full_res=False)
    res = ctx.generate(GenerationRequest(**req, override_settings={"img2img_color_correction": True}))
    out, original = np.asarray(res.images[0]), np.asarray(init)
    outside = np.ones((64, 64), bool)
    outside[8:56, 8:56] = False  # away from the mask's resize blur
    assert np.array_equal(out[outside], original[outside])  # the overlay restores them after correction
    plain = ctx.generate(GenerationRequest(**req))
    assert not np.array_equal(out[24:40, 24:40], np.asarray(plain.images[0])[24:40, 24:40])


# --------------------------------------------------------------------------- sigma parameters


def test_s_churn_option_and_request(ctx):
    base = ctx.generate(GenerationRequest(**BASE))
    by_option = ctx.generate(GenerationRequest(**BASE, override_settings={"s_churn": 1.0}))
    by_request = ctx.generate(GenerationRequest(**BASE, s_churn=1.0))
    assert by_option.images[0].tobytes() != base.images[0].tobytes()
    assert param(by_option.infotexts[0], "Sigma churn") == 1.0 and "Sigma" not in base.infotexts[0]
    # a request value is used when the option is at its default, and A1111 does not write it
    assert by_request.images[0].tobytes() == by_option.images[0].tobytes()
    assert "Sigma churn" not in by_request.infotexts[0]
    # an option that differs from the sampler default replaces even a request value (Sampler.initialize)
    both = ctx.generate(GenerationRequest(**BASE, s_churn=0.0, override_settings={"s_churn": 1.0}))
    assert both.images[0].tobytes() == by_option.images[0].tobytes() and param(both.infotexts[0], "Sigma churn") == 1


@pytest.mark.parametrize(("sampler", "option", "label"), [("Euler a", "eta_ancestral", "Eta"),
                                                          ("DDIM", "eta_ddim", "Eta DDIM")])
def test_eta_comes_from_the_request_else_the_samplers_option(ctx, sampler, option, label):
    """A1111 1.10's ``Sampler.initialize``: ``eta = p.eta if p.eta is not None else opts.<eta_option_field>``, the
    field being ``eta_ancestral`` for k-diffusion samplers and ``eta_ddim`` for DDIM; the infotext writes ``Eta`` /
    ``Eta DDIM`` when eta differs from the sampler's default (1 / 0)."""
    req = {**BASE, "sampler_name": sampler}
    base = ctx.generate(GenerationRequest(**req))
    by_option = ctx.generate(GenerationRequest(**req, override_settings={option: 0.5}))
    by_request = ctx.generate(GenerationRequest(**req, eta=0.5))
    assert by_option.images[0].tobytes() == by_request.images[0].tobytes() != base.images[0].tobytes()
    assert param(by_option.infotexts[0], label) == 0.5 and f"{label}: " not in base.infotexts[0]


def test_s_tmax_zero_means_infinity(ctx):
    base = ctx.generate(GenerationRequest(**BASE))
    churn = ctx.generate(GenerationRequest(**BASE, override_settings={"s_churn": 1.0, "s_tmax": 0.0}))
    assert churn.images[0].tobytes() != base.images[0].tobytes() and "Sigma tmax" not in churn.infotexts[0]
    explicit_zero = ctx.generate(GenerationRequest(**BASE, s_tmax=0.0, override_settings={"s_churn": 1.0}))
    assert explicit_zero.images[0].tobytes() == churn.images[0].tobytes()
    # churn only applies for s_tmin <= sigma <= s_tmax: a tiny s_tmax switches it off for every step
    capped = ctx.generate(GenerationRequest(**BASE, override_settings={"s_churn": 1.0, "s_tmax": 0.001}))
    assert capped.images[0].tobytes() == base.images[0].tobytes()
    assert param(capped.infotexts[0], "Sigma churn") == 1.0 and param(capped.infotexts[0], "Sigma tmax") == 0.001


def test_s_noise_only_for_the_samplers_a1111_gives_it_to(ctx):
    # A1111 1.10's sampler_extra_params: DPM2 a takes s_noise, Euler a does not
    for name, takes in (("Euler a", False), ("DPM2 a", True)):
        req = dict(BASE, sampler_name=name, steps=3)
        base = ctx.generate(GenerationRequest(**req))
        low = ctx.generate(GenerationRequest(**req, override_settings={"s_noise": 0.5}))
        assert (low.images[0].tobytes() != base.images[0].tobytes()) is takes, name
        assert param(low.infotexts[0], "Sigma noise") == (0.5 if takes else None), name


def test_sigma_options_through_the_api(api_client):
    body = {"prompt": "a", "steps": 3, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
    plain = api_client.post("/sdapi/v1/txt2img", json=body).json()
    option = api_client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"s_churn": 1}}).json()
    request = api_client.post("/sdapi/v1/txt2img", json={**body, "s_churn": 1}).json()
    assert param(json.loads(option["info"])["infotexts"][0], "Sigma churn") == 1.0
    assert pixels(option) == pixels(request) != pixels(plain)
    bad = api_client.post("/sdapi/v1/txt2img", json={**body, "s_churn": "lots"})
    assert bad.status_code == 422


# --------------------------------------------------------------------------- face_restoration / tiling


def test_tiling_option_when_the_request_does_not_say(api_client):
    body = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "seed": 3}
    plain = api_client.post("/sdapi/v1/txt2img", json=body).json()
    option = api_client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"tiling": True}}).json()
    explicit = api_client.post("/sdapi/v1/txt2img", json={**body, "tiling": False,
                                                          "override_settings": {"tiling": True}}).json()
    assert "Tiling: True" in json.loads(option["info"])["infotexts"][0]
    assert pixels(option) != pixels(plain)  # circular padding changes the picture
    assert "Tiling" not in json.loads(explicit["info"])["infotexts"][0]
    assert pixels(explicit) == pixels(plain)


def test_face_restoration_option_when_the_request_does_not_say(api_client):
    # no restorer weights here: a restoration that was asked for is reported as skipped
    body = {"prompt": "a", "steps": 2, "width": 64, "height": 64, "seed": 3}
    option = api_client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"face_restoration": True}})
    info = json.loads(option.json()["info"])
    assert info["restore_faces"] is True and "Restore faces skipped (CodeFormer)" in "\n".join(info["warnings"])
    explicit = api_client.post("/sdapi/v1/txt2img", json={**body, "restore_faces": False,
                                                          "override_settings": {"face_restoration": True}})
    info = json.loads(explicit.json()["info"])
    assert info["restore_faces"] is False and info["warnings"] == []
    plain = json.loads(api_client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert plain["restore_faces"] is False
