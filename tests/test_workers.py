"""Generations on Ray workers (``--workers 2 --use-cpu``, issue 23): one Ray runtime with two CPU workers for
the whole module, behind a real server. Every request is answered once, also when a worker is killed; progress
and previews stream from the worker; interrupt and skip reach it; a fixed seed gives the in-process bytes; jobs
go to the worker holding their checkpoint.

A test extension (``worker_probe``, in the data folder's extensions) runs on the workers: it slows the steps of
prompts with "slow-steps", writes the sampling steps each image had into its infotext ("Steps done"), and the
worker's pid into the infotext of prompts with "which-worker".
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid

import httpx
import pytest

pytest.importorskip("ray")

from conftest import api_only, make_settings, own_models_root  # noqa: E402
from live_server import LiveServer  # noqa: E402

from webui.image_codec import decode_base64_image  # noqa: E402
from webui.infotext import parse_infotext  # noqa: E402
from webui.pipeline.request import GenerationRequest  # noqa: E402

PROBE = '''
"""Test extension: its generation hooks run on the generation workers."""
import os
import time

from webui.hookspecs import hookimpl


class Probe:
    """A worker runs one job at a time, so one step counter is enough."""

    def __init__(self):
        self.slow = set()
        self.steps = 0

    @hookimpl
    def before_generate(self, request, job):
        self.steps = 0
        if "slow-steps" in request.prompt:
            self.slow.add(job.id)

    @hookimpl
    def on_step_end(self, state):
        self.steps += 1
        if state.job.id in self.slow:
            time.sleep(0.2)

    @hookimpl
    def postprocess_image(self, state):
        state.extra_infotext["Steps done"] = self.steps  # in this image's batch
        self.steps = 0

    @hookimpl
    def extra_infotext(self, request):
        return {"Worker pid": os.getpid()} if "which-worker" in request.prompt else None

    @hookimpl
    def after_generate(self, result, job):
        self.slow.discard(job.id)


def make_plugin():
    return Probe()
'''
SMALL = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler", "save_images": False}
WAIT = 180  # seconds; only ever reached when something is wrong


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_sd1_file):
    """``(ctx, url)``: a server whose generations run on two CPU workers of a private Ray runtime, with two
    checkpoints (tiny-sd1 and tiny-b)."""
    from webui.context import build_context
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components
    from webui.server import create_app
    from webui.workers.ray_executor import RayOptions, start_workers

    models = own_models_root(tmp_path_factory, tiny_sd1_file)
    save_single_file(build_tiny_components("sd1", seed=2), models / "Stable-diffusion" / "tiny-b.safetensors")
    data = tmp_path_factory.mktemp("workers-data")
    (data / "extensions" / "worker_probe").mkdir(parents=True)
    (data / "extensions" / "worker_probe" / "__init__.py").write_text(PROBE)
    ctx = build_context(make_settings(data, models, disable_extensions=False))
    ray_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    options = RayOptions(workers=2, cpu=True, threads=1, object_store_mb=80, temp_dir=ray_dir,
                         namespace=f"webui-test-{uuid.uuid4().hex[:8]}", log_to_driver=False, init_timeout=WAIT)
    executor = start_workers(ctx, options)
    try:
        with LiveServer(create_app(api_only(ctx))) as server:
            yield ctx, server.url
    finally:
        executor.close()
        shutil.rmtree(ray_dir, ignore_errors=True)


def _workers(url: str) -> list[dict]:
    body = httpx.get(url + "/webui/v1/workers", timeout=30).json()
    assert body["executor"] == "ray"
    return body["workers"]


def _wait_until(what, timeout: float = WAIT, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _txt2img(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/sdapi/v1/txt2img", json={**SMALL, **body}, timeout=WAIT)


def _clients(url: str, bodies_per_client: list[list[dict]]) -> list[tuple[dict, httpx.Response]]:
    """Each client (a thread) sends its bodies one after the other; every (body, answer)."""
    answers: list[tuple[dict, httpx.Response]] = []
    lock = threading.Lock()

    def client(bodies):
        for body in bodies:
            response = _txt2img(url, **body)
            with lock:
                answers.append((body, response))

    threads = [threading.Thread(target=client, args=(bodies,)) for bodies in bodies_per_client]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    return answers


def _info(response: httpx.Response) -> dict:
    return json.loads(response.json()["info"])


@pytest.fixture(scope="module")
def killed() -> dict:
    """The worker the first test killed (the last test checks that it came back): the module's tests run
    while Ray restarts it."""
    return {}


def test_a_worker_killed_mid_job_loses_no_request(fleet, killed):
    ctx, url = fleet
    bodies = [[{"prompt": "slow-steps", "steps": 3, "seed": 2000 + 10 * c + i} for i in range(2)] for c in range(2)]
    results: list = []
    clients = threading.Thread(target=lambda: results.extend(_clients(url, bodies)))
    clients.start()

    def busy_mid_job():
        p = httpx.get(url + "/sdapi/v1/progress?skip_current_image=true", timeout=30).json()
        busy = [w for w in _workers(url) if w["state"] == "busy" and w["job"] == p["state"]["job"]]
        return busy and p["state"]["sampling_step"] >= 1 and busy[0]

    victim = _wait_until(busy_mid_job)
    os.kill(victim["pid"], signal.SIGKILL)
    clients.join(WAIT)
    assert sorted(r.status_code for _, r in results) == [200] * 4, [r.text[:300] for _, r in results]
    # every request answered once with its own image, the killed one too (run again on the other worker)
    assert sorted(_info(r)["seed"] for _, r in results) == sorted(b["seed"] for c in bodies for b in c)
    killed_job = ctx.jobs.get(victim["job"])
    assert killed_job is not None and killed_job.finished is not None
    record = _workers(url)[victim["id"]]
    assert record["restarts"] == 1 and record["pid"] != victim["pid"]
    killed.update(victim)


def test_progress_and_previews_stream_from_a_worker(fleet):
    ctx, url = fleet
    seen: list[tuple[str, float, int]] = []
    previews = 0
    answer: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answer.append(_txt2img(
        url, prompt="slow-steps which-worker", steps=6, seed=7,
        override_settings={"show_progress_every_n_steps": 1, "live_previews_enable": True})))
    thread.start()
    busy_on: set[str] = set()
    while thread.is_alive():
        p = httpx.get(url + "/sdapi/v1/progress", timeout=30).json()
        if p["state"]["job"]:
            seen.append((p["state"]["job"], p["progress"], p["state"]["sampling_step"]))
            if p["current_image"]:
                previews += 1
                assert decode_base64_image(p["current_image"]).size == (64, 64)
            busy_on |= {w["job"] for w in _workers(url) if w["state"] == "busy"}
        time.sleep(0.05)
    thread.join()
    assert answer[0].status_code == 200, answer[0].text
    jobs = {job for job, _, _ in seen}
    assert len(jobs) == 1 and jobs <= busy_on  # the one job, and a worker ran it
    progress = [p for _, p, _ in seen]
    assert progress == sorted(progress) and max(s for _, _, s in seen) >= 4, seen
    assert previews >= 2
    info = _info(answer[0])
    worker_pids = {w["pid"] for w in _workers(url)}
    pid = int(parse_infotext(info["infotexts"][0])["Worker pid"])  # the extension's hook ran on the worker
    assert pid in worker_pids and pid != os.getpid()


def _wait_for_step(url: str, step: int) -> dict:
    return _wait_until(lambda: (p := httpx.get(url + "/sdapi/v1/progress?skip_current_image=true", timeout=30).json())
                       ["state"]["sampling_step"] >= step and p)


def test_interrupt_stops_the_worker_within_two_steps(fleet):
    ctx, url = fleet
    answer: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answer.append(_txt2img(url, prompt="slow-steps", steps=30, seed=3)))
    thread.start()
    p = _wait_for_step(url, 2)
    job_id = p["state"]["job"]
    at = ctx.jobs.get(job_id).sampling_step
    assert httpx.post(url + "/sdapi/v1/interrupt", timeout=30).status_code == 200
    thread.join(WAIT)
    assert answer[0].status_code == 200 and len(answer[0].json()["images"]) == 1
    final = ctx.jobs.get(job_id)
    assert final.interrupted and final.sampling_step <= at + 2, (at, final.sampling_step)
    assert int(parse_infotext(_info(answer[0])["infotexts"][0])["Steps done"]) <= at + 2  # counted on the worker


def test_skip_moves_on_to_the_next_batch(fleet):
    ctx, url = fleet
    answer: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answer.append(_txt2img(url, prompt="slow-steps", steps=6, n_iter=2,
                                                                     seed=11)))
    thread.start()
    p = _wait_for_step(url, 2)
    job = ctx.jobs.get(p["state"]["job"])
    assert job.job_no == 0
    assert httpx.post(url + "/sdapi/v1/skip", timeout=30).status_code == 200
    thread.join(WAIT)
    assert answer[0].status_code == 200, answer[0].text
    assert len(answer[0].json()["images"]) == 2 and not job.interrupted
    steps_done = [parse_infotext(t)["Steps done"] for t in _info(answer[0])["infotexts"]]
    assert int(steps_done[0]) < 6 and steps_done[1] == "6", steps_done  # the second batch ran all its steps


def test_fixed_seed_gives_the_in_process_bytes(fleet):
    import torch

    ctx, url = fleet
    req = GenerationRequest(prompt="a red cube", seed=4242, **SMALL)
    on_worker = ctx.generate(req)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' threads (the reduction order of a float sum depends on them)
    try:
        in_process = dataclasses.replace(ctx, executor=None).generate(req)
    finally:
        torch.set_num_threads(threads)
    assert on_worker.images[0].tobytes() == in_process.images[0].tobytes()
    assert on_worker.infotexts == in_process.infotexts


def test_twenty_requests_from_five_clients_are_each_answered_once_by_both_workers(fleet):
    ctx, url = fleet
    _wait_until(lambda: all(w["state"] == "idle" for w in _workers(url)), every=0.2)  # a killed one is back
    before = {w["id"]: w["jobs_done"] for w in _workers(url)}
    bodies = [[{"prompt": f"client {c}", "seed": 1000 + 10 * c + i} for i in range(4)] for c in range(5)]
    answers = _clients(url, bodies)
    assert [r.status_code for _, r in answers] == [200] * 20, [r.text[:300] for _, r in answers]
    # every request answered once with its own image: none lost, none twice
    assert sorted(_info(r)["seed"] for _, r in answers) == sorted(b["seed"] for c in bodies for b in c)
    assert all(_info(r)["seed"] == b["seed"] and len(r.json()["images"]) == 1 for b, r in answers)
    done = {w["id"]: w["jobs_done"] - before[w["id"]] for w in _workers(url)}
    assert sum(done.values()) == 20 and all(n > 0 for n in done.values()), done


def test_jobs_go_to_the_worker_that_holds_their_checkpoint(fleet):
    ctx, url = fleet
    _wait_until(lambda: all(w["state"] == "idle" for w in _workers(url)))
    loads = sum(w["loads"] for w in _workers(url))
    restarts = sum(w["restarts"] for w in _workers(url))
    for i in range(6):
        name = ("tiny-sd1", "tiny-b")[i % 2]
        r = _txt2img(url, prompt="which-worker", seed=i, override_settings={"sd_model_checkpoint": name})
        assert r.status_code == 200, r.text
        assert parse_infotext(_info(r)["infotexts"][0])["Model"] == name
    workers = _workers(url)
    assert sum(w["restarts"] for w in workers) == restarts
    # each checkpoint is read at most once (alternating on one worker would read one for every job)
    assert sum(w["loads"] for w in workers) - loads <= 2, workers
    assert sorted(c for w in workers for c in w["checkpoints"]) == ["tiny-b.safetensors", "tiny-sd1.safetensors"]
    # A1111's unload-checkpoint frees the workers' models; the next job reads its checkpoint again
    assert httpx.post(f"{url}/sdapi/v1/unload-checkpoint", timeout=120).status_code == 200
    assert all(w["checkpoints"] == [] for w in _workers(url)), _workers(url)
    loads = sum(w["loads"] for w in _workers(url))
    assert _txt2img(url, prompt="after-unload", seed=1, override_settings={"sd_model_checkpoint": "tiny-b"}
                    ).status_code == 200
    assert sum(w["loads"] for w in _workers(url)) == loads + 1
    # a checkpoint no worker has: every worker is asked, then the answer is the one without workers
    r = _txt2img(url, prompt="x", override_settings={"sd_model_checkpoint": "no-such-model"})
    assert r.status_code == 422 and "sd_model_checkpoint" in r.text and "no-such-model" in r.text, r.text


def test_the_killed_worker_came_back_and_serves_again(fleet, killed):
    ctx, url = fleet
    if not killed:
        pytest.skip("runs after test_a_worker_killed_mid_job_loses_no_request")
    back = _workers(url)[killed["id"]]
    assert back["state"] == "idle" and back["restarts"] == 1 and back["pid"] != killed["pid"]
    assert back["jobs_done"] > killed["jobs_done"]  # the twenty requests above: both workers served some


def test_the_ui_panel_lists_the_workers(fleet):
    import gradio as gr

    from webui.ui.workers_panel import build_workers_panel, worker_rows

    ctx, url = fleet
    rows = worker_rows(ctx)
    assert [r[0] for r in rows] == [0, 1] and all(r[1] in ("idle", "starting") or r[1].startswith("busy")
                                                  for r in rows)
    assert {r[3] for r in rows} == {w["pid"] for w in _workers(url)}
    with gr.Blocks() as demo:
        build_workers_panel(ctx)
    assert any(getattr(b, "elem_id", None) == "workers_table" for b in demo.blocks.values())
    with gr.Blocks() as plain:
        build_workers_panel(dataclasses.replace(ctx, executor=None))  # generations in process: no panel
    assert not any(getattr(b, "elem_id", None) == "workers_panel" for b in plain.blocks.values())
