"""Generation workers without Ray: which worker runs which job, a lost worker, a worker without the checkpoint,
the progress events a worker sends, interrupt forwarding, and that the default start never imports Ray.

The same code runs behind ``--workers`` (tests/test_workers.py runs it on real Ray workers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.step_gate import WAIT
from webui.context import GenerationFailed
from webui.errors import UnknownChoice
from webui.jobs import Interrupted, Job, JobQueue
from webui.workers.events import ReportingJob, apply_events
from webui.workers.pool import Done, Failed, Lost, WorkerPool

ROOT = Path(__file__).resolve().parent.parent


def _pool(count: int = 2, **loaded: list[str]) -> tuple[WorkerPool, JobQueue, list[int]]:
    """A pool of ``count`` workers, all up; ``loaded``: worker id ("w0") -> its checkpoints. Also the ids of the
    workers reported lost (``on_lost``)."""
    jobs = JobQueue(concurrency=1, max_size=16)
    lost: list[int] = []
    pool = WorkerPool(jobs, count, on_lost=lambda record: lost.append(record.id))
    assert jobs.concurrency == 0  # nothing runs before a worker is up
    for i in range(count):
        pool.up(i, {"pid": 100 + i, "node": "n", "device": "CPU", "checkpoints": loaded.get(f"w{i}", [])})
    assert jobs.concurrency == count
    return pool, jobs, lost


def _run(pool: WorkerPool, jobs: JobQueue, job: Job, checkpoint: str, attempt):
    with jobs.slot(job):
        return pool.run(job, checkpoint, attempt)


def test_a_job_goes_to_the_idle_worker_holding_its_checkpoint_else_to_an_empty_one():
    pool, jobs, _ = _pool(3, w0=["a.safetensors"], w1=["b.safetensors"])
    ran: list[tuple[str, int]] = []

    def attempt(checkpoint):
        def run(worker):
            ran.append((checkpoint, worker.id))
            return Done("ok", {"checkpoints": [checkpoint]})
        return run

    for name in ("b.safetensors", "a.safetensors", "b.safetensors", "c.safetensors", "c.safetensors"):
        assert _run(pool, jobs, Job(), name, attempt(name)) == "ok"
    # c: nobody has it, so the worker with nothing loaded takes it (and then holds it)
    assert ran == [("b.safetensors", 1), ("a.safetensors", 0), ("b.safetensors", 1), ("c.safetensors", 2),
                   ("c.safetensors", 2)]
    assert [w["jobs_done"] for w in pool.snapshot()] == [1, 2, 2]
    assert all(w["state"] == "idle" and w["job"] is None for w in pool.snapshot())


def test_a_lost_worker_sends_the_job_back_to_the_head_of_the_queue_under_the_same_id():
    pool, jobs, lost = _pool(2)
    job, behind = Job(), Job()
    seen: list[tuple[str, int]] = []
    order: list[str] = []
    threads: list[threading.Thread] = []

    def attempt(worker):
        seen.append((job.id, worker.id))
        if len(seen) == 1:
            # another job arrives while this one runs; it waits (one slot: the other worker is down)
            threads.append(threading.Thread(target=lambda: jobs.run(behind, lambda j: order.append("behind"))))
            threads[-1].start()
            assert jobs.wait_for(lambda waiting, running: waiting == [behind], WAIT)
            return Lost("ActorDiedError: the process died")
        order.append("again")
        return Done("image", {})

    pool.records[1].state = "restarting"  # only worker 0 is up at first
    pool._sync_concurrency()
    assert jobs.concurrency == 1

    at_the_head: list[bool] = []

    def back_at_the_head_then_worker_1_returns():
        # no worker is up: the job waits at the head of the queue, before the one that was already waiting
        try:
            at_the_head.append(jobs.wait_for(lambda waiting, running: waiting == [job, behind] and not running,
                                             WAIT))
        finally:
            pool.up(1, {"pid": 201})  # Ray restarted the other one

    def bring_back_worker_1(record):
        lost.append(record.id)
        assert [j.id for j in jobs.waiting()] == [behind.id]
        threads.append(threading.Thread(target=back_at_the_head_then_worker_1_returns))
        threads[-1].start()

    pool._on_lost = bring_back_worker_1
    assert _run(pool, jobs, job, "", attempt) == "image"
    for t in threads:
        t.join(WAIT)
    assert seen == [(job.id, 0), (job.id, 1)]  # the same job, then on the worker that came back
    assert lost == [0] and at_the_head == [True]
    assert order == ["again", "behind"]  # back at the head: it ran before the job that had waited behind it
    assert pool.snapshot()[0]["state"] == "restarting" and pool.snapshot()[0]["restarts"] == 1


def test_a_job_that_loses_two_workers_in_a_row_fails_with_a_clear_error():
    pool, jobs, lost = _pool(3)
    tries: list[int] = []

    def attempt(worker):
        tries.append(worker.id)
        if len(tries) == 1:  # this worker was already dead before it took the job: not the job's fault
            return Lost("ActorUnavailableError: restarting", started=False)
        return Lost(f"worker {worker.id} killed")

    with pytest.raises(GenerationFailed, match="two workers in a row"):
        _run(pool, jobs, Job(), "", attempt)
    assert tries == [0, 1, 2] and lost == [0, 1, 2]
    # the fleet stays: the lost ones restart (the executor brings them back)
    assert [w["state"] for w in pool.snapshot()] == ["restarting"] * 3


def test_a_worker_without_the_checkpoint_passes_the_job_on_or_the_job_fails_with_its_message():
    pool, jobs, _ = _pool(2)
    missing = UnknownChoice("sd_model_checkpoint", "checkpoint", "x.safetensors", ["a.safetensors"])
    tries: list[int] = []

    def only_worker_1_has_it(worker):
        tries.append(worker.id)
        if worker.id == 0:
            return Failed(missing, {}, missing_checkpoint=True)
        return Done("image", {"checkpoints": ["x.safetensors"]})

    assert _run(pool, jobs, Job(), "x.safetensors", only_worker_1_has_it) == "image"
    assert tries == [0, 1]
    with pytest.raises(UnknownChoice, match="unknown checkpoint 'x.safetensors'"):
        _run(pool, jobs, Job(), "y.safetensors", lambda worker: Failed(missing, {}, missing_checkpoint=True))
    with pytest.raises(ValueError, match="bad"):  # any other error is the job's answer at once
        _run(pool, jobs, Job(), "", lambda worker: Failed(ValueError("bad"), {}))
    assert all(w["state"] == "idle" for w in pool.snapshot())


def test_no_worker_can_start_then_jobs_fail_instead_of_waiting():
    jobs = JobQueue(concurrency=1)
    pool = WorkerPool(jobs, 2)
    pool.failed(0, "ModuleNotFoundError: No module named 'webui'")
    assert jobs.concurrency == 0  # worker 1 may still come up
    pool.failed(1, "ModuleNotFoundError: No module named 'webui'")
    with pytest.raises(GenerationFailed, match="no generation worker could start: ModuleNotFoundError"):
        _run(pool, jobs, Job(), "", lambda worker: Done("never", {}))


def test_interrupt_while_waiting_for_a_worker():
    pool, jobs, _ = _pool(1)
    pool.records[0].state = "busy"
    job = Job()
    waiting = threading.Event()
    wait = pool._changed.wait

    def noted(timeout=None):  # the job waits for a worker
        waiting.set()
        return wait(timeout)

    pool._changed.wait = noted
    interrupter = threading.Thread(target=lambda: waiting.wait(WAIT) and job.interrupt())
    interrupter.start()
    with pytest.raises(Interrupted):
        pool.run(job, "", lambda worker: Done("never", {}))
    interrupter.join(WAIT)
    assert waiting.is_set()


def test_progress_events_replay_on_the_server_job_and_interrupts_are_forwarded():
    worker_job = ReportingJob(id="j1")
    server_job = Job(id="j1")
    server_job.plan(4)  # a script's job: two generations of two batches
    told: list[str] = []
    stop = server_job.watch(told.append)
    progress: list[float] = []
    for generation in range(2):
        worker_job.begin_generation(2)
        for batch in range(2):
            worker_job.set_stage(batch, 3, f"Batch {batch + 1} out of 2")
            for step in range(1, 4):
                worker_job.step(step)
                if step == 2:
                    worker_job.current_image = f"preview {generation}.{batch}"
                events, ended = worker_job.drain(0)
                assert not ended
                apply_events(server_job, events)
                progress.append(server_job.progress)
    worker_job.finish()
    assert worker_job.drain(0) == ([], True)
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert server_job.current_image == "preview 1.1" and server_job.textinfo == "Batch 2 out of 2"
    server_job.skip()
    server_job.interrupt()
    stop()
    server_job.interrupt()
    assert told == ["skip", "interrupt"]


def test_a_lost_generation_counts_again_from_where_it_began():
    job = Job()
    job.plan(2)
    apply_events(job, [("generation", 1), ("stage", 0, 4, ""), ("step", 2)])
    job.restart_generation()  # its worker was lost: the next worker runs the same generation again
    apply_events(job, [("generation", 1), ("stage", 0, 4, ""), ("step", 4)])
    assert job.progress == pytest.approx(0.5)


def test_the_worker_streams_a_job_and_takes_interrupts_only_for_it(tmp_path, models_root):
    """The worker itself (a Ray actor behind --workers; here a plain object): the events of a job, a control
    given before the job starts, an abandoned attempt that must not touch the next one, a missing checkpoint."""
    from conftest import make_settings

    from webui.pipeline.request import GenerationRequest
    from webui.workers.actor import GenerationWorker

    worker = GenerationWorker(make_settings(tmp_path, models_root))
    req = GenerationRequest(prompt="x", steps=3, width=64, height=64, sampler_name="Euler", save_images=False)
    opts = worker.ctx.options.current
    worker.abandon("j1", "lost-attempt")  # the server gave up on an earlier try: nothing is kept for this one
    batches = list(worker.run("j1", req, opts, opts.as_dict(), (), "attempt-2"))
    kinds = [event[0] for batch in batches for event in batch]
    assert kinds[0] == "started" and kinds[-1] == "result" and kinds.count("step") == 3 and "generation" in kinds
    _, result, info = batches[-1][-1]
    assert len(result.images) == 1 and not result.interrupted
    assert info["checkpoints"] == ["tiny-sd1.safetensors"] and info["loads"] == 1 and info["job"] is None
    worker.control("j2", "interrupt")  # arrives before the job: it stops as soon as it starts
    assert list(worker.run("j2", req, opts, opts.as_dict()))[-1][-1][1].images == []
    kind, error, missing, _ = list(worker.run("j3", req, opts.replaced({"sd_model_checkpoint": "nope"}),
                                              opts.as_dict()))[-1][-1]
    assert kind == "error" and missing and isinstance(error, UnknownChoice) and error.field == "sd_model_checkpoint"
    assert worker.info()["jobs_done"] == 2


def test_default_start_imports_no_ray(tmp_path, models_root):
    """Without --workers / --ray-address, and with Ray not installed (its import fails), the server starts,
    serves a generation and never even tries to import Ray; with --workers it says how to install Ray."""
    script = textwrap.dedent(f"""
        import sys
        from importlib.abc import MetaPathFinder

        tried = []

        class NoRay(MetaPathFinder):  # Ray "not installed"; also notes every attempt (a probe counts too)
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    tried.append(name)
                    raise ImportError("No module named 'ray' (blocked by the test)")
                return None

        sys.meta_path.insert(0, NoRay())
        from pathlib import Path
        from webui.context import build_context
        from webui.main import configure_environment
        from webui.pipeline.request import GenerationRequest
        from webui.server import create_app
        from webui.settings import parse_args

        configure_environment()
        args = ["--data-dir", {str(tmp_path)!r}, "--models-dir", {str(models_root)!r}, "--use-cpu", "--nowebui",
                "--disable-extensions"]
        settings = parse_args(args)
        assert settings.workers == 0 and settings.ray_address is None
        ctx = build_context(settings)
        create_app(ctx)
        result = ctx.generate(GenerationRequest(prompt="x", steps=2, width=64, height=64, save_images=False))
        assert len(result.images) == 1 and ctx.executor is None
        assert tried == [], f"something tried to import Ray: {{tried}}"
        from webui.workers.ray_executor import start_workers
        try:
            start_workers(build_context(parse_args(args + ["--workers", "2"])))
        except RuntimeError as exc:
            assert "requirements-ray.txt" in str(exc), exc
        else:
            raise AssertionError("--workers started without Ray")
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
