"""The page as an A1111 user's eyes and hands expect it (issue 28, points 1, 2, 4 and 5), in a real browser
(Playwright driving Debian's chromium): A1111's layout at 1366x768 and 1920x1080 (Generate and the top of the
output on the first screen, img2img's prompt above its input image, the inpainting controls only on the sub-tabs
that inpaint), the output gallery's preview (arrow keys, download, full screen), the Extra networks cards (name,
preview picture beside the file, a click inserts at the caret) and the Settings search.

One server for the module, on a models folder without a checkpoint (the built-in shapes model, so the
default-model notice takes its three lines above the tabs: the layout's worst case) with two LoRA files and an
embedding, and one page: the tests go on from where the one before left it. A failed test leaves screenshots
of every tab in tests/artifacts/.
"""

from __future__ import annotations

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

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
from webui.ui.settings_tab import SHOWING_SAVED

pytestmark = needs_chromium

SIZES = ((1366, 768), (1920, 1080))
PROMPT = "#txt2img_prompt textarea"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("layout")
    models = data / "models"
    (models / "Lora").mkdir(parents=True)
    (models / "embeddings").mkdir()
    for name in ("film", "detail_tweaker"):
        save_file({"x": torch.zeros(1)}, str(models / "Lora" / f"{name}.safetensors"))  # listed, never read here
    Image.new("RGB", (48, 32), (200, 30, 30)).save(models / "Lora" / "film.preview.png")  # A1111's name.preview.png
    (models / "Lora" / "notes.png").write_bytes(b"not beside a listed file")
    # a link beside a listed file to a picture elsewhere is not served
    Image.new("RGB", (8, 8)).save(data / "elsewhere.png")
    (models / "Lora" / "detail_tweaker.png").symlink_to(data / "elsewhere.png")
    save_file({"emb_params": torch.randn(2, 32)}, str(models / "embeddings" / "badhands.safetensors"))
    Image.new("RGB", (32, 32), (30, 30, 200)).save(models / "embeddings" / "badhands.png")  # A1111's name.png
    ctx = build_context(make_settings(data, models), load_model=True)
    assert ctx.models.using_builtin_default and ctx.loras.names() == ["detail_tweaker", "film"]
    with LiveServer(create_app(ctx)) as srv:
        srv.ctx = ctx
        yield srv


@pytest.fixture(scope="module")
def page(browser, server):
    context, page = open_page(browser, server.url, width=1366, height=768, timeout=20_000, accept_downloads=True)
    page.wait_for_function("!!(window.webuiPage && window.webuiPage.ready && window.webuiPanels)")
    yield page
    context.close()


def open_tab(page, title: str) -> None:
    page.locator("#tabs button[role=tab]", has_text=title).first.click()


def box_of(page, selector: str) -> dict:
    locator = page.locator(selector).first
    locator.wait_for(state="visible")
    return locator.bounding_box()


def assert_on_first_screen(page, selector: str, width: int, height: int, whole: bool = True) -> dict:
    """The element is inside the viewport with the page scrolled to its top (``whole``: all of it, else its top)."""
    box = box_of(page, selector)
    bottom = box["y"] + (box["height"] if whole else 24)
    assert 0 <= box["y"] and bottom <= height and 0 <= box["x"] and box["x"] + box["width"] <= width, (selector, box)
    return box


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_generate_and_the_output_are_on_the_first_screen(page, size):
    width, height = size
    page.set_viewport_size({"width": width, "height": height})
    try:
        for mode in ("txt2img", "img2img"):
            open_tab(page, mode)
            page.evaluate("window.scrollTo(0, 0)")
            assert page.locator("#model_notice").is_visible()  # the notice's three lines count too
            generate = assert_on_first_screen(page, f"#{mode}_generate", width, height)
            prompt = assert_on_first_screen(page, f"#{mode}_prompt", width, height)
            output = assert_on_first_screen(page, f"#{mode}_gallery", width, height, whole=False)
            # A1111's arrangement: the prompt row across the top, the output on the right below it
            assert generate["x"] > prompt["x"] + prompt["width"] - 1 and abs(generate["y"] - prompt["y"]) < 40
            assert output["y"] >= prompt["y"] + prompt["height"] and output["x"] > width / 2 - 40
            settings = box_of(page, f"#{mode}_sampling")
            assert settings["x"] + settings["width"] <= output["x"] + 1  # the settings on the left
        # img2img: the prompt above the input image, which sits in the left column beside the output
        image = box_of(page, "#img2img_image")
        assert image["y"] >= prompt["y"] + prompt["height"] and image["x"] + image["width"] <= output["x"] + 1
    finally:
        page.set_viewport_size({"width": 1366, "height": 768})


