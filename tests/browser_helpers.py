"""Shared pieces of the browser tests (Playwright driving Debian's chromium, headless).

* :func:`chromium_path` / :data:`needs_chromium`: skip where ``/usr/bin/chromium`` is missing (fail under CI,
  see ``needs`` in conftest.py);
* :func:`launch` starts the browser (``--no-sandbox``, no network extras);
* :func:`screenshot_tabs` saves a screenshot of every top-level tab of the UI under ``tests/artifacts/``;
  the ``page`` fixtures of the browser test modules call it when their test failed (the outcome comes
  from the ``pytest_runtest_makereport`` hook in ``conftest.py``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import needs

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


needs_chromium = needs(chromium_path() is not None, "Debian chromium is not installed (launch.py --tests installs it)")


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module", name="browser")
def module_browser():
    """One headless chromium for a test module (import this fixture into the module)."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    chromium = launch(playwright)
    yield chromium
    chromium.close()
    playwright.stop()


def screenshot_tabs(page, name: str) -> list[Path]:
    """A full-page screenshot of the page as it is, then one per top-level tab (``#tabs``)."""
    ARTIFACTS.mkdir(exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    saved = []
    try:
        path = ARTIFACTS / f"{stem}--as-failed.png"
        page.screenshot(path=str(path), full_page=True, timeout=10_000)
        saved.append(path)
        buttons = page.locator("#tabs > .tab-wrapper button[role=tab], #tabs button[role=tab]")
        titles = []
        for i in range(buttons.count()):
            title = (buttons.nth(i).inner_text(timeout=2_000) or f"tab{i}").strip()
            if title and title not in titles:
                titles.append(title)
        for title in titles:
            page.locator("#tabs button[role=tab]", has_text=title).first.click(timeout=5_000)
            page.wait_for_timeout(300)
            path = ARTIFACTS / f"{stem}--tab-{re.sub(r'[^A-Za-z0-9]+', '_', title)}.png"
            page.screenshot(path=str(path), full_page=True, timeout=10_000)
            saved.append(path)
        if titles:  # a shared page: the next test starts on the first tab again
            page.locator("#tabs button[role=tab]", has_text=titles[0]).first.click(timeout=5_000)
    except Exception:  # noqa: BLE001 - the screenshots must not hide the test's own failure
        pass
    return saved


def open_page(browser, url: str, *, width: int = 1400, height: int = 1000, timeout: float = 30_000, **options):
    """A new browser context (a new UI session; ``options`` for playwright's ``new_context``) at ``width`` x
    ``height`` on the UI at ``url``, ready when the txt2img prompt is there; returns (context, page)."""
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    page = context.new_page()
    page.set_default_timeout(timeout)
    page.goto(url + "/", wait_until="domcontentloaded")
    page.locator("#txt2img_prompt textarea").wait_for()
    return context, page


def failed(request) -> bool:
    """Whether the test of ``request`` failed in setup or in its call (set by conftest's report hook)."""
    reports = getattr(request.node, "reports", {})
    return any(rep.failed for rep in reports.values())


def screenshot_if_failed(request, page) -> bool:
    """After a test on a shared page: screenshots of every tab when it failed (``tests/artifacts/``); whether
    it did."""
    if failed(request) and not page.is_closed():
        screenshot_tabs(page, request.node.name)
        return True
    return False


@pytest.fixture(autouse=True, name="screenshots_when_failed")
def shared_page_screenshots(request, page):
    """For modules whose tests share one ``page`` fixture (import this fixture into the module): screenshots of
    every tab when a test failed (:func:`screenshot_if_failed`)."""
    yield
    screenshot_if_failed(request, page)


def wait_text(page, selector: str, text: str, timeout: float = 60_000, prop: str = "value") -> None:
    """Wait until the element's ``value`` (or ``innerText``) contains ``text``."""
    page.wait_for_function(
        "([sel, text, prop]) => { const el = document.querySelector(sel);"
        " return !!el && String(el[prop] ?? '').includes(text); }",
        arg=[selector, text, prop], timeout=timeout)


def choose(page, selector: str, value: str) -> None:
    """Pick ``value`` in the Gradio dropdown ``selector`` the way a user does: open it, click the option."""
    box = page.locator(f"{selector} input").first
    box.click()
    page.get_by_role("option", name=value, exact=True).first.click()
    page.wait_for_function(f"document.querySelector('{selector} input').value === {value!r}", timeout=10_000)


def inpaint_with_a_stroke(page, canvas) -> None:
    """Draw a mask stroke across ``canvas`` (the img2img Inpaint editor) and press Generate until the infotext
    shows the mask was used: the editor may still be loading its image when the first stroke lands (three
    tries; the "paint over the area" error of a lost stroke is closed in between)."""
    errors: list[str] = []
    for attempt in range(3):
        page.wait_for_timeout(1000 * (attempt + 1))
        canvas.scroll_into_view_if_needed()  # mouse strokes need the canvas on screen
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=8)
        page.mouse.up()
        page.locator("#img2img_generate").click()
        try:  # done, or the "paint over the area" error when the stroke was lost
            page.wait_for_function(
                "document.querySelector('#img2img_info textarea').value.includes('Mask blur')"
                " || !!document.querySelector('[data-testid=toast-body]')", timeout=30_000)
        except Exception:
            if attempt == 2:
                raise
        if "Mask blur" in page.locator("#img2img_info textarea").input_value():
            return
        toast = page.locator("[data-testid=toast-body]")
        errors.append(toast.first.inner_text() if toast.count() else "no message")
        close = page.locator("[data-testid=toast-close]")
        if close.count():
            close.first.click()
    raise AssertionError(f"the drawn mask never reached the server: {errors}")
