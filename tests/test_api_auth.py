"""``--api-auth``: HTTP Basic on every API route (all methods), plugin routes, the docs and unknown API paths;
the Gradio UI needs a login (``--gradio-auth`` users, else the ``--api-auth`` ones). Without either flag all
stay open."""

from __future__ import annotations

import base64

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from webui.server import create_app

AUTH = ("u", "p")
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def _api_routes(app) -> list[tuple[str, str]]:
    """(method, concrete path) for every HTTP route of the app except the mounted UI."""
    out = []
    for route in iter_route_contexts(app.routes):
        methods, path = route.methods, route.path
        if not methods or path is None:
            continue  # the Gradio mount, websockets
        path = path.replace("{rest:path}", "no-such-route")
        for method in sorted(methods):
            out.append((method, path))
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["ui", "nowebui"])
def auth_client(request, tmp_path_factory, models_root):
    from tests.conftest import make_settings
    from webui.context import build_context

    settings = make_settings(tmp_path_factory.mktemp("auth"), models_root, api_auth="u:p,other:secret",
                             nowebui=request.param)
    app = create_app(build_context(settings, load_model=True))
    return app, TestClient(app)


def test_every_api_route_needs_basic_auth(auth_client):
    app, client = auth_client
    routes = _api_routes(app)
    paths = {p for _, p in routes}
    # the main, misc, plugin and docs routes are all there
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/scripts", "/sdapi/v1/sd-vae", "/controlnet/detect", "/openapi.json",
            "/docs"} <= paths
    wrong = base64.b64encode(b"u:wrong").decode()
    failures = []
    for method, path in routes:
        # An invalid JSON body (a list): routes with a body answer 422 once authenticated, never start a job.
        kw = {"json": []} if method in ("POST", "PUT", "PATCH") else {}
        for headers in ({}, {"Authorization": f"Basic {wrong}"}, {"Authorization": "Bearer x"}):
            r = client.request(method, path, headers=headers, **kw)
            if r.status_code != 401:
                failures.append(f"{method} {path} {headers or 'no credentials'} -> {r.status_code}")
            elif method != "HEAD" and r.headers.get("www-authenticate") != "Basic":
                failures.append(f"{method} {path}: 401 without WWW-Authenticate: Basic")
        r = client.request(method, path, auth=AUTH, **kw)
        if r.status_code == 401:
            failures.append(f"{method} {path} with credentials -> 401")
    assert not failures, "\n".join(failures)


def test_second_user_and_docs_with_credentials(auth_client):
    app, client = auth_client
    assert client.get("/sdapi/v1/progress", auth=("other", "secret")).status_code == 200
    schema = client.get("/openapi.json", auth=AUTH)
    assert schema.status_code == 200 and "/sdapi/v1/txt2img" in schema.json()["paths"]
    assert "/openapi.json" in client.get("/docs", auth=AUTH).text
    assert client.get("/redoc", auth=AUTH).status_code == 200
    # the docs routes themselves are not API operations
    assert "/docs" not in schema.json()["paths"]


def test_unknown_api_paths_need_auth_then_404_or_405(auth_client):
    app, client = auth_client
    assert client.get("/sdapi/v1/nope").status_code == 401
    r = client.get("/sdapi/v1/nope", auth=AUTH)
    assert r.status_code == 404 and set(r.json()) == {"error", "detail", "body", "errors"}
    r = client.get("/sdapi/v1/txt2img", auth=AUTH)
    assert r.status_code == 405 and "POST" in r.headers["allow"]


def test_ui_is_behind_the_same_auth(auth_client):
    """One auth layer: with only --api-auth the UI wants a login too (the --api-auth users)."""
    app, client = auth_client
    nowebui = not any(type(r).__name__ == "Mount" for r in app.routes)
    if nowebui:
        assert client.get("/").status_code == 401  # API only: every path is an API path
    else:
        assert client.get("/").status_code == 200  # the login page
        assert client.get("/config").status_code == 401 and client.get("/gradio_api/info").status_code == 401
        assert client.post("/login", data={"username": "u", "password": "p"}).status_code == 200
        assert client.get("/config").status_code == 200
        client.cookies.clear()


def test_without_api_auth_everything_is_open(ctx):
    client = TestClient(create_app(ctx))
    for path in ("/docs", "/redoc", "/openapi.json", "/sdapi/v1/progress", "/sdapi/v1/scripts",
                 "/controlnet/version"):
        assert client.get(path).status_code == 200, path
    assert client.get("/sdapi/v1/nope").status_code == 404
