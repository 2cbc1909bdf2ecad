"""The reliability checklist (docs/reliability.md) as tests: security, input validation, model files,
recovery and shutdown, nothing lost on disk, a bounded load test.

Items already covered elsewhere are listed in docs/reliability.md with their test names; the tests here
fill the gaps. All run on the CPU with the tiny test models; the servers bind 127.0.0.1.
"""

from __future__ import annotations

import ast
import base64
import errno
import http.client
import http.server
import json
import signal
import struct
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import CodeRunningPickle, make_settings
from tests.live_server import LiveServer
from tests.step_gate import WAIT, LogWait, step_gate
from webui.context import build_context
from webui.server import create_app

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
META = {"_type": "gradio.FileData"}
GRADIO_SECRET = "pw-Gradio-S3CRET-7f1c"
API_SECRET = "tok-Api-S3CRET-94ab"


def png_b64(image: Image.Image | None = None, infotext: str | None = None) -> str:
    from webui.saving import png_bytes

    return base64.b64encode(png_bytes(image or Image.new("RGB", (16, 16), (200, 40, 40)), infotext)).decode()


def raw_get(port: int, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET with the request target sent exactly as given (no client-side ``..`` normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory, models_root):
    """The full app (UI + API, default flags: no auth, no CORS, no URL fetching) on its own data folder."""
    ctx = build_context(make_settings(tmp_path_factory.mktemp("rel-ui"), models_root), load_model=True)
    ctx.options.update({"CLIP_stop_at_last_layers": 1})  # config.json exists
    with LiveServer(create_app(ctx)) as srv:
        srv.ctx = ctx
        srv.http = httpx.Client(base_url=srv.url, timeout=120, trust_env=False)
        yield srv
        srv.http.close()


def gradio_run(srv, api_name: str, data: list) -> httpx.Response:
    return srv.http.post(f"/gradio_api/run/{api_name}", json={"data": data})


def gradio_inputs(srv, api_name: str, **values) -> list:
    """The input list of a Gradio endpoint: its defaults with ``values`` by parameter name."""
    info = srv.http.get("/gradio_api/info").json()["named_endpoints"][f"/{api_name}"]["parameters"]
    names = [p["parameter_name"] for p in info]
    data = [p.get("parameter_default") for p in info]
    for k, v in values.items():
        data[names.index(k)] = v
    return data


class ImageHost:
    """A tiny HTTP server on a loopback address that counts hits: ``/img.png``, redirects via ``/to?u=...``."""

    def __init__(self, host: str = "127.0.0.1"):
        self.hits: list[str] = []
        png = base64.b64decode(png_b64())
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                hits.append(self.path)
                if self.path.startswith("/to?u="):
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/to?u="):])
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ============================================================================ 1. file routes


def test_01_file_routes_never_serve_files_outside_the_served_folders(ui):
    ctx = ui.ctx
    data = ctx.settings.data_dir
    outputs = ctx.settings.outputs_dir
    (outputs / "sub").mkdir(parents=True, exist_ok=True)
    served = outputs / "sub" / "served.png"
    served.write_bytes(base64.b64decode(png_b64()))
    (data / ".env").write_text("SECRET_ENV=top-secret-value")
    (outputs / ".secret").write_text("top-secret-value")
    (outputs / ".hidden").mkdir(exist_ok=True)
    (outputs / ".hidden" / "x.png").write_text("top-secret-value")
    targets = [
        "/file=../../etc/passwd", "/file=/etc/passwd", "/file=%2Fetc%2Fpasswd",
        "/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../../../etc/passwd",
        "/gradio_api/file=..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/gradio_api/file=%252e%252e%252f%252e%252e%252fetc%252fpasswd", "/gradio_api/file=/proc/self/environ",
        f"/gradio_api/file={outputs}/../../../../etc/passwd", f"/gradio_api/file={outputs}/../config.json",
        f"/gradio_api/file={data}/config.json", f"/gradio_api/file={data}/.env", f"/gradio_api/file={outputs}/.secret",
        f"/gradio_api/file={outputs}/.hidden/x.png", f"/gradio_api/file={ROOT}/.git/config",
        f"/gradio_api/file={ROOT}/webui/server.py", "/gradio_api/file=webui/server.py",
        "/static/../../../../etc/passwd", "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd", "/svelte/..%2f..%2fetc%2fpasswd",
        "/gradio_api/file=/tmp/gradio/../../etc/passwd", "/sdapi/v1/../../etc/passwd", "/..%2f..%2fetc%2fpasswd",
    ]
    leaks = []
    for target in targets:
        status, body = raw_get(ui.port, target)
        if status not in (400, 403, 404) or b"root:" in body or b"top-secret" in body or b"import " in body:
            leaks.append(f"{target} -> {status} {body[:80]!r}")
    assert not leaks, "\n".join(leaks)
    # the served folders do serve (so the refusals above are not a broken route): outputs, and uploads
    status, body = raw_get(ui.port, f"/gradio_api/file={served}")
    assert status == 200 and body.startswith(b"\x89PNG")
    uploaded = ui.http.post("/gradio_api/upload", files={"files": ("up.png", base64.b64decode(png_b64()))}).json()[0]
    assert raw_get(ui.port, f"/gradio_api/file={uploaded}")[0] == 200


def test_01_dot_parts_are_refused_below_served_folders_that_are_themselves_in_a_dot_folder():
    import asyncio

    from webui.server import Guard

    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = Guard(app, max_body=1024, api_log=False, ui_gate=False, is_api_path=lambda p: False,
                  ui_user=lambda h: None, file_roots=("/home/u/.cache/gradio",))

    def status(path: str) -> int:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        asyncio.run(guard({"type": "http", "path": path, "headers": []}, receive, send))
        return sent[0]["status"]

    assert status("/gradio_api/file=/home/u/.cache/gradio/abc/out.png") == 200
    assert status("/gradio_api/file=/home/u/.cache/gradio/abc/.env") == 404
    assert status("/gradio_api/file=/home/u/.cache/gradio/../../.ssh/id_rsa") == 404
    assert status("/gradio_api/file=/home/u/.ssh/id_rsa") == 404
    assert reached == ["/gradio_api/file=/home/u/.cache/gradio/abc/out.png"]


# ============================================================================ 2. payloads naming server files


def test_02_payloads_naming_server_files_are_refused_and_nothing_is_copied(ui, tmp_path):
    from webui.ui.files import _upload_folder

    secret = tmp_path / "private-4c1e9d.png"
    secret.write_bytes(base64.b64decode(png_b64(infotext="TOPSECRET-INFOTEXT")))
    # Gradio endpoints: a file field naming a server file, with and without Gradio's FileData marker
    for payload in ({"path": "/etc/passwd", "meta": META}, {"path": "/etc/passwd"}, {"path": str(secret), "meta": META},
                    {"path": str(secret)}, {"path": "../../../../etc/passwd"},
                    {"path": str(secret), "url": "http://x/y.png", "meta": META}):
        r = gradio_run(ui, "png_info", [payload])
        assert r.status_code >= 400 and "TOPSECRET" not in r.text and "root:" not in r.text, (payload, r.text)
        assert "uploaded" in r.text
    r = gradio_run(ui, "extras", gradio_inputs(ui, "extras", mode="batch",
                                               files=[{"path": "/etc/passwd", "meta": META}]))
    assert r.status_code >= 400 and "root:" not in r.text
    assert not list(_upload_folder().rglob("passwd")) and not list(_upload_folder().rglob(secret.name))
    # API: image fields are base64 only; paths and file: URLs are refused with 422 naming the field
    for route, body, field in (
        ("/sdapi/v1/img2img", {**SMALL, "init_images": ["/etc/passwd"]}, "init_images[0]"),
        ("/sdapi/v1/img2img", {**SMALL, "init_images": [png_b64()], "mask": "file:///etc/passwd"}, "mask"),
        ("/sdapi/v1/png-info", {"image": str(secret)}, "image"),
        ("/sdapi/v1/png-info", {"image": "../../../etc/passwd"}, "image"),
        ("/sdapi/v1/extra-single-image", {"image": "/etc/passwd"}, "image"),
    ):
        r = ui.http.post(route, json=body)
        assert r.status_code == 422 and field in r.text and "TOPSECRET" not in r.text, (route, r.text)
    # model options and fields naming server files: only listed models are ever loaded
    for body in ({"sd_model_checkpoint": "/etc/passwd"}, {"sd_vae": "/etc/passwd"},
                 {"sd_model_checkpoint": "../../../etc/passwd"}):
        r = ui.http.post("/sdapi/v1/options", json=body)
        assert r.status_code == 422 and "root:" not in r.text, (body, r.text)
    r = ui.http.post("/sdapi/v1/txt2img", json={**SMALL, "refiner_checkpoint": "/etc/passwd"})
    assert r.status_code == 422 and "root:" not in r.text
    # options naming folders outside the data folder: refused, nothing changes
    config = ui.ctx.settings.config_file.read_bytes()
    for value in ("/etc", "../../outside", "~/outputs", "C:/Windows", "outputs/../../x", ""):
        r = ui.http.post("/sdapi/v1/options", json={"outdir_txt2img_samples": value})
        assert r.status_code == 422 and "outdir_txt2img_samples" in r.text, value
        r = ui.http.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True,
                                                    "override_settings": {"outdir_txt2img_samples": value}})
        assert r.status_code == 422, value
    assert ui.ctx.settings.config_file.read_bytes() == config
    assert ui.http.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "outputs/mine"}).status_code == 200
    assert ui.http.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "outputs/txt2img-images"}).status_code \
        == 200


