"""Running a request from the UI: a worker thread, Gradio progress, readable errors."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from webui.context import AppContext, GenerationFailed
from webui.errors import ModelError, RequestError
from webui.fileio import StorageError
from webui.jobs import Job, QueueFull
from webui.models.manager import ModelStillLoading, NoCheckpoint
from webui.pipeline.request import GenerationRequest
from webui.pipeline.result import GenerationResult

T = TypeVar("T")
log = logging.getLogger(__name__)

USER_ERRORS = (RequestError, ModelError, NoCheckpoint, ModelStillLoading, QueueFull, GenerationFailed, StorageError)


def user_error(exc: BaseException) -> gr.Error:
    if isinstance(exc, RequestError):
        return gr.Error(f"{exc.field}: {exc.message}")
    if isinstance(exc, USER_ERRORS):
        return gr.Error(str(exc))
    return gr.Error(f"Generation failed: {type(exc).__name__}: {exc}")


@dataclass
class Preview:
    """A live preview to show while a job runs (see :func:`stream_with_progress`)."""

    image: Any  # PIL image (job.current_image)
    text: str  # progress text, e.g. "Batch 1 out of 1 - step 4/20"


def stream_with_progress(ctx: AppContext, req: GenerationRequest, owner: str | None, progress: gr.Progress,
                         prefix: str = "", script: tuple[str, Any] | None = None
                         ) -> Generator[Preview, None, GenerationResult]:
    """Run ``req`` in a worker thread, report its progress to Gradio and yield a :class:`Preview` each time
    the job's live preview (``job.current_image``) changes; returns the result. Closing the generator
    (the UI event was cancelled) interrupts the job. ``script``: ``(name, args)`` runs that selectable
    script on ``req`` (:meth:`AppContext.run_script`) instead of one generation."""
    job = Job(kind=req.mode, owner=owner)
    box: dict[str, Any] = {}
    client_connected = gradio_event_alive()

    def work() -> None:
        try:
            if script is not None:
                box["result"] = ctx.run_script(req, script[0], script[1], job)
            else:
                box["result"] = ctx.generate(req, job)
        except BaseException as exc:  # noqa: BLE001 - handed to the UI thread
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"job-{job.id[:8]}", daemon=True)
    thread.start()
    shown = None
    try:
        while thread.is_alive():
            thread.join(0.2)
            if not job.interrupted and not client_connected():
                log.info("The browser of job %s went away; interrupting it", job.id[:8])
                job.interrupt()
            if job.sampling_steps:
                desc = f"{prefix}{job.textinfo} - step {job.sampling_step}/{job.sampling_steps}".strip(" -")
                progress(job.progress, desc=desc)
            else:
                desc = prefix + ("Waiting in queue" if job.started is None else "Preparing")
                progress(0.0, desc=desc)
            image = job.current_image
            if image is not None and image is not shown and thread.is_alive():
                shown = image
                yield Preview(image, desc)
    except GeneratorExit:
        job.interrupt()
        raise
    if "error" in box:
        raise user_error(box["error"])
    return box["result"]


def gradio_event_alive() -> Callable[[], bool]:
    """A check whether the Gradio event that runs the calling handler is still wanted.

    Gradio marks an event dead (``alive = False``) when its client's event stream closes (tab closed,
    network gone), but it can only stop a handler between two yields; a job runs in a worker thread for
    many seconds without yielding, so :func:`stream_with_progress` polls this and interrupts the job. Outside
    a Gradio event (tests, scripts) the check always answers True."""
    try:
        from gradio.context import LocalContext

        blocks = LocalContext.blocks.get(None)
        event_id = LocalContext.event_id.get(None)
    except Exception:  # noqa: BLE001 - another Gradio version: no cancellation on disconnect
        return lambda: True
    if blocks is None or event_id is None:
        return lambda: True

    def alive() -> bool:
        queue = getattr(blocks, "_queue", None)
        for batch in list(getattr(queue, "active_jobs", None) or ()):
            for event in list(batch or ()):
                if getattr(event, "_id", None) == event_id:
                    return bool(getattr(event, "alive", True))
        return True

    return alive


def drain(stream: Generator[Any, None, T]) -> T:
    """Run a generator to its end, dropping what it yields; returns its return value."""
    while True:
        try:
            next(stream)
        except StopIteration as stop:
            return stop.value


def map_yields(stream: Generator[Any, None, T], fn: Callable[[Any], Any]) -> Generator[Any, None, T]:
    """``stream`` with ``fn`` applied to each yielded item; returns what ``stream`` returns."""
    try:
        while True:
            try:
                item = next(stream)
            except StopIteration as stop:
                return stop.value
            yield fn(item)
    finally:
        stream.close()


def run_with_progress(ctx: AppContext, req: GenerationRequest, owner: str | None, progress: gr.Progress,
                      prefix: str = "", script: tuple[str, Any] | None = None) -> GenerationResult:
    """Run ``req`` (or the ``script`` ``(name, args)`` on it) in a worker thread and report its progress to
    Gradio until it ends (no previews shown)."""
    return drain(stream_with_progress(ctx, req, owner, progress, prefix, script))


def named_handler(names: list[str], fn: Any) -> Any:
    """A Gradio event handler whose parameters are ``names`` (so API clients see and may pass them by
    keyword) followed by the request and progress Gradio injects; calls ``fn(values_by_name, request,
    progress)``. When ``fn`` is a generator function the handler is one too (Gradio streams what it
    yields; API clients' ``predict`` gets the last output)."""

    if inspect.isgeneratorfunction(fn):
        def handler(*args: Any) -> Any:
            values = dict(zip(names, args[:len(names)]))
            yield from fn(values, args[len(names)], args[len(names) + 1])
    else:
        def handler(*args: Any) -> Any:
            values = dict(zip(names, args[:len(names)]))
            return fn(values, args[len(names)], args[len(names) + 1])

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    # default None: API clients may leave out any field (a component's own value is the default)
    params = [inspect.Parameter(n, kind, default=None) for n in names]
    params += [inspect.Parameter("request", kind, annotation=gr.Request, default=None),
               inspect.Parameter("progress", kind, default=gr.Progress())]
    handler.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = getattr(fn, "__name__", "handler")
    return handler
