"""Recovery: a failing pipeline fails only its job; out-of-memory is reported and memory freed; the next
request works; an interrupt from one UI session leaves another session's job alone."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import api_only
from tests.step_gate import HELD, OutputLines, gate_extension, step_gate
from webui.jobs import Job
from webui.pipeline.request import GenerationRequest
from webui.server import create_app

BODY = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}


@pytest.fixture
def broken_unet(fresh_ctx, monkeypatch):
    unet = fresh_ctx.models.current.components.unet
    real = unet.forward
    state = {"error": None}

    def forward(*a, **kw):
        if state["error"] is not None:
            raise state["error"]
        return real(*a, **kw)

    monkeypatch.setattr(unet, "forward", forward)
    return state


def test_pipeline_exception_fails_only_that_job(fresh_ctx, broken_unet):
    client = TestClient(create_app(api_only(fresh_ctx)), raise_server_exceptions=False)
    broken_unet["error"] = RuntimeError("simulated kernel failure")
    r = client.post("/sdapi/v1/txt2img", json=BODY)
    assert r.status_code == 500 and "simulated kernel failure" in r.text and r.json()["error"]
    broken_unet["error"] = None
    assert client.post("/sdapi/v1/txt2img", json=BODY).status_code == 200


def test_out_of_memory_is_reported_memory_freed_and_next_request_works(fresh_ctx, broken_unet, monkeypatch):
    import webui.context as context

    freed = []
    monkeypatch.setattr(context, "free_memory", lambda: freed.append(1))
    client = TestClient(create_app(api_only(fresh_ctx)), raise_server_exceptions=False)
    broken_unet["error"] = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    r = client.post("/sdapi/v1/txt2img", json=BODY)
    assert r.status_code == 507 and "out of memory" in r.text and freed
    broken_unet["error"] = None
    assert client.post("/sdapi/v1/txt2img", json=BODY).status_code == 200
    assert fresh_ctx.jobs.running() == []  # the failed job released its slot


def test_interrupt_from_one_session_does_not_stop_another(fresh_ctx):
    """Two UI sessions (owners): B's interrupt must not touch A's running job."""
    slow = GenerationRequest(prompt="x", steps=6, width=64, height=64, seed=2, sampler_name="Euler",
                             save_images=False)
    job_a = Job(owner="session-a")
    box = {}
    with step_gate(fresh_ctx, step=1) as gate:
        thread = threading.Thread(target=lambda: box.setdefault("res", fresh_ctx.generate(slow, job_a)))
        thread.start()
        assert gate.wait() is job_a  # A is running, held at its second step
        assert fresh_ctx.jobs.interrupt(owner="session-b") == 0
        assert not job_a.interrupted
        gate.open()
        thread.join(120)
    assert not box["res"].interrupted and len(box["res"].images) == 1
    assert job_a.sampling_step == 6


def test_sigterm_shuts_the_server_down_gracefully(tmp_path):
    """SIGTERM while a request runs: the port closes at once, the running request is finished (within
    --shutdown-grace) and answered, the process exits with status 0. The request is held at its second step
    by the step-gate extension until the test saw the port closed."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from tests.live_server import free_port

    port = free_port()
    gate_extension(tmp_path)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "webui", "--port", str(port), "--nowebui", "--use-cpu",
                             "--data-dir", str(tmp_path), "--shutdown-grace", "60"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = OutputLines(proc)
    try:
        output.wait_for("Running on local URL", timeout=120)
        box = {}

        def in_flight():
            body = {**BODY, "steps": 4}
            box["r"] = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json=body, timeout=120)

        worker = threading.Thread(target=in_flight)
        worker.start()
        output.wait_for(HELD)  # the request is running (held at its second step)
        proc.send_signal(signal.SIGTERM)
        output.wait_for("Shutting down: the port is closed; 1 connection(s) still open")
        with pytest.raises(httpx.ConnectError):  # stops accepting at once
            httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/progress", timeout=2)
        proc.stdin.write("go\n")  # let the held request go on
        proc.stdin.flush()
        worker.join(120)
        assert box["r"].status_code == 200  # graceful: the running request was finished, not dropped
        assert json.loads(box["r"].json()["info"])["interrupted"] is False  # finished within --shutdown-grace
        assert proc.wait(timeout=60) == 0  # a clean exit, not death by the signal
        out = output.join()
        assert "Traceback" not in out and "Stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
