"""The server: a FastAPI app with the API routes and the Gradio UI mounted on it."""

from __future__ import annotations

import logging
import re
import secrets
import time

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.middleware.cors import CORSMiddleware

from webui import __version__
from webui.api.errors import install_error_handlers
from webui.api.models import ErrorResponse
from webui.api.routes import build_router
from webui.api.routes_misc import build_misc_router
from webui.api.routes_train import build_lora_router, build_train_router
from webui.api.routes_workers import build_workers_router
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


def api_credentials(settings) -> list[tuple[str, str]]:
    """Who may use the API and the docs: ``--api-auth``, else the ``--gradio-auth`` users (one auth layer:
    with either flag nothing is open)."""
    return parse_credentials(settings.api_auth) or parse_credentials(settings.gradio_auth)


def ui_credentials(settings) -> list[tuple[str, str]]:
    """Who may log in to the UI: ``--gradio-auth``, else the ``--api-auth`` users."""
    return parse_credentials(settings.gradio_auth) or parse_credentials(settings.api_auth)


#: UI paths answered without a login while auth is on: the login page and the static files it needs
UI_PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/logout", "/theme.css", "/favicon.ico", "/manifest.json",
                             "/robots.txt", "/gradio_api/login_check", "/gradio_api/login_check/"})
UI_PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/")


def _error_body(status: int, error: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None):
    import json

    body = json.dumps({"error": error, "detail": detail, "body": None, "errors": detail}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *(headers or [])]}
    return start, {"type": "http.response.body", "body": body}


class Guard:
    """The outermost HTTP layer (plain ASGI, so streamed responses and client-disconnect detection pass
    through untouched):

    * a request body over ``max_body`` bytes answers 413, by its ``Content-Length`` or, for a chunked
      body, as soon as the bytes read pass the limit (the application then sees a disconnect);
    * with auth on, a UI path (anything that is not an API, plugin or docs route) needs a logged-in UI
      session (Gradio's session cookie) except the login page and its static files: otherwise 401 —
      this covers Gradio's own routes, its file routes and unknown paths alike (API routes check HTTP
      Basic themselves, see :func:`create_app`);
    * file routes (``.../file=...``) never serve dot-files, dot-folders or ``..`` paths (404), whatever
      Gradio would allow;
    * ``--api-log``: one line per ``/sdapi`` request.
    """

    def __init__(self, app, *, max_body: int, api_log: bool, ui_gate: bool, is_api_path, ui_user,
                 file_roots: tuple[str, ...] = ()):
        self.app = app
        self.file_roots = file_roots
        self.max_body = max_body
        self.api_log = api_log
        self.ui_gate = ui_gate
        self.is_api_path = is_api_path
        self.ui_user = ui_user

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = scope.get("headers") or []
        refusal = self._declared_too_large(headers) or self._hidden_file(path) or self._login_needed(path, headers)
        if refusal is not None:
            for message in _error_body(*refusal):
                await send(message)
            return
        if self.ui_gate and path == "/" and self.ui_user(headers) is None:
            send = _without_api_info(send)  # the login page: no description of the app's endpoints
        await self._run_within_limit(scope, receive, send, path)

    def _limit_text(self) -> str:
        return f"request body over {self.max_body // (1024 * 1024)} MB"

    def _declared_too_large(self, headers) -> tuple[int, str, str] | None:
        """413 when the ``Content-Length`` header is over the limit."""
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            return 413, "PayloadTooLarge", self._limit_text()
        return None

    def _hidden_file(self, path: str) -> tuple[int, str, str] | None:
        """404 for a file route to a dot-file, a dot-folder (.env, .git, ...) or a ``..`` path, below the
        served folders (which may themselves lie in a dot-folder such as ~/.cache)."""
        if "file=" not in path or self.is_api_path(path):
            return None
        target = path.split("file=", 1)[1].replace("\\", "/")
        for root in self.file_roots:
            if target.startswith(root + "/"):
                target = target[len(root) + 1:]
                break
        if any(part.startswith(".") for part in target.split("/") if part):
            return 404, "NotFound", "no such file"
        return None

    def _login_needed(self, path: str, headers) -> tuple[int, str, str] | None:
        """401 for a UI path without a logged-in UI session, when auth is on."""
        if self.ui_gate and not self.is_api_path(path) and path not in UI_PUBLIC_PATHS \
                and not path.startswith(UI_PUBLIC_PREFIXES) and self.ui_user(headers) is None:
            return 401, "Unauthorized", "log in first (this server has --gradio-auth/--api-auth)"
        return None

    async def _run_within_limit(self, scope, receive, send, path: str) -> None:
        """Run the application, counting the body it reads: past the limit it sees a disconnect and the
        client gets 413 (a chunked body has no ``Content-Length``); with ``--api-log``, one line per
        ``/sdapi`` request."""
        state = {"read": 0, "over": False, "started": False}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_body:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["over"]:
                return  # the 413 below replaces whatever the application answers
            if message["type"] == "http.response.start":
                state["started"] = True
                if self.api_log and path.startswith("/sdapi"):
                    log.info("API %s %s -> %s in %.3fs", scope.get("method"), path, message.get("status"),
                             time.perf_counter() - start)
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            for message in _error_body(413, "PayloadTooLarge", self._limit_text()):
                await send(message)