def test_inpainting_controls_show_on_the_sub_tabs_that_inpaint(page):
    open_tab(page, "img2img")
    controls = page.locator("#img2img_inpaint_controls")
    sub_tabs = page.locator("#mode_img2img")
    for name, shown in (("Inpaint", True), ("img2img", False), ("Inpaint sketch", True), ("Sketch", False),
                        ("Inpaint upload", True), ("Batch", False)):
        sub_tabs.get_by_role("tab", name=name, exact=True).click()
        controls.wait_for(state="visible" if shown else "hidden")
    sub_tabs.get_by_role("tab", name="img2img", exact=True).click()
    controls.wait_for(state="hidden")


def test_gallery_preview_moves_with_the_arrow_keys_downloads_and_goes_full_screen(page):
    open_tab(page, "txt2img")
    for name, value in (("steps", 2), ("width", 64), ("height", 64), ("batch_size", 3)):
        page.locator(f"#txt2img_{name} input[type=number]").fill(str(value))
    page.locator(PROMPT).fill("a red circle")
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_info textarea", "Steps: 2")
    gallery = page.locator("#txt2img_gallery")
    gallery.locator(".thumbnail-item").first.click()  # a click on a picture opens Gradio's preview
    caption = gallery.locator("caption.caption")
    seeds = [caption.inner_text()]
    big = gallery.locator("[data-testid=detailed-image]")
    big.wait_for(state="visible")
    for key in ("ArrowRight", "ArrowRight", "ArrowLeft"):
        page.keyboard.press(key)
        page.wait_for_function("([el, before]) => el.innerText !== before", arg=[caption.element_handle(), seeds[-1]])
        seeds.append(caption.inner_text())
    assert seeds[0] != seeds[1] != seeds[2] and seeds[3] == seeds[1], seeds
    with page.expect_download() as download:
        gallery.get_by_role("button", name="Download").click()
    assert download.value.suggested_filename.endswith(".png")
    # a click on the large picture shows it full screen; the arrow keys go on working there, wherever the focus
    # is (Gradio's own keys need it inside the gallery), and Esc leaves it
    big.click()
    page.wait_for_function("(el) => el.classList.contains('fullscreen')", arg=gallery.element_handle())
    box = big.bounding_box()
    assert box["height"] > 600  # the window's height (768) less the caption and the thumbnails
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.keyboard.press("ArrowRight")
    wait_text(page, "#txt2img_gallery caption.caption", seeds[2], prop="innerText")
    page.keyboard.press("Escape")
    page.wait_for_function("(el) => !el.classList.contains('fullscreen')", arg=gallery.element_handle())


