"""Generations on Ray workers: ``--workers N`` starts a Ray runtime on this machine with N workers (one per
GPU, or N CPU workers with ``--use-cpu``); ``--ray-address ADDR`` joins a cluster started with
``ray start --head`` / ``ray start --address ADDR`` and runs one worker per GPU there (or ``--workers N``).

This is the only module that imports Ray, and only when :func:`start_workers` runs (the flags were given).
Each worker is an actor (:class:`~webui.workers.actor.GenerationWorker`) that Ray restarts when its process
dies (``max_restarts``); a job runs on it as a streaming call whose events the server's job takes in
(:mod:`webui.workers.events`), and interrupt / skip reach it through a second call while the job runs (the
actor is threaded). Which worker runs which job, and what happens when one is lost, is
:mod:`webui.workers.pool`'s business.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.context import AppContext, GenerationFailed
from webui.errors import UnknownChoice
from webui.jobs import Job
from webui.settings import Options
from webui.workers.events import apply_events
from webui.workers.pool import Done, Failed, Lost, Outcome, WorkerPool, WorkerRecord

log = logging.getLogger(__name__)

#: the checkout every worker imports ``webui`` from (on every node of a cluster: the same path)
REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = ("run the server with python launch.py (it installs requirements-ray.txt when --workers or "
                "--ray-address is given), or install it: .venv/bin/pip install -r requirements-ray.txt")


@dataclass(frozen=True)
class RayOptions:
    """How the workers start. ``workers`` 0 with ``address``: one per GPU of the cluster."""

    workers: int = 0
    address: str | None = None  # None: a new Ray runtime on this machine
    cpu: bool = False  # CPU workers (--use-cpu)
    threads: int = 0  # torch threads of each CPU worker (0: this machine's cores shared out)
    max_restarts: int = -1  # Ray restarts a dead worker this many times (-1: always)
    object_store_mb: int = 512  # the local runtime's object store (results and previews pass through it)
    namespace: str = "webui"
    temp_dir: str | None = None  # the local runtime's session folder (None: Ray's default, /tmp/ray)
    log_to_driver: bool = True  # the workers' log lines appear in the server's output
    init_timeout: float = 0.0  # wait up to this long for every worker to be up (0: start in the background)

    @classmethod
    def from_settings(cls, settings: Any) -> RayOptions:
        return cls(workers=settings.workers, address=settings.ray_address, cpu=settings.use_cpu)


def import_ray() -> Any:
    """The ``ray`` module, or a RuntimeError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(f"--workers and --ray-address need Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def start_workers(ctx: AppContext, options: RayOptions | None = None) -> RayExecutor:
    """Start (or join) the Ray runtime and the workers; the executor is returned at once and the workers come
    up in the background (the queue runs jobs as they do). Sets ``ctx.executor``."""
    options = options or RayOptions.from_settings(ctx.settings)
    ray = import_ray()
    owns = not ray.is_initialized()
    if owns:
        _init_ray(ray, options)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = options.workers or (0 if options.cpu else gpus)
    if count <= 0:
        if owns:
            ray.shutdown()
        raise RuntimeError("no worker to start: the Ray runtime has no GPU; give --workers N with --use-cpu for "
                           "CPU workers")
    if not options.cpu and gpus < count:
        log.warning("%d workers asked for but Ray sees %d GPU(s): the others wait for one", count, gpus)
    executor = RayExecutor(ctx, ray, options, count, owns)
    ctx.executor = executor
    # the UI lets as many generations through at once as there are workers (the queue follows the live ones)
    ctx.settings = dataclasses.replace(ctx.settings, concurrency=count)
    if options.init_timeout > 0:
        executor.wait_until_up(options.init_timeout)
    return executor


def _init_ray(ray: Any, options: RayOptions) -> None:
    common: dict[str, Any] = {
        "namespace": options.namespace, "log_to_driver": options.log_to_driver,
        "logging_level": logging.WARNING, "include_dashboard": False,
        # the workers import webui from this checkout (on a cluster: the same path on every node)
        "job_config": ray.job_config.JobConfig(code_search_path=[str(REPO_ROOT)]),
    }
    if options.address:
        log.info("Joining the Ray cluster at %s", options.address)
        common.pop("include_dashboard")
        try:
            ray.init(address=options.address, **common)
        except ConnectionError as exc:
            if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                # `ray start --head` of Ray 2.5x+ turns token authentication on; a driver without it is refused
                raise ConnectionError(
                    f"{exc}. If `ray start` said \"Token authentication is enabled\", start this server with "
                    "RAY_AUTH_MODE=token in its environment (and the cluster's token: RAY_AUTH_TOKEN, or the "
                    "file ~/.ray/auth_token that `ray get-auth-token` shows)") from None
            raise
        return
    cores = os.cpu_count() or 1
    threads = options.threads or max(1, cores // max(1, options.workers))
    extra: dict[str, Any] = {"_temp_dir": options.temp_dir} if options.temp_dir else {}
    ray.init(address="local", num_cpus=max(cores, options.workers * threads) if options.cpu else None,
             num_gpus=0 if options.cpu else None, object_store_memory=options.object_store_mb * 1024 * 1024,
             _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False}, **common, **extra)


class RayExecutor:
    """The Ray executor behind the server's queue (``AppContext.executor``)."""

    kind = "ray"

    def __init__(self, ctx: AppContext, ray: Any, options: RayOptions, count: int, owns_runtime: bool):
        self.ctx, self.ray, self.options = ctx, ray, options
        self._owns_runtime = owns_runtime
        self._closed = threading.Event()
        cores = os.cpu_count() or 1
        threads = options.threads or max(1, cores // count)
        actor_options: dict[str, Any] = {"max_restarts": options.max_restarts, "max_task_retries": 0,
                                         "max_concurrency": 4}
        if options.cpu:
            actor_options["num_cpus"] = threads
        else:
            actor_options["num_gpus"] = 1
            threads = 0
        from webui.workers.actor import GenerationWorker

        worker_class = ray.remote(**actor_options)(GenerationWorker)
        # the server's settings (same folders); the device is the GPU Ray gives the worker; no secrets travel
        worker_settings = dataclasses.replace(ctx.settings, device_id=None, workers=0, ray_address=None,
                                              gradio_auth=None, api_auth=None)
        self.pool = WorkerPool(ctx.jobs, count, on_lost=self._watch)
        self._handles = [worker_class.remote(worker_settings, threads) for _ in range(count)]
        for record in self.pool.records:
            self._watch(record)
        log.info("Starting %d generation worker(s) on %s", count,
                 "the CPU" if options.cpu else "GPUs" + (f" of {options.address}" if options.address else ""))

    # --- the executor -------------------------------------------------------------------------------------
    def generate(self, req: Any, job: Job, opts: Options) -> Any:
        checkpoint, opts = self._checkpoint_for(opts)
        return self.pool.run(job, checkpoint, lambda worker: self._attempt(worker, job, req, opts))

    def workers(self) -> list[dict[str, Any]]:
        return self.pool.snapshot()

    def manage(self, action: str, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Send A1111's checkpoint action ("refresh", "unload", "reload") to every worker that is up (see
        :meth:`GenerationWorker.manage`); returns their reports. A worker that does not answer is skipped."""
        refs = {r.id: self._handles[r.id].manage.remote(action) for r in self.pool.records if r.state in
                ("idle", "busy")}
        reports = []
        for index, ref in refs.items():
            try:
                info = self.ray.get(ref, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - lost meanwhile: it comes back fresh anyway
                log.warning("Generation worker %d did not take %r: %s", index, action, _first_line(exc))
                continue
            self.pool.learned(index, info)
            reports.append(info)
        return reports

    def wait_until_up(self, timeout: float) -> None:
        """Return once no worker is starting or restarting; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while any(w["state"] in ("starting", "restarting") for w in self.workers()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"generation workers not up after {timeout:.0f} s: {self.workers()}")
            time.sleep(0.1)

    def close(self) -> None:
        """Stop the workers (and the Ray runtime this server started)."""
        if self._closed.is_set():
            return
        self._closed.set()
        start = time.perf_counter()
        for handle in self._handles:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._owns_runtime:
            self.ray.shutdown()
        log.info("Generation workers stopped in %.1f s", time.perf_counter() - start)

    # --- one job on one worker ----------------------------------------------------------------------------
    def _checkpoint_for(self, opts: Options) -> tuple[str, Options]:
        """The job's checkpoint as the workers name it (a file's name in ``models/Stable-diffusion``) and its
        options: with no checkpoint chosen, the first one, as in this process (a worker on its own would use
        whatever it has loaded)."""
        name = str(opts.get("sd_model_checkpoint") or "").strip()
        models = self.ctx.models
        if not name:
            infos = models.checkpoints()
            if not infos:
                return "", opts
            return infos[0].name, opts.replaced({"sd_model_checkpoint": infos[0].name})
        try:
            return models.find(name).name, opts
        except UnknownChoice:  # maybe a worker has it: they say
            return name.split(" [", 1)[0], opts

    def _attempt(self, worker: WorkerRecord, job: Job, req: Any, opts: Options) -> Outcome:
        ray = self.ray
        handle = self._handles[worker.id]
        stop_watching = job.watch(lambda what: handle.control.remote(job.id, what))
        controls = [what for what, on in (("interrupt", job.interrupted), ("skip", job.skipped)) if on]
        started = began = False
        attempt = uuid.uuid4().hex
        try:
            stream = handle.run.options(num_returns="streaming").remote(
                job.id, req, opts, self.ctx.options.current.as_dict(), controls, attempt)
            for ref in stream:
                events = ray.get(ref)
                started = started or any(event[0] == "started" for event in events)
                began = apply_events(job, [e for e in events if e[0] not in ("result", "error")]) or began
                last = events[-1] if events else ("",)
                if last[0] == "result":
                    return Done(last[1], last[2])
                if last[0] == "error":
                    return Failed(last[1], last[3], missing_checkpoint=bool(last[2]))
            return Lost("the worker ended the job without an answer", started)
        except ray.exceptions.RayTaskError as exc:  # the worker's own code failed outside the job
            return Failed(GenerationFailed(f"generation worker {worker.id} failed: {_first_line(exc, True)}"), {})
        except ray.exceptions.RayError as exc:  # its process died, its node was lost, ...
            if began:
                job.restart_generation()
            try:  # a worker only out of reach for a moment must not go on with a job that runs elsewhere now
                handle.abandon.remote(job.id, attempt)
            except Exception:  # noqa: BLE001 - it is gone
                pass
            return Lost(f"{type(exc).__name__}: {_first_line(exc)}", started)
        finally:
            stop_watching()

    # --- workers coming up --------------------------------------------------------------------------------
    def _watch(self, record: WorkerRecord) -> None:
        """Wait (in a thread) until the worker answers, then mark it up; a worker whose start fails is
        marked failed."""
        threading.Thread(target=self._wait_for, args=(record.id,), name=f"worker-{record.id}-up",
                         daemon=True).start()

    def _wait_for(self, index: int) -> None:
        ray = self.ray
        handle = self._handles[index]
        delay = 0.1
        while not self._closed.is_set():
            try:
                info = ray.get(handle.info.remote(), timeout=60)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayTaskError as exc:
                self.pool.failed(index, _first_line(exc, True))
                return
            except ray.exceptions.RayActorError as exc:
                if getattr(exc, "actor_init_failed", False) or "creation task" in str(exc):
                    self.pool.failed(index, _first_line(exc, True))
                    return
                self._closed.wait(delay)
                delay = min(2.0, delay * 2)
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. the runtime shut down under us
                if self._closed.is_set():
                    return
                self.pool.failed(index, _first_line(exc))
                return
            if not self._closed.is_set():
                self.pool.up(index, info)
            return


def _first_line(exc: BaseException, last: bool = False) -> str:
    """The line of Ray's error text that says what happened (``last``: a task error's, the raised exception)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if last else lines[0]
