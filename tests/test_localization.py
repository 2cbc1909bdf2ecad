"""Localizations (issue 24): A1111-format files found in the shipped folder, --localizations-dir and extension
folders (a translation extension with nothing but ``localizations/`` loads), combined by name, malformed files
reported and skipped; the option ``localization`` (choices, API, --localization); what a page load gets; and
the shipped zh_CN translating every string the UI shows (tools/ui_strings.py lists them).

The page itself (the translation in a real browser, icons, dark theme) is tested in
tests/test_browser_localization.py."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import api_only, make_settings
from webui.context import build_context
from webui.localization import Localizations, read_localization
from webui.plugins import make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_files_are_found_combined_by_name_and_malformed_ones_reported_once(tmp_path, caplog):
    shipped, extra, ext = tmp_path / "shipped", tmp_path / "extra", tmp_path / "ext" / "localizations"
    write(shipped / "xx.json", {"Generate": "shipped", "Seed": "shipped seed", "Steps": 5})
    write(extra / "xx.json", {"Generate": "extra"})
    write(ext / "yy.json", "\ufeff" + json.dumps({"Generate": "with a BOM"}))  # A1111's files may start with one
    write(extra / "broken.json", "{not json")
    write(extra / "list.json", ["Generate"])
    store = Localizations(lambda: [shipped, extra, ext, tmp_path / "missing"])
    with caplog.at_level(logging.WARNING, logger="webui.localization"):
        listing = store.listing()
        assert listing.names == ["xx", "yy"]
        store.listing()
    # the later folder wins where both translate a string; non-string values are left out
    assert store.strings("xx") == {"Generate": "extra", "Seed": "shipped seed"}
    assert store.strings("yy") == {"Generate": "with a BOM"}
    assert store.strings("None") == {}
    problems = {p.path.name: p.reason for p in listing.problems}
    assert set(problems) == {"broken.json", "list.json"}
    assert "not valid JSON (line 1" in problems["broken.json"] and "not an object" in problems["list.json"]
    logged = [r.getMessage() for r in caplog.records]
    assert sum("broken.json" in m for m in logged) == 1 and sum("list.json" in m for m in logged) == 1
    # fixed on disk: used at the next listing
    write(extra / "broken.json", {"Generate": "fixed now"})
    assert store.names() == ["broken", "xx", "yy"] and store.strings("broken") == {"Generate": "fixed now"}
    with pytest.raises(ValueError, match="no usable localization named 'zz'.*found: broken, xx, yy"):
        store.strings("zz")


def test_option_flag_api_and_page_data(tmp_path, caplog):
    from fastapi.testclient import TestClient

    from webui.server import create_app
    from webui.settings import parse_args
    from webui.ui.page import page_data

    extensions, own = tmp_path / "extensions", tmp_path / "own"
    # A1111's translation extensions hold nothing but localizations/: they load, and their files are found
    write(extensions / "translation-ext" / "localizations" / "de_TEST.json", {"Generate": "Erzeugen"})
    write(extensions / "off-ext" / "localizations" / "off_TEST.json", {"Generate": "off"})
    write(own / "xx_TEST.json", {"Generate": "xx"})
    write(own / "broken.json", "[")
    settings = parse_args(["--data-dir", str(tmp_path / "data"), "--localizations-dir", str(own),
                           "--localization", "de_test", "--theme", "dark"], env={})
    assert settings.localizations_dir == own.resolve() and settings.theme == "dark" and not settings.flag_notes
    plugins = make_plugin_manager(extensions_dir=extensions, disabled_extensions=["off-ext"], load_entrypoints=False)
    reports = {r.name: r for r in plugins.reports}
    assert reports["translation-ext"].ok and reports["off-ext"].disabled
    ctx = build_context(settings, plugins=plugins)
    # --localization (letter case aside) and --theme set their options at start
    assert ctx.options.current["localization"] == "de_TEST" and ctx.options.current["theme_mode"] == "Dark"
    assert ctx.options.defs["localization"].choices_fn() == ["None", "de_TEST", "xx_TEST", "zh_CN"]
    keyedit = {"keyedit_precision_attention": 0.1, "keyedit_precision_extra": 0.05,
               "keyedit_delimiters": ".,\\/!?%^*;:{}=`~() ",
               "keyedit_delimiters_whitespace": ["Tab", "Carriage Return", "Line Feed"], "keyedit_move": True}
    assert page_data(ctx) == {"localization": "de_TEST", "strings": {"Generate": "Erzeugen"}, "theme": "Dark",
                              "error": None, "keyedit": keyedit}  # keyedit: A1111's options, for static/keys.js

    with TestClient(create_app(api_only(ctx))) as client:
        assert client.get("/sdapi/v1/options").json()["localization"] == "de_TEST"
        assert client.post("/sdapi/v1/options", json={"localization": "xx_TEST"}).status_code == 200
        assert page_data(ctx)["strings"] == {"Generate": "xx"}
        refused = client.post("/sdapi/v1/options", json={"localization": "off_TEST"})
        assert refused.status_code == 422 and "zh_CN" in refused.text and "xx_TEST" in refused.text
        assert client.post("/sdapi/v1/options", json={"theme_mode": "Dim"}).status_code == 422
        assert ctx.options.current["localization"] == "xx_TEST"

    # the chosen file broken later: the page gets English and says why (never a blank page)
    write(own / "xx_TEST.json", "{oops")
    data = page_data(ctx)
    assert data["strings"] == {} and data["localization"] == "None"
    assert "'xx_TEST' is not used" in data["error"] and "English" in data["error"]
    assert "xx_TEST.json is not valid JSON (line 1" in data["error"]

    # an unknown --localization is logged and changes nothing
    with caplog.at_level(logging.WARNING, logger="webui.localization"):
        again = build_context(make_settings(tmp_path / "data", localization="nope"))
    assert again.options.current["localization"] == "xx_TEST"
    assert "--localization nope: no such localization (found: zh_CN)" in caplog.text


@pytest.fixture(scope="module")
def ui_strings(tmp_path_factory):
    """Every string of the UI (built-in plugins and the example extensions), by tools/ui_strings.py."""
    sys.path.insert(0, str(ROOT / "tools"))
    import ui_strings as tool

    ctx, demo = tool.build(tmp_path_factory.mktemp("strings"))
    return tool.ui_strings(ctx, demo), demo


def test_zh_cn_translates_every_string_the_ui_shows(ui_strings):
    from webui.models.default import HOW_TO_ADD

    strings, _ = ui_strings
    # the list covers each kind of place (labels, info, choices, buttons, tabs, accordions, Markdown, HTML,
    # Settings sections and labels, the plugins' sections, the handlers' errors and templates, the help text)
    for expected in ("Generate", "Sampling method", "txt2img", "Hires. fix", "Refresh", "Uniform", "auto",
                     "FLUX.1 dev only (use CFG Scale 1 with it)", "Saving images/grids", "Eta for DDIM",
                     "Localization (UI language; applied at the next page load)", "Control Weight",
                     "Film grain (example extension)", "Generate an image first", "The style was not saved: {}",
                     "Extras: {} ({}/{})", "builtin", HOW_TO_ADD, "Loading model…", "X/Y/Z plot"):
        assert expected in strings, expected
    assert not {"Euler a", "canny", "png", "tiny-sd1.safetensors"} & set(strings)  # names stay as they are
    zh = read_localization(ROOT / "localizations" / "zh_CN.json")
    missing = sorted(s for s in strings if s not in zh)
    assert missing == [], f"localizations/zh_CN.json lacks {len(missing)} UI strings: {missing}"
    for key in strings:
        assert zh[key].strip() and zh[key].count("{}") == key.count("{}"), key
    chinese = [k for k in strings if re.search(r"[\u4e00-\u9fff]", zh[k])]
    assert len(chinese) > 0.85 * len(strings)  # the rest are names kept as they are (LoRA, VAE, Karras, ...)


def test_buttons_have_text_and_icon_buttons_are_drawn_by_the_page(ui_strings):
    """No button is an emoji (an empty box without an emoji font): icons are drawn by the page's CSS from
    webui/ui/static/icons/, the button's text stays as tooltip and accessible name."""
    import gradio as gr

    from webui.sections import ICON_LABELS
    from webui.ui.assets import icon_css

    _, demo = ui_strings
    buttons = [b for b in demo.blocks.values() if isinstance(b, gr.Button)]
    assert [b.elem_id for b in buttons if not re.search(r"[^\W\d_]", str(b.value))] == []
    icons = {c for b in buttons for c in (b.elem_classes or []) if c.startswith("webui-icon-")}
    assert icons == {f"webui-icon-{name}" for name in ICON_LABELS}
    css = icon_css()
    for name in ICON_LABELS:
        assert f'button.webui-icon-{name} {{ --webui-icon: url("data:image/svg+xml,%3Csvg' in css