def test_extra_networks_cards_insert_at_the_caret(page, server):
    open_tab(page, "txt2img")
    page.locator("#txt2img_extra_networks").get_by_text("Extra networks").first.click()
    cards = page.locator("#txt2img_network_cards .webui-network-card")
    cards.first.wait_for()
    assert [c.inner_text() for c in cards.all()] == ["detail_tweaker", "film", "badhands"]
    # the preview beside the file is shown (and loads); a file without one (a link out of the folder is none)
    # gets none
    film = page.locator("#txt2img_network_cards .webui-network-card[data-name=film]")
    page.wait_for_function("(img) => img.complete && img.naturalWidth === 48", arg=film.locator("img").element_handle())
    assert page.locator(".webui-network-card[data-name=detail_tweaker] img").count() == 0
    assert page.locator("#txt2img_network_cards .webui-network-card[data-name=badhands] img").count() == 1
    # a click inserts the tag at the caret (not at the end), spaced from the words around it
    prompt = page.locator(PROMPT)
    prompt.fill("a red circle, blue background")
    prompt.evaluate("el => { el.focus(); el.setSelectionRange(12, 12); }")
    film.click()
    assert prompt.input_value() == "a red circle <lora:film:1>, blue background"
    assert prompt.evaluate("el => el.selectionStart") == len("a red circle <lora:film:1>")
    # the embedding goes into the prompt box used last: here the negative prompt, replacing its selection
    negative = page.locator("#txt2img_neg_prompt textarea")
    negative.fill("ugly, blurry")
    negative.evaluate("el => { el.focus(); el.setSelectionRange(0, 4); }")
    page.locator("#txt2img_network_cards .webui-network-card[data-name=badhands]").click()
    assert negative.input_value() == "badhands, blurry"
    # Gradio has the value the card made: the generation uses it (the prompt gets no LoRA here: these files
    # hold no weights)
    prompt.fill("a red circle")
    page.locator("#txt2img_steps input[type=number]").fill("1")
    page.locator("#txt2img_batch_size input[type=number]").fill("1")
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_info textarea", "Negative prompt: badhands, blurry")
    # the pictures' route serves only a picture beside a listed file
    url = server.url + "/webui-network-preview"
    ok = httpx.get(url, params={"kind": "lora", "name": "film"}, timeout=10)
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png" and ok.content[:4] == b"\x89PNG"
    for params in ({"kind": "lora", "name": "notes"}, {"kind": "lora", "name": "detail_tweaker"},
                   {"kind": "lora", "name": "../embeddings/badhands"}, {"kind": "file", "name": "film"}):
        assert httpx.get(url, params=params, timeout=10).status_code == 404, params


def test_settings_search_and_the_checkpoint_dropdown(page, server):
    open_tab(page, "Settings")
    wait_text(page, "#settings_result", SHOWING_SAVED, prop="innerText")  # the tab read the saved values
    checkpoint = page.locator("#setting_sd_model_checkpoint")
    checkpoint.locator("input[role=combobox]").wait_for()  # a dropdown, holding the current checkpoint
    assert checkpoint.locator("input").input_value() == server.ctx.models.current.title
    eta = page.locator("#setting_eta_ddim")
    assert "The noise of DDIM's steps" not in page.locator("#tabs").inner_text()  # its section is closed
    search = page.locator("#settings_search textarea, #settings_search input").first

    def shown(text: str, present: list[str], absent: list[str]) -> None:
        search.fill(text)
        for elem_id in present:
            page.locator(f"#{elem_id}").wait_for(state="visible")
        for elem_id in absent:
            page.locator(f"#{elem_id}").wait_for(state="hidden")

    # by label: the matching setting, with its help line, in its section (opened); other settings and
    # sections hidden
    shown("ddim", ["setting_eta_ddim", "settings_section_sampler_parameters"],
          ["setting_eta_ancestral", "settings_section_stable_diffusion", "setting_CLIP_stop_at_last_layers"])
    assert "The noise of DDIM's steps" in eta.inner_text()
    # by key, by help text, by section; every word must match
    shown("CLIP_stop", ["setting_CLIP_stop_at_last_layers"], ["setting_eta_ddim", "setting_sd_model_checkpoint"])
    shown("seamlessly", ["setting_tiling"], ["setting_CLIP_stop_at_last_layers"])
    shown("sampler parameters heun", ["setting_s_churn"], ["setting_eta_ddim", "setting_s_tmin", "setting_tiling"])
    assert page.evaluate("document.documentElement.dataset.webuiSettingsMatches") == "1"
    # emptied: everything is back
    shown("", ["setting_eta_ddim", "setting_CLIP_stop_at_last_layers", "setting_sd_model_checkpoint",
               "settings_section_stable_diffusion"], [])
