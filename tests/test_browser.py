"""End-to-end in a real browser (Playwright driving Debian's chromium, headless, ``--no-sandbox``): one server
and one browser for the module, a fresh browser context (a new UI session) per test. When a test fails,
a screenshot of the page and of every tab goes to ``tests/artifacts/`` (see tests/browser_helpers.py).

The txt2img → inpaint (drawn mask) → extras chain through the send-to buttons is in tests/test_ui.py.
"""

from __future__ import annotations

import json

import pytest

from tests.browser_helpers import (
    choose,
    inpaint_with_a_stroke,
    module_browser,  # noqa: F401 (the module's chromium fixture)
    needs_chromium,
    screenshot_tabs,
    wait_text,
)
from tests.conftest import make_settings
from tests.live_server import LiveServer
from tests.step_gate import WAIT, step_gate
from webui.context import build_context
from webui.server import create_app
from webui.ui.settings_tab import SHOWING_SAVED

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_root):
    """A server on its own data folder (the tests change settings)."""
    ctx = build_context(make_settings(tmp_path_factory.mktemp("browser"), models_root), load_model=True)
    with LiveServer(create_app(ctx)) as srv:
        srv.ctx = ctx
        yield srv


@pytest.fixture
def page(request, browser, server):
    from tests.browser_helpers import open_page

    context, page = open_page(browser, server.url)
    yield page
    from tests.browser_helpers import failed

    if failed(request) and not page.is_closed():
        screenshot_tabs(page, request.node.name)
    context.close()


def open_tab(page, title: str) -> None:
    page.locator("#tabs button[role=tab]", has_text=title).first.click()


def png_file(tmp_path, name: str = "in.png", infotext: str | None = None, size: int = 64) -> str:
    import numpy as np
    from PIL import Image

    from webui.saving import png_bytes

    rng = np.random.default_rng(5)
    image = Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))
    path = tmp_path / name
    path.write_bytes(png_bytes(image, infotext))
    return str(path)


def fill_size(page, mode: str, steps: int, size: int) -> None:
    page.locator(f"#{mode}_steps input[type=number]").fill(str(steps))
    page.locator(f"#{mode}_width input[type=number]").fill(str(size))
    page.locator(f"#{mode}_height input[type=number]").fill(str(size))


def test_txt2img_generate_then_interrupt(page, server):
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    fill_size(page, "txt2img", 3, 64)
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_info textarea", "Steps: 3")
    assert page.locator("#txt2img_gallery img").count() >= 1
    info = page.locator("#txt2img_info textarea").input_value()
    assert "a red circle" in info and "Size: 64x64" in info and "(interrupted)" not in info

    with step_gate(server.ctx, step=1) as gate:  # the job is held at its second step until it is interrupted
        fill_size(page, "txt2img", 12, 64)
        page.locator("#txt2img_generate").click()
        job = gate.wait()
        page.locator("#txt2img_interrupt").click()
        wait_text(page, "#txt2img_info textarea", "(interrupted)")
    assert job.interrupted and job.sampling_step == 2
    # the next job runs to its end: the flag belonged to the interrupted job only
    fill_size(page, "txt2img", 2, 64)
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_info textarea", "Steps: 2")
    assert "(interrupted)" not in page.locator("#txt2img_info textarea").input_value()


def _pick_while_the_tab_opens(page, tab: str, sub_tabs: str, name: str) -> None:
    """Open ``tab`` and pick its sub-tab ``name`` at once, holding the first server call made after the tab
    opens until the pick is done (then letting it through): Gradio fires a select event for the first sub-tab
    when a tab first opens, and its answer must not undo the user's pick however late it comes."""
    held = []
    page.route("**/gradio_api/run/predict", lambda route: held.append(route) if not held else route.continue_())
    open_tab(page, tab)
    page.locator(sub_tabs).get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(500)  # the pick's own work is done meanwhile
    for route in held:
        route.continue_()
    page.unroute("**/gradio_api/run/predict")
    page.wait_for_timeout(1000)  # the held answer (if any) arrives
    assert page.locator(f"{sub_tabs} button[role=tab][aria-selected=true]").inner_text() == name


def test_an_img2img_sub_tab_picked_while_the_tab_opens_stays_picked(page):
    _pick_while_the_tab_opens(page, "img2img", "#mode_img2img", "Inpaint")
    assert page.locator("#img2img_inpaint_controls").is_visible()


def test_an_extras_sub_tab_picked_while_the_tab_opens_stays_picked(page):
    _pick_while_the_tab_opens(page, "Extras", "#mode_extras", "Batch Process")
    page.locator("#extras_generate").click()  # no files: the answer names the mode the server got
    toast = page.locator("[data-testid=toast-body]").first
    toast.wait_for(state="visible")
    assert "Upload images in the Batch Process tab first" in toast.inner_text()


def test_img2img_inpaint_with_an_uploaded_image_and_a_drawn_mask(page, tmp_path):
    open_tab(page, "img2img")
    page.locator("#mode_img2img").get_by_role("tab", name="Inpaint", exact=True).click()
    page.locator("#img2img_prompt textarea").fill("a blue square")
    fill_size(page, "img2img", 3, 64)
    picture = png_file(tmp_path)
    for attempt in range(3):  # the editor can drop an upload made while it is still mounting: upload again
        page.locator("#img2img_inpaint input[type=file]").first.set_input_files(picture)
        try:
            page.locator("#img2img_inpaint").get_by_text("Upload an image").wait_for(state="hidden", timeout=10_000)
            break
        except Exception:
            if attempt == 2:
                raise
    canvas = page.locator("#img2img_inpaint canvas").first
    canvas.wait_for(state="visible")
    inpaint_with_a_stroke(page, canvas)
    info = page.locator("#img2img_info textarea").input_value()
    assert "a blue square" in info and "Denoising strength" in info and "Size: 64x64" in info
    assert page.locator("#img2img_gallery img").count() >= 1


