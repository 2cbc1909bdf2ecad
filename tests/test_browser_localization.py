"""Localization, icons and the dark theme in a real browser (issue 24; Playwright driving Debian's chromium,
which has no emoji font here, nor a CJK font: the tests read the page's text, not pixels of characters).

One server for the module, started with ``--localization zh_CN``, an extra localizations folder holding a
malformed file, and a translation extension (an extension folder with nothing but ``localizations/``).
"""

from __future__ import annotations

import io
import json

import pytest

from tests.browser_helpers import (
    choose,
    module_browser,  # noqa: F401 (the module's chromium fixture)
    needs_chromium,
    open_page,
    shared_page_screenshots,  # noqa: F401 (screenshots of every tab when a test fails)
    wait_text,
)
from tests.conftest import make_settings
from tests.live_server import LiveServer
from webui.context import build_context
from webui.server import create_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_root):
    data = tmp_path_factory.mktemp("l10n")
    own = data / "own-localizations"
    own.mkdir()
    (own / "broken.json").write_text('{"Generate": "oops",', encoding="utf-8")
    (data / "extensions" / "translation-ext" / "localizations").mkdir(parents=True)
    settings = make_settings(data, models_root, disable_extensions=False, localizations_dir=own,
                             localization="zh_CN")
    ctx = build_context(settings, plugins=None, load_model=True)
    with LiveServer(create_app(ctx)) as srv:
        srv.ctx = ctx
        srv.extension_file = data / "extensions" / "translation-ext" / "localizations" / "xx_TEST.json"
        yield srv


@pytest.fixture(scope="module")
def page(request, browser, server):
    """One page for the module (each page load of the whole UI takes seconds): the tests go on from where the
    one before left it."""
    context, page = open_page(browser, server.url)
    yield page
    context.close()


def localized(page, name: str) -> None:
    """Wait until the page script has applied localization ``name``."""
    page.wait_for_function("(name) => document.documentElement.dataset.webuiLocalization === name", arg=name)


def reload(page, url: str | None = None) -> None:
    if url is None:
        page.reload(wait_until="domcontentloaded")
    else:
        page.goto(url, wait_until="domcontentloaded")
    page.locator("#txt2img_prompt textarea").wait_for()


def text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text().strip()


def set_options(server, **values) -> None:
    import httpx

    assert httpx.post(server.url + "/sdapi/v1/options", json=values, timeout=30).status_code == 200


def pick(page, selector: str, shown: str) -> None:
    """Choose the option shown as ``shown`` in a dropdown, then leave it (a dropdown shows its translated value
    only when it does not have the focus)."""
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=shown, exact=True).click()
    page.mouse.click(5, 5)
    page.wait_for_function("([sel, text]) => document.querySelector(sel + ' input').value === text",
                           arg=[selector, shown])