_API_INFO = re.compile(rb"<script>window\.gradio_api_info = .*?;</script>", re.DOTALL)


def _without_api_info(send):
    """``send`` for Gradio's page that drops the ``window.gradio_api_info`` script from it: Gradio puts the
    description of every endpoint (names, parameters, defaults) into the login page too."""
    held: dict = {}
    body = bytearray()

    async def wrapped(message):
        if message["type"] == "http.response.start":
            held["start"] = message
            return
        if message["type"] != "http.response.body":
            return await send(message)
        body.extend(message.get("body", b""))
        if message.get("more_body"):
            return
        cleaned = _API_INFO.sub(b"<script>window.gradio_api_info = {\"named_endpoints\": {}, "
                                b"\"unnamed_endpoints\": {}};</script>", bytes(body))
        start = held.get("start")
        if start is not None:
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(cleaned)).encode()))
            await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": cleaned})

    return wrapped


def _cookie_user(gradio_app):
    """``headers -> user or None`` from Gradio's login session cookie (what Gradio's ``/user`` route reads)."""
    from http.cookies import SimpleCookie

    def user(headers) -> str | None:
        raw = b"; ".join(v for k, v in headers if k == b"cookie").decode("latin-1")
        if not raw:
            return None
        jar = SimpleCookie()
        try:
            jar.load(raw)
        except Exception:  # noqa: BLE001 - a malformed cookie header is no session
            return None
        cookie_id = getattr(gradio_app, "cookie_id", None)
        tokens = getattr(gradio_app, "tokens", None) or {}
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            if name in jar and jar[name].value in tokens:
                return tokens[jar[name].value]
        return None

    return user


def _file_roots(settings) -> tuple[str, ...]:
    """The folders Gradio serves files from: its upload/cache folder and the outputs folder."""
    import os
    import tempfile
    from pathlib import Path

    upload = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    roots = {str(Path(upload).resolve()), str(Path(upload).absolute()), str(settings.outputs_dir.resolve()),
             str(settings.outputs_dir.absolute())}
    return tuple(sorted(roots, key=len, reverse=True))


def _api_path_matcher(app: FastAPI):
    """``path -> bool``: served by an API, plugin or docs route of ``app`` (not the mounted UI)."""
    from fastapi.routing import iter_route_contexts

    cache: list = []

    def is_api(path: str) -> bool:
        if not cache:  # built at the first request, when every route is in place
            cache.extend(r.path_regex for r in iter_route_contexts(app.routes)
                         if r.methods and getattr(r, "path_regex", None) is not None)
        return path.startswith("/sdapi/") or any(regex.match(path) for regex in cache)

    return is_api


