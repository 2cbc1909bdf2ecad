"""Jobs and the job queue shared by the UI and the API.

A :class:`Job` carries everything about one generation that other parts of the
program want to observe or control: progress (step, total, ETA), the current
preview, and the interrupt / skip flags.  It replaces A1111's ``shared.state``.

:class:`JobQueue` limits how many jobs run at once (GPU work, 1 by default) and
how many may wait; beyond that :class:`QueueFull` is raised (HTTP 503). Where jobs run is the executor's
business (in this process, or on generation workers, :mod:`webui.workers`): a worker mirrors its progress
into the job, :meth:`Job.watch` forwards interrupt and skip to it, and :meth:`JobQueue.requeue` puts a job
whose worker was lost back at the head of the queue.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """Raised inside a sampling loop when its job was interrupted (caught by the pipeline)."""


class QueueFull(RuntimeError):
    """The queue already holds its maximum number of waiting jobs."""


@dataclass
class Job:
    """Progress, preview and control of one generation."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    kind: str = "txt2img"
    owner: str | None = None  # e.g. a UI session hash; None for API jobs
    job_count: int = 1  # image groups (batch count) in this job; a script's whole run when it called plan()
    job_no: int = 0
    sampling_steps: int = 0
    sampling_step: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    textinfo: str = ""
    current_image: Any = None  # PIL image of the latest preview
    _interrupt: threading.Event = field(default_factory=threading.Event, repr=False)
    _skip: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _planned: int = field(default=0, repr=False)  # image groups a script announced (0: none)
    _offset: int = field(default=0, repr=False)  # image groups of earlier generations of this job
    _next: int = field(default=0, repr=False)
    _watchers: list[Callable[[str], None]] = field(default_factory=list, repr=False)

    # --- control -------------------------------------------------------------
    def interrupt(self) -> None:
        self._interrupt.set()
        self._tell("interrupt")

    def skip(self) -> None:
        self._skip.set()
        self._tell("skip")

    def watch(self, fn: Callable[[str], None]) -> Callable[[], None]:
        """Call ``fn("interrupt")`` / ``fn("skip")`` whenever the job is interrupted or skipped (an executor
        forwards them to the worker running the job); returns the function that stops watching."""
        with self._lock:
            self._watchers.append(fn)

        def stop() -> None:
            with self._lock:
                if fn in self._watchers:
                    self._watchers.remove(fn)

        return stop

    def _tell(self, what: str) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for fn in watchers:
            try:
                fn(what)
            except Exception:  # noqa: BLE001 - a watcher never breaks the control itself
                pass

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    @property
    def skipped(self) -> bool:
        return self._skip.is_set()

    def clear_skip(self) -> None:
        self._skip.clear()

    # --- progress ------------------------------------------------------------
    def begin(self) -> None:
        self.started = time.monotonic()

    def plan(self, total: int) -> None:
        """A script announces ``total`` image groups (the batch counts of all its generations) for this job:
        ``job_count`` becomes ``total`` and each generation's batches count on from where the previous
        generation's ended, so the progress grows steadily over the whole run (A1111's ``state.job_count``)."""
        with self._lock:
            self._planned = self.job_count = max(1, int(total))
            self._offset = self._next = self.job_no = 0

    def begin_generation(self, n_iter: int) -> None:
        """The pipeline starts one generation of ``n_iter`` batches in this job."""
        with self._lock:
            if self._planned:
                self._offset = self._next
                self._next += n_iter
                self.job_count = max(self._planned, self._next)
            else:
                self.job_count = n_iter
                self._offset = 0

    def set_stage(self, job_no: int, steps: int, text: str = "") -> None:
        """Batch ``job_no`` of the current generation starts (counted on after earlier ones when planned)."""
        with self._lock:
            self.job_no = self._offset + job_no
            self.sampling_steps = steps
            self.sampling_step = 0
            self.textinfo = text

    def step(self, step: int) -> None:
        with self._lock:
            self.sampling_step = step

    def restart_generation(self) -> None:
        """The current generation starts over (its worker was lost): the next :meth:`begin_generation` counts
        its batches from where this one's began."""
        with self._lock:
            self._next = self._offset

    def end(self) -> None:
        self.finished = time.monotonic()

    @property
    def progress(self) -> float:
        """Fraction of the whole job done, in [0, 1]."""
        with self._lock:
            if self.finished is not None:
                return 1.0
            if self.job_count <= 0:
                return 0.0
            per = 1.0 / self.job_count
            frac = self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0
            return min(1.0, self.job_no * per + frac * per)

    @property
    def eta(self) -> float:
        """Seconds remaining, estimated from the time spent so far."""
        if self.started is None:
            return 0.0
        p = self.progress
        elapsed = time.monotonic() - self.started
        return 0.0 if p <= 0 else max(0.0, elapsed / p - elapsed)


