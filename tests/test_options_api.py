"""Every A1111 1.10 option through /sdapi/v1/options: listed with A1111's default, typed, stored, echoed.

The reference is the catalogue of A1111 1.10's keys and defaults in webui/a1111_options.py (restated from
A1111's modules/shared_options.py); these tests check the server against it and against the type rules.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from webui.a1111_options import DELIBERATE_DEFAULTS, a1111_options, catalogue
from webui.settings import OptionsStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def own(tmp_path_factory, models_root):
    """A server with its own data folder (these tests write options) and no model loaded."""
    from tests.conftest import make_settings
    from webui.context import build_context
    from webui.server import create_app

    ctx = build_context(make_settings(tmp_path_factory.mktemp("opts"), models_root, nowebui=True))
    with TestClient(create_app(ctx)) as client:
        yield ctx, client


def _wrong_value(default):
    """A value of another type than ``default``'s."""
    if isinstance(default, bool):
        return "maybe"
    if isinstance(default, (int, float)):
        return "many"
    if isinstance(default, list):
        return "not a list"
    return 12  # str and None-defaulted options take text


def _other_value(o):
    """A valid value different from A1111's default for option ``o``."""
    d = o.default
    if o.choices:
        return next(c for c in o.choices if c != d)
    if o.choices_fn is not None and o.check is not None:  # names found at run time (e.g. localization: zh_CN)
        return next(c for c in o.choices_fn() if c != d)
    if isinstance(d, bool):
        return not d
    if isinstance(d, int):
        return int(o.minimum) if o.minimum is not None and o.minimum != d else d + 1 if o.maximum != d else d - 1
    if isinstance(d, float):
        return o.minimum if o.minimum is not None and o.minimum != d else d / 2 if d else 0.5
    if isinstance(d, list):
        return ["x"]
    return "x-value"


def test_get_answers_every_a1111_key_with_a1111s_default(api_client):
    got = api_client.get("/sdapi/v1/options").json()
    keys = [o.key for o in a1111_options()]
    assert len(keys) == len(set(keys)) and len(keys) > 245  # A1111 1.10: ~245 core keys + bundled extensions
    missing = [k for k in keys if k not in got]
    assert missing == []
    for key in ("send_seed", "samples_format", "token_merging_ratio", "sdxl_crop_top", "quicksettings_list",
                "randn_source", "show_progress_every_n_steps", "upscaler_for_img2img"):
        assert key in got


def test_every_definition_has_a1111s_default_and_type(ctx):
    """The options the server defines (core, plugins, catalogue) start from A1111's value; none of the
    catalogue's keys is defined twice with another type."""
    differ = {}
    for o in a1111_options():
        d = ctx.options.defs[o.key]
        if o.key in DELIBERATE_DEFAULTS:
            continue
        if d.default != o.default or type(d.default) is not type(o.default):
            differ[o.key] = (d.default, o.default)
    assert differ == {}