def create_app(ctx: AppContext) -> FastAPI:
    """Build the FastAPI app: API under /sdapi/v1, plugin routes, and (unless --nowebui) the UI at /.

    Auth is one layer over everything: with ``--api-auth`` and/or ``--gradio-auth`` every API route,
    every plugin route, unknown paths and the docs (``/docs``, ``/redoc``, ``/openapi.json``) need HTTP
    Basic auth (the ``--api-auth`` users, else the ``--gradio-auth`` ones), and every UI path — Gradio's
    routes, its files, unknown paths — needs a login (the ``--gradio-auth`` users, else the
    ``--api-auth`` ones) except the login page itself. Without either flag everything is open (bind to
    loopback only, the default).
    """
    s = ctx.settings
    for flag, spec in (("--api-auth", s.api_auth), ("--gradio-auth", s.gradio_auth)):
        if spec and spec.strip() and not parse_credentials(spec):
            raise ValueError(f"{flag} must be user:password[,user2:password2]")
    api_creds = api_credentials(s)
    deps = [Depends(_basic_auth_dependency(api_creds))] if api_creds else []
    no_docs = {"openapi_url": None, "docs_url": None, "redoc_url": None} if api_creds else {}
    app = FastAPI(title="Stable Diffusion web UI API", version=__version__, **no_docs)
    install_error_handlers(app)

    # every 4xx answer (422 included) has A1111's error shape, and the schema says so
    errors = {422: {"model": ErrorResponse, "description": "Invalid input (A1111's error shape)"}}
    app.include_router(build_router(ctx), dependencies=deps, responses=errors)
    app.include_router(build_misc_router(ctx), dependencies=deps, responses=errors)
    app.include_router(build_train_router(ctx), dependencies=deps, responses=errors)
    app.include_router(build_lora_router(ctx), dependencies=deps, responses=errors)
    app.include_router(build_workers_router(ctx), dependencies=deps, responses=errors)
    plugin_router = APIRouter(dependencies=deps)
    ctx.hooks.api_routes(plugin_router, ctx)
    app.include_router(plugin_router, responses=errors)
    if api_creds:
        app.include_router(_docs_router(app, deps))
    # Unknown API paths answer 404/405 (after auth) instead of falling through to the UI.
    fallback = APIRouter(dependencies=deps, include_in_schema=False)
    fallback.add_api_route("/sdapi/{rest:path}", _not_found, methods=_ALL_METHODS)
    if s.nowebui:
        fallback.add_api_route("/{rest:path}", _not_found, methods=_ALL_METHODS)
    app.include_router(fallback)

    ui_user = None
    if not s.nowebui:
        import gradio as gr

        from webui.ui.app import build_ui
        from webui.ui.assets import page_css_and_head
        from webui.ui.files import guard_file_inputs
        from webui.ui.networks_panel import add_preview_route
        from webui.ui.page import add_page_route

        demo = build_ui(ctx)
        guard_file_inputs(demo, ctx.settings)
        ui_auth = ui_credentials(s) or None
        css, head = page_css_and_head(ctx)  # plugins' and extension folders' JS/CSS
        app = gr.mount_gradio_app(app, demo, path="", auth=ui_auth, footer_links=["api", "settings"],
                                  show_error=True, css=css or None, head=head or None,
                                  allowed_paths=[str(s.outputs_dir)])
        # Gradio checks that a file an input names was uploaded (is in its upload folder) only once
        # ``launch()`` has run; a mounted app never runs it, so say so: a payload naming /etc/passwd is
        # refused instead of being copied into the served cache.
        demo.has_launched = True
        from starlette.routing import Mount

        gradio_app = next(r.app for r in app.routes if isinstance(r, Mount))
        add_page_route(gradio_app, ctx)  # the page's localization and theme, behind the UI login
        add_preview_route(gradio_app, ctx)  # the Extra networks cards' pictures, likewise
        ui_user = _cookie_user(gradio_app)

    app.add_middleware(Guard, max_body=s.max_body_mb * 1024 * 1024, api_log=s.api_log,
                       ui_gate=ui_user is not None and s.auth_enabled, is_api_path=_api_path_matcher(app),
                       ui_user=ui_user or (lambda headers: None), file_roots=_file_roots(s))
    if s.cors_allow_origins:  # outermost, so that preflight requests of the allowed origins get their answer
        app.add_middleware(CORSMiddleware, allow_origins=list(s.cors_allow_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)
    return app
