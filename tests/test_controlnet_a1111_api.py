"""The requests of sd-webui-controlnet's own API tests (``tests/web_api/generation_test.py``, run as its CPU
CI runs them: 64x64, 3 steps), restated here with their payloads and expectations: the response's ``images``
hold the ``n_iter * batch_size`` generated images followed by one detected map per enabled unit (with hires
fix two: the hires size's, then the first pass's), unless ``save_detected_map`` is false; unknown unit keys are
ignored; out-of-range parameters fall back to the module default with its log line.

Covered here: no unit, an unrecognised parameter, n_iter, batch size, two units, a preprocessor (canny),
invalid parameters, ``save_detected_map``, ``hr_option`` with and without hires, the option
``control_net_no_detectmap``, ``advanced_weighting``, ``effective_region_mask``, and detect_test.py. Its other
payloads are restated beside their model kinds: test_ip_adapter.py (IP-Adapter face / full-face), test_reference.py,
test_control_lora.py, test_t2i_adapter.py, test_controlnet_inpaint.py (inpaint, masked units, lama).
"""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import api_only, make_settings
from tests.test_controlnet import b64, tiny_controlnet
from webui.context import build_context
from webui.controlnet.models import controlnet_to_original
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components
from webui.server import create_app


def girl() -> Image.Image:
    """A stand-in for its ``1girl.png``: shapes with edges for canny."""
    arr = np.full((96, 64, 3), 30, np.uint8)
    arr[20:70, 12:52] = (220, 180, 160)
    arr[30:40, 20:28] = 0
    return Image.fromarray(arr)


#: sd-webui-controlnet's ``default_unit`` (tests/web_api/template.py), model looked up by "sd15_canny".
UNIT = {"control_mode": 0, "enabled": True, "guidance_end": 1, "guidance_start": 0, "pixel_perfect": True,
        "processor_res": 512, "resize_mode": 1, "threshold_a": 64, "threshold_b": 64, "weight": 1,
        "module": "canny", "model": "control_v11p_sd15_canny"}
#: Its ``txt2img_payload`` / ``img2img_payload`` with the CPU run's 64x64 and 3 steps.
COMMON = {"batch_size": 1, "cfg_scale": 7, "height": 64, "width": 64, "n_iter": 1, "steps": 3,
          "sampler_name": "Euler a", "prompt": "(masterpiece: 1.3), (highres: 1.3), best quality,",
          "negative_prompt": "", "seed": 42, "subseed": -1, "subseed_strength": 0, "override_settings": {},
          "do_not_save_grid": False, "do_not_save_samples": False, "s_churn": 0, "s_min_uncond": 0, "s_noise": 1,
          "s_tmax": None, "s_tmin": 0, "script_args": [], "script_name": None, "styles": []}
TXT2IMG = {**COMMON, "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
           "hr_resize_x": 0, "hr_resize_y": 0, "restore_faces": False, "tiling": False,
           "seed_resize_from_h": -1, "seed_resize_from_w": -1, "override_settings_restore_afterwards": True}
