"""Extras (A1111 postprocessing): sizes, crop, two upscalers, face restorers with visibility, infotext kept,
the API routes, "Restore faces" in generation.

The upscalers and restorers are the real architectures with random weights (tests/conftest.py: Real-ESRGAN's
RRDBNet files, GFPGAN v1.4 and CodeFormer with facexlib's detector and parser), loaded once for the session.
Expected pictures come from the networks run directly (``run_network``) and from A1111's rules restated: an
upscaler runs until the picture is at least the target, then Lanczos fits it (``Upscaler.upscale``); a second
upscaler and the restorers' visibilities are ``Image.blend(before, after, visibility)``
(``postprocessing_upscale.py``, ``postprocessing_gfpgan.py`` / ``_codeformer.py``); "Restore faces" runs on the
decoded picture (``process_images_inner``).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import UPSCALER_FILES, api_only, force_one_face, make_settings, rrdb, run_network
from tests.test_img2img import b64
from webui.context import build_context
from webui.errors import RequestError
from webui.extras import ExtrasRequest
from webui.hookspecs import hookimpl
from webui.pipeline.request import GenerationRequest
from webui.plugins import make_plugin_manager
from webui.restoration.faces import FACE_TEMPLATE
from webui.restoration.registry import FaceRestorerDef
from webui.server import create_app


def noisy(w=40, h=30, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def network(stem: str):
    """The network of the session's upscaler file ``stem`` (rebuilt from its seed)."""
    return rrdb(**UPSCALER_FILES[f"RealESRGAN/{stem}.pth"])