# ============================================================================ 3. URL fetching


def test_03_image_urls_are_refused_by_default(ui):
    host = ImageHost()
    try:
        r = ui.http.post("/sdapi/v1/png-info", json={"image": host.url + "/img.png"})
        assert r.status_code == 422 and "--allow-image-urls" in r.text
        r = ui.http.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [host.url + "/img.png"]})
        assert r.status_code == 422 and "init_images[0]" in r.text
        r = gradio_run(ui, "png_info", [{"path": host.url + "/img.png", "meta": META}])
        assert r.status_code >= 400 and "--allow-image-urls" in r.text
        assert host.hits == []  # nothing was fetched
    finally:
        host.close()


def test_03_enabled_url_fetching_refuses_private_targets_also_after_redirects(tmp_path, monkeypatch):
    import webui.netfetch as netfetch

    # 127.0.0.2 stands in for a public host (nothing public is reachable from the test machine)
    real = netfetch.is_public_address
    monkeypatch.setattr(netfetch, "is_public_address", lambda a: a == "127.0.0.2" or real(a))
    public, private = ImageHost("127.0.0.2"), ImageHost("127.0.0.1")
    ctx = build_context(make_settings(tmp_path, tmp_path / "models", nowebui=True, allow_image_urls=True))
    client = TestClient(create_app(ctx))
    try:
        ok = client.post("/sdapi/v1/png-info", json={"image": public.url + "/img.png"})
        assert ok.status_code == 200, ok.text
        relative = client.post("/sdapi/v1/png-info", json={"image": public.url + "/to?u=/img.png"})
        assert relative.status_code == 200, relative.text
        port = private.url.rsplit(":", 1)[1]
        refused = [private.url + "/img.png", f"http://localhost:{port}/img.png", f"http://[::1]:{port}/img.png",
                   f"http://[::ffff:127.0.0.1]:{port}/x", f"http://2130706433:{port}/x", f"http://0.0.0.0:{port}/x",
                   "http://10.0.0.1/x", "http://172.16.5.4/x", "http://192.168.1.1/x", "http://169.254.169.254/latest",
                   "http://100.64.0.1/x", "http://[fe80::1]/x", "http://[fc00::1]/x", "http://224.0.0.1/x",
                   "http://user:pw@127.0.0.2/img.png", "ftp://127.0.0.2/x", "file:///etc/passwd",
                   # redirects from the "public" host to private targets
                   public.url + "/to?u=" + private.url + "/secret.png",
                   public.url + f"/to?u=http://localhost:{port}/secret.png",
                   public.url + "/to?u=http://169.254.169.254/latest/meta-data/",
                   public.url + "/to?u=http://10.1.2.3/x", public.url + "/to?u=file:///etc/passwd"]
        for url in refused:
            r = client.post("/sdapi/v1/png-info", json={"image": url})
            assert r.status_code == 422 and "image" in r.text, (url, r.status_code, r.text)
        assert private.hits == []  # no request ever reached the private host
        # the UI's file inputs follow the same rule when URLs are on
        import asyncio

        import gradio as gr

        from webui.ui.files import guard_file_inputs

        with gr.Blocks() as demo:
            image = gr.Image(type="pil")
        guard_file_inputs(demo, ctx.settings)
        fetched = asyncio.run(image.async_move_resource_to_block_cache(public.url + "/img.png"))
        assert Path(fetched).read_bytes().startswith(b"\x89PNG")
        with pytest.raises(gr.Error, match="refused"):
            asyncio.run(image.async_move_resource_to_block_cache(public.url + "/to?u=" + private.url + "/x.png"))
        assert private.hits == []
    finally:
        public.close()
        private.close()


