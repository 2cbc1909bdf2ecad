"""Schemathesis over ``/openapi.json``: no operation answers 5xx, whatever the (valid or invalid) input.

Every operation of the schema is fuzzed through the ASGI app (tiny model, fresh data folder), with
schemathesis' positive (schema-valid) and negative (schema-violating) data, a few examples each, and
checked with ``not_a_server_error`` and ``response_schema_conformance`` (every answer matches the schema
declared for its status code).

The generation and extras operations (``txt2img``, ``img2img``, ``extra-single-image``,
``extra-batch-images``) are NOT in the free random run: a schema-valid request may be a huge job (up
to 500 steps, 4096x4096, batch 64 within the request limits) that would not finish in a test's time.
They get a separate run in which the size fields are pinned to tiny values (64x64, 2 steps, batch 1,
hires steps 1, x2 upscale of a 16x16 image) and the image fields hold a small valid PNG, while every
other field stays random (sampler/scheduler names, override_settings, alwayson_scripts, script_name,
infotext, hires and inpainting fields, ...). Sizes, steps, NaN, bad images and unknown names are
covered by the targeted tests (tests/test_api.py, test_inpaint.py, test_extras*.py, ...).

The routes for features this build does not have (interrogate, training, server control) answer 501
by design; they are checked here to answer exactly that, in A1111's error shape.
"""

from __future__ import annotations

import pytest

from tests.conftest import missing, require

schemathesis = require("schemathesis", "the API schema fuzzing")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from webui.api.routes_misc import NOT_IMPLEMENTED_ROUTES  # noqa: E402
from webui.server import create_app  # noqa: E402

MAX_EXAMPLES = 5
GENERATION_EXAMPLES = 6


def _tiny_png(size: int = 16, mode: str = "RGB") -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size), 128).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pin_generation(body: dict) -> None:
    body.update(width=64, height=64, steps=2, batch_size=1, n_iter=1, hr_second_pass_steps=1, hr_resize_x=0,
                hr_resize_y=0, hr_scale=1.5, seed_resize_from_w=-1, seed_resize_from_h=-1)


def _pin_img2img(body: dict) -> None:
    _pin_generation(body)
    body["init_images"] = [_tiny_png(64)]
    if body.get("mask") is not None:
        body["mask"] = _tiny_png(64, "L")


def _pin_extras(body: dict) -> None:
    body.update(upscaling_resize=2, upscaling_resize_w=32, upscaling_resize_h=32)
    if "imageList" in body or "image" not in body:
        body["imageList"] = [{"data": _tiny_png(), "name": "a.png"}]
    body["image"] = _tiny_png()


#: operations run with pinned sizes (see the module docstring)
PINNED = {"/sdapi/v1/txt2img": _pin_generation, "/sdapi/v1/img2img": _pin_img2img,
          "/sdapi/v1/extra-single-image": _pin_extras, "/sdapi/v1/extra-batch-images": _pin_extras}


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_sd1_file):
    """The API on its own models folder: fuzzed bodies create embeddings there (create/embedding is real)."""
    from tests.conftest import make_settings
    from webui.context import build_context

    models = tmp_path_factory.mktemp("schema-models")
    (models / "Stable-diffusion").mkdir()
    (models / "Stable-diffusion" / tiny_sd1_file.name).write_bytes(tiny_sd1_file.read_bytes())
    ctx = build_context(make_settings(tmp_path_factory.mktemp("schema"), models, nowebui=True),
                        load_model=True)
    return create_app(ctx)


def _operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path in NOT_IMPLEMENTED_ROUTES:
            continue
        ops.append(op)
    return ops


def test_schema_lists_every_operation(app):
    paths = {op.path for op in _operations(app)}
    # a sample of the main router, the misc router and the plugin routes
    assert {"/sdapi/v1/progress", "/sdapi/v1/options", "/sdapi/v1/png-info", "/sdapi/v1/scripts",
            "/sdapi/v1/script-info", "/sdapi/v1/extensions", "/sdapi/v1/hypernetworks", "/sdapi/v1/sd-vae",
            "/controlnet/model_list"} <= paths


def _fuzz(op, mode, failures: list[str], examples: int = MAX_EXAMPLES, pin=None) -> None:
    """``examples`` cases of one operation in one generation mode; failures are collected.
    ``pin(body)`` overwrites fields of a dict body before the call."""
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        if pin is not None and isinstance(case.body, dict):
            pin(case.body)
        response = case.call()
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except Exception as exc:  # noqa: BLE001 - collected and reported together
            failures.append(f"{op.label} [{mode.value}] query={case.query!r} body={case.body!r} -> "
                            f"{response.status_code} {response.text[:300]}: {exc}")

    try:
        run()
    except Unsatisfiable:
        # negative data is impossible for an operation without parameters or body
        if mode.value != "negative":
            raise