def diff(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


class RecordingRestorers:
    """Registers the session's real restorers, each wrapped to record (name, input, opts, output) of every call.

    A call with the very same picture and weight as an earlier one is answered with that call's output (the
    networks are deterministic): the Extras visibility test reuses the face "Restore faces" restored in
    generation instead of running the 512 px network a second time."""

    def __init__(self, restorers):
        self.restorers = restorers
        self.calls: list[tuple[str, Image.Image, dict, Image.Image]] = []
        self._outputs: dict[tuple, Image.Image] = {}

    @hookimpl
    def register_face_restorers(self, settings):
        def recording(d: FaceRestorerDef):
            def restore(image, opts):
                key = (d.name, image.mode, image.size, image.tobytes(), opts.get("code_former_weight"))
                out = self._outputs.get(key)
                if out is None:
                    out = self._outputs[key] = d.restore(image, opts)
                self.calls.append((d.name, image.copy(), dict(opts), out.copy()))
                return out
            return FaceRestorerDef(d.name, restore, d.model_path)

        return [recording(d) for d in self.restorers.values()]


@pytest.fixture(scope="module")
def extras_ctx(tmp_path_factory, models_root, upscaler_models, face_restorers):
    root = tmp_path_factory.mktemp("extras-models")
    for folder in (models_root / "Stable-diffusion", upscaler_models / "RealESRGAN"):
        (root / folder.name).symlink_to(folder, target_is_directory=True)
    plugins = make_plugin_manager(disable_extensions=True, disabled_builtins=("face_restorers",))
    recorder = RecordingRestorers(face_restorers)
    plugins.register(recorder, "recording-restorers")
    ctx = build_context(make_settings(tmp_path_factory.mktemp("extras"), root), plugins=plugins, load_model=True)
    ctx.recorder = recorder
    return ctx


# The face "Restore faces" finds in a 64x64 generated picture: the aligned template at 1/16 scale around (32, 32),
# so crop pixel (256 + 128 i, 256 + 128 j) of the 512 px aligned face shows picture pixel (32 + 8 i, 32 + 8 j).
FACE_LANDMARKS_64 = (FACE_TEMPLATE - 256.0) / 16.0 + 32.0
GEN = dict(prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler", save_images=False)


@pytest.fixture(scope="module")
def face_generation(extras_ctx):
    """A generation without and one with "Restore faces" (GFPGAN) on a picture where RetinaFace reports one face
    (FACE_LANDMARKS_64); the GFPGAN network's inputs and the restorer's calls are recorded."""
    from spandrel.architectures.GFPGAN import GFPGAN

    calls = extras_ctx.recorder.calls
    inputs: list[torch.Tensor] = []
    real_forward = GFPGAN.forward

    def forward(self, x, *a, **kw):
        inputs.append(x.detach().clone())
        return real_forward(self, x, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GFPGAN, "forward", forward)
        seen = force_one_face(mp, FACE_LANDMARKS_64, 64)
        plain = extras_ctx.generate(GenerationRequest(**GEN))
        calls.clear()
        restored = extras_ctx.generate(GenerationRequest(**GEN, restore_faces=True,
                                                         override_settings={"face_restoration_model": "GFPGAN"}))
        return dict(plain=plain, restored=restored, calls=list(calls), inputs=inputs, detector_saw=seen)


def _changed_only_near_the_middle(before: Image.Image, after: Image.Image) -> None:
    a, b = np.asarray(before, dtype=int), np.asarray(after, dtype=int)
    assert np.abs(a[26:38, 26:38] - b[26:38, 26:38]).mean() > 1.0, "the face was not restored"
    outside = np.ones(a.shape[:2], dtype=bool)
    outside[12:52, 12:52] = False  # the 32 px aligned crop around (32, 32) and its blurred border
    assert np.array_equal(a[outside], b[outside]), "pixels far from the face changed"


def test_scale_by_and_to_size_with_and_without_crop(extras_ctx):
    img = noisy(40, 30)
    # scale 3 with a x4 network: one pass (160x120 covers 120x90), then Lanczos down to the exact size
    out, info = extras_ctx.extras(img, ExtrasRequest(upscaler_1="RealESRGAN_x4plus", upscaling_resize=3))
    expected = run_network(network("RealESRGAN_x4plus"), img).resize((120, 90), Image.Resampling.LANCZOS)
    assert out.size == (120, 90) and diff(out, expected) <= 1
    assert info["Postprocess upscale by"] == 3 and info["Postprocess upscaler"] == "RealESRGAN_x4plus"
    out, info = extras_ctx.extras(img, ExtrasRequest(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                                     upscaling_crop=True, upscaler_1="Lanczos"))
    assert out.size == (100, 100) and info["Postprocess crop to"] == "100x100"
    out, _ = extras_ctx.extras(img, ExtrasRequest(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                                                  upscaling_crop=False, upscaler_1="Lanczos"))
    assert out.size == (133, 100)  # scaled to cover, aspect kept, not cropped


def test_the_network_output_is_used_and_a_second_upscaler_blends(extras_ctx):
    img = noisy(20, 20, seed=2)
    out, _ = extras_ctx.extras(img, ExtrasRequest(upscaler_1="RealESRGAN_x2plus", upscaling_resize=2))
    direct = run_network(network("RealESRGAN_x2plus"), img)  # exactly 2x: no resize after the network
    assert out.size == (40, 40) and diff(out, direct) <= 1
    half, info = extras_ctx.extras(img, ExtrasRequest(upscaler_1="RealESRGAN_x2plus", upscaler_2="Lanczos",
                                                      extras_upscaler_2_visibility=0.5, upscaling_resize=2))
    expected = Image.blend(direct, img.resize((40, 40), Image.Resampling.LANCZOS), 0.5)
    assert diff(half, expected) <= 1
    assert info["Postprocess upscaler 2"] == "Lanczos" and info["Postprocess upscaler 2 visibility"] == 0.5


def test_face_restoration_visibility_and_codeformer_weight(extras_ctx, face_generation, monkeypatch, no_downloads):
    calls = extras_ctx.recorder.calls
    calls.clear()
    img = face_generation["plain"].images[0]  # its face was restored in generation: the same output comes back
    half, info = extras_ctx.extras(img, ExtrasRequest(upscaling_resize=1, gfpgan_visibility=0.5))
    [(name, given, _, restored)] = calls
    assert name == "GFPGAN" and np.array_equal(np.asarray(given), np.asarray(img))
    _changed_only_near_the_middle(img, restored)
    assert diff(half, Image.blend(img, restored, 0.5)) <= 1 and info["GFPGAN visibility"] == 0.5
    # CodeFormer gets the weight; the detector finds no face this time, so the picture comes back as it was (and
    # the CodeFormer network is never loaded)
    from facexlib.detection.retinaface import RetinaFace

    monkeypatch.setattr(RetinaFace, "detect_faces", lambda self, image, *a, **kw: np.zeros((0, 15), np.float32))
    calls.clear()
    same, info = extras_ctx.extras(img, ExtrasRequest(upscaling_resize=1, codeformer_visibility=1.0,
                                                      codeformer_weight=0.3))
    [(name, _, opts, _)] = calls
    assert name == "CodeFormer" and opts["code_former_weight"] == 0.3 and info["CodeFormer weight"] == 0.3
    assert np.array_equal(np.asarray(same), np.asarray(img))


@pytest.mark.parametrize("field,kw", [("upscaler_1", dict(upscaler_1="Nope")),
                                      ("upscaling_resize", dict(upscaling_resize=0)),
                                      ("gfpgan_visibility", dict(gfpgan_visibility=1.5)),
                                      ("upscaling_resize", dict(upscaling_resize=16, upscaler_1="Lanczos"))])
def test_bad_extras_name_the_field(extras_ctx, field, kw):
    with pytest.raises(RequestError) as e:
        extras_ctx.extras(Image.new("RGB", (1024, 1024)), ExtrasRequest(**kw))
    assert e.value.field == field


def test_api_single_and_batch_keep_the_original_infotext(extras_ctx):
    client = TestClient(create_app(api_only(extras_ctx)))
    src = noisy(32, 32)
    buf = io.BytesIO()
    from webui.image_metadata import pnginfo_for

    src.save(buf, format="PNG", pnginfo=pnginfo_for("a cat\nSteps: 5, Seed: 1, Size: 32x32"))
    data = base64.b64encode(buf.getvalue()).decode()
    r = client.post("/sdapi/v1/extra-single-image", json={"image": "data:image/png;base64," + data,
                                                          "upscaler_1": "RealESRGAN_x2plus", "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["image"])))
    assert out.size == (64, 64) and out.info["parameters"].startswith("a cat\nSteps: 5")
    assert diff(out.convert("RGB"), run_network(network("RealESRGAN_x2plus"), src)) <= 1
    assert out.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: RealESRGAN_x2plus"
    assert "Postprocess upscaler: RealESRGAN_x2plus" in r.json()["html_info"]
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
    assert [f["name"] for f in client.get("/sdapi/v1/face-restorers").json()] == ["GFPGAN", "CodeFormer"]
    assert sorted(m["name"] for m in client.get("/sdapi/v1/realesrgan-models").json()) == [
        "RealESRGAN_x2plus", "RealESRGAN_x4plus", "realesr-general-x4v3"]


def test_restore_faces_in_generation(extras_ctx, face_generation):
    plain, restored = face_generation["plain"].images[0], face_generation["restored"]
    [(name, given, _, out)] = face_generation["calls"]
    # the decoded picture goes to the restorer, and what it gives back is the result
    assert name == "GFPGAN" and np.array_equal(np.asarray(given), np.asarray(plain))
    assert np.array_equal(np.asarray(restored.images[0]), np.asarray(out))
    assert restored.images[0].mode == "RGB"
    _changed_only_near_the_middle(plain, restored.images[0])
    assert "Face restoration: GFPGAN" in restored.infotexts[0] and restored.info["restore_faces"] is True
    # the real GFPGAN network ran once, on the face aligned on the 512 px template: detection on the picture scaled
    # to short side 640; crop pixel (256 + 128 i, 256 + 128 j) is picture pixel (32 + 8 i, 32 + 8 j)
    assert face_generation["detector_saw"] == [(640, 640, 3)]
    [crop] = face_generation["inputs"]
    assert tuple(crop.shape) == (1, 3, 512, 512) and float(crop.min()) >= -1.0 and float(crop.max()) <= 1.0
    crop_px = ((crop[0].permute(1, 2, 0) + 1.0) * 127.5).round().to(torch.int64).numpy()
    picture = np.asarray(plain).astype(np.int64)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            assert np.abs(crop_px[256 + 128 * j, 256 + 128 * i] - picture[32 + 8 * j, 32 + 8 * i]).max() <= 2, (i, j)
    with pytest.raises(RequestError) as e:
        extras_ctx.generate(GenerationRequest(**GEN, restore_faces=True,
                                              override_settings={"face_restoration_model": "Nope"}))
    assert e.value.field == "restore_faces"