# ============================================================================ 4. CORS


def test_04_cross_origin_requests_get_no_cors_grant(ui):
    evil = {"Origin": "https://evil.example"}
    checks = [
        ui.http.post("/sdapi/v1/txt2img", json=[], headers=evil),
        ui.http.post("/sdapi/v1/options", json={"no_such_option": 1}, headers=evil),
        ui.http.options("/sdapi/v1/txt2img", headers={**evil, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "content-type"}),
        ui.http.get("/gradio_api/info", headers=evil),
        ui.http.get("/config", headers=evil),
        ui.http.options("/gradio_api/queue/join", headers={**evil, "Access-Control-Request-Method": "POST"}),
        ui.http.post("/gradio_api/run/png_info", json={"data": [None]}, headers=evil),
        ui.http.get("/sdapi/v1/progress", headers={"Origin": "null"}),
    ]
    for r in checks:
        # (Gradio sends ``Access-Control-Allow-Credentials`` on its routes; without an allowed origin a
        # browser grants nothing)
        assert "access-control-allow-origin" not in r.headers, (r.request.method, r.request.url, dict(r.headers))


# ============================================================================ 5. auth everywhere, no secrets


def _routes(app) -> list[tuple[str, str]]:
    from fastapi.routing import iter_route_contexts

    out = []
    for route in iter_route_contexts(app.routes):
        if route.methods and route.path:
            for method in sorted(route.methods - {"HEAD"}):
                out.append((method, route.path.replace("{rest:path}", "no-such-route")))
    return out


@pytest.fixture(scope="module", params=["gradio_auth", "api_auth"])
def auth_app(request, tmp_path_factory, models_root):
    kw = ({"gradio_auth": f"admin:{GRADIO_SECRET}"} if request.param == "gradio_auth"
          else {"api_auth": f"api:{API_SECRET}"})
    ctx = build_context(make_settings(tmp_path_factory.mktemp("rel-auth"), models_root, **kw), load_model=False)
    user = ("admin", GRADIO_SECRET) if request.param == "gradio_auth" else ("api", API_SECRET)
    return create_app(ctx), user


