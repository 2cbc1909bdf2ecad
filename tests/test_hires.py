"""Hires fix: sizes, steps actually run, upscalers, separate sampler/prompt, infotext, API; tiling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import api_only
from webui.errors import RequestError
from webui.pipeline.hires import LATENT_UPSCALE_MODES
from webui.pipeline.request import GenerationRequest, hires_target
from webui.server import create_app

SMALL = dict(prompt="a red circle", steps=4, width=64, height=64, seed=11, sampler_name="Euler", save_images=False)


def test_target_sizes():
    assert hires_target(GenerationRequest(width=64, height=96, hr_scale=2.0)) == (128, 192)
    assert hires_target(GenerationRequest(width=64, height=96, hr_scale=1.3)) == (80, 120)  # floored to 8
    assert hires_target(GenerationRequest(width=64, height=96, hr_resize_x=128)) == (128, 192)
    assert hires_target(GenerationRequest(width=64, height=96, hr_resize_y=144)) == (96, 144)
    assert hires_target(GenerationRequest(width=64, height=96, hr_resize_x=128, hr_resize_y=128)) == (128, 128)


def test_hires_output_size_steps_and_infotext(ctx, counter):
    res = ctx.generate(GenerationRequest(**SMALL, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=3,
                                        denoising_strength=0.5))
    assert res.images[0].size == (128, 128)
    # first pass: 4 steps; second pass: exactly hr_second_pass_steps = 3
    assert [t for _, t in counter.seen] == [4] * 4 + [3] * 3
    info = res.infotexts[0]
    for needle in ("Size: 64x64", "Denoising strength: 0.5", "Hires upscale: 2,", "Hires steps: 3",
                   "Hires upscaler: Latent"):
        assert needle in info, (needle, info)
    assert res.info["width"] == 64 and res.info["denoising_strength"] == 0.5


def test_second_pass_steps_default_to_the_first_pass(ctx, counter):
    ctx.generate(GenerationRequest(**SMALL, enable_hr=True, hr_scale=1.5, denoising_strength=0.7))
    assert len(counter.seen) == 4 + 4


def test_hires_changes_the_image_and_reproduces(ctx):
    req = GenerationRequest(**SMALL, enable_hr=True, hr_scale=1.5, denoising_strength=0.6)
    a, b = ctx.generate(req), ctx.generate(req)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    plain = ctx.generate(GenerationRequest(**SMALL)).images[0].resize((96, 96))
    assert np.abs(np.asarray(a.images[0], dtype=int) - np.asarray(plain, dtype=int)).mean() > 1


@pytest.mark.parametrize("upscaler", ["Latent (bicubic antialiased)", "Latent (nearest-exact)", "Lanczos",
                                      "Nearest", "None"])
def test_every_upscaler_gives_the_requested_size(ctx, upscaler):
    res = ctx.generate(GenerationRequest(**SMALL, enable_hr=True, hr_upscaler=upscaler, hr_resize_x=96,
                                        hr_resize_y=80, hr_second_pass_steps=1, denoising_strength=0.3))
    assert res.images[0].size == (96, 80)
    assert f"Hires upscaler: {upscaler}" in res.infotexts[0] and "Hires resize: 96x80" in res.infotexts[0]


def test_strength_zero_returns_the_upscaled_first_pass_without_steps(ctx, counter):
    res = ctx.generate(GenerationRequest(**SMALL, enable_hr=True, hr_upscaler="Nearest", denoising_strength=0.0))
    assert len(counter.seen) == 4 and res.images[0].size == (128, 128)


def test_separate_sampler_scheduler_and_prompt(ctx, counter):
    res = ctx.generate(GenerationRequest(**SMALL, enable_hr=True, hr_scale=1.5, hr_sampler_name="DPM++ 2M",
                                        hr_scheduler="Karras", hr_prompt="a blue square",
                                        hr_negative_prompt="blurry", hr_second_pass_steps=2,
                                        denoising_strength=0.5))
    info = res.infotexts[0]
    assert "Hires sampler: DPM++ 2M" in info and "Hires schedule type: Karras" in info
    assert 'Hires prompt: a blue square' in info and "Hires negative prompt: blurry" in info
    same = ctx.generate(GenerationRequest(**SMALL, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                                         denoising_strength=0.5))
    assert res.images[0].tobytes() != same.images[0].tobytes()


@pytest.mark.parametrize("field,kw", [
    ("hr_upscaler", dict(hr_upscaler="No Such Upscaler")),
    ("hr_sampler_name", dict(hr_sampler_name="No Such Sampler")),
    ("hr_scale", dict(hr_scale=100.0)),
    ("hr_scale", dict(hr_scale=float("nan"))),
])
def test_bad_hires_fields_name_the_field(ctx, field, kw):
    with pytest.raises(RequestError) as exc:
        ctx.generate(GenerationRequest(**SMALL, enable_hr=True, **kw))
    assert exc.value.field == field


@pytest.fixture(scope="module")
def client(ctx):
    return TestClient(create_app(api_only(ctx)))


def test_api_hires_and_upscaler_lists(client):
    body = {**SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 1}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "Hires upscale: 1.5" in info["infotexts"][0] and info["denoising_strength"] == 0.7
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    modes = [u["name"] for u in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes == list(LATENT_UPSCALE_MODES)
    bad = client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "ESRGAN_9x"})
    assert bad.status_code == 422 and "hr_upscaler" in bad.text


def test_tiling_changes_the_image_and_is_written_to_infotext(ctx):
    tiled = ctx.generate(GenerationRequest(**SMALL, tiling=True))
    plain = ctx.generate(GenerationRequest(**SMALL))
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in plain.infotexts[0]
    assert tiled.images[0].tobytes() != plain.images[0].tobytes()
    # and the model is back to normal padding afterwards
    convs = [m for m in ctx.models.current.components.unet.modules() if m.__class__.__name__ == "Conv2d"]
    assert all(c.padding_mode == "zeros" for c in convs)


def test_tiling_in_img2img_is_circular_padding_for_the_whole_job(ctx):
    """A1111 (``processing.process_images_inner``: ``sd_hijack.model_hijack.apply_circular(p.tiling)`` before
    ``p.init``) pads every ``Conv2d`` of the model circularly for the whole job, the init image's VAE encoding
    included. The reference is the same job without the tiling flag, the test having switched every
    convolution of the U-Net and the VAE to circular padding itself."""
    import torch

    from tests.test_img2img import picture

    req = GenerationRequest(**SMALL, mode="img2img", init_images=(picture(),), denoising_strength=0.6)
    tiled = ctx.generate(req.with_(tiling=True))
    plain = ctx.generate(req.with_(tiling=False))
    c = ctx.models.current.components
    convs = {m: m.padding_mode for part in (c.unet, c.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)}
    try:
        for conv in convs:
            conv.padding_mode = "circular"
        by_hand = ctx.generate(req.with_(tiling=False))
    finally:
        for conv, mode in convs.items():
            conv.padding_mode = mode
    assert np.array_equal(np.asarray(tiled.images[0]), np.asarray(by_hand.images[0]))
    assert np.abs(np.asarray(tiled.images[0], int) - np.asarray(plain.images[0], int)).max() > 8
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in plain.infotexts[0]
