"""Training runs the server knows of, whoever started them (the API's ``POST /webui/v1/train/lora`` or the UI's
Train tab): status, progress, loss history and previews for ``GET /webui/v1/train[/{id}]``. One registry per
application context; finished runs beyond the newest ``keep`` are forgotten."""

from __future__ import annotations

import base64
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.jobs import Job


@dataclass
class TrainingRun:
    kind: str  # "lora" / "embedding"
    job: Job
    source: str = "api"  # "api" / "ui"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: str = "queued"  # queued / running / done / interrupted / failed
    losses: list[float] = field(default_factory=list)
    previews: list[dict[str, Any]] = field(default_factory=list)  # {"step", "path"}
    path: str | None = None
    run_folder: str | None = None
    error: str | None = None
    result: Any = None
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def follow(self, step: int, loss: float, image: Any = None) -> None:
        """A training loop's ``on_step``: one more loss (and preview)."""
        self.status = "running"
        self.losses.append(float(loss))
        if image is not None:
            self.previews.append({"step": step, "path": str(image)})

    def finish(self, result: Any) -> None:
        """The run's result: a LoRA run's summary dict or a textual-inversion ``TrainResult``."""
        self.result = result
        get = result.get if isinstance(result, dict) else lambda key, default=None: getattr(result, key, default)
        self.path = str(get("path")) if get("path") is not None else None
        self.run_folder = str(get("run_folder")) if get("run_folder") is not None else None
        losses = get("losses")
        if losses is not None:
            self.losses = [float(x) for x in losses]
        self.status = "interrupted" if get("interrupted") else "done"
        self._ended.set()

    def fail(self, message: str) -> None:
        self.status, self.error = "failed", message
        self._ended.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ended (done, interrupted or failed); False when ``timeout`` seconds passed first."""
        return self._ended.wait(timeout)

    def describe(self, current_preview: bool = True) -> dict[str, Any]:
        """Status, progress, loss history, previews (paths; ``current_preview``: the latest as base64 PNG)."""
        job = self.job
        latest = None
        if current_preview and self.previews:
            try:
                latest = base64.b64encode(Path(self.previews[-1]["path"]).read_bytes()).decode("ascii")
            except OSError:
                latest = None
        done = self.status in ("done", "interrupted")
        return {"id": self.id, "kind": self.kind, "source": self.source, "status": self.status,
                "step": job.sampling_step, "steps": job.sampling_steps,
                "progress": job.progress if self.status == "running" else (1.0 if self.status == "done" else 0.0),
                "textinfo": job.textinfo, "losses": list(self.losses), "path": self.path if done else None,
                "error": self.error, "run_folder": self.run_folder, "previews": list(self.previews),
                "current_preview": latest}


class TrainingRuns:
    def __init__(self, keep: int = 50):
        self.keep = keep
        self._runs: OrderedDict[str, TrainingRun] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, kind: str, job: Job, source: str = "api") -> TrainingRun:
        run = TrainingRun(kind, job, source)
        with self._lock:
            self._runs[run.id] = run
            finished = [k for k, r in self._runs.items() if r.status not in ("queued", "running")]
            for key in finished[:max(0, len(self._runs) - self.keep)]:
                del self._runs[key]
        return run

    def get(self, run_id: str) -> TrainingRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def all(self) -> list[TrainingRun]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._runs.values()))
