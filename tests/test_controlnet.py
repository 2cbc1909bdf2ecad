"""ControlNet: model files in A1111/diffusers layouts, units in generation (weight, window, modes, several
units, img2img/inpaint/hires), sd-webui-controlnet's API and infotext, and clear 4xx errors."""

from __future__ import annotations

import base64
import io
import json

import cv2
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import api_only, make_settings, registered
from tests.test_lora import kohya_lora
from webui.context import build_context
from webui.controlnet.models import controlnet_to_original, load_controlnet
from webui.controlnet.units import units_from_infotext
from webui.errors import RequestError
from webui.hookspecs import hookimpl
from webui.infotext import parse_infotext
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components
from webui.pipeline.request import GenerationRequest
from webui.server import create_app

BASE = dict(prompt="x", steps=4, width=64, height=64, seed=1, sampler_name="Euler", save_images=False)


def tiny_controlnet(family: str, seed: int) -> ControlNetModel:
    unet = build_tiny_components(family, seed=1).unet
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    torch.manual_seed(seed)
    for p in cn.parameters():  # from_unet zero-initialises the output convs: give every weight a value
        p.data.normal_(0, 0.05)
    return cn


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, 16:48] = 255
    arr[rng.integers(0, 64, 40), rng.integers(0, 64, 40)] = 128
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def cn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn-models")
    (root / "Stable-diffusion").mkdir()
    save_single_file(build_tiny_components("sd1", seed=1), root / "Stable-diffusion" / "tiny.safetensors")
    cn_dir = root / "ControlNet"
    cn_dir.mkdir()
    save_file(controlnet_to_original(tiny_controlnet("sd1", 0)), cn_dir / "control_tiny_canny.safetensors")
    torch.save(controlnet_to_original(tiny_controlnet("sd1", 1)), cn_dir / "control_tiny_depth.pth")
    tiny_controlnet("sd1", 2).save_pretrained(cn_dir / "tiny_diffusers_cn")
    save_file(controlnet_to_original(tiny_controlnet("sdxl", 3), prefix=""), cn_dir / "control_tiny_sdxl.safetensors")
    (root / "Lora").mkdir()
    save_file(kohya_lora(build_tiny_components("sd1", seed=1)), str(root / "Lora" / "film.safetensors"))
    return root


@pytest.fixture(scope="module")
def cn_ctx(cn_root, tmp_path_factory):
    return build_context(make_settings(tmp_path_factory.mktemp("cn-data"), cn_root), load_model=True)


def run(ctx, units, **kw):
    return ctx.generate(GenerationRequest(**{**BASE, **kw}, alwayson_scripts={"controlnet": {"args": units}}))


def unit(**kw):
    return {"module": "canny", "model": "control_tiny_canny", "image": picture(), **kw}


def test_every_layout_loads_to_the_same_weights(cn_root):
    cn = tiny_controlnet("sd1", 0)
    for path in ("control_tiny_canny.safetensors",):
        loaded = load_controlnet(cn_root / "ControlNet" / path)
        ref = cn.state_dict()
        assert all(torch.equal(ref[k], v) for k, v in loaded.state_dict().items())
    pth = load_controlnet(cn_root / "ControlNet" / "control_tiny_depth.pth")  # .pth with control_model. prefix
    assert torch.equal(pth.state_dict()["controlnet_mid_block.weight"],
                       tiny_controlnet("sd1", 1).state_dict()["controlnet_mid_block.weight"])
    folder = load_controlnet(cn_root / "ControlNet" / "tiny_diffusers_cn")
    assert torch.equal(folder.state_dict()["conv_in.weight"], tiny_controlnet("sd1", 2).state_dict()["conv_in.weight"])


def test_weight_zero_and_a_window_outside_the_steps_change_nothing(cn_ctx):
    plain = cn_ctx.generate(GenerationRequest(**BASE)).images[0].tobytes()
    assert run(cn_ctx, [unit(weight=0.0)]).images[0].tobytes() == plain
    # 4 steps: fractions 0, .25, .5, .75 -- a window from 0.8 never opens
    assert run(cn_ctx, [unit(guidance_start=0.8, guidance_end=1.0)]).images[0].tobytes() == plain
    assert run(cn_ctx, [unit()]).images[0].tobytes() != plain


