"""What a generation worker tells the server about the job it runs, and how the server's job takes it in.

The worker runs the pipeline on a :class:`ReportingJob`, its copy of the server's :class:`~webui.jobs.Job`:
each progress call of the pipeline (a generation begins, a batch begins, a step ends) is also queued as an
event, and the worker streams the queued events, with the text and the live preview when they changed, to
the server, where :func:`apply_events` replays them on the server's job: the one ``/sdapi/v1/progress``
and the UI read. Events are plain tuples:

- ``("started", pid)``: the worker took the job;
- ``("generation", n_iter)``: :meth:`~webui.jobs.Job.begin_generation`;
- ``("stage", job_no, steps, text)``: :meth:`~webui.jobs.Job.set_stage` (a new batch: the skip flag is cleared
  first, as the pipeline does);
- ``("step", step)``: :meth:`~webui.jobs.Job.step`;
- ``("text", textinfo)``, ``("preview", image)``: the job's text and live preview changed;
- last, ``("result", result, report)`` or ``("error", exception, missing_checkpoint, report)``, where
  ``report`` is the worker's :meth:`~webui.workers.actor.GenerationWorker.info`.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from webui.jobs import Job

Event = tuple[Any, ...]


@dataclass
class ReportingJob(Job):
    """A worker's copy of a server job: what the pipeline does to it is queued as events for the server."""

    attempt: str = ""  # which try of the server's job this is (a lost worker's job runs again elsewhere)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)
    _sent_text: str = field(default="", repr=False)
    _sent_image: Any = field(default=None, repr=False)

    def begin_generation(self, n_iter: int) -> None:
        super().begin_generation(n_iter)
        self.events.put(("generation", n_iter))

    def set_stage(self, job_no: int, steps: int, text: str = "") -> None:
        super().set_stage(job_no, steps, text)
        self._sent_text = text
        self.events.put(("stage", job_no, steps, text))

    def step(self, step: int) -> None:
        super().step(step)
        self.events.put(("step", step))

    def finish(self) -> None:
        """The work is over: :meth:`drain` says so once the events before are out."""
        self.events.put(None)

    def drain(self, timeout: float) -> tuple[list[Event], bool]:
        """``(events, ended)``: the events queued since the last call (waiting up to ``timeout`` seconds for
        the first), then the text and the preview if they changed; ``ended`` once :meth:`finish` was called."""
        out: list[Event] = []
        ended = False
        try:
            item = self.events.get(timeout=timeout)
            while True:
                if item is None:
                    ended = True
                    break
                out.append(item)
                item = self.events.get_nowait()
        except queue.Empty:
            pass
        if self.textinfo != self._sent_text:
            self._sent_text = self.textinfo
            out.append(("text", self.textinfo))
        image = self.current_image
        if image is not None and image is not self._sent_image:
            self._sent_image = image
            out.append(("preview", image))
        return out, ended


def apply_events(job: Job, events: Iterable[Event]) -> bool:
    """Replay a worker's progress ``events`` on the server's ``job``; True when a generation began (its
    batches then count in the job's progress, see :meth:`~webui.jobs.Job.restart_generation`)."""
    began = False
    for event in events:
        kind = event[0]
        if kind == "generation":
            job.begin_generation(int(event[1]))
            began = True
        elif kind == "stage":
            job.clear_skip()
            job.set_stage(int(event[1]), int(event[2]), str(event[3]))
        elif kind == "step":
            job.step(int(event[1]))
        elif kind == "text":
            job.textinfo = str(event[1])
        elif kind == "preview":
            job.current_image = event[1]
    return began
