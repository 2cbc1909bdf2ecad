"""A generation worker: one process (a Ray actor, one per GPU) with its own application context, running the
server's generations one at a time.

Nothing here imports Ray: :mod:`webui.workers.ray_executor` makes :class:`GenerationWorker` an actor. The
worker builds its context from the server's :class:`~webui.settings.Settings`: the same ``models/``, data
and extension folders (its plugin manager is built here from them, so the hooks that run inside a
generation run here), its own checkpoint manager with its LRU cache (option ``sd_checkpoint_cache``). For
each job it takes the server's options as they are and runs the pipeline in a thread while
:meth:`GenerationWorker.run` streams the job's events (:mod:`webui.workers.events`) to the server.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from webui.hookspecs import hookimpl
from webui.settings import Settings
from webui.workers.events import Event, ReportingJob

log = logging.getLogger(__name__)
#: how many interrupts / skips are kept for jobs this worker has not started yet (a race of two calls)
_EARLY_CONTROLS = 64


class MissingCheckpoint(Exception):
    """The checkpoint a job asks for is not in this worker's checkpoint folders (``error``: the UnknownChoice)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _LoadCounter:
    """Counts the checkpoints this worker read from disk (the ``model_loaded`` hook)."""

    def __init__(self) -> None:
        self.loads = 0

    @hookimpl
    def model_loaded(self, model: Any) -> None:
        self.loads += 1


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling (the server raises it as in-process), else a
    :class:`~webui.context.GenerationFailed` naming it."""
    from webui.context import GenerationFailed

    try:
        pickle.dumps(exc)
        back = copy.copy(exc)  # rebuilt from its __reduce__, as unpickling on the server will
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 - anything unpicklable is described instead
        pass
    return GenerationFailed(f"{type(exc).__name__}: {exc}")


class GenerationWorker:
    """One worker: ``settings`` are the server's (device chosen here: the GPU Ray gave this process, or the
    CPU with ``use_cpu``); ``threads``: torch's CPU threads (0: torch's default)."""

    def __init__(self, settings: Settings, threads: int = 0) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # Ray shows it
        for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                           ("GRADIO_ANALYTICS_ENABLED", "False"), ("DO_NOT_TRACK", "1")):
            os.environ.setdefault(key, value)
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        from webui.context import build_context

        self.ctx = build_context(settings)
        self._counter = _LoadCounter()
        self.ctx.plugins.register(self._counter, "generation-worker")
        self._lock = threading.Lock()
        self._jobs: dict[str, ReportingJob] = {}
        self._early: OrderedDict[str, set[str]] = OrderedDict()
        self.jobs_done = 0

    def info(self) -> dict[str, Any]:
        """Where this worker runs and what it holds: node, pid, device, the checkpoints loaded (current first,
        then its cache), disk loads, jobs done, the job running."""
        models = self.ctx.models
        loaded = [m for m in (models.current, *reversed(models.cached())) if m is not None]
        with self._lock:
            running = next(iter(self._jobs), None)
        return {"node": socket.gethostname(), "pid": os.getpid(), "device": self.ctx.device.description,
                "checkpoints": [m.info.name for m in loaded], "titles": [m.title for m in loaded],
                "loads": self._counter.loads, "jobs_done": self.jobs_done, "job": running}

    def manage(self, action: str) -> dict[str, Any]:
        """A1111's checkpoint routes, on this worker: "refresh" (scan the model folders again), "unload" (free
        the checkpoints it holds; the next job loads its own again) or "reload" (read its current checkpoint's
        file again). A worker running a job leaves unload / reload for later (its job needs the model);
        returns :meth:`info` and ``skipped``."""
        with self._lock:
            busy = bool(self._jobs)
        models = self.ctx.models
        skipped = busy and action in ("unload", "reload")
        if action == "refresh":
            self.ctx.refresh_models()
        elif action == "unload" and not busy:
            models.unload()  # frees the memory too
        elif action == "reload" and not busy and models.current is not None:
            models.load(models.current.info, force=True)
        elif action not in ("refresh", "unload", "reload"):
            raise ValueError(f"unknown action {action!r}")
        return {**self.info(), "skipped": skipped}

    def control(self, job_id: str, what: str) -> None:
        """Interrupt (``what`` = "interrupt") or skip the job ``job_id``: it stops at the end of the step it
        is in. A job not started yet takes it when it starts."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                self._early.setdefault(job_id, set()).add(what)
                while len(self._early) > _EARLY_CONTROLS:
                    self._early.popitem(last=False)
                return
        job.interrupt() if what == "interrupt" else job.skip()

    def abandon(self, job_id: str, attempt: str) -> None:
        """The server gave up on this attempt of the job (it lost touch with this worker and runs the job
        elsewhere): stop it if it still runs here; nothing is kept for later."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None and job.attempt == attempt:
            job.interrupt()

    def run(self, job_id: str, req: Any, opts: Mapping[str, Any], options: Mapping[str, Any],
            controls: Sequence[str] = (), attempt: str = "") -> Iterator[list[Event]]:
        """Run the generation ``req`` for the server's job ``job_id`` with the request's options ``opts`` (the
        server's ``options`` are taken as this worker's current ones first); yields lists of events
        (:mod:`webui.workers.events`), the last one the answer. ``controls``: "interrupt" / "skip" already
        given; ``attempt``: this try's id (see :meth:`abandon`)."""
        job = ReportingJob(id=job_id, kind=getattr(req, "mode", "txt2img"), attempt=attempt)
        with self._lock:
            early = self._early.pop(job_id, set())
            self._jobs[job_id] = job
        for what in (*controls, *early):
            job.interrupt() if what == "interrupt" else job.skip()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = self._generate(req, job, opts)
            except BaseException as exc:  # noqa: BLE001 - every failure is the job's answer
                outcome["error"] = exc
            finally:
                job.finish()

        try:
            yield [("started", os.getpid())]
            self.ctx.options.follow(options)
            job.begin()
            thread = threading.Thread(target=work, name=f"job-{job_id[:8]}", daemon=True)
            thread.start()
            ended = False
            while not ended:
                events, ended = job.drain(0.5)
                if events:
                    yield events
            thread.join()
        finally:
            with self._lock:
                self._jobs.pop(job_id, None)
        if "result" in outcome:
            self.jobs_done += 1
            yield [("result", outcome["result"], self.info())]
            return
        error = outcome.get("error")
        missing = isinstance(error, MissingCheckpoint)
        if missing:
            error = error.error
        yield [("error", portable_error(error), missing, self.info())]

    def _generate(self, req: Any, job: ReportingJob, opts: Any) -> Any:
        import torch

        from webui.devices import free_memory
        from webui.errors import UnknownChoice
        from webui.pipeline.generate import generate

        ctx = self.ctx
        try:
            model = ctx.model_for(opts)
        except UnknownChoice as exc:
            if exc.field != "sd_model_checkpoint":
                raise
            ctx.models.refresh()  # a file copied into this worker's folder since it started
            try:
                model = ctx.model_for(opts)
            except UnknownChoice as again:
                raise MissingCheckpoint(again) from None
        try:
            return generate(ctx.pipeline_env(), model, req, job, opts)
        except torch.OutOfMemoryError:
            free_memory()  # here, on the worker's device; the server answers as for its own (507)
            raise
