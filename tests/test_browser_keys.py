"""A1111's keyboard habits, the progress in the page title and the dismissible default-model notice, in a real
browser (issue 28, points 3 and 5; Playwright driving Debian's chromium; webui/ui/static/keys.js).

One server for the module, on an empty models folder (the built-in shapes model: 64x64 pictures, and the
default-model notice shows), and one page at 1366x768: the tests go on from where the one before left it.
"""

from __future__ import annotations

import httpx
import pytest

from tests.browser_helpers import (
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

TITLE = "Stable Diffusion web UI"
PROMPT = "#txt2img_prompt textarea"
INFO = "#txt2img_info textarea"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("keys")
    ctx = build_context(make_settings(data, data / "models"), load_model=True)
    assert ctx.models.using_builtin_default
    with LiveServer(create_app(ctx)) as srv:
        srv.ctx = ctx
        yield srv


def new_page(browser, url: str):
    context, page = open_page(browser, url, width=1366, height=768, timeout=20_000)
    ready(page)
    return context, page


def ready(page) -> None:
    """The UI is there and the page script has read /webui-page.json (the keyedit options)."""
    page.locator(PROMPT).wait_for()
    page.wait_for_function("!!(window.webuiPage && window.webuiPage.ready && window.webuiKeys)")


@pytest.fixture(scope="module")
def page(browser, server):
    context, page = new_page(browser, server.url)
    yield page
    context.close()


def set_prompt(page, text: str, start: int, end: int | None = None) -> None:
    """The prompt holds ``text`` with the selection ``start``..``end`` (a caret when ``end`` is None)."""
    box = page.locator(PROMPT)
    box.fill(text)
    box.evaluate("(el, [s, e]) => { el.focus(); el.setSelectionRange(s, e); }", [start, start if end is None else end])


def prompt_after(page, keys: str, times: int = 1) -> str:
    for _ in range(times):
        page.locator(PROMPT).press(keys)
    return page.locator(PROMPT).input_value()


def selection(page) -> str:
    return page.locator(PROMPT).evaluate("el => el.value.slice(el.selectionStart, el.selectionEnd)")


def set_size(page, steps: int) -> None:
    for name, value in (("steps", steps), ("width", 64), ("height", 64)):
        page.locator(f"#txt2img_{name} input[type=number]").fill(str(value))


def test_ctrl_and_alt_enter_in_a_prompt_generate(page):
    set_size(page, 2)
    set_prompt(page, "a red circle", 12)
    page.locator(PROMPT).press("Control+Enter")
    wait_text(page, INFO, "Steps: 2", timeout=20_000)
    assert "a red circle" in page.locator(INFO).input_value()
    assert page.locator(PROMPT).input_value() == "a red circle"  # no new line typed
    # Alt+Enter in the negative prompt generates too
    page.locator("#txt2img_neg_prompt textarea").fill("blue")
    set_size(page, 3)
    page.locator("#txt2img_neg_prompt textarea").press("Alt+Enter")
    wait_text(page, INFO, "Steps: 3", timeout=20_000)
    assert "Negative prompt: blue" in page.locator(INFO).input_value()


def test_ctrl_up_down_change_the_attention_weight(page):
    # a selected word: (word:1.1), then (word:1.2); the word stays selected
    set_prompt(page, "a red circle", 2, 5)
    assert prompt_after(page, "Control+ArrowUp") == "a (red:1.1) circle"
    assert selection(page) == "red"
    assert prompt_after(page, "Control+ArrowUp") == "a (red:1.2) circle"
    # weight 1 drops the parentheses
    set_prompt(page, "a (red:1.1) circle", 3, 6)
    assert prompt_after(page, "Control+ArrowDown") == "a red circle"
    assert selection(page) == "red"
    # no selection: the word at the caret; inside a weighted block: that block
    set_prompt(page, "a large blue square", 9)
    assert prompt_after(page, "Control+ArrowDown") == "a large (blue:0.9) square"
    set_prompt(page, "a (large blue:1.3) square", 5)
    assert prompt_after(page, "Control+ArrowUp") == "a (large blue:1.4) square"
    # old-style emphasis ((word)) and [word] become weights
    set_prompt(page, "((red)) circle", 3)
    assert prompt_after(page, "Control+ArrowUp") == "(red:1.3) circle"
    set_prompt(page, "[red] circle", 2)
    assert prompt_after(page, "Control+ArrowDown") == "(red:0.8) circle"
    # an extra network's weight moves by keyedit_precision_extra (0.05)
    set_prompt(page, "a circle <lora:x:1>", 16)
    assert prompt_after(page, "Control+ArrowUp") == "a circle <lora:x:1.05>"
    assert prompt_after(page, "Control+ArrowDown", times=2) == "a circle <lora:x:0.95>"
    # Alt+Left / Alt+Right move the prompt element at the caret (keyedit_move)
    set_prompt(page, "red, circle, blue background", 1)
    assert prompt_after(page, "Alt+ArrowRight") == "circle, red, blue background"
    assert prompt_after(page, "Alt+ArrowRight") == "circle, blue background, red"
    assert prompt_after(page, "Alt+ArrowLeft") == "circle, red, blue background"


def test_escape_interrupts_and_the_title_shows_the_progress(page, server):
    # the prompt edited by keys reaches the server (keys.js sends an input event after each change)
    set_size(page, 150)
    set_prompt(page, "a red circle", 2, 5)
    page.locator(PROMPT).press("Control+ArrowUp")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("(t) => /^\\[\\d{1,3}%\\] /.test(document.title) && document.title.endsWith(t)", arg=TITLE)
    assert page.title().startswith("[") and page.title().endswith("%] " + TITLE)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("Escape")  # anywhere on the page
    wait_text(page, INFO, "(interrupted)", timeout=20_000)
    info = page.locator(INFO).input_value()
    assert "a (red:1.1) circle" in info and "Steps: 150" in info
    page.wait_for_function("(t) => document.title === t", arg=TITLE)  # restored
    assert not server.ctx.jobs.running()


def test_default_model_notice_stays_dismissed(page, browser, server):
    notice = page.locator("#model_notice")
    assert "built-in shapes demo model" in notice.inner_text()
    button = notice.locator("button.webui-notice-dismiss")
    assert button.get_attribute("aria-label") == "Dismiss"
    button.click()
    notice.wait_for(state="hidden")
    # the keyedit options are read at each page load: a changed step applies after the reload
    assert httpx.post(server.url + "/sdapi/v1/options", json={"keyedit_precision_attention": 0.2},
                      timeout=30).status_code == 200
    # another browser (no localStorage of this one), loading meanwhile
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        other = context.new_page()
        other.goto(server.url + "/", wait_until="commit")
        page.reload(wait_until="domcontentloaded")
        ready(page)
        page.wait_for_timeout(300)  # keys.js looks at the notice every 250 ms
        assert not notice.is_visible()  # dismissed here
        set_prompt(page, "a red circle", 3)
        assert prompt_after(page, "Control+ArrowUp") == "a (red:1.2) circle"
        other.locator("#model_notice button.webui-notice-dismiss").wait_for()
        assert other.locator("#model_notice").is_visible()  # shown there
    finally:
        server.ctx.options.update({"keyedit_precision_attention": 0.1})
        context.close()
    # the shortcuts are written in the footer
    assert "Ctrl+Enter" in page.locator("#webui_shortcuts").inner_text()