UI_PATHS = ["/config", "/gradio_api/info", "/gradio_api/file=/etc/passwd", "/gradio_api/file=/tmp/gradio/x.png",
            "/gradio_api/startup-events", "/gradio_api/queue/status", "/gradio_api/app_id", "/gradio_api/user",
            "/gradio_api/token", "/nope", "/gradio_api/nope", "/file=/etc/passwd", "/gradio_api/upload_progress"]


def test_05_with_auth_every_route_needs_credentials(auth_app):
    app, user = auth_app
    client = TestClient(app)
    failures = []
    for method, path in _routes(app):  # API, plugin, docs and fallback routes: HTTP Basic
        r = client.request(method, path, **({"json": []} if method in ("POST", "PUT", "PATCH") else {}))
        if r.status_code != 401:
            failures.append(f"{method} {path} -> {r.status_code}")
    for path in ["/docs", "/redoc", "/openapi.json", "/sdapi/v1/nope", "/sdapi/v1/cmd-flags"] + UI_PATHS:
        r = client.get(path)
        if r.status_code != 401:
            failures.append(f"GET {path} -> {r.status_code}")
    for path, kw in (("/gradio_api/upload", {"files": {"files": ("a.png", b"x")}}),
                     ("/gradio_api/run/png_info", {"json": {"data": [None]}}),
                     ("/gradio_api/queue/join", {"json": {"data": [], "fn_index": 0, "session_hash": "x"}})):
        r = client.post(path, **kw)
        if r.status_code != 401:
            failures.append(f"POST {path} -> {r.status_code}")
    assert not failures, "\n".join(failures)
    # the login page is all there is without a login: no app configuration in it
    page = client.get("/")
    assert page.status_code == 200 and '"auth_required":true' in page.text
    assert "sd_model_checkpoint" not in page.text and "/txt2img" not in page.text  # no endpoint described
    # with credentials: Basic for the API and docs, the login form for the UI
    assert client.get("/sdapi/v1/progress", auth=user).status_code == 200
    assert client.get("/openapi.json", auth=user).status_code == 200
    assert client.get("/config", auth=user).status_code == 401  # the UI wants a session, not Basic
    assert client.post("/login", data={"username": user[0], "password": "wrong"}).status_code == 400
    assert client.post("/login", data={"username": user[0], "password": user[1]}).status_code == 200
    assert client.get("/config").status_code == 200 and client.get("/gradio_api/info").status_code == 200
    assert client.get("/nope").status_code == 404  # logged in: unknown is unknown


@pytest.mark.parametrize("flags", [{}, {"gradio_auth": f"admin:{GRADIO_SECRET}"}, {"api_auth": f"api:{API_SECRET}"},
                                   {"gradio_auth": f"admin:{GRADIO_SECRET}", "api_auth": f"api:{API_SECRET}"}],
                         ids=["no-auth", "gradio-auth", "api-auth", "both"])
def test_05_no_endpoint_returns_secrets(tmp_path, models_root, flags):
    settings = make_settings(tmp_path, models_root, nowebui=True, **flags)
    app = create_app(build_context(settings, load_model=False))
    client = TestClient(app)
    auth = ("api", API_SECRET) if "api_auth" in flags else ("admin", GRADIO_SECRET) if flags else None
    seen = 0
    for method, path in _routes(app):
        if method != "GET" or "{" in path or "no-such-route" in path:
            continue
        r = client.get(path, auth=auth)
        seen += 1
        assert GRADIO_SECRET not in r.text and API_SECRET not in r.text, path
    assert seen >= 20
    flags_body = client.get("/sdapi/v1/cmd-flags", auth=auth).json()
    assert flags_body["gradio_auth"] is ("gradio_auth" in flags) and flags_body["api_auth"] is ("api_auth" in flags)


def test_05_ui_config_carries_no_secrets(auth_app):
    app, user = auth_app
    client = TestClient(app)
    client.post("/login", data={"username": user[0], "password": user[1]})
    for path in ("/config", "/gradio_api/info", "/"):
        text = client.get(path).text
        assert GRADIO_SECRET not in text and API_SECRET not in text, path


# ============================================================================ 6. extension install on a network bind


def test_06_extension_install_and_update_are_refused_on_a_network_bind(tmp_path):
    from webui.errors import RequestError
    from webui.extensions_admin import install_allowed, install_from_git, update

    for kw in ({"listen": True}, {"listen": True, "gradio_auth": "a:b"}):
        settings = make_settings(tmp_path, **kw)
        assert not install_allowed(settings)
        with pytest.raises(RequestError, match="listens on the network"):
            install_from_git(settings, "https://example.com/some/extension.git")
        (settings.extensions_dir / "ext" / ".git").mkdir(parents=True, exist_ok=True)
        with pytest.raises(RequestError, match="listens on the network"):
            update(settings, "ext")
    assert not (tmp_path / "extensions" / "extension").exists()
    assert install_allowed(make_settings(tmp_path, listen=True, enable_insecure_extension_access=True))
    assert install_allowed(make_settings(tmp_path))