@dataclass
class JobQueue:
    """Runs jobs with at most ``concurrency`` at once and ``max_size`` waiting."""

    concurrency: int = 1
    max_size: int = 16
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)
    _waiting: "OrderedDict[str, Job]" = field(init=False, default_factory=OrderedDict)
    _running: "OrderedDict[str, Job]" = field(init=False, default_factory=OrderedDict)
    _finished: "OrderedDict[str, Job]" = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    @contextmanager
    def slot(self, job: Job) -> Iterator[Job]:
        """Wait for a free slot in arrival order (FIFO), mark ``job`` running, and release on exit."""
        with self._changed:
            if len(self._waiting) >= self.max_size:
                raise QueueFull(f"the queue is full ({self.max_size} jobs waiting); try again later")
            self._waiting[job.id] = job
            self._changed.notify_all()  # whoever waits for the queue's state (wait_for) sees the new arrival
            try:
                self._wait_for_turn_locked(job)
            except BaseException:
                self._waiting.pop(job.id, None)
                self._changed.notify_all()
                job.end()
                raise
            self._waiting.pop(job.id)
            self._running[job.id] = job
            self._changed.notify_all()  # with more than one slot the next job may start too
        job.begin()
        try:
            yield job
        finally:
            with self._changed:
                self._running.pop(job.id, None)
                self._finished[job.id] = job
                while len(self._finished) > 64:
                    self._finished.popitem(last=False)
                self._changed.notify_all()
            job.end()

    def _wait_for_turn_locked(self, job: Job) -> None:
        """First come, first served: wait (holding the condition) until ``job`` is the oldest waiting job and
        a slot is free; :class:`Interrupted` when it is interrupted meanwhile (the timeout notices that)."""
        while True:
            if job.interrupted:
                raise Interrupted("interrupted while waiting in the queue")
            if len(self._running) < self.concurrency and next(iter(self._waiting)) == job.id:
                return
            self._changed.wait(timeout=0.1)

    def requeue(self, job: Job) -> None:
        """The running ``job`` goes back to the head of the queue, under the same id (its worker was lost), and
        waits there until it may run again; then it is running again. Interrupted while waiting: raises
        :class:`Interrupted` (the slot that ran it ends it as usual)."""
        with self._changed:
            self._running.pop(job.id, None)
            self._waiting[job.id] = job
            self._waiting.move_to_end(job.id, last=False)
            self._changed.notify_all()
            try:
                self._wait_for_turn_locked(job)
            finally:
                self._waiting.pop(job.id, None)
                self._changed.notify_all()
            self._running[job.id] = job

    def set_concurrency(self, concurrency: int) -> None:
        """Run up to ``concurrency`` jobs at once from now on (an executor: as many as it has workers up)."""
        with self._changed:
            self.concurrency = max(0, int(concurrency))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[Job], list[Job]], bool], timeout: float) -> bool:
        """Block until ``predicate(waiting, running)`` (the jobs, oldest first) holds, checked at every change
        of the queue (a job arrives, starts, ends or leaves); False when ``timeout`` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: predicate(list(self._waiting.values()), list(self._running.values())), timeout)

    def run(self, job: Job, fn: Callable[[Job], T]) -> T:
        with self.slot(job):
            return fn(job)

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def waiting(self) -> list[Job]:
        with self._lock:
            return list(self._waiting.values())

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._running.get(job_id) or self._waiting.get(job_id) or self._finished.get(job_id)

    def current(self) -> Job | None:
        """The oldest running job (what A1111's /progress reports)."""
        with self._lock:
            return next(iter(self._running.values()), None)

    def interrupt(self, owner: str | None = None, job_id: str | None = None) -> int:
        """Interrupt running/waiting jobs; restricted to ``owner`` or ``job_id`` if given. Returns count."""
        n = 0
        with self._lock:
            jobs = list(self._running.values()) + list(self._waiting.values())
        for job in jobs:
            if job_id is not None and job.id != job_id:
                continue
            if owner is not None and job.owner != owner:
                continue
            job.interrupt()
            n += 1
        return n

    def skip(self, owner: str | None = None) -> int:
        n = 0
        for job in self.running():
            if owner is None or job.owner == owner:
                job.skip()
                n += 1
        return n
