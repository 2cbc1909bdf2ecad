"""The Gradio UI through real clients: gradio_client and a real browser (Playwright + Debian chromium)."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.browser_helpers import choose, inpaint_with_a_stroke, launch, needs_chromium, screenshot_tabs
from tests.live_server import LiveServer
from webui.server import create_app


@pytest.fixture(scope="module")
def server(ctx):
    with LiveServer(create_app(ctx)) as srv:
        yield srv


def test_gradio_client_txt2img(server):
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    gallery, info = client.predict(prompt="a red circle", steps=3, sampler_name="Euler a", width=64, height=64,
                                   batch_size=2, seed=123, api_name="/txt2img")
    assert len(gallery) == 2
    img = Image.open(gallery[0]["image"])
    assert img.size == (64, 64)
    assert "Seed: 123" in info and "Steps: 3" in info


def test_gradio_client_bad_input_shows_error_and_next_works(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    with pytest.raises(AppError) as e:
        client.predict(prompt="x", steps=3, sampler_name="Nope", width=64, height=64, api_name="/txt2img")
    assert "Nope" in str(e.value) and "Euler a" in str(e.value)
    with pytest.raises(AppError) as e:
        client.predict(prompt="x", steps=3, width=100, height=64, api_name="/txt2img")
    assert "width" in str(e.value) and "multiple of 8" in str(e.value)
    gallery, info = client.predict(prompt="x", steps=2, sampler_name="Euler", width=64, height=64, seed=1,
                                   subseed=5, subseed_strength=0.5, api_name="/txt2img")
    assert len(gallery) == 1
    assert "Variation seed: 5, Variation seed strength: 0.5" in info


def test_gradio_client_png_info(server, tmp_path, ctx):
    from gradio_client import Client, handle_file

    from webui.pipeline.request import GenerationRequest

    res = ctx.generate(GenerationRequest(prompt="pnginfo test", steps=2, width=64, height=64, seed=9,
                                        save_images=True))
    client = Client(server.url, verbose=False)
    html, raw, params = client.predict(handle_file(res.paths[0]), api_name="/png_info")
    assert raw.startswith("pnginfo test\nSteps: 2")
    assert params["Seed"] == "9"


@needs_chromium
def test_browser_generate(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
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

            # send the output to inpaint: the img2img tab opens with the image and the parameters
            page.locator("#txt2img_send_to_inpaint").click()
            page.locator("#img2img_prompt textarea").wait_for(state="visible", timeout=20_000)
            page.wait_for_function("document.querySelector('#img2img_prompt textarea').value === 'a browser test'",
                                   timeout=20_000)
            assert page.locator("#img2img_steps input[type=number]").input_value() == "3"
            # draw a mask stroke on the editor's canvas, then generate
            canvas = page.locator("#img2img_inpaint canvas").first
            canvas.wait_for(state="visible", timeout=20_000)
            inpaint_with_a_stroke(page, canvas)
            info = page.locator("#img2img_info textarea").input_value()
            assert "Denoising strength" in info and "Size: 64x64" in info

            # and on to Extras: upscale the inpainted image 2x
            page.locator("#img2img_send_to_extras").click()
            page.locator("#extras_image img").first.wait_for(state="visible", timeout=20_000)
            choose(page, "#extras_upscaler_1", "Lanczos")  # with "None" Extras does not upscale (A1111)
            page.locator("#extras_generate").click()
            page.wait_for_function(
                "document.querySelector('#extras_info').innerText.includes('Postprocess upscale by')", timeout=60_000)
        except Exception:
            screenshot_tabs(page, "test_browser_generate")
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
    gallery, info = client.predict(prompt="a cat", steps=4, sampler_name="Euler", width=64, height=64, seed=8,
                                   input_image=handle_file(str(path)), denoising_strength=0.5,
                                   resize_mode="Crop and resize", api_name="/img2img")
    assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size == (64, 64)
    assert "Denoising strength: 0.5" in info and "Seed: 8" in info


def test_gradio_client_hires_fix(server):
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    gallery, info = client.predict(prompt="hires", steps=2, sampler_name="Euler", width=64, height=64, seed=2,
                                   enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, api_name="/txt2img")
    assert Image.open(gallery[0]["image"]).size == (96, 96)
    assert "Hires upscale: 1.5" in info and "Denoising strength: 0.7" in info


def test_gradio_client_inpaint_upload_keeps_unmasked_pixels(server, tmp_path):
    import numpy as np
    from gradio_client import Client, handle_file

    rng = np.random.default_rng(1)
    init = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(init).save(tmp_path / "init.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 32:56] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    client = Client(server.url, verbose=False)
    gallery, info = client.predict(prompt="patch", steps=3, sampler_name="Euler", width=64, height=64, seed=4,
                                   input_mode="inpaint_upload",
                                   input_upload_image=handle_file(str(tmp_path / "init.png")),
                                   input_upload_mask=handle_file(str(tmp_path / "mask.png")), mask_blur=0,
                                   inpainting_fill="fill", api_name="/img2img")
    out = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert np.array_equal(out[mask == 0], init[mask == 0]) and not np.array_equal(out[mask > 0], init[mask > 0])
    assert "Mask blur: 0" in info and "Masked content: fill" in info


def test_gradio_client_inpaint_without_mask_is_a_readable_error(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    Image.new("RGB", (64, 64), "red").save(tmp_path / "init.png")
    client = Client(server.url, verbose=False)
    with pytest.raises(AppError) as e:
        client.predict(prompt="x", steps=2, width=64, height=64, input_mode="inpaint_upload",
                       input_upload_image=handle_file(str(tmp_path / "init.png")), api_name="/img2img")
    assert "mask" in str(e.value)


def test_gradio_client_png_info_send_to_txt2img(server):
    from gradio_client import Client

    text = ("a lighthouse\nNegative prompt: fog\nSteps: 13, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, "
            "Seed: 77, Size: 96x64, Denoising strength: 0.4, Hires upscale: 1.5, Hires upscaler: Lanczos, Tiling: True")
    client = Client(server.url, verbose=False)
    updates = client.predict(text, api_name="/pnginfo_send_to_txt2img")
    api = client.view_api(return_format="dict", print_info=False)
    names = [p["parameter_name"] for p in api["named_endpoints"]["/txt2img"]["parameters"]]
    v = {n: u["value"] for n, u in zip(names, updates) if "value" in u}
    v = {k: v[k] for k in ("prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "cfg_scale", "seed",
                           "width", "height", "enable_hr", "hr_scale", "hr_upscaler", "denoising_strength", "tiling",
                           "subseed_strength")}
    assert v == {"prompt": "a lighthouse", "negative_prompt": "fog", "steps": 13, "sampler_name": "DPM++ 2M",
                 "scheduler": "Karras", "cfg_scale": 5.5, "seed": 77, "width": 96, "height": 64, "enable_hr": True,
                 "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.4, "tiling": True,
                 "subseed_strength": 0.0}


def test_gradio_client_extras_keeps_infotext_and_saves(server, ctx, tmp_path):
    from gradio_client import Client, handle_file

    from webui.pipeline.request import GenerationRequest

    res = ctx.generate(GenerationRequest(prompt="extras source", steps=2, width=64, height=64, seed=3,
                                        save_images=True))
    client = Client(server.url, verbose=False)
    gallery, info = client.predict(image=handle_file(res.paths[0]), upscaler_1="Lanczos", upscaling_resize=2,
                                   api_name="/extras")
    assert Image.open(gallery[0]["image"]).size == (128, 128)
    assert "Postprocess upscale by: 2" in info and "Lanczos" in info
    saved = sorted((ctx.settings.data_dir / "outputs" / "extras-images").rglob("*.png"))[-1]
    with Image.open(saved) as im:
        assert im.size == (128, 128) and im.info["parameters"].startswith("extras source")
        assert im.info["postprocessing"].startswith("Postprocess upscale by: 2")


def test_settings_tab_shows_the_options_that_take_effect_only(server, ctx):
    import httpx

    config = httpx.get(server.url + "/config", timeout=30).json()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    for key in ("samples_format", "jpeg_quality", "CLIP_stop_at_last_layers", "img2img_color_correction",
                "eta_noise_seed_delta", "s_churn", "sdxl_crop_top"):
        assert f"setting_{key}" in ids, key
    # accepted-but-no-effect A1111 keys are not offered as controls
    for key in ("send_seed", "token_merging_ratio", "js_modal_lightbox", "interrogate_clip_num_beams"):
        assert ctx.options.defs[key].note and f"setting_{key}" not in ids, key
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {"Saving images/grids", "Paths for saving", "Sampler parameters", "Compatibility"} <= labels
    # choices are dropdowns holding the current value (issue 28): the checkpoint, the face restorer
    by_id = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    checkpoint = by_id["setting_sd_model_checkpoint"]
    assert checkpoint["type"] == "dropdown", checkpoint["type"]
    titles = [choice[1] if isinstance(choice, list) else choice for choice in checkpoint["props"]["choices"]]
    assert ctx.models.current.title in titles  # (the page load puts the saved value in)
    restorer = by_id["setting_face_restoration_model"]
    assert restorer["type"] == "dropdown"
    assert {"CodeFormer", "GFPGAN"} <= {c[1] if isinstance(c, list) else c for c in restorer["props"]["choices"]}
