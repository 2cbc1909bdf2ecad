"""Extensions: the two examples through the real app, the Settings and Extensions tabs, enable/disable,
load order and dependencies, install/update from git."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import api_only, make_settings, missing
from webui.context import build_context
from webui.errors import RequestError
from webui.extensions_admin import install_from_git, update
from webui.pipeline.request import GenerationRequest
from webui.server import create_app

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(prompt="x", steps=2, width=64, height=64, seed=4, sampler_name="Euler", save_images=False)


def with_examples(tmp_path: Path, models_root: Path, **kw):
    ext = tmp_path / "extensions"
    ext.mkdir(exist_ok=True)
    for name in ("example-film-grain", "example-hello-api"):
        shutil.copytree(ROOT / "extensions" / name, ext / name)
    return build_context(make_settings(tmp_path, models_root, disable_extensions=False, **kw), load_model=True)


def test_example_extensions_work_through_the_app(tmp_path, models_root):
    ctx = with_examples(tmp_path, models_root)
    assert {r.name for r in ctx.plugins.reports if r.ok and r.source == "extension"} == {
        "example-film-grain", "example-hello-api"}
    plain = ctx.generate(GenerationRequest(**SMALL))
    grain = ctx.generate(GenerationRequest(**SMALL, alwayson_scripts={"film_grain": {"args": [0.2]}}))
    assert "Film grain: 0.2" in grain.infotexts[0]
    assert np.abs(np.asarray(grain.images[0], int) - np.asarray(plain.images[0], int)).mean() > 5
    client = TestClient(create_app(api_only(ctx)))
    assert client.get("/example/hello", params={"name": "Ada"}).json() == {"greeting": "Hello, Ada!"}
    assert client.post("/sdapi/v1/options", json={"example_greeting": "Hi"}).status_code == 200
    assert client.get("/example/hello").json() == {"greeting": "Hi, world!"}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["example_greeting"] == "Hi"


def test_film_grain_infotext_is_read_back_by_the_ui_and_the_api(tmp_path, models_root):
    import base64
    import io

    from PIL import Image

    from webui.ui.app import build_ui

    ctx = with_examples(tmp_path, models_root)
    grain = ctx.generate(GenerationRequest(**{**SMALL, "save_images": True},
                                          alwayson_scripts={"film_grain": {"args": [0.2]}}))
    demo = build_ui(ctx)

    def handler(api_name):
        return next(f for f in demo.fns.values() if f.api_name == api_name)

    def value(block_fn, updates, elem_id):
        return updates[[c.elem_id for c in block_fn.outputs].index(elem_id)].get("value")

    # PNG Info of the saved image -> "Send to txt2img" / "Send to img2img" refill the film grain section
    with Image.open(grain.paths[0]) as saved:
        saved.load()
        _, text, params = handler("png_info").fn(saved)
    assert params["Film grain"] == "0.2"
    send = handler("pnginfo_send_to_txt2img")
    updates = send.fn(text)
    assert value(send, updates, "txt2img_film_grain_strength") == 0.2 and value(send, updates, "txt2img_seed") == 4
    send = handler("pnginfo_send_to_img2img")
    assert value(send, send.fn(saved, text), "img2img_film_grain_strength") == 0.2
    paste = handler("txt2img_paste")  # the ↙ button, with the infotext in the prompt box
    assert value(paste, paste.fn(text, []), "txt2img_film_grain_strength") == 0.2
    # an infotext without the key switches the grain off
    plain_text = ctx.generate(GenerationRequest(**SMALL)).infotexts[0]
    assert value(paste, paste.fn(plain_text, []), "txt2img_film_grain_strength") == 0.0

    # the API's infotext field applies the grain: same pixels as the explicit alwayson_scripts request
    client = TestClient(create_app(ctx))
    body = {k: v for k, v in SMALL.items() if k != "save_images"}

    def pixels(response):
        assert response.status_code == 200, response.text
        return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB").tobytes()

    from_infotext = pixels(client.post("/sdapi/v1/txt2img", json={"infotext": text}))
    explicit = pixels(client.post("/sdapi/v1/txt2img",
                                  json={**body, "alwayson_scripts": {"film_grain": {"args": [0.2]}}}))
    plain = pixels(client.post("/sdapi/v1/txt2img", json=body))
    assert from_infotext == explicit == grain.images[0].convert("RGB").tobytes() and from_infotext != plain
    # an explicit alwayson_scripts entry wins over the infotext's
    override = client.post("/sdapi/v1/txt2img", json={"infotext": text,
                                                       "alwayson_scripts": {"film_grain": {"args": [0.1]}}})
    assert "Film grain: 0.1" in json.loads(override.json()["info"])["infotexts"][0]


def test_ui_section_settings_tab_and_extensions_tab(tmp_path, models_root):
    from gradio_client import Client

    from tests.live_server import LiveServer

    ctx = with_examples(tmp_path, models_root)
    with LiveServer(create_app(ctx)) as srv:
        client = Client(srv.url, verbose=False)
        gallery, info = client.predict(prompt="x", steps=2, width=64, height=64, seed=4,
                                       film_grain__strength=0.1, api_name="/txt2img")
        assert "Film grain: 0.1" in info
        message = client.predict(example_greeting="Servus", CLIP_stop_at_last_layers=2, api_name="/apply_settings")
        assert "2 setting(s) changed" in message
        assert ctx.options.current["example_greeting"] == "Servus" and ctx.options.current[
            "CLIP_stop_at_last_layers"] == 2
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError) as e:
            client.predict(CLIP_stop_at_last_layers=99, api_name="/apply_settings")
        assert "maximum value 12" in str(e.value)  # readable, and nothing was saved
        message = client.predict(["example-film-grain"], api_name="/extensions_apply")
        assert "example-hello-api" in message
    assert json.loads((tmp_path / "config.json").read_text())["disabled_extensions"] == ["example-hello-api"]
    # the next start leaves it out and says so
    again = build_context(make_settings(tmp_path, models_root, disable_extensions=False), load_model=False)
    reports = {r.name: r for r in again.plugins.reports}
    assert reports["example-hello-api"].disabled and reports["example-film-grain"].ok
    assert TestClient(create_app(again)).get("/example/hello").status_code == 404


def _ext(root: Path, name: str, body: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body)


def test_load_order_dependencies_and_broken_extensions(tmp_path, models_root):
    ext = tmp_path / "extensions"
    _ext(ext, "zz-base", "LOAD_ORDER = 10\nfrom webui.hookspecs import hookimpl\n"
                         "@hookimpl\ndef extra_infotext(request):\n    return {'Base': 1}\n")
    _ext(ext, "aa-needs-base", "REQUIRES = ('zz-base',)\nfrom webui.hookspecs import hookimpl\n"
                               "@hookimpl\ndef extra_infotext(request):\n    return {'Needs base': 1}\n")
    _ext(ext, "needs-missing", "REQUIRES = ('nowhere',)\n")
    _ext(ext, "syntax-error", "def broken(:\n")
    ctx = build_context(make_settings(tmp_path, models_root, disable_extensions=False), load_model=True)
    reports = {r.name: r for r in ctx.plugins.reports}
    assert reports["zz-base"].ok and reports["aa-needs-base"].ok  # zz-base loads first by LOAD_ORDER
    assert not reports["needs-missing"].ok and "nowhere" in reports["needs-missing"].error
    assert not reports["syntax-error"].ok and "SyntaxError" in reports["syntax-error"].error
    res = ctx.generate(GenerationRequest(**SMALL))
    assert "Base: 1" in res.infotexts[0] and "Needs base: 1" in res.infotexts[0]


@pytest.fixture
def git_repo(tmp_path):
    if shutil.which("git") is None:
        missing("git is not installed")
    repo = tmp_path / "src-repo"
    _ext(tmp_path, "src-repo", "from webui.hookspecs import hookimpl\n")
    (repo / "requirements.txt").write_text("# nothing to install\n")
    env = dict(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    import os

    env = {**os.environ, **env}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "one"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
    return repo, env


def test_install_and_update_from_git(tmp_path, git_repo):
    repo, env = git_repo
    settings = make_settings(tmp_path / "data")
    res = install_from_git(settings, f"file://{repo}", "my-ext")
    assert (res.path / "__init__.py").is_file() and res.requirements_installed
    with pytest.raises(RequestError) as e:
        install_from_git(settings, f"file://{repo}", "my-ext")
    assert e.value.field == "name"
    (repo / "NEW").write_text("x")
    subprocess.run(["git", "add", "."], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "two"], cwd=repo, check=True, env=env)
    update(settings, "my-ext")
    assert (res.path / "NEW").is_file()
    listening = make_settings(tmp_path / "data2", listen=True)
    with pytest.raises(RequestError) as e:
        install_from_git(listening, f"file://{repo}")
    assert "listens on the network" in e.value.message
    with pytest.raises(RequestError):
        install_from_git(settings, "--upload-pack=evil")
