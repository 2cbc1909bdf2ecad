"""The requests of AUTOMATIC1111's own HTTP API tests, sent to our server on the tiny model.

A1111's ``test/test_txt2img.py``, ``test/test_img2img.py``, ``test/test_extras.py`` and
``test/test_utils.py`` (AUTOMATIC1111/stable-diffusion-webui) post these payloads to a live server and
expect 200. The payloads below restate theirs field for field (their code is not copied); where the
answer has content we can check, we check it too.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image


def _b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()  # bare base64, as A1111's conftest sends


def _img(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="module")
def init_b64() -> str:
    rng = np.random.default_rng(7)
    return _b64_png(Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def mask_b64() -> str:
    mask = np.zeros((96, 80), dtype=np.uint8)
    mask[24:72, 20:60] = 255
    return _b64_png(Image.fromarray(mask))


def txt2img_request() -> dict:
    """A1111 test_txt2img.py's ``simple_txt2img_request``."""
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
        "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
        "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0,
        "s_tmin": 0, "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1,
        "steps": 3, "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }


def img2img_request(init_b64: str) -> dict:
    """A1111 test_img2img.py's ``simple_img2img_request``."""
    return {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
        "include_init_images": False, "init_images": [init_b64], "inpaint_full_res": False,
        "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
        "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
        "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }


def _ok(r) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------- test_txt2img.py


@pytest.mark.parametrize("change, size, count", [
    ({}, (64, 64), 1),
    ({"negative_prompt": "example negative prompt"}, (64, 64), 1),
    ({"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"}, (64, 64), 1),
    ({"height": 128}, (64, 128), 1),
    ({"enable_hr": True}, (128, 128), 1),  # hr_scale defaults to 2 (A1111)
    ({"tiling": True}, (64, 64), 1),
    ({"sampler_index": "PLMS"}, (64, 64), 1),
    ({"sampler_index": "DDIM"}, (64, 64), 1),
    ({"sampler_index": "UniPC"}, (64, 64), 1),
    ({"n_iter": 2}, (64, 64), 2),
    ({"batch_size": 2}, (64, 64), 2),
], ids=["simple", "negative", "complex-prompt", "not-square", "hrfix", "tiling", "plms", "ddim", "unipc",
        "n-iter", "batch"])
def test_a1111_txt2img_requests(api_client, change, size, count):
    body = _ok(api_client.post("/sdapi/v1/txt2img", json={**txt2img_request(), **change}))
    assert len(body["images"]) == count
    assert all(_img(b).size == size for b in body["images"])
    info = json.loads(body["info"])
    assert info["sampler_name"] == change.get("sampler_index", "Euler a")
    assert len(set(info["all_seeds"])) == count  # seed -1: one random seed, consecutive per image


def test_a1111_txt2img_with_restore_faces_and_no_face_model_installed(api_client, ctx):
    # A1111 would download the weights; we never do: the image is made, restoration is skipped, and the
    # answer says which file to put where
    assert not any(any(ctx.settings.model_dir(k).glob("*.pth")) for k in ("GFPGAN", "Codeformer"))
    req = {**txt2img_request(), "seed": 5, "restore_faces": True}
    body = _ok(api_client.post("/sdapi/v1/txt2img", json=req))
    info = json.loads(body["info"])
    warning = "\n".join(info["warnings"])
    assert "Restore faces skipped (CodeFormer)" in warning
    assert "codeformer-v0.1.0.pth" in warning and str(ctx.settings.model_dir("Codeformer")) in warning
    assert info["comments"] == warning
    assert "Face restoration" not in info["infotexts"][0]
    plain = _ok(api_client.post("/sdapi/v1/txt2img", json={**req, "restore_faces": False}))
    assert _img(body["images"][0]).tobytes() == _img(plain["images"][0]).tobytes()
    gfpgan = _ok(api_client.post("/sdapi/v1/txt2img", json={
        **req, "override_settings": {"face_restoration_model": "GFPGAN"}}))
    assert "GFPGANv1.4.pth" in "\n".join(json.loads(gfpgan["info"])["warnings"])


# --------------------------------------------------------------------------- test_img2img.py


def test_a1111_img2img_simple(api_client, init_b64):
    body = _ok(api_client.post("/sdapi/v1/img2img", json=img2img_request(init_b64)))
    assert len(body["images"]) == 1 and _img(body["images"][0]).size == (64, 64)


@pytest.mark.parametrize("invert", [False, True])
def test_a1111_inpainting(api_client, init_b64, mask_b64, invert):
    req = {**img2img_request(init_b64), "mask": mask_b64, "inpainting_mask_invert": invert, "seed": 3}
    body = _ok(api_client.post("/sdapi/v1/img2img", json=req))
    out = np.asarray(_img(body["images"][0]).convert("RGB"), dtype=np.int16)
    assert out.shape == (64, 64, 3)
    info = json.loads(body["info"])
    assert "Mask blur: 4" in info["infotexts"][0]


def test_a1111_img2img_sd_upscale(api_client, init_b64):
    req = {**img2img_request(init_b64), "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]}
    body = _ok(api_client.post("/sdapi/v1/img2img", json=req))
    # SD upscale scales the init image (96x80 -> 192x160), not the request's 64x64
    assert _img(body["images"][0]).size == (160, 192)


# --------------------------------------------------------------------------- test_extras.py


def test_a1111_extras_simple_upscaling(api_client, init_b64):
    payload = {
        "resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
        "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
        "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None",
        "extras_upscaler_2_visibility": 0, "image": init_b64,
    }
    body = _ok(api_client.post("/sdapi/v1/extra-single-image", json=payload))
    assert _img(body["image"]).size == (160, 192)


@pytest.mark.parametrize("extra", [{}, {"model": "clip"}], ids=["png-info", "interrogate"])
def test_a1111_extras_image_only(api_client, init_b64, extra):
    # A1111's "png info" and "interrogate" tests post just the image (plus "model") to extra-single-image
    body = _ok(api_client.post("/sdapi/v1/extra-single-image", json={"image": init_b64, **extra}))
    assert _img(body["image"]).size == (80, 96)


# --------------------------------------------------------------------------- test_utils.py


def test_a1111_options_write(api_client):
    before = _ok(api_client.get("/sdapi/v1/options"))["send_seed"]
    assert api_client.post("/sdapi/v1/options", json={"send_seed": not before}).status_code == 200
    assert _ok(api_client.get("/sdapi/v1/options"))["send_seed"] is (not before)
    assert api_client.post("/sdapi/v1/options", json={"send_seed": before}).status_code == 200
    assert _ok(api_client.get("/sdapi/v1/options"))["send_seed"] is before


@pytest.mark.parametrize("url", ["cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks",
                                 "face-restorers", "realesrgan-models", "prompt-styles", "embeddings"])
def test_a1111_get_routes(api_client, url):
    body = _ok(api_client.get(f"/sdapi/v1/{url}"))
    if url in ("samplers", "upscalers", "sd-models", "face-restorers"):
        assert body, url  # lists with entries here