def test_zh_cn_shows_chinese_sends_english_and_draws_icons(page, server):
    from PIL import Image

    localized(page, "zh_CN")  # --localization zh_CN at the server's start
    # labels, buttons and tab names; the page title
    assert text(page, "#txt2img_generate") == "生成"
    assert text(page, "#txt2img_sampling [data-testid=block-info]") == "采样方法"
    tabs = page.locator("#tabs [role=tablist] button[role=tab]").all_inner_texts()
    assert tabs[:8] == ["文生图", "图生图", "后期处理", "图片信息", "模型融合", "训练", "设置", "扩展"]
    assert page.title() == "Stable Diffusion 网页界面"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"  # the browser picks Chinese fonts
    assert page.locator("#txt2img_prompt textarea").get_attribute("placeholder") == "提示词"
    # a choice shows translated (English again while the dropdown has the focus: Gradio filters by it); the
    # request carries the English value (the infotext says so)
    pick(page, "#txt2img_scheduler", "均匀（Uniform）")
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    for name, value in (("steps", 2), ("width", 64), ("height", 64)):
        page.locator(f"#txt2img_{name} input[type=number]").fill(str(value))
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_info textarea", "Steps: 2")
    info = page.locator("#txt2img_info textarea").input_value()
    assert "Schedule type: Uniform" in info and "a red circle" in info  # prompts are never translated
    assert page.locator("#txt2img_scheduler input").input_value() == "均匀（Uniform）"
    assert text(page, "#txt2img_info [data-testid=block-info]") == "生成信息"
    # content that appears later: an accordion opened, a tab opened, an error toast
    page.locator("#txt2img_hr button.label-wrap").click()
    wait_text(page, "#txt2img_hr", "启用高分辨率修复", prop="innerText")
    page.locator("#tabs button[role=tab]", has_text="图生图").first.click()
    wait_text(page, "#img2img_resize_mode", "仅调整大小", prop="innerText")
    assert text(page, "#img2img_generate") == "生成"
    page.locator("#img2img_send_to_extras").click()
    page.locator("[data-testid=toast-body]", has_text="请先生成一张图片").first.wait_for()
    page.locator("#tabs button[role=tab]", has_text="文生图").first.click()

    # icons: drawn from SVG (no emoji font here), the tooltip and accessible name translated
    for elem_id, label in (("refresh_sd_model_checkpoint", "刷新"), ("txt2img_random_seed", "随机种子（-1）"),
                           ("txt2img_reuse_seed", "沿用上一张图片的种子"), ("txt2img_paste", None)):
        button = page.locator(f"#{elem_id}")
        box = button.bounding_box()
        assert box and box["width"] >= 30 and box["height"] >= 30, elem_id
        icon = button.evaluate("b => { const s = getComputedStyle(b, '::before');"
                               " return [s.webkitMaskImage || s.maskImage, s.width, s.height]; }")
        assert icon[0].startswith('url("data:image/svg+xml') and icon[1:] == ["20px", "20px"], (elem_id, icon)
        if label:
            assert button.get_attribute("aria-label") == label and button.get_attribute("title") == label
        # something is drawn in the middle of the button: the icon's strokes in the text colour
        shot = Image.open(io.BytesIO(button.screenshot())).convert("L")
        w, h = shot.size
        low, high = shot.crop((w // 2 - 10, h // 2 - 10, w // 2 + 10, h // 2 + 10)).getextrema()
        assert high - low > 80, (elem_id, low, high)

    # Settings, in Chinese: the malformed file is reported; the dark theme chosen applies at the next load
    page.locator("#tabs button[role=tab]", has_text="设置").first.click()
    page.locator("button.label-wrap", has_text="用户界面").first.click()
    wait_text(page, "#setting_localization_notes", "broken.json", prop="innerText")
    notes = page.locator("#setting_localization_notes").inner_text()
    assert "以下本地化文件未被使用" in notes and "broken.json is not valid JSON (line 1" in notes
    pick(page, "#setting_theme_mode", "深色")
    page.locator("#settings_submit").click()
    wait_text(page, "#settings_result", "theme_mode", prop="innerText")
    assert text(page, "#settings_result") == "已更改 1 项设置：theme_mode。"  # a template, the values put back
    assert server.ctx.options.current["theme_mode"] == "Dark"
    assert not page.evaluate("document.body.classList.contains('dark')")
    reload(page)
    localized(page, "zh_CN")
    assert page.evaluate("document.body.classList.contains('dark')")


def test_extension_file_appears_applies_and_none_restores_english(page, server):
    ctx = server.ctx
    server.extension_file.write_text(json.dumps({"Generate": "Los!", "Sampling method": "Abtastverfahren"}),
                                     encoding="utf-8")
    # the file dropped into the translation extension's localizations/ appears after a refresh; chosen
    page.locator("#tabs button[role=tab]", has_text="设置").first.click()
    page.locator("button.label-wrap", has_text="用户界面").first.click()
    page.locator("#setting_localization_refresh").click()
    choose(page, "#setting_localization", "xx_TEST")
    page.locator("#settings_submit").click()
    wait_text(page, "#settings_result", "localization", prop="innerText")
    assert ctx.options.current["localization"] == "xx_TEST"
    # applied at the next page load: what the file translates, English for the rest; ?__theme= wins
    reload(page, server.url + "/?__theme=light")
    localized(page, "xx_TEST")
    assert text(page, "#txt2img_generate") == "Los!"
    assert text(page, "#txt2img_sampling [data-testid=block-info]") == "Abtastverfahren"
    assert text(page, "#txt2img_scheduler [data-testid=block-info]") == "Schedule type"
    assert not page.evaluate("document.body.classList.contains('dark')")
    # back to None (through the API): English again
    set_options(server, localization="None")
    reload(page)
    localized(page, "None")
    assert text(page, "#txt2img_generate") == "Generate"
    assert page.locator("#tabs [role=tablist] button[role=tab]").first.inner_text() == "txt2img"
    assert page.locator("#txt2img_random_seed").get_attribute("aria-label") == "Random seed (-1)"
    # the chosen file broken later: the page says so and shows English, never a blank page
    set_options(server, localization="xx_TEST")
    server.extension_file.write_text("{not json", encoding="utf-8")
    reload(page)
    localized(page, "None")
    notice = page.locator("#webui_page_notice").inner_text()
    assert "'xx_TEST' is not used" in notice and "xx_TEST.json is not valid JSON" in notice
    assert text(page, "#txt2img_generate") == "Generate"
