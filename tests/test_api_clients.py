"""Real clients against the running server (uvicorn on loopback): the unmodified ``webuiapi`` package,
concurrent ``httpx`` clients, interrupt and skip mid-run, and a full queue."""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import pytest
from PIL import Image

from tests.conftest import api_only, make_settings
from tests.live_server import LiveServer
from tests.step_gate import WAIT, step_gate
from webui.server import create_app

TINY = {"prompt": "a red circle", "negative_prompt": "", "width": 64, "height": 64, "sampler_name": "Euler a",
        "cfg_scale": 7}


def _pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_root):
    """A server on its own data folder (the tests change options)."""
    from webui.context import build_context

    ctx = build_context(make_settings(tmp_path_factory.mktemp("clients"), models_root), load_model=True)
    with LiveServer(create_app(api_only(ctx))) as srv:
        srv.ctx = ctx
        yield srv


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


class ProgressWatcher:
    """Polls ``GET /sdapi/v1/progress`` in a thread and keeps every state it saw: an observer of what clients
    see at arbitrary moments (nothing waits on it; the tests synchronise with :mod:`tests.step_gate`)."""

    def __init__(self, url: str, interval: float = 0.01):
        self.url, self.interval = url, interval
        self.states: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.wait(self.interval):
                body = client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
                self.states.append({**body["state"], "progress": body["progress"]})

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(WAIT)


def _post_in_thread(url: str, payload: dict, out: dict, key: str) -> threading.Thread:
    def run() -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            out[key] = client.post("/sdapi/v1/txt2img", json=payload)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- webuiapi (unmodified A1111 client from PyPI) ---------------------------------------------------


def test_webuiapi_client_end_to_end(server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3)

    t2i = api.txt2img(prompt="a cat", seed=11, width=64, height=64, steps=3, cfg_scale=7)
    assert t2i.image.size == (64, 64) and t2i.info["seed"] == 11 and t2i.info["all_seeds"] == [11]
    assert "Seed: 11" in t2i.info["infotexts"][0]

    init = Image.new("RGB", (64, 64), (200, 30, 30))
    i2i = api.img2img(images=[init], prompt="a red square", seed=12, width=64, height=64, steps=4,
                      denoising_strength=0.5, cfg_scale=7)
    assert i2i.image.size == (64, 64) and i2i.info["seed"] == 12
    assert "Denoising strength: 0.5" in i2i.info["infotexts"][0]

    extra = api.extra_single_image(image=init, upscaler_1="Lanczos", upscaling_resize=2)
    assert extra.image.size == (128, 128)

    info = api.png_info(t2i.image)
    assert info.parameters["Seed"] == "11" and info.info.startswith("a cat\n")

    options = api.get_options()
    assert options["CLIP_stop_at_last_layers"] == 1 and options["sd_model_checkpoint"].startswith("tiny-sd1")
    api.set_options({"CLIP_stop_at_last_layers": 2})
    assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    api.set_options({"CLIP_stop_at_last_layers": 1})

    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["tiny-sd1"]
    assert "Euler a" in [s["name"] for s in api.get_samplers()]
    assert "Lanczos" in [u["name"] for u in api.get_upscalers()]
    assert "outpainting mk2" in api.get_scripts()["img2img"]
    assert api.get_hypernetworks() == []

    # interrupt and skip with nothing running: harmless no-ops, and the next job works
    assert api.interrupt() == {} and api.skip() == {}
    again = api.txt2img(prompt="a cat", seed=11, width=64, height=64, steps=3, cfg_scale=7)
    assert again.image.tobytes() == t2i.image.tobytes() and again.info.get("interrupted") is False

    with pytest.raises(RuntimeError) as err:  # webuiapi raises on non-200; 501 with A1111's error JSON
        api.interrogate(init)
    assert err.value.args[0] == 501 and "not shipped" in err.value.args[1]


# --- concurrency ------------------------------------------------------------------------------------