IMG2IMG = {**COMMON, "denoising_strength": 0.75, "initial_noise_multiplier": 1, "inpaint_full_res": 0,
           "inpaint_full_res_padding": 32, "inpainting_fill": 1, "inpainting_mask_invert": 0, "mask_blur": 4,
           "resize_mode": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn-a1111")
    save_single_file(build_tiny_components("sd1", seed=1), root / "Stable-diffusion" / "tiny.safetensors")
    (root / "ControlNet").mkdir()
    save_file(controlnet_to_original(tiny_controlnet("sd1", 0)),
              root / "ControlNet" / "control_v11p_sd15_canny.safetensors")
    ctx = build_context(make_settings(tmp_path_factory.mktemp("cn-a1111-data"), root), load_model=True)
    return TestClient(create_app(api_only(ctx)))


def post(client, mode: str, payload: dict, units: list[dict]) -> list[Image.Image]:
    body = {**(TXT2IMG if mode == "txt2img" else IMG2IMG), **payload}
    image = b64(girl())
    if mode == "img2img":
        body["init_images"] = [image]
    # as its template does: txt2img units get the input image, img2img units use the init image
    body["alwayson_scripts"] = {"ControlNet": {"args": [
        {**UNIT, **unit, **({"image": image} if mode == "txt2img" else {})} for unit in units]}}
    r = client.post(f"/sdapi/v1/{mode}", json=body)
    assert r.status_code == 200, r.text
    return [Image.open(io.BytesIO(base64.b64decode(i))) for i in r.json()["images"]]


MODES = ["img2img", "txt2img"]


@pytest.mark.parametrize("mode", MODES)
def test_no_unit(client, mode):
    assert len(post(client, mode, {}, [])) == 1


@pytest.mark.parametrize("mode", MODES)
def test_unrecognized_param_is_ignored_with_a_log_line(client, mode, caplog):
    with caplog.at_level(logging.INFO, logger="webui.controlnet.units"):
        images = post(client, mode, {}, [{"foo": True, "is_ui": False}])
    assert len(images) == 2
    assert "unknown parameter 'foo' ignored" in caplog.text and "is_ui" not in caplog.text


@pytest.mark.parametrize("payload, expected", [({"n_iter": 2}, 3), ({"batch_size": 2}, 3)],
                         ids=["multiple_iter", "batch_size"])
@pytest.mark.parametrize("mode", MODES)
def test_images_then_one_map_per_unit(client, mode, payload, expected):
    images = post(client, mode, payload, [{}])
    assert len(images) == expected
    assert images[-1].size == (64, 64)  # the map: the control picture at the generation size (its detectmap_proc)


@pytest.mark.parametrize("mode", MODES)
def test_2_units(client, mode):
    images = post(client, mode, {}, [{}, {}])
    assert len(images) == 3
    # an edge map (grey, white edges on black) at the generation size, not a generated image
    canny = np.asarray(images[1].convert("RGB")).astype(int)
    assert images[1].size == (64, 64) and canny.max() >= 200 and np.median(canny) < 30
    assert (canny[:, :, 0] == canny[:, :, 1]).all() and (canny[:, :, 1] == canny[:, :, 2]).all()


@pytest.mark.parametrize("param", ["processor_res", "threshold_a", "threshold_b"])
@pytest.mark.parametrize("mode", MODES)
def test_invalid_param_uses_the_default_with_its_log_line(client, mode, param, caplog):
    with caplog.at_level(logging.WARNING, logger="webui.builtin.controlnet"):
        assert len(post(client, mode, {}, [{param: -1}])) == 2
    assert f"[canny.{param}] Invalid value(-1), using default value" in caplog.text


@pytest.mark.parametrize("save_map", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_save_map(client, mode, save_map):
    assert len(post(client, mode, {}, [{"save_detected_map": save_map}])) == (2 if save_map else 1)


@pytest.mark.parametrize("option, passes", [("HiResFixOption.BOTH", {False, True}), ("Low res only", {False}),
                                             ("High res only", {True})])
def test_hires_fix_gives_the_hires_map_then_the_first_pass_map(client, option, passes, monkeypatch):
    """test_hr_option (3 images): with hires fix, sd-webui-controlnet's ``get_control`` stores the control picture
    at the hires size, then at the first pass's size, whatever ``hr_option``; ``hr_option`` decides in which passes
    the unit acts (its ``disabled_by_hr_option``)."""
    from webui.controlnet.patch import ControlNetPatch

    acted, original = set(), ControlNetPatch.residuals

    def residuals(self, call):
        out = original(self, call)
        if out is not None:
            acted.add(call.hires)
        return out

    monkeypatch.setattr(ControlNetPatch, "residuals", residuals)
    images = post(client, "txt2img", {"enable_hr": True, "denoising_strength": 0.75}, [{"hr_option": option}])
    assert [im.size for im in images] == [(128, 128), (128, 128), (64, 64)]
    assert acted == passes


def test_hr_option_is_ignored_without_hires(client):
    assert len(post(client, "txt2img", {"enable_hr": False}, [{"hr_option": "HiResFixOption.BOTH"}])) == 2


def test_the_option_control_net_no_detectmap_drops_the_maps(client):
    assert len(post(client, "txt2img", {"override_settings": {"control_net_no_detectmap": True}}, [{}])) == 1


def test_advanced_weighting_payload(client, caplog):
    with caplog.at_level(logging.INFO, logger="webui.builtin.controlnet"):
        assert len(post(client, "txt2img", {}, [{"advanced_weighting": [0.75] * 13}])) == 2  # SD 1.5's 13
    assert "Advanced weighting enabled. [0.75" in caplog.text


def test_advanced_weighting_replaces_the_weight_output_by_output(client):
    """The scales replace ``weight`` (Balanced: every output times the weight), so the same number for every
    output equals that weight; outputs past the end of the list add nothing, so an all-zero list is the
    image without the unit; a bad entry is a 422 naming it."""
    from webui.controlnet.patch import output_scales
    from webui.controlnet.units import ControlUnit

    plain = post(client, "txt2img", {}, [{"weight": 0.5, "save_detected_map": False}])[0]
    same = post(client, "txt2img", {}, [{"advanced_weighting": [0.5] * 13, "save_detected_map": False}])[0]
    assert np.array_equal(np.asarray(plain), np.asarray(same))
    none = post(client, "txt2img", {}, [])[0]
    zero = post(client, "txt2img", {}, [{"advanced_weighting": [0.0], "save_detected_map": False}])[0]
    assert np.array_equal(np.asarray(none), np.asarray(zero))
    # zip: with two scales for three outputs, the third (here the middle block) has none
    assert output_scales(ControlUnit(advanced_weighting=(2.0, 3.0)), 3, hires=False) == [2.0, 3.0, 0.0]
    body = {**TXT2IMG, "alwayson_scripts": {"ControlNet": {"args": [
        {**UNIT, "image": b64(girl()), "advanced_weighting": [1, "x"]}]}}}
    bad = client.post("/sdapi/v1/txt2img", json=body)
    assert bad.status_code == 422 and "advanced_weighting[1]" in bad.text


def test_effective_region_mask_limits_where_the_unit_acts(client):
    """A black region mask is the image without the unit, a white one the image with it, half of each
    something between; ``union_control_type`` (for Union models) is taken without complaint."""
    def region(value_left: int, value_right: int) -> str:
        arr = np.zeros((64, 64), np.uint8)
        arr[:, :32], arr[:, 32:] = value_left, value_right
        return b64(Image.fromarray(arr, "L"))

    def generate(**unit):
        return np.asarray(post(client, "txt2img", {}, [{"save_detected_map": False, **unit}])[0], dtype=int)

    none = np.asarray(post(client, "txt2img", {}, [])[0], dtype=int)
    full = generate()
    assert np.array_equal(generate(effective_region_mask=region(0, 0)), none)
    assert np.array_equal(generate(effective_region_mask=region(255, 255), union_control_type="Canny"), full)
    half = generate(effective_region_mask=region(255, 0))
    assert not np.array_equal(half, none) and not np.array_equal(half, full)


# --- sd-webui-controlnet's tests/web_api/detect_test.py, restated ------------------------------------------------
def _detect(client, payload: dict, status: int = 200):
    response = client.post("/controlnet/detect", json=payload)
    assert response.status_code == status, response.text
    if status == 200:
        images = response.json()["images"]
        assert len(images) == len(payload["controlnet_input_images"])
        for data in images:
            Image.open(io.BytesIO(base64.b64decode(data))).verify()
    return response


def test_detect_payloads(client, caplog):
    face = b64(girl())
    _detect(client, {"controlnet_input_images": [face], "controlnet_module": "canny"})  # test_detect_simple
    _detect(client, {"controlnet_input_images": [face, face], "controlnet_module": "canny"})  # multiple inputs
    _detect(client, {"controlnet_module": "INVALID"}, 422)  # test_detect_with_invalid_module
    _detect(client, {"controlnet_input_images": []}, 422)  # test_detect_with_no_input_images
    with caplog.at_level(logging.WARNING):
        _detect(client, {"controlnet_input_images": [face], "controlnet_module": "canny",
                         "controlnet_threshold_a": -1, "controlnet_threshold_b": -1,
                         "controlnet_processor_res": -1})  # test_detect_default_param, and its console lines
    for line in ("[canny.processor_res] Invalid value(-1), using default value 512.",
                 "[canny.threshold_a] Invalid value(-1.0), using default value 100.",
                 "[canny.threshold_b] Invalid value(-1.0), using default value 200."):
        assert line in caplog.text, line
    # the modules that need no weights all answer with an image (test_detect_all_modules; those whose annotator
    # weights cannot be had here answer 4xx naming the file instead of A1111-CN's download)
    for module in ("none", "invert", "binary", "threshold", "ip-adapter_clip_h", "reference_only"):
        _detect(client, {"controlnet_input_images": [face], "controlnet_module": module})


def test_detect_every_listed_module_answers_without_a_server_error(client):
    """test_detect_all_modules: every module of /controlnet/module_list answers 200 with an image, or (annotator
    weights that are not in the folder here) a 4xx that names the missing file, never a 500."""
    face = b64(girl())
    for module in client.get("/controlnet/module_list").json()["module_list"]:
        response = client.post("/controlnet/detect", json={"controlnet_input_images": [face],
                                                            "controlnet_module": module})
        assert response.status_code == 200 or (400 <= response.status_code < 500 and "annotators" in response.text), \
            (module, response.status_code, response.text[:200])


def test_pixel_perfect_sets_the_processor_resolution(client, monkeypatch):
    """sd-webui-controlnet's ``pixel_perfect_resolution``: ``round(k * min(H, W))`` with ``k`` the larger of the
    target/input ratios (the smaller for "Resize and Fill"), used as it is (its slider check ran before). Its
    default unit on the 96x64 picture at 96x96: "Crop and Resize" k = max(96/96, 96/64) = 1.5, so 96, whatever
    ``processor_res`` says; "Resize and Fill" k = 1, so 64."""
    from webui.controlnet.patch import ControlNetPatch

    hints, original = [], ControlNetPatch.prepare

    def prepare(self, width, height, hires=False):
        original(self, width, height, hires)
        hints.append(self.units[0].hint.detach().float().cpu().clone())

    monkeypatch.setattr(ControlNetPatch, "prepare", prepare)
    size = {"steps": 1, "width": 96, "height": 96}
    for unit in ({"processor_res": 512}, {"pixel_perfect": False, "processor_res": 96},
                 {"pixel_perfect": False, "processor_res": 512}, {"resize_mode": "Resize and Fill"},
                 {"pixel_perfect": False, "processor_res": 64, "resize_mode": "Resize and Fill"},
                 {"pixel_perfect": False, "processor_res": 96, "resize_mode": "Resize and Fill"}):
        post(client, "txt2img", size, [unit])  # UNIT: pixel perfect on
    assert torch.equal(hints[0], hints[1]) and not torch.equal(hints[0], hints[2])
    assert torch.equal(hints[3], hints[4]) and not torch.equal(hints[3], hints[5])


def test_masked_controlnet_img2img_payload(client):
    """generation_test.py's ``test_masked_controlnet_img2img``: img2img with ``init_images``, the default canny unit
    given its own ``image`` and a ``mask_image``: the picture, then the unit's map (the masked unit reads the mask
    as its scribble: the map is the mask's edges, not the picture's)."""
    mask = np.zeros((96, 64), np.uint8)
    mask[8:40, 8:40] = 255
    images = post(client, "img2img", {}, [{"image": b64(girl()), "mask_image": b64(Image.fromarray(mask))}])
    assert len(images) == 2 and images[0].size == (64, 64)
    plain = post(client, "img2img", {}, [{"image": b64(girl())}])[1]
    masked = np.asarray(images[1].convert("L"))
    assert masked.any() and not np.array_equal(np.asarray(plain.convert("L")), masked)


def a1111_canny_unit_images(client, model: str) -> tuple[list[Image.Image], str]:
    """generation_test.py's payload for a model kind (``test_control_lora``, ``test_t2i_adapter``): its default unit
    with module "canny" and ``model``, through its txt2img payload. Checks what it checks -- the picture, then the
    canny map (black and white, some edges) -- and returns the images and the infotext."""
    unit = {**UNIT, "module": "canny", "model": model, "image": b64(girl())}
    r = client.post("/sdapi/v1/txt2img", json={**TXT2IMG, "alwayson_scripts": {"ControlNet": {"args": [unit]}}})
    assert r.status_code == 200, r.text
    images = [Image.open(io.BytesIO(base64.b64decode(i))) for i in r.json()["images"]]
    assert len(images) == 2 and images[0].size == (64, 64)
    edges = np.asarray(images[1].convert("L"))
    assert set(np.unique(edges)) <= {0, 255} and 0 < (edges == 255).mean() < 0.5
    return images, r.json()["info"]
