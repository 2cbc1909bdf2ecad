"""img2img: A1111's step rule, strength 0, resize modes, API with base64 inputs and bad input."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import api_only
from webui.pipeline.init_image import resize_image
from webui.pipeline.request import GenerationRequest
from webui.server import create_app


def picture(w=64, h=64) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 128)], -1)
    return Image.fromarray(arr.astype(np.uint8))


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def through_the_vae(vae, image: Image.Image, latent_size: tuple[int, int] | None = None) -> np.ndarray:
    """``image`` encoded to the VAE posterior's mean (the product's documented choice, webui/pipeline/vae.py),
    optionally resized in latent space to ``latent_size`` (height, width) with ``F.interpolate(mode="bilinear")``,
    and decoded: uint8 pixels, computed with the VAE directly."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mode()
        if latent_size is not None:
            z = torch.nn.functional.interpolate(z, size=latent_size, mode="bilinear")
        decoded = vae.decode(z).sample
    return (((decoded[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


BASE = dict(prompt="a cat", steps=10, width=64, height=64, seed=4, sampler_name="Euler", save_images=False,
            mode="img2img")


def test_steps_follow_a1111_rule(ctx, counter):
    res = ctx.generate(GenerationRequest(init_images=(picture(),), denoising_strength=0.5, **BASE))
    # A1111: t_enc = int(0.5 * 10) = 5, and the last t_enc + 1 = 6 sigmas of the 10-step schedule are run
    assert [s for s, _ in counter.seen] == list(range(6)) and counter.seen[0][1] == 6
    assert "Denoising strength: 0.5" in res.infotexts[0] and res.info["denoising_strength"] == 0.5


def test_strength_zero_returns_the_init_image_without_steps(ctx, counter):
    res = ctx.generate(GenerationRequest(init_images=(picture(),), denoising_strength=0.0, **BASE))
    assert counter.seen == []
    round_trip = through_the_vae(ctx.models.current.components.vae, picture())
    assert np.abs(np.asarray(res.images[0], int) - round_trip.astype(int)).max() <= 1


def test_strength_changes_and_is_deterministic(ctx):
    low = ctx.generate(GenerationRequest(init_images=(picture(),), denoising_strength=0.3, **BASE)).images[0]
    again = ctx.generate(GenerationRequest(init_images=(picture(),), denoising_strength=0.3, **BASE)).images[0]
    high = ctx.generate(GenerationRequest(init_images=(picture(),), denoising_strength=0.9, **BASE)).images[0]
    assert low.tobytes() == again.tobytes() and low.tobytes() != high.tobytes()


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_resize_modes_give_the_target_size(mode):
    img = picture(96, 48)
    out = resize_image(img, 64, 64, mode)
    assert out.size == (64, 64)
    arr = np.asarray(out).astype(int)
    if mode == 1:  # crop: the centre column of the source survives, no black borders
        assert arr.min(axis=(0, 1)).tolist()[2] == 128
    if mode == 2:  # fill: the borders repeat the edge rows, nothing black
        assert (arr[:, :, 2] == 128).all() and not (arr[0] == 0).all()


@pytest.mark.parametrize("source, target", [((96, 80), (64, 64)), ((64, 64), (96, 128))])
def test_latent_upscale_mode_resizes_the_latents_bilinearly(ctx, source, target):
    """Resize mode 3, "Just resize (latent upscale)": A1111 (processing.py, ``StableDiffusionProcessingImg2Img.init``)
    encodes the init image at its own size and resizes the latents with ``F.interpolate(mode="bilinear")`` to
    ``height/8 x width/8``; strength 0 gives those latents back, decoded. Smaller and larger than the image."""
    rng = np.random.default_rng(5)
    image = Image.fromarray((rng.random((source[1] // 8, source[0] // 8, 3)) * 255).astype(np.uint8)).resize(
        source, Image.Resampling.BICUBIC)
    w, h = target
    res = ctx.generate(GenerationRequest(**{**BASE, "width": w, "height": h}, init_images=(image,),
                                         denoising_strength=0.0, resize_mode=3))
    expected = through_the_vae(ctx.models.current.components.vae, image, (h // 8, w // 8))
    ours = np.asarray(res.images[0], int)
    assert ours.shape == (h, w, 3)
    assert np.abs(ours - expected.astype(int)).max() <= 1
    # the latents were resized, not the picture: encoding the picture resized to the target differs
    stretched = through_the_vae(ctx.models.current.components.vae, image.resize(target, Image.Resampling.LANCZOS))
    assert np.abs(ours - stretched.astype(int)).max() > 8


def test_api_img2img(ctx):
    client = TestClient(create_app(api_only(ctx)))
    body = {"prompt": "a cat", "init_images": ["data:image/png;base64," + b64(picture(80, 80))], "steps": 6,
            "width": 64, "height": 64, "seed": 9, "denoising_strength": 0.5, "sampler_name": "Euler a"}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["parameters"]["init_images"] is None
    info = json.loads(out["info"])
    assert info["denoising_strength"] == 0.5 and info["all_seeds"] == [9]
    img = Image.open(io.BytesIO(base64.b64decode(out["images"][0])))
    assert img.size == (64, 64) and "Denoising strength: 0.5" in img.info["parameters"]


@pytest.mark.parametrize("bad", ["not base64!!", "", base64.b64encode(b"<html></html>").decode(),
                                 "http://127.0.0.1/a.png"])
def test_api_img2img_bad_images_are_422(ctx, bad):
    client = TestClient(create_app(api_only(ctx)))
    r = client.post("/sdapi/v1/img2img", json={"init_images": [bad], "steps": 2, "width": 64, "height": 64})
    assert r.status_code == 422 and "init_images[0]" in r.text
    assert client.post("/sdapi/v1/img2img", json={"init_images": [], "steps": 2}).status_code == 422
    ok = client.post("/sdapi/v1/img2img", json={"init_images": [b64(picture())], "steps": 2, "width": 64,
                                                "height": 64})
    assert ok.status_code == 200


def test_image_of_a_batch_uses_its_init_image(ctx):
    a, b = picture(), Image.fromarray(255 - np.asarray(picture()))
    batch = ctx.generate(GenerationRequest(init_images=(a, b), batch_size=2, denoising_strength=0.3, **BASE))
    first = ctx.generate(GenerationRequest(init_images=(a,), denoising_strength=0.3, **BASE))
    assert np.abs(np.asarray(batch.images[0], int) - np.asarray(first.images[0], int)).max() <= 2
    assert batch.images[0].tobytes() != batch.images[1].tobytes()
