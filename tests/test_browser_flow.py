"""The "VAE / Text encoder" multi-select in a real browser (issue 21): a FLUX.1 transformer-only file whose VAE
is ambiguous (two autoencoder files in models/VAE) cannot generate until the user picks one; picking it in the
quick-settings multi-select stores Forge's option and the next Generate uses the file (infotext ``Module N``).
"""

from __future__ import annotations

import shutil
import threading

import pytest
from flow_models import lay_out_flux, save_flux_files, tiny_flux

from tests.browser_helpers import launch, needs_chromium, open_page, screenshot_tabs, wait_text
from tests.conftest import make_settings
from tests.live_server import LiveServer
from tests.step_gate import WAIT
from webui.context import build_context
from webui.server import create_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    paths = save_flux_files(tiny_flux(seed=1), tmp_path_factory.mktemp("downloads"))
    lay_out_flux(paths, models)
    shutil.copy(paths["vae"], models / "VAE" / "ae_copy.safetensors")  # two candidates: no automatic match
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=False)
    with LiveServer(create_app(ctx)) as srv:
        srv.ctx = ctx
        yield srv


@pytest.fixture
def page(request, server):
    from playwright.sync_api import sync_playwright

    from tests.browser_helpers import failed

    with sync_playwright() as playwright:
        browser = launch(playwright)
        _, page = open_page(browser, server.url)
        yield page
        if failed(request) and not page.is_closed():
            screenshot_tabs(page, request.node.name)
        browser.close()


def _generate(page) -> None:
    page.locator("#txt2img_prompt textarea").fill("a cube")
    for name, value in (("steps", 2), ("width", 64), ("height", 64), ("cfg_scale", 1)):
        page.locator(f"#txt2img_{name} input[type=number]").fill(str(value))
    page.locator("#txt2img_generate").click()


def test_choosing_the_vae_file_in_the_multi_select(page, server, monkeypatch):
    ctx = server.ctx
    chosen = threading.Event()
    update = ctx.options.update

    def noted(changes):  # the UI's change handler saved the choice
        result = update(changes)
        if result.get("forge_additional_modules") == ["ae.safetensors"]:
            chosen.set()
        return result

    monkeypatch.setattr(ctx.options, "update", noted)
    _generate(page)
    toast = page.locator("[data-testid=toast-body]", has_text="VAE").first
    toast.wait_for(state="visible")
    assert "models" in toast.inner_text() or "VAE" in toast.inner_text()

    page.locator("#forge_additional_modules input").first.click()
    page.get_by_role("option", name="ae.safetensors", exact=True).first.click()
    assert chosen.wait(WAIT)
    assert ctx.options.current.get("forge_additional_modules") == ["ae.safetensors"]
    assert "ae.safetensors" in page.locator("#forge_additional_modules").inner_text()

    _generate(page)
    wait_text(page, "#txt2img_info textarea", "Module 1: ae.safetensors")
    info = page.locator("#txt2img_info textarea").input_value()
    assert "Distilled CFG Scale: 3.5" in info and "Size: 64x64" in info
    assert page.locator("#txt2img_gallery img").count() >= 1
