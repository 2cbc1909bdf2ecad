"""Error responses in A1111's JSON shape (``error``, ``detail``, ``body``, ``errors``).

Bad input always answers 4xx naming the field; unexpected exceptions answer 500
with the exception type, and the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from webui.context import GenerationFailed
from webui.errors import ModelError, RequestError
from webui.fileio import StorageError
from webui.image_codec import InvalidImage
from webui.jobs import QueueFull
from webui.models.manager import ModelStillLoading, NoCheckpoint
from webui.settings import OptionError

log = logging.getLogger(__name__)


def error_json(status: int, error: str, detail: Any, errors: Any = None, body: Any = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail, "body": body, "errors": errors})


def field_error(status: int, error: str, field: str, message: str) -> JSONResponse:
    detail = [{"loc": ["body", field], "msg": message, "type": error}]
    return error_json(status, error, detail, errors=f"{field}: {message}")


#: The errors whose message says it all, with their status: an unusable model file (422), no checkpoint or a
#: full queue (503: try again later), a full disk or unwritable folder (507; the server's state is unchanged,
#: files are written atomically).
MESSAGE_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (ModelError, 422), (NoCheckpoint, 503), (QueueFull, 503), (StorageError, 507))


def _message_error(status: int, name: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(_req: Request, exc: Exception) -> JSONResponse:
        return error_json(status, name, str(exc), errors=str(exc))

    return handler


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
        return field_error(422, type(exc).__name__, exc.field, exc.message)  # also UnknownChoice

    @app.exception_handler(InvalidImage)
    async def _invalid_image(_req: Request, exc: InvalidImage) -> JSONResponse:
        return field_error(422, "InvalidImage", exc.field, str(exc))

    @app.exception_handler(OptionError)
    async def _option_error(_req: Request, exc: OptionError) -> JSONResponse:
        detail = [{"loc": ["body", k], "msg": v, "type": "OptionError"} for k, v in exc.errors.items()]
        return error_json(422, "OptionError", detail, errors=str(exc))

    for kind, status in MESSAGE_ERRORS:
        app.add_exception_handler(kind, _message_error(status, kind.__name__))

    @app.exception_handler(ModelStillLoading)
    async def _still_loading(_req: Request, exc: ModelStillLoading) -> JSONResponse:
        response = error_json(503, "ModelStillLoading", str(exc), errors=str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(GenerationFailed)
    async def _generation_failed(_req: Request, exc: GenerationFailed) -> JSONResponse:
        # not the request's fault: out of memory answers 507 (insufficient storage), anything else 500
        return error_json(507 if exc.out_of_memory else 500, "GenerationFailed", str(exc), errors=str(exc))

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