# ============================================================================ 7, 15. bad and malicious model files


def test_07_15_bad_and_malicious_checkpoints_are_refused_and_the_old_model_keeps_serving(tmp_path, tiny_sd1_file):
    import torch

    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    good = tiny_sd1_file.read_bytes()
    (folder / "good.safetensors").write_bytes(good)
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "page.safetensors").write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    (folder / "hugeheader.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    (folder / "badjson.safetensors").write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 64)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(1), "x": CodeRunningPickle(marker)}}, folder / "evil.ckpt")
    (folder / "renamed-pickle.safetensors").write_bytes((folder / "evil.ckpt").read_bytes())
    ctx = build_context(make_settings(tmp_path, tmp_path / "models", nowebui=True), load_model=False)
    client = TestClient(create_app(ctx))
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "good"}).status_code == 200
    for bad in ("truncated", "empty", "page", "hugeheader", "badjson", "evil", "renamed-pickle"):
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": bad})
        assert r.status_code == 422 and bad in r.text, (bad, r.status_code, r.text)
        r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": bad}})
        assert r.status_code == 422 and bad in r.text, (bad, r.status_code, r.text)
        assert ctx.models.current.info.model_name == "good"
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("good")
    assert not marker.exists()  # the pickle's os.system never ran
    r = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert r.status_code == 200 and "Model: good" in json.loads(r.json()["info"])["infotexts"][0]


# ============================================================================ 8. torch.load


def _python_files() -> list[Path]:
    files = [ROOT / "launch.py"]
    for folder in ("webui", "extensions", "tools"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if f.is_file()]


def test_08_every_torch_load_is_weights_only_and_nothing_unpickles():
    import torch

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 6), "torch < 2.6 has CVE-2025-32434 (code execution despite weights_only)"
    problems, loads = [], 0
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name) \
                    and node.value.id == "torch":
                parent_calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and c.func is node]
                if not parent_calls:
                    problems.append(f"{path}:{node.lineno}: torch.load used other than as a direct call")
                for call in parent_calls:
                    loads += 1
                    kw = {k.arg: k.value for k in call.keywords}
                    value = kw.get("weights_only")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        problems.append(f"{path}:{call.lineno}: torch.load without weights_only=True")
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads", "Unpickler") \
                    and isinstance(node.value, ast.Name) and node.value.id in ("pickle", "cPickle", "dill", "_pickle"):
                problems.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "torch" \
                    and any(a.name == "load" for a in node.names):
                problems.append(f"{path}:{node.lineno}: from torch import load")
    assert loads >= 1 and not problems, "\n".join(problems)


# ============================================================================ 11, 12, 13, 14. input validation


def test_11_size_rule_is_documented_and_enforced(ui):
    r = ui.http.post("/sdapi/v1/txt2img", json={**SMALL, "width": 100})
    assert r.status_code == 422 and "width" in r.text and "multiple of 8" in r.text
    for doc in ("docs/api.md", "docs/reliability.md"):
        assert "multiples of 8" in (ROOT / doc).read_text(), doc


SVG = base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>').decode()
HTML = base64.b64encode(b"<!DOCTYPE html><html><body>hi</body></html>").decode()


@pytest.mark.parametrize("bad", ["not base64", "aGVsbG8", "aGVsbG8=", "", "   ", SVG, HTML, "data:image/png;base64,",
                                 "data:image/png;base64,AAAA"],
                         ids=["text", "bad-padding", "not-an-image", "empty", "blank", "svg", "html", "empty-uri",
                              "short-uri"])
def test_12_bad_images_are_422_invalid_image(ui, bad):
    for body, field in (({**SMALL, "init_images": [bad]}, "init_images[0]"),
                        ({**SMALL, "init_images": [png_b64()], "mask": bad}, "mask")):
        if field == "mask" and bad == "":
            continue  # an empty mask means "no mask" (A1111)
        r = ui.http.post("/sdapi/v1/img2img", json=body)
        assert r.status_code == 422 and field in r.text and "invalid image" in r.text, r.text
    r = ui.http.post("/sdapi/v1/extra-single-image", json={"image": bad})
    assert r.status_code == 422 and "invalid image" in r.text


