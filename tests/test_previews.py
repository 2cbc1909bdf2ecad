"""Live previews: the approximations, the TAESD decoder, when previews are made, and where they show."""

from __future__ import annotations

import base64
import io
import logging
import threading

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_settings
from tests.step_gate import step_gate
from webui.jobs import Job
from webui.pipeline.request import GenerationRequest
from webui.previews import PreviewRenderer, preview_due, preview_method
from webui.previews.approx import LATENT_RGB, approx_image, approx_pixels
from webui.previews.taesd import TAESDMissing, build_decoder, find_decoder_file, load_decoder

SMALL = dict(prompt="a red circle", width=64, height=64, seed=3, sampler_name="Euler", save_images=False)


class RecordingJob(Job):
    """A job that records the (0-based) sampling step at which each preview was stored."""

    def __setattr__(self, name, value):
        if name == "current_image" and value is not None:
            self.__dict__.setdefault("preview_steps", []).append(self.sampling_step)
        super().__setattr__(name, value)

    @property
    def previews(self) -> list[int]:
        return self.__dict__.get("preview_steps", [])


def _run(ctx, steps: int, **opts) -> RecordingJob:
    job = RecordingJob()
    ctx.generate(GenerationRequest(**SMALL, steps=steps, override_settings=opts), job)
    return job


