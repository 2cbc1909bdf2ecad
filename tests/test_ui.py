"""The Gradio UI through real clients: gradio_client and a real browser (Playwright + Debian chromium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.live_server import LiveServer
from webui.server import create_app

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def server(ctx):
    with LiveServer(create_app(ctx)) as srv:
        yield srv


def test_gradio_client_txt2img(server):
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    gallery, info = client.predict(
        "a red circle", "", 3, "Euler a", "Automatic", 64, 64, 1, 2, 7, 123, -1, 0, 0, 0, [],
        api_name="/txt2img"
    )
    assert len(gallery) == 2
    img = Image.open(gallery[0]["image"])
    assert img.size == (64, 64)
    assert "Seed: 123" in info and "Steps: 3" in info


def test_gradio_client_bad_input_shows_error_and_next_works(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    with pytest.raises(AppError) as e:
        client.predict("x", "", 3, "Nope", "Automatic", 64, 64, 1, 1, 7, 1, -1, 0, 0, 0, [], api_name="/txt2img")
    assert "Nope" in str(e.value) and "Euler a" in str(e.value)
    with pytest.raises(AppError) as e:
        client.predict("x", "", 3, "Euler", "Automatic", 100, 64, 1, 1, 7, 1, -1, 0, 0, 0, [], api_name="/txt2img")
    assert "width" in str(e.value) and "multiple of 8" in str(e.value)
    gallery, info = client.predict("x", "", 2, "Euler", "Automatic", 64, 64, 1, 1, 7, 1, 5, 0.5, 0, 0, [],
                                   api_name="/txt2img")
    assert len(gallery) == 1
    assert "Variation seed: 5, Variation seed strength: 0.5" in info


def test_gradio_client_png_info(server, tmp_path, ctx):
    from gradio_client import Client, handle_file

    from webui.pipeline.request import GenerationRequest

    res = ctx.txt2img(GenerationRequest(prompt="pnginfo test", steps=2, width=64, height=64, seed=9,
                                        save_images=True))
    client = Client(server.url, verbose=False)
    html, raw, params = client.predict(handle_file(res.paths[0]), api_name="/png_info")
    assert raw.startswith("pnginfo test\nSteps: 2")
    assert params["Seed"] == "9"


def _chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.mark.skipif(_chromium() is None, reason="Debian chromium is not installed (launch.py --tests installs it)")
def test_browser_generate(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=_chromium(), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        page = browser.new_page()
        try:
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.locator("#txt2img_prompt textarea").fill("a browser test")
            page.locator("#txt2img_steps input[type=number]").fill("3")
            page.locator("#txt2img_width input[type=number]").fill("64")
            page.locator("#txt2img_height input[type=number]").fill("64")
            page.locator("#txt2img_generate").click()
            page.locator("#txt2img_gallery img").first.wait_for(state="visible", timeout=60_000)
            info = page.locator("#txt2img_info textarea").input_value(timeout=10_000)
            assert "a browser test" in info and "Steps: 3" in info and "Size: 64x64" in info
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_generate.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_gradio_client_token_counter(server):
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    counter = client.predict("a photo of a cat", api_name="/txt2img_token_count")
    assert "5/75" in counter
    long = client.predict(" ".join(["cat"] * 80), api_name="/txt2img_negative_token_count")
    assert "80/150" in long


def test_gradio_client_img2img(server, tmp_path):
    import numpy as np
    from gradio_client import Client, handle_file

    path = tmp_path / "init.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(path)
    client = Client(server.url, verbose=False)
    gallery, info = client.predict("a cat", "", 4, "Euler", "Automatic", 64, 64, 1, 1, 7, 8, -1, 0, 0, 0, [],
                                   handle_file(str(path)), 0.5, "Crop and resize", api_name="/img2img")
    assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size == (64, 64)
    assert "Denoising strength: 0.5" in info and "Seed: 8" in info
