"""Server flags: --cors-allow-origins, --api-log, --gradio-auth."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from tests.conftest import make_settings
from webui.context import build_context
from webui.server import create_app


def app_with(tmp_path, models_root, **kw):
    return create_app(build_context(make_settings(tmp_path, models_root, **kw), load_model=False))


def test_cors_only_for_configured_origins(tmp_path, models_root):
    client = TestClient(app_with(tmp_path, models_root, cors_allow_origins=("http://editor.example",), nowebui=True))
    ok = client.get("/sdapi/v1/samplers", headers={"Origin": "http://editor.example"})
    assert ok.headers.get("access-control-allow-origin") == "http://editor.example"
    other = client.get("/sdapi/v1/samplers", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    plain = TestClient(app_with(tmp_path / "b", models_root, nowebui=True))
    r = plain.get("/sdapi/v1/samplers", headers={"Origin": "http://editor.example"})
    assert "access-control-allow-origin" not in r.headers  # no permissive CORS unless configured


def test_api_log_writes_one_line_per_api_request(tmp_path, models_root, caplog):
    client = TestClient(app_with(tmp_path, models_root, api_log=True, nowebui=True))
    with caplog.at_level(logging.INFO):
        client.get("/sdapi/v1/samplers")
    assert any("/sdapi/v1/samplers" in r.getMessage() for r in caplog.records)


def test_gradio_auth_guards_the_ui(tmp_path, models_root):
    client = TestClient(app_with(tmp_path, models_root, gradio_auth="ui:secret"))
    assert client.get("/config").status_code in (401, 403)
    assert client.get("/webui-page.json").status_code == 401  # the page's localization: behind the login too
    assert client.get("/webui-network-preview?kind=lora&name=x").status_code == 401  # the cards' pictures too
    assert client.post("/login", data={"username": "ui", "password": "wrong"}).status_code in (400, 401)
    assert client.post("/login", data={"username": "ui", "password": "secret"}).status_code == 200
    assert client.get("/config").status_code == 200
    assert client.get("/webui-page.json").json()["localization"] == "None"
    # one auth layer: the API (Basic, same users when there is no --api-auth) and the docs too
    client.cookies.clear()
    assert client.get("/sdapi/v1/progress").status_code == 401 and client.get("/docs").status_code == 401
    assert client.get("/sdapi/v1/progress", auth=("ui", "secret")).status_code == 200