def _random_decoder(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    dec = build_decoder()
    for p in dec.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return dec.eval()


# --- approximation -------------------------------------------------------------------------------


def test_approx_is_the_published_linear_map():
    latent = torch.tensor([[[0.5, -1.0]], [[1.0, 0.25]], [[-0.5, 2.0]], [[0.0, -0.75]]]).unsqueeze(0)  # [1,4,1,2]
    for family in ("sd1", "sdxl"):
        factors, bias = LATENT_RGB[family]
        img = np.asarray(approx_image(latent, family, scale=1), dtype=np.int32)
        assert img.shape == (1, 2, 3)
        for x in range(2):
            for c in range(3):
                v = sum(float(latent[0, k, 0, x]) * factors[k][c] for k in range(4)) + bias[c]
                expected = round(min(max(v * 0.5 + 0.5, 0.0), 1.0) * 255)
                assert abs(int(img[0, x, c]) - expected) <= 1, (family, x, c)
    assert LATENT_RGB["sd1"][0][0] == (0.298, 0.207, 0.208)  # A1111's "Approx cheap" coefficients
    assert LATENT_RGB["sdxl"][0][0] == (0.3448, 0.4168, 0.4395)
    assert LATENT_RGB["sd2"] == LATENT_RGB["sd1"]


def test_approx_preview_has_the_image_size():
    latent = torch.randn(2, 4, 12, 10)
    image = approx_image(latent, "sd1")
    assert image.size == (80, 96) and image.mode == "RGB"
    assert approx_pixels(latent, "sdxl").shape == (2, 3, 12, 10)


def test_preview_options():
    assert preview_due({"show_progress_every_n_steps": 2}, 1) and not preview_due({"show_progress_every_n_steps": 2}, 0)
    assert not preview_due({"show_progress_every_n_steps": 0}, 0)
    assert not preview_due({"show_progress_every_n_steps": 1, "live_previews_enable": False}, 0)
    assert preview_method({"show_progress_type": "Approx NN"}) == "Approx cheap"
    assert preview_method({"show_progress_type": "TAESD"}) == "TAESD"
    assert preview_method({}) == "Approx cheap"


# --- TAESD -----------------------------------------------------------------------------------------


def test_taesd_decoder_has_the_official_layout():
    keys = set(build_decoder().state_dict())
    assert {"1.weight", "1.bias", "3.conv.0.weight", "3.conv.4.bias", "7.weight", "19.weight", "19.bias"} <= keys
    assert "7.bias" not in keys and not any(k.startswith(("0.", "2.", "6.")) for k in keys)
    assert not any("skip" in k for k in keys)  # 64 -> 64 blocks skip through Identity
    assert len(keys) == 1 + 1 + 10 * 6 + 3 + 2  # stem conv, 10 blocks x 3 convs (w+b), 3 upsample convs, out


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_taesd_loads_official_files_strictly(tmp_path, ext):
    from safetensors.torch import save_file

    folder = tmp_path / "models" / "VAE-approx"
    folder.mkdir(parents=True)
    dec = _random_decoder()
    path = folder / f"taesd_decoder.{ext}"
    state = {k: v.contiguous() for k, v in dec.state_dict().items()}
    save_file(state, path) if ext == "safetensors" else torch.save(state, path)
    assert find_decoder_file(folder, "sd2") == path
    loaded = load_decoder(path)  # strict=True inside
    latent = torch.randn(1, 4, 8, 6)
    with torch.no_grad():
        expected = dec(latent).clamp(0, 1)
        assert torch.equal(loaded(latent).clamp(0, 1), expected)
    image = PreviewRenderer(folder).render("TAESD", latent)
    assert image.size == (48, 64)
    ref = (expected[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(image), ref)
    with pytest.raises(TAESDMissing, match="taesdxl_decoder"):
        find_decoder_file(folder, "sdxl")


def test_taesd_missing_file_falls_back_and_logs_once(tmp_path, caplog):
    folder = tmp_path / "VAE-approx"
    renderer = PreviewRenderer(folder)
    latent = torch.randn(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING, logger="webui.previews"):
        image = renderer.render("TAESD", latent, job_id="job-1")
        renderer.render("TAESD", latent, job_id="job-1")
    assert np.array_equal(np.asarray(image), np.asarray(approx_image(latent, "sd1")))
    messages = [r.getMessage() for r in caplog.records if "taesd_decoder" in r.getMessage()]
    assert len(messages) == 1
    assert str(folder) in messages[0] and "Approx cheap" in messages[0]


def test_taesd_in_a_generation_from_the_models_folder(ctx, models_root):
    from safetensors.torch import save_file

    folder = ctx.settings.model_dir("VAE-approx")
    assert folder == models_root / "VAE-approx"
    folder.mkdir(exist_ok=True)
    path = folder / "taesd_decoder.safetensors"
    try:
        save_file({k: v.contiguous() for k, v in _random_decoder(1).state_dict().items()}, path)
        seen = []
        orig = PreviewRenderer.render

        def spy(self, method, latent, *a, **kw):
            seen.append(method)
            return orig(self, method, latent, *a, **kw)

        PreviewRenderer.render = spy
        try:
            job = _run(ctx, 2, show_progress_every_n_steps=1, show_progress_type="TAESD")
        finally:
            PreviewRenderer.render = orig
        assert seen == ["TAESD", "TAESD"] and job.current_image.size == (64, 64)
    finally:
        path.unlink()


# --- when previews are made ------------------------------------------------------------------------


def test_previews_appear_exactly_every_n_steps(ctx):
    job = _run(ctx, 6, show_progress_every_n_steps=2)
    assert job.previews == [1, 3, 5]  # after 2, 4 and 6 finished steps
    assert job.current_image.size == (64, 64)
    assert _run(ctx, 7, show_progress_every_n_steps=3).previews == [2, 5]
    assert _run(ctx, 3, show_progress_every_n_steps=1, show_progress_type="Approx NN").previews == [0, 1, 2]


@pytest.mark.parametrize("opts", [{"show_progress_every_n_steps": 0},
                                  {"show_progress_every_n_steps": 1, "live_previews_enable": False}])
def test_no_preview_work_when_off(ctx, monkeypatch, opts):
    import webui.previews as previews

    calls = []
    monkeypatch.setattr(previews, "approx_image", lambda *a, **kw: calls.append("approx"))
    monkeypatch.setattr(PreviewRenderer, "render", lambda *a, **kw: calls.append("render"))
    job = _run(ctx, 4, **opts)
    assert calls == [] and job.current_image is None and job.previews == []


def test_full_preview_uses_the_vae(ctx, monkeypatch):
    import webui.pipeline.vae as vae

    decoded = []
    orig = vae.decode_to_pixels

    def spy(model, latents, tiled=False):
        decoded.append(tuple(latents.shape))
        return orig(model, latents, tiled)

    import webui.pipeline.generate as generate

    monkeypatch.setattr(vae, "decode_to_pixels", spy)  # the previews' decode
    monkeypatch.setattr(generate, "decode_to_pixels", spy)  # the final decode
    job = RecordingJob()
    result = ctx.generate(GenerationRequest(**{**SMALL, "batch_size": 2}, steps=4,
                                           override_settings={"show_progress_every_n_steps": 2,
                                                              "show_progress_type": "Full"}), job)
    assert decoded == [(1, 4, 8, 8), (1, 4, 8, 8), (2, 4, 8, 8)]  # two previews (first image), then the batch
    # Euler's last step lands on its denoised prediction: the last full preview is the final first image
    diff = np.abs(np.asarray(job.current_image, np.int16) - np.asarray(result.images[0], np.int16))
    assert diff.max() <= 2


def test_a_failing_preview_never_stops_the_generation(ctx, monkeypatch, caplog):
    def boom(*a, **kw):
        raise RuntimeError("preview exploded")

    monkeypatch.setattr(PreviewRenderer, "render", boom)
    with caplog.at_level(logging.WARNING, logger="webui.builtin.previews"):
        result = ctx.generate(GenerationRequest(**SMALL, steps=2, override_settings={"show_progress_every_n_steps": 1}))
    assert len(result.images) == 1 and "preview exploded" in caplog.text


# --- where previews show: /sdapi/v1/progress and the UI -------------------------------------------


@pytest.fixture(scope="module")
def preview_server(tmp_path_factory, models_root):
    """A live server with previews at every step; the tests hold its jobs with a StepGate (``srv.ctx``)."""
    from tests.live_server import LiveServer
    from webui.context import build_context
    from webui.server import create_app

    app_ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models_root), load_model=True)
    app_ctx.options.update({"show_progress_every_n_steps": 1})
    with LiveServer(create_app(app_ctx)) as srv:
        srv.ctx = app_ctx
        yield srv


