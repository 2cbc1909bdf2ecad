"""Generations on Ray workers (``--workers 2 --use-cpu``, issue 23): one Ray runtime with two CPU workers for
the whole module, behind a real server. Every request is answered once, also when a worker is killed; progress
and previews stream from the worker; interrupt and skip reach it; a fixed seed gives the in-process bytes; jobs
go to the worker holding their checkpoint.

A test extension (``worker_probe``, in the data folder's extensions) runs on the workers: it holds a job whose
prompt has a word ``gate-NAME-STEP`` at sampling step STEP (once, on whichever worker gets there first) and says
so through a named pipe the test reads (:class:`WorkerGate`), writes the sampling steps each image had into its
infotext ("Steps done"), and the worker's pid into the infotext of prompts with "which-worker". Where the server's
mirror of a worker's progress is checked, the test waits for it (events come asynchronously) while the job is
held, so the state it waits for is certain to come and to stay.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import api_only, make_settings, own_models_root, require

require("ray", "the generation workers (requirements-ray.txt)")

from live_server import LiveServer  # noqa: E402

from webui.image_codec import decode_base64_image  # noqa: E402
from webui.infotext import parse_infotext  # noqa: E402
from webui.pipeline.request import GenerationRequest  # noqa: E402

SMALL = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler", "save_images": False}
WAIT = 180  # seconds; only ever reached when something is wrong

PROBE = '''
"""Test extension: its generation hooks run on the generation workers."""
import os
import threading
from pathlib import Path

from webui.hookspecs import hookimpl

GATES = Path({gates!r})
WAIT = {wait!r}


class Probe:
    """A worker runs one job at a time, so one step counter is enough."""

    def __init__(self):
        self.gates = {{}}  # job id -> (gate name, step)
        self.steps = 0

    @hookimpl
    def before_generate(self, request, job):
        self.steps = 0
        for word in request.prompt.split():
            if word.startswith("gate-"):
                name, step = word.rsplit("-", 1)
                self.gates[job.id] = (name, int(step))

    @hookimpl(trylast=True)
    def on_step_end(self, state):
        self.steps += 1
        name, step = self.gates.get(state.job.id, (None, -1))
        if state.step != step:
            return
        try:  # held once, on whichever worker gets there first
            os.close(os.open(GATES / (name + ".taken"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        go = threading.Event()
        stop = state.job.watch(lambda what: go.set())  # an interrupt or a skip lets the job go

        def let_go_by_the_test():
            with open(GATES / (name + ".go")) as pipe:
                pipe.read()
            go.set()

        threading.Thread(target=let_go_by_the_test, daemon=True).start()
        with open(GATES / name, "w") as pipe:  # the test reads it
            pipe.write(f"{{os.getpid()}} {{state.job.id}} {{state.job.sampling_step}}\\n")
        go.wait(WAIT)
        stop()

    @hookimpl
    def postprocess_image(self, state):
        state.extra_infotext["Steps done"] = self.steps  # in this image's batch
        self.steps = 0

    @hookimpl
    def extra_infotext(self, request):
        return {{"Worker pid": os.getpid()}} if "which-worker" in request.prompt else None

    @hookimpl
    def after_generate(self, result, job):
        self.gates.pop(job.id, None)


def make_plugin():
    return Probe()
'''


class WorkerGate:
    """The test's end of the probe's gate ``name`` (named pipes in ``folder``): :meth:`wait` returns ``(pid,
    job id, sampling step)`` of the job held on a worker; :meth:`open` lets it go (an interrupt or a skip does
    too). Use it in a ``with`` block: at the end it lets go whatever it still holds."""

    def __init__(self, folder: Path, name: str):
        self.reached, self.go = folder / name, folder / (name + ".go")
        os.mkfifo(self.reached)
        os.mkfifo(self.go)
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.reached) as pipe:
            self._lines.put(pipe.readline())

    def wait(self, timeout: float = WAIT) -> tuple[int, str, int]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no worker held a job at gate {self.reached.name} in {timeout:.0f} s") from None
        pid, job_id, step = line.split()
        return int(pid), job_id, int(step)

    def open(self) -> None:
        for pipe in (self.go, self.reached):  # wakes a worker waiting for the test, or our own reader
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # nobody has it open for reading: nothing waits on it
                pass

    def __enter__(self) -> WorkerGate:
        return self

    def __exit__(self, *exc) -> None:
        self.open()
        self._reader.join(WAIT)


@pytest.fixture(scope="module")
def gates(tmp_path_factory) -> Path:
    """The folder of the probe's gates (named pipes)."""
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_sd1_file, gates):
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
    (data / "extensions" / "worker_probe" / "__init__.py").write_text(PROBE.format(gates=str(gates), wait=WAIT))
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