class StepSpy:
    """Records at which sampling step each ControlNet evaluation happens."""

    def __init__(self):
        self.job = None
        self.patches = []

    @hookimpl
    def before_generate(self, request, job):
        self.job = job


def test_a_unit_acts_only_inside_its_window(cn_ctx, monkeypatch):
    cn = cn_ctx.plugins.pm.get_plugin("webui.builtin.controlnet").models.load(
        cn_ctx.plugins.pm.get_plugin("webui.builtin.controlnet").models.find("control_tiny_canny"))
    steps = []
    real = cn.forward

    def forward(*a, **kw):
        steps.append(spy.job.sampling_step)
        return real(*a, **kw)

    monkeypatch.setattr(cn, "forward", forward)
    with registered(cn_ctx, StepSpy(), "cn-step-spy") as spy:
        run(cn_ctx, [unit(guidance_start=0.5, guidance_end=0.75)], steps=8)
    assert steps == [4, 5, 6]  # steps i with 0.5 <= i/8 <= 0.75 (Euler: one model call per step)


def test_several_units_combine(cn_ctx):
    """(What each control mode does to each block is checked against sd-webui-controlnet's rules in
    test_controlnet_rules.py.)"""
    balanced = run(cn_ctx, [unit()]).images[0].tobytes()
    depth = unit(model="control_tiny_depth [ffffffff]", module="none")  # title with any hash resolves by name
    both = run(cn_ctx, [unit(), depth])
    assert both.images[0].tobytes() not in (balanced, run(cn_ctx, [depth]).images[0].tobytes())
    assert "ControlNet 0" in both.infotexts[0] and "ControlNet 1" in both.infotexts[0]


