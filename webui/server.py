"""The server: a FastAPI app with the API routes and the Gradio UI mounted on it."""

from __future__ import annotations

import base64
import logging
import secrets
import time

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.middleware.cors import CORSMiddleware

from webui import __version__
from webui.api.errors import install_error_handlers
from webui.api.routes import build_router
from webui.api.routes_misc import build_misc_router
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


def _docs_router(app: FastAPI, deps: list) -> APIRouter:
    """``/openapi.json``, ``/docs`` and ``/redoc`` behind the API auth (FastAPI's own doc routes are plain
    Starlette routes that no dependency reaches, so with ``--api-auth`` they are replaced by these)."""
    r = APIRouter(dependencies=deps, include_in_schema=False)
    title = app.title + " - docs"

    @r.get("/openapi.json")
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @r.get("/docs")
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=title,
                                   oauth2_redirect_url="/docs/oauth2-redirect")

    @r.get("/docs/oauth2-redirect")
    def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @r.get("/redoc")
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=title)

    return r


_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _not_found(request: Request) -> JSONResponse:
    """Unknown API path (after auth): 405 if the path exists with another method, else 404, in A1111's shape."""
    from fastapi.routing import iter_route_contexts

    path = request.url.path
    allowed: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex, methods = getattr(route, "path_regex", None), route.methods
        if regex is None or not methods or getattr(route, "endpoint", None) is _not_found:
            continue
        if regex.match(path):
            allowed |= set(methods)
    if allowed:
        msg = f"method {request.method} not allowed on {path}; allowed: {', '.join(sorted(allowed))}"
        return JSONResponse(status_code=405, headers={"Allow": ", ".join(sorted(allowed))},
                            content={"error": "MethodNotAllowed", "detail": msg, "body": None, "errors": msg})
    msg = f"no route {path}"
    return JSONResponse(status_code=404, content={"error": "NotFound", "detail": msg, "body": None, "errors": msg})


def create_app(ctx: AppContext) -> FastAPI:
    """Build the FastAPI app: API under /sdapi/v1, plugin routes, and (unless --nowebui) the UI at /.

    With ``--api-auth`` every API route, every plugin route, unknown ``/sdapi/...`` paths (every
    unknown path with ``--nowebui``) and the docs (``/docs``, ``/redoc``, ``/openapi.json``) need HTTP
    Basic auth; the Gradio UI is guarded by ``--gradio-auth`` instead.
    """
    s = ctx.settings
    api_creds = parse_credentials(s.api_auth)
    deps = [Depends(_basic_auth_dependency(api_creds))] if api_creds else []
    no_docs = {"openapi_url": None, "docs_url": None, "redoc_url": None} if api_creds else {}
    app = FastAPI(title="Stable Diffusion web UI API", version=__version__, **no_docs)
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
    app.include_router(build_misc_router(ctx), dependencies=deps)
    plugin_router = APIRouter(dependencies=deps)
    ctx.hooks.api_routes(plugin_router, ctx)
    app.include_router(plugin_router)
    if api_creds:
        app.include_router(_docs_router(app, deps))
    # Unknown API paths answer 404/405 (after auth) instead of falling through to the UI.
    fallback = APIRouter(dependencies=deps, include_in_schema=False)
    fallback.add_api_route("/sdapi/{rest:path}", _not_found, methods=_ALL_METHODS)
    if s.nowebui:
        fallback.add_api_route("/{rest:path}", _not_found, methods=_ALL_METHODS)
    app.include_router(fallback)

    if not s.nowebui:
        import gradio as gr

        from webui.ui.app import build_ui
        from webui.ui.assets import page_css_and_head

        demo = build_ui(ctx)
        ui_auth = parse_credentials(s.gradio_auth) or None
        css, head = page_css_and_head(ctx)  # plugins' and extension folders' JS/CSS
        app = gr.mount_gradio_app(app, demo, path="", auth=ui_auth, footer_links=["api", "settings"],
                                  show_error=True, css=css or None, head=head or None)
    return app


def _basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