def test_five_concurrent_clients_all_served_and_progress_never_mixes(server, http):
    steps = {f"task-{i}": 3 + i for i in range(5)}  # a distinct step count per job, to recognise it
    payloads = {tid: {**TINY, "seed": 1000 + i, "steps": steps[tid], "force_task_id": tid}
                for i, tid in enumerate(steps)}
    out: dict = {}
    held: list[str] = []
    with step_gate(server.ctx, step=1, holds=5, only=lambda job: job.id in steps) as gate, \
            ProgressWatcher(server.url) as watcher:
        threads = [_post_in_thread(server.url, payload, out, tid) for tid, payload in payloads.items()]
        for _ in payloads:  # one job at a time (one slot): each is held at its second step while we look
            job = gate.wait()
            held.append(job.id)
            p = http.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
            assert p["state"] == {**p["state"], "job": job.id, "job_count": 1, "job_no": 0,
                                  "sampling_steps": steps[job.id], "sampling_step": 1}, p
            assert p["progress"] == pytest.approx(1 / steps[job.id], abs=0.01), p
            gate.release(job)
        for t in threads:
            t.join(300)
    assert sorted(held) == sorted(steps)
    for tid, payload in payloads.items():
        response = out[tid]
        assert response.status_code == 200, response.text
        body = response.json()
        info = json.loads(body["info"])
        assert len(body["images"]) == 1 and info["seed"] == payload["seed"] and info["steps"] == payload["steps"]
        # the image is the one of its own seed: same pixels as the same request run alone
        alone = http.post("/sdapi/v1/txt2img", json={k: v for k, v in payload.items() if k != "force_task_id"})
        assert _pixels(alone.json()["images"][0]) == _pixels(body["images"][0]), tid

    for state in watcher.states:  # whatever a poller saw at any moment: never another job's numbers
        job = state["job"]
        assert job in steps or job == "", state
        if job:
            # job_count 1 (n_iter), steps 0 (not started) or its own count
            assert state["job_count"] == 1 and state["sampling_steps"] in (0, steps[job]), state
            assert 0 <= state["sampling_step"] <= state["sampling_steps"] and 0.0 <= state["progress"] <= 1.0


# --- interrupt and skip -----------------------------------------------------------------------------


def test_interrupt_mid_run_returns_quickly_with_the_image(server, http):
    """The job held at its second step is interrupted: it stops after exactly that step, with its image."""
    out: dict = {}
    with step_gate(server.ctx, step=1, only=lambda job: job.id == "long") as gate:
        thread = _post_in_thread(server.url, {**TINY, "seed": 5, "steps": 20, "force_task_id": "long"}, out, "long")
        job = gate.wait()  # held at its second step
        assert job.id == "long" and job.sampling_step == 1
        assert http.post("/sdapi/v1/interrupt").status_code == 200  # lets the gate go too
        thread.join(120)
    response = out["long"]
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1 and info["interrupted"] is True
    assert job.interrupted and job.sampling_step == 2  # the step it was in finished, no other one ran
    # the flag is cleared: the next request runs to the end
    nxt = http.post("/sdapi/v1/txt2img", json={**TINY, "seed": 5, "steps": 3})
    assert nxt.status_code == 200 and json.loads(nxt.json()["info"])["interrupted"] is False


def test_skip_ends_the_current_image_and_continues_with_the_next(server, http):
    payload = {**TINY, "seed": 21, "steps": 6, "n_iter": 3}
    out: dict = {}
    with step_gate(server.ctx, step=1, only=lambda job: job.id == "skip-me") as gate:  # once: in its first image
        thread = _post_in_thread(server.url, {**payload, "force_task_id": "skip-me"}, out, "skip")
        job = gate.wait()
        assert job.id == "skip-me" and job.job_no == 0
        assert http.post("/sdapi/v1/skip").status_code == 200
        thread.join(120)
    response = out["skip"]
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["all_seeds"] == [21, 22, 23] and info["interrupted"] is False
    reference = http.post("/sdapi/v1/txt2img", json=payload).json()["images"]
    # image 1 was cut short; images 2 and 3 ran in full, exactly as without the skip
    assert _pixels(body["images"][0]) != _pixels(reference[0])
    assert [_pixels(b) for b in body["images"][1:]] == [_pixels(b) for b in reference[1:]]


# --- queue full ------------------------------------------------------------------------------------


def test_full_queue_answers_503_and_the_others_succeed(tmp_path, models_root):
    from webui.context import build_context

    ctx = build_context(make_settings(tmp_path, models_root, max_queue_size=1, concurrency=1), load_model=True)
    out: dict = {}
    with LiveServer(create_app(api_only(ctx))) as srv, step_gate(ctx, step=1) as gate, \
            httpx.Client(base_url=srv.url, timeout=120) as http:
        first = _post_in_thread(srv.url, {**TINY, "seed": 1, "steps": 4, "force_task_id": "running"}, out, "a")
        assert gate.wait().id == "running"  # held: it keeps the only slot until the gate opens
        second = _post_in_thread(srv.url, {**TINY, "seed": 2, "steps": 3, "force_task_id": "waiting"}, out, "b")
        assert ctx.jobs.wait_for(lambda waiting, running: [j.id for j in waiting] == ["waiting"], WAIT)
        # answered at once, not queued: a queued request would wait for the held job (the client gives up first)
        third = http.post("/sdapi/v1/txt2img", json={**TINY, "seed": 3, "steps": 3}, timeout=20)
        assert third.status_code == 503
        body = third.json()
        assert set(body) == {"error", "detail", "body", "errors"} and "queue is full" in body["detail"]
        assert ctx.jobs.current() is not None and ctx.jobs.current().id == "running"  # still running
        gate.open()
        first.join(120)
        second.join(120)
        assert out["a"].status_code == 200 and out["b"].status_code == 200
        assert json.loads(out["a"].json()["info"])["interrupted"] is False
        assert http.post("/sdapi/v1/txt2img", json={**TINY, "seed": 3, "steps": 3}).status_code == 200