def test_13_unknown_names_are_4xx_listing_the_valid_ones_without_side_effects(ui):
    ctx = ui.ctx
    outputs = ctx.settings.outputs_dir

    def files() -> int:
        return sum(1 for p in outputs.rglob("*.png")) if outputs.exists() else 0

    config = ctx.settings.config_file.read_bytes()
    before = files()
    save = {**SMALL, "save_images": True}
    cases = [
        ("/sdapi/v1/txt2img", {**save, "sampler_name": "Nope"}, ["sampler_name", "Euler a"]),
        ("/sdapi/v1/txt2img", {**save, "scheduler": "Nope"}, ["scheduler", "Karras"]),
        ("/sdapi/v1/txt2img", {**save, "override_settings": {"sd_model_checkpoint": "nope"}}, ["nope", "tiny-sd1"]),
        ("/sdapi/v1/txt2img", {**save, "enable_hr": True, "hr_upscaler": "Nope"}, ["hr_upscaler", "Lanczos"]),
        ("/sdapi/v1/txt2img", {**save, "script_name": "Nope"}, ["script_name", "x/y/z plot"]),
        ("/sdapi/v1/txt2img", {**save, "override_settings": {"no_such_option": 1}}, ["no_such_option",
                                                                                      "CLIP_stop_at_last_layers"]),
        ("/sdapi/v1/txt2img", {**save, "styles": ["Nope"]}, ["styles"]),
        ("/sdapi/v1/extra-single-image", {"image": png_b64(), "upscaler_1": "Nope"}, ["upscaler_1", "Lanczos"]),
        ("/sdapi/v1/options", {"no_such_option": 1, "CLIP_stop_at_last_layers": 2}, ["no_such_option",
                                                                                       "CLIP_stop_at_last_layers"]),
        ("/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, ["nope", "tiny-sd1"]),
        ("/sdapi/v1/options", {"sd_vae": "nope"}, ["sd_vae", "Automatic"]),
        ("/sdapi/v1/txt2img", {**save, "override_settings": {"sd_vae": "nope"}}, ["sd_vae", "Automatic"]),
    ]
    for route, body, expected in cases:
        r = ui.http.post(route, json=body)
        assert 400 <= r.status_code < 500, (route, body, r.status_code, r.text)
        for word in expected:
            assert word.lower() in r.text.lower(), (route, body, word, r.text)
    assert ctx.settings.config_file.read_bytes() == config  # no option changed
    assert files() == before  # nothing generated and saved
    assert ctx.options.current["CLIP_stop_at_last_layers"] == 1
    assert ui.http.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


def test_14_oversized_bodies_are_413_also_when_chunked(tmp_path):
    ctx = build_context(make_settings(tmp_path, tmp_path / "models", nowebui=True, max_body_mb=1))
    with LiveServer(create_app(ctx)) as srv, httpx.Client(base_url=srv.url, timeout=60, trust_env=False) as http:
        big = b'{"image": "' + b"A" * (2 * 1024 * 1024) + b'"}'
        r = http.post("/sdapi/v1/png-info", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "PayloadTooLarge" in r.text

        def chunks():
            for i in range(0, len(big), 64 * 1024):
                yield big[i:i + 64 * 1024]

        r = http.post("/sdapi/v1/png-info", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers and r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413 and "PayloadTooLarge" in r.text
        ok = http.post("/sdapi/v1/png-info", json={"image": png_b64()})
        assert ok.status_code == 200  # the next request works


# ============================================================================ 16. no checkpoint


def test_16_without_any_checkpoint_the_server_starts_and_generation_says_what_to_do(tmp_path, monkeypatch, caplog):
    import logging

    import webui.main as main_mod

    started = {}

    class FakeServer:
        def __init__(self, app, host, port, jobs, grace, **kw):
            started.update(app=app, host=host, port=port, grace=grace)

        def run(self):
            started["ran"] = True

    monkeypatch.setattr(main_mod, "GracefulServer", FakeServer)
    monkeypatch.setattr(main_mod, "_load_first_model", lambda ctx, log: None)
    missing = tmp_path / "no-models-here"
    with caplog.at_level(logging.WARNING):
        main_mod.main(["--data-dir", str(tmp_path), "--models-dir", str(missing), "--nowebui", "--use-cpu",
                       "--disable-extensions"])
    assert started["ran"] and started["host"] == "127.0.0.1"  # loopback unless --listen
    # (the how-to-add note comes when the shapes model has loaded: tests/test_first_run.py)
    assert (missing / "Stable-diffusion").is_dir()
    assert "without --gradio-auth" not in caplog.text
    # no default model either (e.g. it cannot be built): generation answers 503 saying where to put one
    ctx = build_context(make_settings(tmp_path / "d2", tmp_path / "d2" / "models", nowebui=True))
    ctx.models._default_checkpoint = None
    r = TestClient(create_app(ctx)).post("/sdapi/v1/txt2img", json=SMALL)
    assert r.status_code == 503 and "No checkpoint found" in r.text and "Stable-diffusion" in r.text


def test_listen_without_auth_warns_at_start(tmp_path, monkeypatch, caplog):
    import logging

    import webui.main as main_mod

    hosts = []

    class FakeServer:
        def __init__(self, app, host, port, jobs, grace, **kw):
            hosts.append(host)

        def run(self):
            pass

    monkeypatch.setattr(main_mod, "GracefulServer", FakeServer)
    monkeypatch.setattr(main_mod, "_load_first_model", lambda ctx, log: None)
    args = ["--data-dir", str(tmp_path), "--nowebui", "--use-cpu", "--disable-extensions", "--listen"]
    with caplog.at_level(logging.WARNING):
        main_mod.main(args)
    assert hosts == ["0.0.0.0"] and "without --gradio-auth/--api-auth" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        main_mod.main(args + ["--gradio-auth", "a:b"])
    assert "without --gradio-auth/--api-auth" not in caplog.text


def test_reliability_flags_parse(tmp_path):
    from webui.settings import parse_args

    s = parse_args(["--max-body-mb", "5", "--allow-image-urls", "--shutdown-grace", "3", "--gradio-auth", "a:b"],
                   env={})
    assert (s.max_body_mb, s.allow_image_urls, s.shutdown_grace, s.auth_enabled) == (5, True, 3.0, True)
    d = parse_args([], env={})
    assert (d.max_body_mb, d.allow_image_urls, d.shutdown_grace, d.auth_enabled, d.host) == (64, False, 10.0, False,
                                                                                          "127.0.0.1")
    with pytest.raises(ValueError, match="user:password"):
        create_app(build_context(make_settings(tmp_path, nowebui=True, api_auth="nocolon")))


# ============================================================================ 21. whose job an interrupt stops


def test_21_with_auth_an_api_client_interrupts_only_its_own_jobs(tmp_path, models_root):
    ctx = build_context(make_settings(tmp_path, models_root, nowebui=True, api_auth="u:p,other:secret"),
                        load_model=True)
    with LiveServer(create_app(ctx)) as srv, step_gate(ctx, step=1) as gate:
        box = {}
        worker = threading.Thread(target=lambda: box.setdefault("r", httpx.post(
            srv.url + "/sdapi/v1/txt2img", json={**SMALL, "steps": 6}, auth=("u", "p"), timeout=120)))
        worker.start()
        job = gate.wait()  # running, held at its second step
        assert job.owner == "api:u" and ctx.jobs.running() == [job]
        for route in ("/sdapi/v1/interrupt", "/sdapi/v1/skip"):
            assert httpx.post(srv.url + route, auth=("other", "secret")).status_code == 200
        assert not job.interrupted and not job.skipped  # another user's job is left alone
        assert httpx.post(srv.url + "/sdapi/v1/interrupt", auth=("u", "p")).status_code == 200
        worker.join(60)
    assert job.interrupted and job.sampling_step == 2 and json.loads(box["r"].json()["info"])["interrupted"] is True


# ============================================================================ 22, 23. disconnect, shutdown


def test_22_a_ui_job_whose_client_went_away_is_interrupted(fresh_ctx, monkeypatch):
    """The check itself (Gradio's event state) is exercised by the browser test; here the job side."""
    import webui.ui.progress as progress
    from webui.pipeline.request import GenerationRequest

    state = {"connected": True}
    monkeypatch.setattr(progress, "gradio_event_alive", lambda: lambda: state["connected"])
    req = GenerationRequest(**{**SMALL, "steps": 6}, save_images=False)
    with step_gate(fresh_ctx, step=1) as gate:
        stream = progress.stream_with_progress(fresh_ctx, req, "session-x", lambda *a, **k: None)
        box = {}
        thread = threading.Thread(target=lambda: box.setdefault("result", progress.drain(stream)))
        thread.start()
        job = gate.wait()  # held at its second step (until it is interrupted)
        assert not job.interrupted
        state["connected"] = False
        thread.join(60)
    assert box["result"].interrupted and job.interrupted and job.sampling_step == 2
    assert fresh_ctx.jobs.running() == []


def test_23_shutdown_interrupts_jobs_after_the_grace_period(tmp_path, models_root):
    """SIGTERM with a job running: the port closes at once; the job, held at a step that it only leaves when
    interrupted, is interrupted when the 1 s grace period is over and still answered; the server stops."""
    from tests.live_server import free_port
    from webui.main import GracefulServer

    ctx = build_context(make_settings(tmp_path, models_root, nowebui=True), load_model=True)
    port = free_port()
    listening = threading.Event()
    server = GracefulServer(create_app(ctx), "127.0.0.1", port, ctx.jobs, grace=1.0, log_level="warning",
                            on_listening=listening.set)
    runner = threading.Thread(target=server.run, daemon=True)
    url = f"http://127.0.0.1:{port}"
    with step_gate(ctx, step=1) as gate, LogWait() as log:
        runner.start()
        assert listening.wait(WAIT)
        box = {}
        worker = threading.Thread(target=lambda: box.setdefault("r", httpx.post(
            url + "/sdapi/v1/txt2img", json={**SMALL, "steps": 6}, timeout=120)))
        worker.start()
        job = gate.wait()
        server.on_signal(signal.SIGTERM)
        log.wait_for("Shutting down: the port is closed; 1 connection(s) still open")
        with pytest.raises(httpx.ConnectError):  # no new connections
            httpx.get(url + "/sdapi/v1/progress", timeout=2)
        worker.join(WAIT)  # the gate lets the job go only when the grace timer interrupts it
        runner.join(WAIT)
        assert log.wait_for("Shutting down: interrupted 1 running job(s)")
    assert not runner.is_alive() and job.interrupted and job.sampling_step == 2
    r = box["r"]
    assert r.status_code == 200 and json.loads(r.json()["info"])["interrupted"] is True  # cancelled, answered


# ============================================================================ 3 (point). nothing lost on disk


@pytest.mark.parametrize("target", ["options", "styles", "image"])
def test_writes_are_atomic_and_a_failed_write_changes_nothing(fresh_ctx, monkeypatch, target):
    import webui.fileio as fileio
    from webui.fileio import StorageError
    from webui.filenames import ImageFields
    from webui.styles import Style

    ctx = fresh_ctx
    ctx.options.update({"CLIP_stop_at_last_layers": 2})
    ctx.styles.save(Style("old", "old prompt"))
    image_dir = ctx.settings.outputs_dir / "t"
    first = ctx.saver.save_image(Image.new("RGB", (8, 8)), "samples", {"save_images_add_number": False},
                                 ctx.settings.data_dir, ImageFields(seed=1), "first", outdir=image_dir).path
    paths = {"options": ctx.settings.config_file, "styles": ctx.styles.path, "image": first}
    path = paths[target]
    before, inode = path.read_bytes(), path.stat().st_ino

    def write():
        if target == "options":
            ctx.options.update({"CLIP_stop_at_last_layers": 3})
        elif target == "styles":
            ctx.styles.save(Style("new", "new prompt"))
        else:
            # the same name, written through the atomic writer the saver uses
            fileio.atomic_write(first, lambda fh: fh.write(b"new image bytes"))

    for failure in ("fsync", "replace"):
        def boom(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(fileio.os, failure, boom)
            with pytest.raises(StorageError) as info:
                write()
        assert path.name in str(info.value) and "No space left on device" in str(info.value)
        assert path.read_bytes() == before  # untouched
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    # nothing changed in memory either
    assert ctx.options.current["CLIP_stop_at_last_layers"] == 2 and ctx.styles.get("new") is None
    write()
    assert path.read_bytes() != before and path.stat().st_ino != inode  # replaced by a rename, not rewritten


def test_corrupt_settings_file_at_start_is_backed_up_and_defaults_used(tmp_path, models_root, caplog):
    (tmp_path / "config.json").write_text('{"CLIP_stop_at_last_layers": 2,')  # cut off mid-write
    with caplog.at_level("WARNING"):
        ctx = build_context(make_settings(tmp_path, models_root, nowebui=True))
    assert ctx.options.current["CLIP_stop_at_last_layers"] == 1  # defaults
    assert (tmp_path / "config.json.corrupt-0").read_text() == '{"CLIP_stop_at_last_layers": 2,'
    assert "unreadable" in caplog.text and "corrupt-0" in caplog.text
    client = TestClient(create_app(ctx))
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3}).status_code == 200
    assert json.loads((tmp_path / "config.json").read_text())["CLIP_stop_at_last_layers"] == 3


def test_full_disk_gives_a_clear_error_and_the_image_still_returns(ui, monkeypatch):
    import webui.fileio as fileio

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    r = ui.http.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    info = json.loads(r.json()["info"])
    assert any("No space left on device" in w for w in info["warnings"]) and "could not save" in info["comments"]
    r = ui.http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 4})
    assert r.status_code == 507 and "config.json" in r.text and "No space left on device" in r.text
    assert ui.http.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    # the UI: Extras shows the upscaled image and says it was not saved
    uploaded = ui.http.post("/gradio_api/upload", files={"files": ("in.png", base64.b64decode(png_b64()))}).json()[0]
    r = gradio_run(ui, "extras", gradio_inputs(ui, "extras", image={"path": uploaded, "meta": META},
                                               upscaler_1="Lanczos", upscaling_resize=2))
    assert r.status_code == 200, r.text
    gallery, html = r.json()["data"]
    assert len(gallery) == 1 and "No space left on device" in html
    monkeypatch.undo()
    assert ui.http.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True}).status_code == 200


