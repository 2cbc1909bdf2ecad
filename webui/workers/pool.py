"""The generation workers as the server sees them, and which one runs which job.

:class:`WorkerPool` keeps a :class:`WorkerRecord` per worker (state, job, checkpoints loaded, jobs done) and
runs one generation of a job with :meth:`WorkerPool.run`. The job holds its slot of the server's queue, and
the queue runs as many jobs at once as workers are up (``JobQueue.set_concurrency``), so a job with a slot
finds an idle worker. It takes the idle worker that already has its checkpoint, else one with nothing
loaded, else any idle one (jobs that wait for a worker are served in order).

- The worker is lost (process killed, node gone): the job goes back to the head of the queue under the same
  id and runs on another worker (or the same one, restarted); a job that loses two workers in a row fails
  with :class:`~webui.context.GenerationFailed` instead of taking the fleet down with it.
- The worker lacks the checkpoint (not in its ``models/``): the job goes to another worker; when no worker
  is left, the job fails with the worker's message.

Nothing here imports Ray: :mod:`webui.workers.ray_executor` gives the function that runs one attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from webui.context import GenerationFailed
from webui.jobs import Interrupted, Job, JobQueue

log = logging.getLogger(__name__)

#: the states of a worker; "starting" and "restarting" come back by themselves, "failed" does not
STATES = ("starting", "idle", "busy", "restarting", "failed")


@dataclass
class WorkerRecord:
    """One worker as ``GET /webui/v1/workers`` lists it."""

    id: int
    state: str = "starting"
    job: str | None = None  # the id of the job it runs (state "busy")
    node: str = ""
    pid: int | None = None
    device: str = ""
    checkpoints: list[str] = field(default_factory=list)  # loaded: the current one first, then its cache
    loads: int = 0  # checkpoints read from disk since it (re)started
    jobs_done: int = 0  # over its whole life, restarts included
    restarts: int = 0
    error: str = ""  # why it was lost or failed

    def learn(self, info: dict[str, Any]) -> None:
        """Take in what the worker reported (:meth:`~webui.workers.actor.GenerationWorker.info`)."""
        self.node = str(info.get("node", self.node))
        self.pid = info.get("pid", self.pid)
        self.device = str(info.get("device", self.device))
        self.checkpoints = [str(c) for c in info.get("checkpoints", self.checkpoints)]
        self.loads = int(info.get("loads", self.loads))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Done:
    """The worker answered with the result."""

    result: Any
    report: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """The worker answered with an error (``missing_checkpoint``: it does not have the checkpoint)."""

    error: BaseException
    report: dict[str, Any]
    missing_checkpoint: bool = False


@dataclass(frozen=True)
class Lost:
    """The worker went away during the attempt; ``started``: after it had taken the job."""

    reason: str
    started: bool = True


Outcome = Done | Failed | Lost


@dataclass(eq=False)
class _Waiter:
    job: Job
    checkpoint: str
    exclude: set[int]


class WorkerPool:
    """``count`` workers behind ``jobs``; ``on_lost(record)`` is called when one is lost (the executor then
    waits for it to come back and calls :meth:`up`)."""

    def __init__(self, jobs: JobQueue, count: int, on_lost: Callable[[WorkerRecord], None] = lambda r: None):
        self.jobs = jobs
        self.records = [WorkerRecord(i) for i in range(count)]
        self._on_lost = on_lost
        self._changed = threading.Condition()
        self._waiters: list[_Waiter] = []
        self._sync_concurrency()

    # --- what the executor reports -------------------------------------------------------------------------
    def up(self, index: int, info: dict[str, Any]) -> None:
        """Worker ``index`` answered (first start or back after a restart): idle."""
        with self._changed:
            record = self.records[index]
            record.learn(info)
            record.state, record.job, record.error = "idle", None, ""
            self._changed_locked()

    def lost(self, index: int, reason: str) -> None:
        """Worker ``index`` went away; Ray restarts it."""
        with self._changed:
            record = self.records[index]
            record.state, record.job, record.error = "restarting", None, reason
            record.restarts += 1
            record.checkpoints, record.loads, record.pid = [], 0, None
            self._changed_locked()
        log.warning("Generation worker %d lost (%s); it restarts", index, reason)
        self._on_lost(record)

    def failed(self, index: int, error: str) -> None:
        """Worker ``index`` cannot start (it will not come back)."""
        with self._changed:
            record = self.records[index]
            record.state, record.job, record.error = "failed", None, error
            self._changed_locked()
        log.error("Generation worker %d failed: %s", index, error)

    def learned(self, index: int, info: dict[str, Any]) -> None:
        """Worker ``index`` reported what it holds now (e.g. after unloading its checkpoints)."""
        with self._changed:
            self.records[index].learn(info)
            self._changed_locked()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._changed:
            return [r.as_dict() for r in self.records]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float) -> bool:
        """Block until ``predicate(snapshot)`` holds, checked at every change of a worker's record (up, lost,
        busy, idle, ...); False when ``timeout`` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate([r.as_dict() for r in self.records]), timeout)

    def _changed_locked(self) -> None:
        self._sync_concurrency()
        self._changed.notify_all()

    def _sync_concurrency(self) -> None:
        """The queue runs as many jobs as workers are up; when none can come back any more, jobs pass so
        that they fail with the workers' error instead of waiting for ever."""
        up = sum(r.state in ("idle", "busy") for r in self.records)
        coming = sum(r.state in ("starting", "restarting") for r in self.records)
        self.jobs.set_concurrency(up if up or coming else max(1, len(self.records)))

    # --- running a job -------------------------------------------------------------------------------------
    def run(self, job: Job, checkpoint: str, attempt: Callable[[WorkerRecord], Outcome]) -> Any:
        """Run ``attempt`` (one try of the job's generation on a worker) until a worker answers; returns the
        result or raises the worker's error. ``checkpoint``: the name of the job's checkpoint (affinity)."""
        exclude: set[int] = set()  # workers without the checkpoint
        missing: BaseException | None = None
        lost_in_a_row: list[str] = []
        front = False
        while True:
            worker = self._acquire(_Waiter(job, checkpoint, exclude), front)
            if worker is None:
                assert missing is not None
                raise missing
            try:
                outcome = attempt(worker)
            except BaseException:
                self._release(worker, None, done=False)
                raise
            if isinstance(outcome, Lost):
                if outcome.started:
                    lost_in_a_row.append(f"worker {worker.id}: {outcome.reason}")
                self.lost(worker.id, outcome.reason)
                if len(lost_in_a_row) >= 2:
                    raise GenerationFailed("this job was running on two workers in a row when they were lost ("
                                           + "; ".join(lost_in_a_row) + "); it is not tried again")
                log.warning("Job %s goes back to the head of the queue", job.id)
                self.jobs.requeue(job)
                front = True
                continue
            self._release(worker, outcome.report, done=isinstance(outcome, Done))
            if isinstance(outcome, Done):
                return outcome.result
            if not outcome.missing_checkpoint:
                raise outcome.error
            lost_in_a_row.clear()
            missing = outcome.error
            exclude.add(worker.id)
            front = True

    def _acquire(self, waiter: _Waiter, front: bool) -> WorkerRecord | None:
        """An idle worker for ``waiter`` (marked busy), waiting for one; None when no worker can serve it (all
        are excluded or failed). Interrupted while waiting: raises :class:`~webui.jobs.Interrupted`."""
        with self._changed:
            self._waiters.insert(0, waiter) if front else self._waiters.append(waiter)
            try:
                while True:
                    if waiter.job.interrupted:
                        raise Interrupted("interrupted while waiting for a worker")
                    if all(r.id in waiter.exclude or r.state == "failed" for r in self.records):
                        if not waiter.exclude:
                            errors = "; ".join(sorted({r.error for r in self.records if r.error}))
                            raise GenerationFailed(f"no generation worker could start: {errors}")
                        return None
                    worker = self._pick(waiter)
                    if worker is not None:
                        worker.state, worker.job = "busy", waiter.job.id
                        return worker
                    self._changed.wait(timeout=0.1)
            finally:
                self._waiters.remove(waiter)
                self._changed.notify_all()

    def _pick(self, me: _Waiter) -> WorkerRecord | None:
        """The worker ``me`` gets now, if any: the waiters before it choose first."""
        taken: set[int] = set()
        for waiter in self._waiters:
            choice = self._choose(waiter, taken)
            if waiter is me:
                return choice
            if choice is not None:
                taken.add(choice.id)
        return None

    def _choose(self, waiter: _Waiter, taken: set[int]) -> WorkerRecord | None:
        idle = [r for r in self.records if r.state == "idle" and r.id not in taken and r.id not in waiter.exclude]
        if not idle:
            return None
        for r in idle:  # it has the checkpoint (loaded or in its cache)
            if waiter.checkpoint and waiter.checkpoint in r.checkpoints:
                return r
        for r in idle:  # nothing loaded yet: loading there evicts nothing
            if not r.checkpoints:
                return r
        return idle[0]

    def _release(self, worker: WorkerRecord, report: dict[str, Any] | None, *, done: bool) -> None:
        with self._changed:
            if worker.state == "busy":
                worker.state, worker.job = "idle", None
            if report:
                worker.learn(report)
            if done:
                worker.jobs_done += 1
            self._changed_locked()