def test_img2img_inpaint_and_hires_with_controlnet(cn_ctx):
    init = Image.fromarray(np.full((64, 64, 3), 90, np.uint8))
    # img2img: no unit image -> the img2img input is the control image
    res = cn_ctx.generate(GenerationRequest(**BASE, mode="img2img", init_images=(init,),
                                           alwayson_scripts={"controlnet": {"args": [
                                               {"module": "none", "model": "control_tiny_canny"}]}}))
    assert "ControlNet 0" in res.infotexts[0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    res = cn_ctx.generate(GenerationRequest(**BASE, mode="img2img", init_images=(init,), mask=mask, mask_blur_x=0,
                                           mask_blur_y=0, inpaint_full_res=False,
                                           alwayson_scripts={"controlnet": {"args": [unit()]}}))
    out = np.asarray(res.images[0])
    assert np.array_equal(out[np.asarray(mask) == 0], np.asarray(init)[np.asarray(mask) == 0])
    hires = run(cn_ctx, [unit()], enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5,
                sampler_name="DPM++ 2M")
    assert hires.images[0].size == (96, 96)


def test_preprocessing_runs_once_per_job(cn_ctx, monkeypatch):
    plugin = cn_ctx.plugins.pm.get_plugin("webui.builtin.controlnet")
    calls = []
    real = plugin.preprocessors.detect

    def detect(*a, **kw):
        calls.append(a[1])
        return real(*a, **kw)

    monkeypatch.setattr(plugin.preprocessors, "detect", detect)
    res = run(cn_ctx, [unit(threshold_a=50, threshold_b=150)], batch_size=2, n_iter=2)
    assert len(res.images) == 4 and calls == ["canny"]


def test_bad_units_name_the_field(cn_ctx):
    cases = [
        (unit(model="no_such_model"), "alwayson_scripts.controlnet.args[0].model", "unknown ControlNet model"),
        (unit(model="control_tiny_sdxl"), "alwayson_scripts.controlnet.args[0].model", "SDXL ControlNet"),
        (unit(module="no_such_module"), "alwayson_scripts.controlnet.args[0].module", "no_such_module"),
        (unit(weight=5), "alwayson_scripts.controlnet.args[0].weight", "between"),
        (unit(resize_mode="Stretchy"), "alwayson_scripts.controlnet.args[0].resize_mode", "Just Resize"),
        ({"module": "canny", "model": "control_tiny_canny"}, "alwayson_scripts.controlnet.args[0].image", "image"),
    ]
    for bad, field, needle in cases:
        with pytest.raises(RequestError) as e:
            run(cn_ctx, [bad])
        assert e.value.field == field and needle in e.value.message, (field, e.value)


def test_api_units_routes_and_infotext(cn_ctx):
    client = TestClient(create_app(api_only(cn_ctx)))
    body = {**BASE, "alwayson_scripts": {"controlnet": {"args": [
        {"enabled": True, "module": "canny", "model": "control_tiny_canny [00000000]", "weight": 0.8,
         "image": "data:image/png;base64," + b64(picture()), "resize_mode": "Crop and Resize",
         "control_mode": 0, "threshold_a": 80, "threshold_b": 160, "processor_res": 64},
        {"enabled": False, "module": "canny", "model": "no_such_model"}]}}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    text = info["infotexts"][0]
    assert ('ControlNet 0: "Module: canny, Model: control_tiny_canny [' in text
            and "Weight: 0.8, Resize Mode: Crop and Resize, Processor Res: 64, Threshold A: 80.0" in text)
    back = units_from_infotext(parse_infotext(text))
    assert back[0]["module"] == "canny" and back[0]["weight"] == 0.8 and back[0]["threshold_b"] == 160.0
    # the infotext fills a request again (A1111 1.8+ "infotext" field)
    bad = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [
        {"module": "canny", "model": "control_tiny_sdxl", "image": b64(picture())}]}}})
    assert bad.status_code == 422 and "SDXL" in bad.text and "args[0].model" in bad.text
    bad = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [
        {"module": "canny", "model": "control_tiny_canny", "image": "not-an-image"}]}}})
    assert bad.status_code == 422 and "args[0].image" in bad.text
    assert client.get("/controlnet/version").json() == {"version": 2}
    models = client.get("/controlnet/model_list").json()["model_list"]
    assert any(m.startswith("control_tiny_canny [") for m in models) and len(models) == 4
    modules = client.get("/controlnet/module_list").json()
    assert "canny" in modules["module_list"] and modules["module_detail"]["canny"]["sliders"]
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert "canny" in types["Canny"]["module_list"] and any("canny" in m for m in types["Canny"]["model_list"])
    assert client.get("/controlnet/settings").json()["control_net_unit_count"] == 3
    img = picture()
    det = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [b64(img)],
                                                  "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
                                                  "controlnet_threshold_b": 200})
    assert det.status_code == 200, det.text
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(det.json()["images"][0]))).convert("L"))
    assert np.array_equal(edges, cv2.Canny(np.asarray(img), 100, 200))
    bad = client.post("/controlnet/detect", json={"controlnet_module": "nope", "controlnet_input_images": [b64(img)]})
    assert bad.status_code == 422 and "controlnet_module" in bad.text