def test_extras_upscale(page, tmp_path):
    open_tab(page, "Extras")
    page.locator("#extras_image input[type=file]").first.set_input_files(png_file(tmp_path, size=32))
    page.locator("#extras_image img").first.wait_for(state="visible")
    choose(page, "#extras_upscaler_1", "Lanczos")  # with "None" Extras does not upscale (A1111)
    page.locator("#extras_generate").click()
    wait_text(page, "#extras_info", "Postprocess upscale by", prop="innerText")
    image = page.locator("#extras_gallery img").first
    image.wait_for(state="visible")
    # visible is not decoded: wait until the browser has the picture's size
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    width = page.evaluate("(img) => img.naturalWidth", image.element_handle())
    assert width == 64  # x2 of the 32-px input


def drop_file(page, selector: str, path: str, mime: str = "image/png") -> None:
    """Drop ``path`` on the element as a user dragging a file from the desktop does."""
    with open(path, "rb") as fh:
        data = list(fh.read())
    transfer = page.evaluate_handle(
        "([bytes, name, mime]) => { const dt = new DataTransfer();"
        " dt.items.add(new File([new Uint8Array(bytes)], name, {type: mime})); return dt; }",
        [data, path.rsplit("/", 1)[-1], mime])
    target = page.locator(selector).first
    for event in ("dragenter", "dragover", "drop"):
        target.dispatch_event(event, {"dataTransfer": transfer})


def test_png_info_from_a_dropped_image_and_send_to_txt2img(page, tmp_path):
    text = ("a lighthouse at dusk\nNegative prompt: fog\nSteps: 13, Sampler: DPM++ 2M, Schedule type: Karras, "
            "CFG scale: 5.5, Seed: 77, Size: 96x64")
    open_tab(page, "PNG Info")
    drop_file(page, "#pnginfo_image button.upload-container", png_file(tmp_path, "dropped.png", infotext=text))
    wait_text(page, "#pnginfo_generation_info textarea", "Seed: 77")
    assert "Sampler" in page.locator("#pnginfo_html").inner_text()
    page.locator("#pnginfo_send_to_txt2img").click()
    wait_text(page, "#txt2img_prompt textarea", "a lighthouse at dusk")
    page.locator("#txt2img_prompt textarea").wait_for(state="visible")
    assert page.locator("#txt2img_neg_prompt textarea, #txt2img_negative_prompt textarea").first.input_value() == "fog"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "13"
    assert page.locator("#txt2img_cfg_scale input[type=number]").input_value() == "5.5"
    assert page.locator("#txt2img_seed input").first.input_value() == "77"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "96"
    assert page.locator("#txt2img_height input[type=number]").input_value() == "64"


def test_settings_change_persists_across_reload_and_a_bad_value_is_a_readable_error(page, server):
    ctx = server.ctx
    clip = "#setting_CLIP_stop_at_last_layers input[type=number]"
    try:
        open_tab(page, "Settings")
        wait_text(page, "#settings_result", SHOWING_SAVED, prop="innerText")  # the tab read the saved values
        page.locator(clip).fill("2")
        page.locator("#settings_submit").click()
        wait_text(page, "#settings_result", "1 setting(s) changed", prop="innerText")
        assert json.loads(ctx.settings.config_file.read_text())["CLIP_stop_at_last_layers"] == 2

        page.reload(wait_until="domcontentloaded")
        open_tab(page, "Settings")
        wait_text(page, "#settings_result", SHOWING_SAVED, prop="innerText")
        assert page.locator(clip).input_value() == "2"  # shown after the reload

        page.locator(clip).fill("99")
        page.locator("#settings_submit").click()
        toast = page.locator("[data-testid=toast-body]", has_text="12").first
        toast.wait_for(state="visible")
        message = toast.inner_text()
        assert "Clip skip" in message or "CLIP_stop_at_last_layers" in message or "maximum" in message, message
        assert ctx.options.current["CLIP_stop_at_last_layers"] == 2  # nothing saved
    finally:
        ctx.options.update({"CLIP_stop_at_last_layers": 1})


def test_closing_the_page_cancels_its_job(page, server):
    page.locator("#txt2img_prompt textarea").fill("a long job")
    with step_gate(server.ctx, step=1) as gate:  # the job is held at its second step until it is interrupted
        fill_size(page, "txt2img", 12, 64)
        page.locator("#txt2img_generate").click()
        job = gate.wait()
        page.close()  # the browser tab goes away mid-run
        assert server.ctx.jobs.wait_for(lambda waiting, running: not running, WAIT)
    assert job.interrupted and job.sampling_step == 2 and not server.ctx.jobs.running()


def test_login_page_behind_auth(browser, tmp_path, models_root):
    ctx = build_context(make_settings(tmp_path, models_root, gradio_auth="ui:pw-7c2e"), load_model=False)
    with LiveServer(create_app(ctx)) as srv:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(srv.url + "/", wait_until="domcontentloaded")
            page.locator("input[data-testid=textbox]").fill("ui")
            page.locator("input[type=password]").fill("wrong")
            page.get_by_role("button", name="Login").click()
            page.get_by_text("Incorrect credentials").first.wait_for(state="visible")
            page.locator("input[data-testid=textbox]").fill("ui")  # the form was cleared
            page.locator("input[type=password]").fill("pw-7c2e")
            page.get_by_role("button", name="Login").click()
            page.locator("#txt2img_prompt textarea").wait_for(state="visible")
        except Exception:
            screenshot_tabs(page, "test_login_page_behind_auth")
            raise
        finally:
            context.close()
