"""A1111's training routes: ``POST /sdapi/v1/create/embedding`` and ``POST /sdapi/v1/train/embedding``.

Bodies are A1111's (a JSON object with ``create_embedding`` / ``train_embedding``'s argument names); answers
are A1111's ``{"info": "create embedding filename: <path>"}`` and
``{"info": "train embedding complete: filename: <path> error: None"}``. Where A1111 answers 200 with an
``... error: <message>`` info for bad input, this API answers 422 naming the field (the project's rule);
an interrupted run answers 200 with the saved file, as A1111 does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel

from webui.context import AppContext
from webui.errors import RequestError
from webui.finetune.textual_inversion import TrainEmbeddingParams
from webui.jobs import Job
from webui.train_jobs import create_embedding, train_embedding


class CreateResponse(BaseModel):
    info: str


class TrainResponse(BaseModel):
    info: str


def _field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        return kind(value)
    except (TypeError, ValueError):
        raise RequestError(name, f"expected a {kind.__name__}, got {value!r}") from None


class LoraRun:
    """One LoRA training run started by ``POST /webui/v1/train/lora`` (kept per app, not per module)."""

    def __init__(self, run_id: str, params: Any, job: Job):
        self.id, self.params, self.job = run_id, params, job
        self.status = "queued"
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.losses: list[float] = []
        self.previews: list[dict[str, Any]] = []  # {"step", "path"} of the samples drawn so far

    def describe(self, current_preview: bool = True) -> dict[str, Any]:
        """Status, progress, loss history, previews (paths; ``current_preview``: the latest as base64 PNG)."""
        job = self.job
        latest = None
        if current_preview and self.previews:
            import base64

            try:
                latest = base64.b64encode(Path(self.previews[-1]["path"]).read_bytes()).decode("ascii")
            except OSError:
                latest = None
        return {"id": self.id, "status": self.status, "step": job.sampling_step, "steps": job.sampling_steps,
                "progress": job.progress if self.status == "running" else (1.0 if self.status == "done" else 0.0),
                "textinfo": job.textinfo, "losses": (self.result or {}).get("losses", self.losses),
                "path": str(self.result["path"]) if self.result else None, "error": self.error,
                "run_folder": str(self.result["run_folder"]) if self.result else None,
                "previews": list(self.previews), "current_preview": latest}


def build_lora_router(ctx: AppContext) -> APIRouter:
    """``POST /webui/v1/train/lora`` (kohya's parameter names) -> ``{"id": ...}``; ``GET /webui/v1/train/{id}``
    (status, step, progress, loss history, the file); ``POST /webui/v1/train/{id}/interrupt``."""
    import threading
    import uuid

    from webui.finetune.lora_train import LoraTrainParams
    from webui.train_jobs import train_lora

    r = APIRouter(prefix="/webui/v1", tags=["webui"])
    runs: dict[str, LoraRun] = {}

    def work(run: LoraRun) -> None:
        try:
            def follow(step: int, loss: float, image: Any = None) -> None:
                run.status = "running"
                run.losses.append(loss)
                if image is not None:
                    run.previews.append({"step": step, "path": str(image)})

            run.result = train_lora(ctx, run.params, run.job, on_step=follow)
            run.status = "interrupted" if run.result.get("interrupted") else "done"
        except RequestError as exc:
            run.status, run.error = "failed", f"{exc.field}: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - reported to the client, the server goes on
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"

    @r.post("/train/lora")
    def start(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        params = LoraTrainParams.from_request(body)
        from webui.finetune.dataset import image_files
        from webui.finetune.lora_train import _check

        _check(params)
        image_files(params.train_data_dir, field_name="train_data_dir")  # 422 now; the run decodes them
        target = ctx.settings.model_dir("Lora") / f"{params.output_name}.safetensors"
        if target.exists() and not (params.overwrite or params.resume):
            raise RequestError("output_name", f"{target} already exists (set overwrite to replace it)")
        run = LoraRun(uuid.uuid4().hex[:12], params, Job(kind="train_lora"))
        runs[run.id] = run
        threading.Thread(target=work, args=(run,), name=f"lora-{run.id}", daemon=True).start()
        return {"id": run.id}

    @r.get("/train/{run_id}")
    def status(run_id: str, skip_current_preview: bool = False) -> dict[str, Any]:
        if run_id not in runs:
            raise HTTPException(404, f"no training run {run_id!r}")
        return runs[run_id].describe(not skip_current_preview)

    @r.post("/train/{run_id}/interrupt")
    def interrupt(run_id: str) -> dict[str, Any]:
        if run_id not in runs:
            raise HTTPException(404, f"no training run {run_id!r}")
        runs[run_id].job.interrupt()
        return runs[run_id].describe()

    return r


def build_train_router(ctx: AppContext) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])

    @r.post("/create/embedding", response_model=CreateResponse)
    def post_create_embedding(body: dict[str, Any] = Body(...)) -> CreateResponse:  # noqa: B008 - FastAPI's way
        """A1111's Create embedding: ``name``, ``num_vectors_per_token`` (1), ``init_text`` ("*"),
        ``overwrite_old`` (false)."""
        if "name" not in body:
            raise RequestError("name", "required")
        path = create_embedding(ctx, _field(body, "name", str, ""), _field(body, "num_vectors_per_token", int, 1),
                                _field(body, "init_text", str, "*"), _field(body, "overwrite_old", bool, False))
        return CreateResponse(info=f"create embedding filename: {path}")

    @r.post("/train/embedding", response_model=TrainResponse)
    def post_train_embedding(body: dict[str, Any] = Body(...)) -> TrainResponse:  # noqa: B008
        """A1111's Train embedding with its argument names (``embedding_name``, ``learn_rate``, ``batch_size``,
        ``gradient_step``, ``data_root``, ``steps``, ``template_filename``, ...); blocks until the run ends,
        as in A1111 (progress: ``GET /sdapi/v1/progress``; stop: ``POST /sdapi/v1/interrupt``)."""
        result = train_embedding(ctx, TrainEmbeddingParams.from_request(body))
        return TrainResponse(info=f"train embedding complete: filename: {result.path} error: None")

    return r
