"""A1111's training routes: ``POST /sdapi/v1/create/embedding`` and ``POST /sdapi/v1/train/embedding``.

Bodies are A1111's (a JSON object with ``create_embedding`` / ``train_embedding``'s argument names); answers
are A1111's ``{"info": "create embedding filename: <path>"}`` and
``{"info": "train embedding complete: filename: <path> error: None"}``. Where A1111 answers 200 with an
``... error: <message>`` info for bad input, this API answers 422 naming the field (the project's rule);
an interrupted run answers 200 with the saved file, as A1111 does.
"""

from __future__ import annotations

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


def build_lora_router(ctx: AppContext) -> APIRouter:
    """``POST /webui/v1/train/lora`` (kohya's parameter names) -> ``{"id": ...}``; ``GET /webui/v1/train`` (every
    known run, newest first, API and UI ones), ``GET /webui/v1/train/{id}`` (status, step, progress, loss history,
    previews, the file); ``POST /webui/v1/train/{id}/interrupt``."""
    import threading

    from webui.finetune.lora_train import LoraTrainParams
    from webui.train_jobs import train_lora

    r = APIRouter(prefix="/webui/v1", tags=["webui"])
    runs = ctx.training_runs

    def work(run, params) -> None:
        try:
            run.finish(train_lora(ctx, params, run.job, on_step=run.follow))
        except RequestError as exc:
            run.fail(f"{exc.field}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - reported to the client, the server goes on
            run.fail(f"{type(exc).__name__}: {exc}")

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
        run = runs.start("lora", Job(kind="train_lora"))
        threading.Thread(target=work, args=(run, params), name=f"lora-{run.id}", daemon=True).start()
        return {"id": run.id}

    @r.get("/train")
    def list_runs() -> list[dict[str, Any]]:
        return [run.describe(current_preview=False) for run in runs.all()]

    @r.get("/train/{run_id}")
    def status(run_id: str, skip_current_preview: bool = False) -> dict[str, Any]:
        run = runs.get(run_id)
        if run is None:
            raise HTTPException(404, f"no training run {run_id!r}")
        return run.describe(not skip_current_preview)

    @r.post("/train/{run_id}/interrupt")
    def interrupt(run_id: str) -> dict[str, Any]:
        run = runs.get(run_id)
        if run is None:
            raise HTTPException(404, f"no training run {run_id!r}")
        run.job.interrupt()
        return run.describe()

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
