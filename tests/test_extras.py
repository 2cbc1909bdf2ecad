"""Extras (A1111 postprocessing): sizes, crop, two upscalers, face restorers with visibility, infotext kept,
the API routes, "Restore faces" in generation."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import api_only, make_settings
from tests.test_img2img import b64
from webui.context import build_context
from webui.errors import RequestError
from webui.extras import ExtrasRequest
from webui.hookspecs import hookimpl
from webui.pipeline.request import GenerationRequest
from webui.plugins import make_plugin_manager
from webui.restoration.registry import FaceRestorerDef
from webui.server import create_app
from webui.upscaling.registry import UpscalerDef


def noisy(w=40, h=30, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


class Fakes:
    """A 2x "model" upscaler (pixel doubling) and a restorer that inverts the image (easy to detect)."""

    def __init__(self):
        self.restored = []

    @hookimpl
    def register_upscalers(self, settings):
        def double(image, scale, opts):
            return image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)

        return [UpscalerDef("Doubler", double, scale=2.0, model_path="/x/RealESRGAN/Doubler.pth")]

    @hookimpl
    def register_face_restorers(self, settings):
        def invert(image, opts):
            self.restored.append(opts.get("code_former_weight"))
            return Image.fromarray(255 - np.asarray(image.convert("RGB")))

        return [FaceRestorerDef("GFPGAN-test", invert), FaceRestorerDef("CodeFormer", invert)]


@pytest.fixture(scope="module")
def fake_ctx(tmp_path_factory, models_root):
    plugins = make_plugin_manager(disable_extensions=True, disabled_builtins=("face_restorers",))
    fakes = Fakes()
    plugins.register(fakes, "fakes")
    ctx = build_context(make_settings(tmp_path_factory.mktemp("extras"), models_root), plugins=plugins,
                        load_model=True)
    ctx.fakes = fakes
    return ctx


def test_scale_by_and_to_size_with_and_without_crop(fake_ctx):
    img = noisy(40, 30)
    out, info = fake_ctx.extras(img, ExtrasRequest(upscaler_1="Doubler", upscaling_resize=3))
    assert out.size == (120, 90) and info["Postprocess upscale by"] == 3 and info["Postprocess upscaler"] == "Doubler"
    out, info = fake_ctx.extras(img, ExtrasRequest(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                                   upscaling_crop=True, upscaler_1="Lanczos"))
    assert out.size == (100, 100) and info["Postprocess crop to"] == "100x100"
    out, _ = fake_ctx.extras(img, ExtrasRequest(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                                upscaling_crop=False, upscaler_1="Lanczos"))
    assert out.size == (133, 100)  # scaled to cover, aspect kept, not cropped


def test_nearest_doubling_is_exact_and_second_upscaler_blends(fake_ctx):
    img = noisy(20, 20, seed=2)
    out, _ = fake_ctx.extras(img, ExtrasRequest(upscaler_1="Doubler", upscaling_resize=2))
    assert np.array_equal(np.asarray(out)[::2, ::2], np.asarray(img))
    half, info = fake_ctx.extras(img, ExtrasRequest(upscaler_1="Doubler", upscaler_2="Lanczos",
                                                    extras_upscaler_2_visibility=0.5, upscaling_resize=2))
    lanczos = img.resize((40, 40), Image.Resampling.LANCZOS)
    expected = Image.blend(out, lanczos, 0.5)
    assert np.abs(np.asarray(half, int) - np.asarray(expected, int)).max() <= 1
    assert info["Postprocess upscaler 2"] == "Lanczos" and info["Postprocess upscaler 2 visibility"] == 0.5


def test_face_restoration_visibility_and_codeformer_weight(fake_ctx):
    img = noisy(16, 16, seed=3)
    full, info = fake_ctx.extras(img, ExtrasRequest(upscaling_resize=1, codeformer_visibility=1.0,
                                                    codeformer_weight=0.3))
    assert np.array_equal(np.asarray(full), 255 - np.asarray(img))
    assert fake_ctx.fakes.restored[-1] == 0.3 and info["CodeFormer weight"] == 0.3
    half, _ = fake_ctx.extras(img, ExtrasRequest(upscaling_resize=1, codeformer_visibility=0.5))
    assert np.abs(np.asarray(half, int) - 127.5).max() <= 1  # x blended with 255 - x


@pytest.mark.parametrize("field,kw", [("upscaler_1", dict(upscaler_1="Nope")),
                                      ("upscaling_resize", dict(upscaling_resize=0)),
                                      ("gfpgan_visibility", dict(gfpgan_visibility=0.5)),
                                      ("upscaling_resize", dict(upscaling_resize=16, upscaler_1="Lanczos"))])
def test_bad_extras_name_the_field(fake_ctx, field, kw):
    with pytest.raises(RequestError) as e:
        fake_ctx.extras(Image.new("RGB", (1024, 1024)), ExtrasRequest(**kw))
    assert e.value.field == field


def test_api_single_and_batch_keep_the_original_infotext(fake_ctx):
    client = TestClient(create_app(api_only(fake_ctx)))
    src = noisy(32, 32)
    buf = io.BytesIO()
    from webui.image_metadata import pnginfo_for

    src.save(buf, format="PNG", pnginfo=pnginfo_for("a cat\nSteps: 5, Seed: 1, Size: 32x32"))
    data = base64.b64encode(buf.getvalue()).decode()
    r = client.post("/sdapi/v1/extra-single-image", json={"image": "data:image/png;base64," + data,
                                                          "upscaler_1": "Doubler", "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["image"])))
    assert out.size == (64, 64) and out.info["parameters"].startswith("a cat\nSteps: 5")
    assert out.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Doubler"
    assert "Postprocess upscaler: Doubler" in r.json()["html_info"]
    r = client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": data, "name": "a.png"},
                                                                        {"data": b64(noisy(8, 8)), "name": "b"}],
                                                          "resize_mode": 1, "upscaling_resize_w": 24,
                                                          "upscaling_resize_h": 16, "upscaler_1": "Lanczos"})
    assert r.status_code == 200, r.text
    sizes = [Image.open(io.BytesIO(base64.b64decode(i))).size for i in r.json()["images"]]
    assert sizes == [(24, 16), (24, 16)]
    bad = client.post("/sdapi/v1/extra-single-image", json={"image": "bm90IGFuIGltYWdl"})
    assert bad.status_code == 422 and "image" in bad.text
    bad = client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": "###"}]})
    assert bad.status_code == 422 and "imageList[0].data" in bad.text
    bad = client.post("/sdapi/v1/extra-single-image", json={"image": data, "upscaler_1": "ESRGAN_nope"})
    assert bad.status_code == 422 and "upscaler_1" in bad.text
    assert [f["name"] for f in client.get("/sdapi/v1/face-restorers").json()] == ["GFPGAN-test", "CodeFormer"]
    assert [m["name"] for m in client.get("/sdapi/v1/realesrgan-models").json()] == ["Doubler"]


def test_restore_faces_in_generation(fake_ctx):
    req = dict(prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler", save_images=False)
    plain = fake_ctx.generate(GenerationRequest(**req))
    restored = fake_ctx.generate(GenerationRequest(**req, restore_faces=True,
                                                  override_settings={"face_restoration_model": "CodeFormer"}))
    assert np.array_equal(np.asarray(restored.images[0]), 255 - np.asarray(plain.images[0]))
    assert "Face restoration: CodeFormer" in restored.infotexts[0] and restored.info["restore_faces"] is True
    with pytest.raises(RequestError) as e:
        fake_ctx.generate(GenerationRequest(**req, restore_faces=True,
                                           override_settings={"face_restoration_model": "Nope"}))
    assert e.value.field == "restore_faces"
