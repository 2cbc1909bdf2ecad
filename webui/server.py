"""The server: a FastAPI app with the API routes and the Gradio UI mounted on it."""

from __future__ import annotations

import base64
import logging
import secrets
import time

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.middleware.cors import CORSMiddleware

from webui import __version__
from webui.api.errors import install_error_handlers
from webui.api.routes import build_router
from webui.context import AppContext

log = logging.getLogger(__name__)


def parse_credentials(spec: str | None) -> list[tuple[str, str]]:
    """``user:pass[,user2:pass2]`` -> list of pairs."""
    pairs = []
    for item in (spec or "").split(","):
        item = item.strip()
        if item and ":" in item:
            user, _, password = item.partition(":")
            pairs.append((user, password))
    return pairs


def _basic_auth_dependency(creds: list[tuple[str, str]]):
    security = HTTPBasic(auto_error=False)

    def check(credentials: HTTPBasicCredentials | None = Depends(security)) -> None:
        from fastapi import HTTPException

        if credentials is not None:
            for user, password in creds:
                if secrets.compare_digest(credentials.username, user) and secrets.compare_digest(
                    credentials.password, password
                ):
                    return
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return check


def create_app(ctx: AppContext) -> FastAPI:
    """Build the FastAPI app: API under /sdapi/v1, plugin routes, and (unless --nowebui) the UI at /."""
    s = ctx.settings
    api_creds = parse_credentials(s.api_auth)
    deps = [Depends(_basic_auth_dependency(api_creds))] if api_creds else []
    app = FastAPI(title="Stable Diffusion web UI API", version=__version__, dependencies=deps if s.nowebui else [])
    install_error_handlers(app)
    if s.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(s.cors_allow_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)

    max_body = s.max_body_mb * 1024 * 1024

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            return JSONResponse(status_code=413, content={
                "error": "PayloadTooLarge", "detail": f"request body over {s.max_body_mb} MB", "body": None,
                "errors": f"request body over {s.max_body_mb} MB"})
        start = time.perf_counter()
        response = await call_next(request)
        if s.api_log and request.url.path.startswith("/sdapi"):
            log.info("API %s %s -> %s in %.3fs", request.method, request.url.path, response.status_code,
                     time.perf_counter() - start)
        return response

    app.include_router(build_router(ctx), dependencies=deps)
    plugin_router = APIRouter(dependencies=deps)
    ctx.hooks.api_routes(plugin_router, ctx)
    app.include_router(plugin_router)

    if not s.nowebui:
        import gradio as gr

        from webui.ui.app import build_ui

        demo = build_ui(ctx)
        ui_auth = parse_credentials(s.gradio_auth) or None
        app = gr.mount_gradio_app(app, demo, path="", auth=ui_auth, footer_links=["api", "settings"],
                                  show_error=True)
    return app


def _basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