def test_progress_route_returns_the_current_image(preview_server):
    body = {**SMALL, "steps": 4}
    out: dict = {}
    with step_gate(preview_server.ctx, step=2) as gate:  # held after its third step's preview
        worker = threading.Thread(target=lambda: out.update(r=httpx.post(preview_server.url + "/sdapi/v1/txt2img",
                                                                          json=body, timeout=60)))
        worker.start()
        job = gate.wait()
        current = httpx.get(preview_server.url + "/sdapi/v1/progress", timeout=10).json()
        skipped = httpx.get(preview_server.url + "/sdapi/v1/progress?skip_current_image=true", timeout=10).json()
        held_preview = job.current_image.convert("RGB").tobytes()
        gate.open()
        worker.join(60)
    assert out["r"].status_code == 200
    assert current["state"]["job"] == job.id and current["state"]["sampling_step"] == 2
    assert current["current_image"], "no current_image while the job ran"
    shown = Image.open(io.BytesIO(base64.b64decode(current["current_image"])))
    assert shown.size == (64, 64)
    assert shown.convert("RGB").tobytes() == held_preview  # the job's preview of that step
    assert skipped["state"]["sampling_step"] == 2 and skipped["current_image"] is None


def test_ui_streams_previews_then_the_final_result(preview_server):
    from gradio_client import Client

    client = Client(preview_server.url, verbose=False)
    with step_gate(preview_server.ctx, step=2) as gate:  # the job waits at its third step until a preview came
        job = client.submit(prompt="streamed", steps=6, sampler_name="Euler", width=64, height=64, seed=9,
                            api_name="/txt2img")
        gate.wait()
        first = next(job)  # gradio_client's own wait for the next streamed output
        gate.open()
        gallery, info = job.result(timeout=60)
    assert len(gallery) == 1 and "Steps: 6" in info and "Seed: 9" in info
    p_gallery, p_text = first
    assert len(p_gallery) == 1 and p_gallery[0]["caption"] == "Preview" and "step" in p_text
    assert Image.open(p_gallery[0]["image"]).size == (64, 64)
    # predict (the keyword API) still returns the final output
    gallery, info = client.predict(prompt="final", steps=2, sampler_name="Euler", width=64, height=64, seed=1,
                                   api_name="/txt2img")
    assert len(gallery) == 1 and "Seed: 1" in info