def test_a1111s_own_test_options_write(own):
    ctx, client = own
    pre = client.get("/sdapi/v1/options").json()["send_seed"]
    assert pre is True  # A1111's default
    assert client.post("/sdapi/v1/options", json={"send_seed": not pre}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["send_seed"] is False
    assert json.loads(ctx.settings.config_file.read_text())["send_seed"] is False
    client.post("/sdapi/v1/options", json={"send_seed": pre})


def test_every_key_accepts_a_valid_value_stores_it_and_reads_it_back(own):
    ctx, client = own
    changes = {o.key: _other_value(ctx.options.defs[o.key]) for o in a1111_options()
               if o.key not in ("sd_model_checkpoint", "sd_vae", "disabled_extensions", "face_restoration_model",
                                "upscaler_for_img2img")}
    r = client.post("/sdapi/v1/options", json=changes)
    assert r.status_code == 200, r.text
    got = client.get("/sdapi/v1/options").json()
    assert {k: got[k] for k in changes} == changes
    # persisted: a new store on the same file reads the same values
    again = OptionsStore.open(ctx.settings.config_file, ctx.options.defs.values())
    assert {k: again.current[k] for k in changes} == changes
    defaults = {o.key: o.default for o in a1111_options() if o.key in changes}
    assert client.post("/sdapi/v1/options", json=defaults).status_code == 200


def test_wrong_type_is_422_naming_the_key_and_nothing_is_written(own):
    ctx, client = own
    wrong = []
    for option in a1111_options():
        if option.key == "sd_model_checkpoint":
            continue
        before = ctx.settings.config_file.read_bytes() if ctx.settings.config_file.exists() else b""
        r = client.post("/sdapi/v1/options", json={"send_size": False, option.key: _wrong_value(option.default)})
        after = ctx.settings.config_file.read_bytes() if ctx.settings.config_file.exists() else b""
        if r.status_code != 422 or option.key not in r.text or after != before:
            wrong.append((option.key, r.status_code))
    assert wrong == []
    assert client.get("/sdapi/v1/options").json()["send_size"] is True


def test_ranges_choices_and_unknown_keys(own):
    ctx, client = own
    for bad in ({"jpeg_quality": 101}, {"jpeg_quality": 79.5}, {"samples_format": "tiff"},
                {"randn_source": "TPU"}, {"s_noise": 1.2}, {"CLIP_stop_at_last_layers": 0},
                {"not_an_option": 1}, {"quicksettings_list": ["a", 2]}, {"img_max_size_mp": float("inf")},
                {"upscaler_for_img2img": "Nope"}, {"outdir_samples": "../elsewhere"}):
        r = client.post("/sdapi/v1/options", content=json.dumps(bad).replace("Infinity", "1e999"),
                        headers={"content-type": "application/json"})
        assert r.status_code == 422, (bad, r.text)
        assert next(iter(bad)) in r.text
    for good in ({"upscaler_for_img2img": "Lanczos"}, {"upscaler_for_img2img": None}, {"outdir_samples": ""}):
        assert client.post("/sdapi/v1/options", json=good).status_code == 200, good
    # ints given as whole floats (what Gradio's number boxes send) are taken as ints
    assert client.post("/sdapi/v1/options", json={"jpeg_quality": 90.0}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 90
    client.post("/sdapi/v1/options", json={"jpeg_quality": 80})


def test_override_settings_accept_every_key_and_refuse_unknown(api_client):
    req = {"prompt": "x", "steps": 1, "width": 64, "height": 64,
           "override_settings": {"send_seed": False, "token_merging_ratio": 0.5}}
    assert api_client.post("/sdapi/v1/txt2img", json=req).status_code == 200
    bad = {**req, "override_settings": {"token_merging_ratio": "half"}}
    r = api_client.post("/sdapi/v1/txt2img", json=bad)
    assert r.status_code == 422 and "token_merging_ratio" in r.text


def test_no_effect_keys_do_not_change_the_image(api_client):
    """Keys documented as having no effect really change nothing (token merging is the one clients set)."""
    req = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 11}
    plain = api_client.post("/sdapi/v1/txt2img", json=req).json()
    tome = api_client.post("/sdapi/v1/txt2img", json={
        **req, "override_settings": {"token_merging_ratio": 0.5, "s_min_uncond": 3.0}}).json()
    assert plain["images"] == tome["images"]


def test_docs_list_every_option_with_its_reason():
    spec = importlib.util.spec_from_file_location("options_doc", ROOT / "tools" / "options_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.render(module.option_defs())
    doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert module.replace_table(doc, table) == doc, "docs/api.md is stale: run .venv/bin/python tools/options_doc.py"
    for o in a1111_options():
        assert f"| `{o.key}`" in doc


def test_catalogue_keys_are_unique_and_typed():
    cat = catalogue()
    assert len(cat) == len(a1111_options())
    for o in cat.values():
        assert o.default is None or isinstance(o.default, (bool, int, float, str, list)), o.key
        if o.choices:
            assert o.default in o.choices, o.key
        if o.minimum is not None and isinstance(o.default, (int, float)):
            assert o.minimum <= o.default <= o.maximum, o.key
