"""A new user's first run with their own checkpoint (``--ckpt`` outside ``models/``): listed and selectable,
honest start-up lines, generations that wait for the loading model, the hash computed once, A1111's flags."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import api_only, make_settings
from tests.step_gate import WAIT, OutputLines
from webui.context import build_context
from webui.models.manager import ModelStillLoading
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components
from webui.pipeline.request import GenerationRequest
from webui.server import create_app

SMALL = dict(prompt="a cat", steps=2, width=64, height=64, seed=5, save_images=False)


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """A checkpoint on "another disk" and a models folder with a different one."""
    other_disk = tmp_path_factory.mktemp("other-disk")
    mine = save_single_file(build_tiny_components("sd1", seed=11), other_disk / "my-model.safetensors")
    models = tmp_path_factory.mktemp("models-root")
    save_single_file(build_tiny_components("sd1", seed=12), models / "Stable-diffusion" / "in-folder.safetensors")
    return mine, models


def _ctx(tmp_path, models, **kw):
    return build_context(make_settings(tmp_path, models, **kw), load_model=False)


def test_ckpt_file_is_listed_selectable_and_survives_refresh(elsewhere, tmp_path):
    mine, models = elsewhere
    ctx = _ctx(tmp_path, models, ckpt=mine)
    model = ctx.load_initial_model()
    assert model.info.path == mine and model.title == f"my-model.safetensors [{model.short_hash}]"
    assert ctx.options.current["sd_model_checkpoint"] == model.title  # the selected checkpoint, as in A1111

    client = TestClient(create_app(api_only(ctx)))
    listed = {m["title"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    assert model.title in listed and listed[model.title]["filename"] == str(mine)
    assert listed[model.title]["hash"] == model.short_hash and listed[model.title]["model_name"] == "my-model"
    assert any(t.startswith("in-folder.safetensors") for t in listed)

    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert model.title in {m["title"] for m in client.get("/sdapi/v1/sd-models").json()}
    other = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {
        "sd_model_checkpoint": "in-folder.safetensors"}, "override_settings_restore_afterwards": True})
    assert other.status_code == 200 and "Model: in-folder" in other.json()["info"]
    back = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": model.title}})
    assert back.status_code == 200 and "Model: my-model" in back.json()["info"]
    assert ctx.models.current.info.path == mine


def test_shapes_warning_only_when_the_shapes_model_loads(elsewhere, tmp_path, caplog):
    from webui.main import _load_first_model
    from webui.models.default import HOW_TO_ADD

    mine, _ = elsewhere
    empty = tmp_path / "empty-models"
    log = logging.getLogger("webui")
    with caplog.at_level(logging.INFO, logger="webui"):
        _load_first_model(_ctx(tmp_path / "a", empty, ckpt=mine), log)
    assert HOW_TO_ADD not in caplog.text
    assert "Model ready: my-model.safetensors [" in caplog.text and "(SD 1.x) in " in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="webui"):
        _load_first_model(_ctx(tmp_path / "b", empty), log)
    assert HOW_TO_ADD in caplog.text and "Model ready: shapes-128.safetensors" in caplog.text


def _held_loads(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Checkpoint loads that start, then wait until the test lets them go: ``(started, release)``."""
    import webui.models.loader as loader

    original = loader.load_components
    started, release = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        started.set()
        assert release.wait(WAIT), "the test never let the load go on"
        return original(*args, **kwargs)

    monkeypatch.setattr(loader, "load_components", held)
    return started, release


def test_a_generation_sent_during_the_load_waits_and_succeeds(elsewhere, tmp_path, monkeypatch):
    mine, models = elsewhere
    ctx = _ctx(tmp_path, models, ckpt=mine)
    started, release = _held_loads(monkeypatch)
    waiting = threading.Event()
    wait_while_loading = ctx.models.wait_while_loading

    def noted(timeout):
        waiting.set()
        return wait_while_loading(timeout)

    monkeypatch.setattr(ctx.models, "wait_while_loading", noted)
    loader = threading.Thread(target=ctx.load_initial_model)
    loader.start()
    assert started.wait(WAIT)
    assert ctx.models.loading is not None and ctx.models.current is None  # the load is under way
    box = {}
    generation = threading.Thread(target=lambda: box.update(result=ctx.generate(GenerationRequest(**SMALL))))
    generation.start()
    assert waiting.wait(WAIT)  # the generation is waiting for the model (the load is still held)
    assert "result" not in box and ctx.models.current is None
    release.set()
    loader.join(WAIT)
    generation.join(WAIT)
    assert "Model: my-model" in box["result"].infotexts[0]


def test_a_generation_waits_at_most_model_wait_then_503_with_retry_after(elsewhere, tmp_path, monkeypatch):
    mine, models = elsewhere
    ctx = _ctx(tmp_path, models, ckpt=mine, model_wait=0.2)
    started, release = _held_loads(monkeypatch)
    loader = threading.Thread(target=ctx.load_initial_model)
    loader.start()
    assert started.wait(WAIT)
    try:  # the load is held for as long as this takes: only --model-wait can end the waits
        with pytest.raises(ModelStillLoading):
            ctx.generate(GenerationRequest(**SMALL))
        r = TestClient(create_app(api_only(ctx))).post("/sdapi/v1/txt2img", json=SMALL)
        assert r.status_code == 503 and r.headers["Retry-After"] == "10"
        assert "my-model.safetensors is still loading" in r.json()["detail"]
    finally:
        release.set()
        loader.join(WAIT)
    assert TestClient(create_app(api_only(ctx))).post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


