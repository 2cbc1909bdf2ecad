"""Error responses in A1111's JSON shape (``error``, ``detail``, ``body``, ``errors``).

Bad input always answers 4xx naming the field; unexpected exceptions answer 500
with the exception type, and the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from webui.api.images import InvalidImage
from webui.fileio import StorageError
from webui.jobs import QueueFull
from webui.models.errors import ModelError
from webui.models.manager import NoCheckpoint, UnknownCheckpoint
from webui.pipeline.request import RequestError
from webui.sampling.registry import UnknownName
from webui.settings import OptionError

log = logging.getLogger(__name__)


def error_json(status: int, error: str, detail: Any, errors: Any = None, body: Any = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail, "body": body, "errors": errors})


def field_error(status: int, error: str, field: str, message: str) -> JSONResponse:
    detail = [{"loc": ["body", field], "msg": message, "type": error}]
    return error_json(status, error, detail, errors=f"{field}: {message}")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errs
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in d['loc'][1:]) or 'body'}: {d['msg']}" for d in detail)
        return error_json(422, "RequestValidationError", detail, errors=summary)

    @app.exception_handler(RequestError)
    async def _request_error(_req: Request, exc: RequestError) -> JSONResponse:
        return field_error(422, "RequestError", exc.field, exc.message)

    @app.exception_handler(UnknownName)
    async def _unknown_name(_req: Request, exc: UnknownName) -> JSONResponse:
        return field_error(422, "UnknownName", exc.field_name, str(exc))

    @app.exception_handler(InvalidImage)
    async def _invalid_image(_req: Request, exc: InvalidImage) -> JSONResponse:
        return field_error(422, "InvalidImage", exc.field, str(exc))

    @app.exception_handler(OptionError)
    async def _option_error(_req: Request, exc: OptionError) -> JSONResponse:
        detail = [{"loc": ["body", k], "msg": v, "type": "OptionError"} for k, v in exc.errors.items()]
        return error_json(422, "OptionError", detail, errors=str(exc))

    @app.exception_handler(UnknownCheckpoint)
    async def _unknown_ckpt(_req: Request, exc: UnknownCheckpoint) -> JSONResponse:
        return field_error(422, "UnknownCheckpoint", "sd_model_checkpoint", str(exc))

    @app.exception_handler(ModelError)
    async def _model_error(_req: Request, exc: ModelError) -> JSONResponse:
        return error_json(422, "ModelError", str(exc), errors=str(exc))

    @app.exception_handler(NoCheckpoint)
    async def _no_ckpt(_req: Request, exc: NoCheckpoint) -> JSONResponse:
        return error_json(503, "NoCheckpoint", str(exc), errors=str(exc))

    @app.exception_handler(QueueFull)
    async def _queue_full(_req: Request, exc: QueueFull) -> JSONResponse:
        return error_json(503, "QueueFull", str(exc), errors=str(exc))

    @app.exception_handler(StorageError)
    async def _storage(_req: Request, exc: StorageError) -> JSONResponse:
        # a full disk or unwritable folder: the server's state is unchanged (files are written atomically)
        return error_json(507, "StorageError", str(exc), errors=str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": type(exc).__name__, "detail": exc.detail, "body": None, "errors": str(exc.detail)},
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("Unhandled error in API request")
        return error_json(500, type(exc).__name__, str(exc), errors=str(exc))