def test_infotext_units_are_read_back_by_the_ui_and_the_api(cn_ctx):
    from webui.ui.app import build_ui

    def pixels(response):
        assert response.status_code == 200, response.text
        return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB").tobytes()

    client = TestClient(create_app(cn_ctx))
    init = b64(picture(1))
    cn_unit = {"module": "canny", "model": "control_tiny_canny", "weight": 0.7, "threshold_a": 80,
               "threshold_b": 160, "processor_res": 64, "control_mode": 1}
    explicit = client.post("/sdapi/v1/img2img", json={**BASE, "init_images": [init], "denoising_strength": 0.6,
                                                      "alwayson_scripts": {"controlnet": {"args": [cn_unit]}}})
    text = json.loads(explicit.json()["info"])["infotexts"][0]
    assert "ControlNet 0: " in text and "Denoising strength: 0.6" in text
    # the API's infotext field rebuilds the unit through the section (img2img: the input is the control image)
    again = client.post("/sdapi/v1/img2img", json={"infotext": text, "init_images": [init]})
    assert pixels(again) == pixels(explicit)
    # txt2img has no image for the unit: a readable 422, unless the request sets its own units
    no_image = client.post("/sdapi/v1/txt2img", json={"infotext": text})
    assert no_image.status_code == 422 and "args[0].image" in no_image.text
    own = client.post("/sdapi/v1/txt2img", json={"infotext": text, "alwayson_scripts": {"controlnet": {"args": []}}})
    assert own.status_code == 200, own.text
    # the UI: "Send to txt2img" fills unit 0's controls and leaves the other units alone
    demo = build_ui(cn_ctx)
    send = next(f for f in demo.fns.values() if f.api_name == "pnginfo_send_to_txt2img")
    updates = dict(zip([c.elem_id for c in send.outputs], send.fn(text)))
    unit0 = {k[len("txt2img_controlnet_0_"):]: u.get("value") for k, u in updates.items()
             if k and k.startswith("txt2img_controlnet_0_")}
    assert {k: unit0[k] for k in ("enabled", "module", "weight", "control_mode", "resize_mode", "processor_res",
                                  "threshold_b")} == {
        "enabled": True, "module": "canny", "weight": 0.7, "control_mode": "My prompt is more important",
        "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_b": 160.0}
    assert unit0["model"].startswith("control_tiny_canny [")
    assert "value" not in updates["txt2img_controlnet_1_enabled"]


def test_controlnet_with_lora_and_another_sampler(cn_ctx):
    cn_only = run(cn_ctx, [unit()], sampler_name="DPM++ 2M", scheduler="Karras")
    both = run(cn_ctx, [unit()], sampler_name="DPM++ 2M", scheduler="Karras", prompt="x <lora:film:1>")
    again = run(cn_ctx, [unit()], sampler_name="DPM++ 2M", scheduler="Karras", prompt="x <lora:film:1>")
    assert both.images[0].tobytes() == again.images[0].tobytes() != cn_only.images[0].tobytes()
    assert "Lora hashes" in both.infotexts[0] and "ControlNet 0" in both.infotexts[0]


def test_sdxl_controlnet_with_an_sdxl_checkpoint(tmp_path):
    root = tmp_path / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "ControlNet").mkdir()
    save_single_file(build_tiny_components("sdxl", seed=1), root / "Stable-diffusion" / "tiny-xl.safetensors")
    save_file(controlnet_to_original(tiny_controlnet("sdxl", 3)), root / "ControlNet" / "control_xl.safetensors")
    ctx = build_context(make_settings(tmp_path / "data", root), load_model=True)
    plain = ctx.generate(GenerationRequest(**BASE)).images[0].tobytes()
    xl = {"module": "canny", "model": "control_xl", "image": picture()}
    assert run(ctx, [xl]).images[0].tobytes() != plain
    assert run(ctx, [{**xl, "weight": 0}]).images[0].tobytes() == plain


def test_ui_section_and_preview_through_gradio_client(cn_ctx, tmp_path):
    from gradio_client import Client, handle_file

    from tests.live_server import LiveServer

    picture().save(tmp_path / "control.png")
    with LiveServer(create_app(cn_ctx)) as srv:
        client = Client(srv.url, verbose=False)
        gallery, info = client.predict(prompt="x", steps=3, width=64, height=64, seed=2, sampler_name="Euler",
                                       controlnet__0_enabled=True, controlnet__0_module="canny",
                                       controlnet__0_model=next(t for t in client.view_api(
                                           return_format="dict", print_info=False)["named_endpoints"]["/txt2img"][
                                           "parameters"] if t["parameter_name"] == "controlnet__0_model")[
                                           "type"]["enum"][1],
                                       controlnet__0_image=handle_file(str(tmp_path / "control.png")),
                                       controlnet__0_weight=0.7, api_name="/txt2img")
        assert 'ControlNet 0: "Module: canny, Model: control_tiny_canny [' in info and "Weight: 0.7" in info
        preview = client.predict(handle_file(str(tmp_path / "control.png")), "canny", 64, 100, 200,
                                 api_name="/txt2img_controlnet_0_preview")
        edges = np.asarray(Image.open(preview).convert("L"))
        assert np.array_equal(edges, cv2.Canny(np.asarray(picture()), 100, 200))