def test_no_server_error_for_any_operation(app):
    from schemathesis.generation import GenerationMode

    failures: list[str] = []
    for op in _operations(app):
        if op.path in PINNED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(op, mode, failures)
    assert not failures, "\n".join(failures)


def test_no_server_error_for_generation_with_pinned_sizes(app):
    from schemathesis.generation import GenerationMode

    failures: list[str] = []
    ops = [op for op in _operations(app) if op.path in PINNED]
    assert len(ops) == len(PINNED)
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(op, mode, failures, GENERATION_EXAMPLES, PINNED[op.path])
    assert not failures, "\n".join(failures)


def test_unsupported_features_answer_501_in_a1111_shape(app):
    client = TestClient(app)
    for path in NOT_IMPLEMENTED_ROUTES:
        r = client.post(path, json={"image": "x"} if path.endswith("interrogate") else {})
        assert r.status_code == 501, (path, r.text)
        body = r.json()
        assert set(body) == {"error", "detail", "body", "errors"} and "not available" in body["detail"]
    assert "CLIP/DeepBooru are not shipped" in client.post("/sdapi/v1/interrogate", json={}).json()["detail"]
    assert client.get("/sdapi/v1/hypernetworks").json() == []
    assert client.get("/sdapi/v1/progress").status_code == 200  # still serving


def _numeric_core_options() -> list:
    from webui.settings import core_option_defs

    params = []
    for d in core_option_defs():
        if isinstance(d.default, (int, float)) and not isinstance(d.default, bool):
            params.append(pytest.param(d.key, d.default, id=d.key))
    return params


@pytest.mark.parametrize("key,default", _numeric_core_options())
def test_out_of_range_option_is_refused_or_harmless(app, key, default):
    """Options are outside the schema (a free dict), so schemathesis cannot reach their values: an
    extreme value is refused with 422, or accepted and the next generation still works."""
    client = TestClient(app, raise_server_exceptions=False)
    try:
        for value in (10**30, -(10**30)):
            r = client.post("/sdapi/v1/options", json={key: value})
            assert r.status_code in (200, 422), r.text
            if r.status_code == 200:
                gen = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64})
                assert gen.status_code < 500, gen.text
            over = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                          "override_settings": {key: value}})
            assert over.status_code < 500, over.text
    finally:
        client.post("/sdapi/v1/options", json={key: default})


def test_scripts_script_info_and_extensions_shapes(app):
    client = TestClient(app)
    scripts = client.get("/sdapi/v1/scripts").json()
    assert set(scripts) == {"txt2img", "img2img"}
    assert {"poor man's outpainting", "outpainting mk2", "controlnet"} <= set(scripts["img2img"])
    assert "controlnet" in scripts["txt2img"] and "outpainting mk2" not in scripts["txt2img"]
    assert all(name == name.lower() for names in scripts.values() for name in names)  # A1111 lower-cases

    info = client.get("/sdapi/v1/script-info").json()
    for item in info:
        assert set(item) == {"name", "is_alwayson", "is_img2img", "args"}
        for arg in item["args"]:
            assert {"label", "value", "minimum", "maximum", "step", "choices"} <= set(arg)
    listed = {(i["name"], i["is_img2img"]) for i in info}
    assert {(n, False) for n in scripts["txt2img"]} | {(n, True) for n in scripts["img2img"]} == listed
    poor = next(i for i in info if i["name"] == "poor man's outpainting")
    assert not poor["is_alwayson"] and [a["label"] for a in poor["args"]] == [
        "Pixels to expand", "Mask blur", "Masked content", "Outpainting direction"]
    assert next(i for i in info if i["name"] == "controlnet")["is_alwayson"] is True

    extensions = client.get("/sdapi/v1/extensions").json()
    names = {e["name"]: e for e in extensions}
    assert "webui.builtin.controlnet" in names
    for e in extensions:
        assert {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"} <= set(e)
    assert names["webui.builtin.controlnet"]["enabled"] is True


def test_extension_git_info_never_echoes_credentials(tmp_path):
    import shutil
    import subprocess

    from webui.api.routes_misc import git_info

    if shutil.which("git") is None:
        missing("git is not installed")
    assert git_info(str(tmp_path)) == {}  # not a checkout
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "GIT_AUTHOR_DATE": "1700000000 +0000", "GIT_COMMITTER_DATE": "1700000000 +0000", "HOME": str(tmp_path)}
    for args in (["init", "-q", "-b", "main"], ["remote", "add", "origin", "https://user:token@example.com/a/b.git"],
                 ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, env=env, capture_output=True)
    info = git_info(str(tmp_path))
    assert info["remote"] == "https://example.com/a/b.git" and info["branch"] == "main"
    assert len(info["commit_hash"]) == 40 and info["version"] == info["commit_hash"][:8]
    assert info["commit_date"] == 1700000000