def test_unwritable_output_folder_gives_a_clear_error_and_the_image_still_returns(tmp_path, models_root):
    ctx = build_context(make_settings(tmp_path, models_root, nowebui=True), load_model=True)
    (tmp_path / "outputs").write_text("a file where the output folder should be")
    r = TestClient(create_app(ctx)).post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    assert "could not save image" in json.loads(r.json()["info"])["comments"]


# ============================================================================ point 5. load


def test_load_20_clients_no_errors_no_lost_answers_memory_flat(tmp_path, models_root, capsys):
    import gc

    import psutil

    from tests.load_client import run_load_sync

    ctx = build_context(make_settings(tmp_path, models_root, nowebui=True, max_queue_size=64), load_model=True)
    process = psutil.Process()
    with LiveServer(create_app(ctx)) as srv:
        warm = run_load_sync(srv.url, clients=20, seconds=2, steps=1)  # warm-up: caches, allocator pools
        assert not warm.errors, warm.errors[:5]
        gc.collect()
        rss_start = process.memory_info().rss
        report = run_load_sync(srv.url, clients=20, seconds=8, steps=1)
        gc.collect()
        rss_end = process.memory_info().rss
    summary = report.summary()
    growth_mb = (rss_end - rss_start) / 2**20
    with capsys.disabled():
        print(f"\nload: {summary}; RSS start {rss_start / 2**20:.0f} MB, end {rss_end / 2**20:.0f} MB "
              f"({growth_mb:+.1f} MB)")
    assert not report.errors, report.errors[:5]
    assert report.lost == 0 and report.ok == report.sent and report.by_route.get("txt2img", 0) >= 20
    assert growth_mb < 64, f"RSS grew by {growth_mb:.1f} MB under load"