def test_the_hash_is_computed_once_and_read_from_the_cache_at_the_next_start(elsewhere, tmp_path, monkeypatch):
    import webui.models.manager as manager

    mine, models = elsewhere
    calls = []
    original = manager._sha256_path
    monkeypatch.setattr(manager, "_sha256_path", lambda path: calls.append(path) or original(path))
    first = _ctx(tmp_path, models, ckpt=mine).load_initial_model()
    assert calls == [mine]
    second = _ctx(tmp_path, models, ckpt=mine).load_initial_model()  # a new start, same data folder
    assert calls == [mine] and second.sha256 == first.sha256


def test_a1111_start_script_flags_start_the_server(elsewhere, tmp_path):
    """``--use-cpu all --xformers --opt-sdp-attention --no-download-sd-model --skip-torch-cuda-test --ckpt``:
    the server starts, says where it listens, then that the model is ready, with no shapes-model note."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.live_server import free_port
    from webui.models.default import HOW_TO_ADD

    mine, _ = elsewhere
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "webui", "--nowebui", "--port", str(port),
                             "--data-dir", str(tmp_path), "--models-dir", str(tmp_path / "empty"),
                             "--disable-extensions", "--use-cpu", "all",
                             "--xformers", "--opt-sdp-attention", "--no-download-sd-model", "--skip-torch-cuda-test",
                             "--ckpt", str(mine)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = OutputLines(proc)
    try:
        output.wait_for("Running on local URL", timeout=120)
        # the model may still be loading: the generation waits for it (--model-wait)
        answer = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json=SMALL, timeout=120)
        assert answer.status_code == 200, answer.text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    out = output.join()
    assert "Traceback" not in out and HOW_TO_ADD not in out
    listening, ready = out.find("Listening after"), out.find("Model ready: my-model.safetensors [")
    assert 0 <= listening and 0 <= ready and out.find("Loaded my-model") < ready, out
    assert "--xformers has no effect here" in out


def test_use_cpu_takes_a1111s_module_names():
    from webui.settings import parse_args

    assert parse_args(["--use-cpu", "all"]).use_cpu and parse_args(["--use-cpu", "sd"]).use_cpu
    assert parse_args(["--use-cpu"]).use_cpu and not parse_args([]).use_cpu
    only_other = parse_args(["--use-cpu", "interrogate", "gfpgan"])
    assert not only_other.use_cpu and any("--use-cpu interrogate gfpgan" in n for n in only_other.flag_notes)


def test_generate_buttons_say_the_model_is_loading(elsewhere, tmp_path, monkeypatch):
    from webui.ui.app import LOADING_LABEL, loading_state

    mine, models = elsewhere
    ctx = _ctx(tmp_path, models, ckpt=mine)
    started, release = _held_loads(monkeypatch)
    loader = threading.Thread(target=ctx.load_initial_model)
    loader.start()
    assert started.wait(WAIT)
    *buttons, timer = loading_state(ctx, 2)
    release.set()
    loader.join(WAIT)
    assert [(b["value"], b["interactive"]) for b in buttons] == [(LOADING_LABEL, False)] * 2 and timer.active
    *buttons, timer = loading_state(ctx, 2)
    assert [(b["value"], b["interactive"]) for b in buttons] == [("Generate", True)] * 2 and not timer.active


def test_hashing_runs_beside_the_load_not_before_it(elsewhere, tmp_path, monkeypatch):
    """The hash waits for the load to have started: done one after the other, it would wait in vain."""
    import webui.models.loader as loader
    import webui.models.manager as manager

    mine, models = elsewhere
    load_started, seen = threading.Event(), []
    original_hash, original_load = manager._sha256_path, loader.load_components

    def hash_after_the_load_started(path):
        seen.append(load_started.wait(WAIT))
        return original_hash(path)

    def load(*args, **kwargs):
        load_started.set()
        return original_load(*args, **kwargs)

    monkeypatch.setattr(manager, "_sha256_path", hash_after_the_load_started)
    monkeypatch.setattr(loader, "load_components", load)
    model = _ctx(tmp_path, models, ckpt=mine).load_initial_model()
    assert seen == [True] and len(model.sha256) == 64


def test_sd_models_give_the_family_and_sd_modules_list_vae_and_text_encoder_files(elsewhere, tmp_path):
    """``family`` read from each file's header (no load); Forge's ``/sd-modules``: VAE files then the files in
    ``models/text_encoder``, each with its absolute path."""
    from safetensors.torch import save_file

    mine, _ = elsewhere
    models = tmp_path / "models"
    save_single_file(build_tiny_components("sdxl", seed=1), models / "Stable-diffusion" / "xl.safetensors")
    (models / "VAE").mkdir()
    save_file({"decoder.conv_in.weight": torch.zeros(1)}, models / "VAE" / "my-vae.safetensors")
    (models / "text_encoder").mkdir()
    save_file({"x": torch.zeros(1)}, models / "text_encoder" / "clip_l.safetensors")
    ctx = _ctx(tmp_path / "data", models, ckpt=mine)
    client = TestClient(create_app(api_only(ctx)))
    families = {m["model_name"]: m["family"] for m in client.get("/sdapi/v1/sd-models").json()}
    assert families == {"my-model": "sd1", "xl": "sdxl"}
    assert ctx.models.current is None  # nothing was loaded to tell
    assert client.get("/sdapi/v1/sd-modules").json() == [
        {"model_name": "my-vae.safetensors", "filename": str((models / "VAE" / "my-vae.safetensors").resolve())},
        {"model_name": "clip_l.safetensors",
         "filename": str((models / "text_encoder" / "clip_l.safetensors").resolve())}]