def test_a_worker_killed_mid_job_loses_no_request(fleet, killed, gates):
    ctx, url = fleet
    bodies = [[{"prompt": "a cat", "steps": 3, "seed": 2000 + 10 * c + i} for i in range(2)] for c in range(2)]
    bodies[0][0]["prompt"] = "a cat gate-kill-1"  # held at its second step on the worker that takes it
    results: list = []
    with WorkerGate(gates, "gate-kill") as gate:
        clients = threading.Thread(target=lambda: results.extend(_clients(url, bodies)))
        clients.start()
        pid, job_id, step = gate.wait()
        victim = next(w for w in _workers(url) if w["pid"] == pid)
        assert victim["state"] == "busy" and victim["job"] == job_id and step == 1
        os.kill(pid, signal.SIGKILL)
        clients.join(WAIT)
    assert sorted(r.status_code for _, r in results) == [200] * 4, [r.text[:300] for _, r in results]
    # every request answered once with its own image, the killed one too (run again on the other worker)
    assert sorted(_info(r)["seed"] for _, r in results) == sorted(b["seed"] for c in bodies for b in c)
    assert [int(parse_infotext(_info(r)["infotexts"][0])["Steps done"]) for _, r in results] == [3] * 4
    killed_job = ctx.jobs.get(job_id)
    assert killed_job is not None and killed_job.finished is not None
    record = _workers(url)[victim["id"]]
    assert record["restarts"] == 1 and record["pid"] != pid
    killed.update(victim)


def test_progress_and_previews_stream_from_a_worker(fleet, gates):
    ctx, url = fleet
    answer: list[httpx.Response] = []
    with WorkerGate(gates, "gate-progress") as gate:
        thread = threading.Thread(target=lambda: answer.append(_txt2img(
            url, prompt="gate-progress-3 which-worker", steps=6, seed=7,
            override_settings={"show_progress_every_n_steps": 1, "live_previews_enable": True})))
        thread.start()
        pid, job_id, step = gate.wait()  # held on the worker after 3 of its 6 steps, with their previews
        assert step == 3
        # the server mirrors the worker's events as they arrive: wait for them (they must come, the job is held)
        p = _wait_until(lambda: (p := httpx.get(url + "/sdapi/v1/progress", timeout=30).json())["state"]
                        ["sampling_step"] == 3 and p["current_image"] and p)
        busy = [w for w in _workers(url) if w["state"] == "busy"]
        gate.open()
        thread.join(WAIT)
    assert p["state"]["job"] == job_id and p["progress"] == pytest.approx(0.5, abs=0.01), p["state"]
    assert decode_base64_image(p["current_image"]).size == (64, 64)
    assert [(w["pid"], w["job"]) for w in busy] == [(pid, job_id)]  # the one job, on the worker that held it
    assert answer[0].status_code == 200, answer[0].text
    info = _info(answer[0])
    worker_pids = {w["pid"] for w in _workers(url)}
    worker_pid = int(parse_infotext(info["infotexts"][0])["Worker pid"])  # the extension's hook ran on the worker
    assert worker_pid == pid and pid in worker_pids and pid != os.getpid()


def test_interrupt_stops_the_worker_after_the_step_it_was_in(fleet, gates):
    ctx, url = fleet
    answer: list[httpx.Response] = []
    with WorkerGate(gates, "gate-interrupt") as gate:
        thread = threading.Thread(target=lambda: answer.append(_txt2img(url, prompt="gate-interrupt-1", steps=12,
                                                                         seed=3)))
        thread.start()
        _, job_id, _ = gate.wait()  # held at its second step until the interrupt reaches the worker
        assert httpx.post(url + "/sdapi/v1/interrupt", timeout=30).status_code == 200
        thread.join(WAIT)
    assert answer[0].status_code == 200 and len(answer[0].json()["images"]) == 1
    final = ctx.jobs.get(job_id)
    assert final.interrupted and final.sampling_step == 2, final.sampling_step
    assert int(parse_infotext(_info(answer[0])["infotexts"][0])["Steps done"]) == 2  # counted on the worker


def test_skip_moves_on_to_the_next_batch(fleet, gates):
    ctx, url = fleet
    answer: list[httpx.Response] = []
    with WorkerGate(gates, "gate-skip") as gate:
        thread = threading.Thread(target=lambda: answer.append(_txt2img(url, prompt="gate-skip-1", steps=6, n_iter=2,
                                                                         seed=11)))
        thread.start()
        _, job_id, _ = gate.wait()  # held once, in its first batch
        job = ctx.jobs.get(job_id)
        assert job.job_no == 0
        assert httpx.post(url + "/sdapi/v1/skip", timeout=30).status_code == 200
        thread.join(WAIT)
    assert answer[0].status_code == 200, answer[0].text
    assert len(answer[0].json()["images"]) == 2 and not job.interrupted
    steps_done = [parse_infotext(t)["Steps done"] for t in _info(answer[0])["infotexts"]]
    assert steps_done == ["2", "6"], steps_done  # cut after the step it was in; the second batch ran all its steps


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
    assert ctx.executor.pool.wait_for(lambda workers: all(w["state"] == "idle" for w in workers), WAIT)  # all back
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
    assert ctx.executor.pool.wait_for(lambda workers: all(w["state"] == "idle" for w in workers), WAIT)
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
