"""Stability's control-LoRAs (issue 27): a ControlNet stored as low-rank changes to the checkpoint's own U-Net.

Reference, not our code: diffusers' ``ControlNetModel.from_unet`` copies the tiny checkpoint's U-Net encoder; the
test gives it random control parts and changes four layers by ``up @ down`` (the rule ComfyUI's and
sd-webui-controlnet's ``ControlLoraOps`` apply: ``W + up.flatten(1) @ down.flatten(1)``) and one norm in full,
and writes the file in the original layout with LDM names written out here for those layers.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from conftest import api_only, make_settings, own_models_root
from diffusers import ControlNetModel
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from webui.controlnet.models import controlnet_to_original, load_controlnet
from webui.errors import ModelError

#: diffusers module -> LDM module of the tiny SD 1 U-Net, for the layers the test's control-LoRA adapts
ADAPTED = {"down_blocks.0.attentions.0.proj_in": "input_blocks.1.1.proj_in",
           "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k":
               "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
           "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",
           "time_embedding.linear_1": "time_embed.0"}
REPLACED = {"down_blocks.0.resnets.0.norm1": "input_blocks.1.0.in_layers.0"}


def _build(unet, path):
    """The expected ControlNet and the control-LoRA file that describes it."""
    gen = torch.Generator().manual_seed(0)
    expected = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16)).eval()
    file: dict[str, torch.Tensor] = {"lora_controlnet": torch.zeros(1)}
    modules = dict(expected.named_modules())
    with torch.no_grad():
        for name, p in expected.named_parameters():
            if name.startswith(("controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for diffusers_name, ldm_name in ADAPTED.items():
            weight = modules[diffusers_name].weight
            up = torch.randn(weight.shape[0], 4, *([1, 1] if weight.ndim == 4 else []), generator=gen) * 0.3
            down = torch.randn(4, *weight.shape[1:], generator=gen) * 0.3
            weight += (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
            file[f"{ldm_name}.up"], file[f"{ldm_name}.down"] = up, down
        for diffusers_name, ldm_name in REPLACED.items():
            for kind in ("weight", "bias"):
                value = torch.randn(getattr(modules[diffusers_name], kind).shape, generator=gen)
                getattr(modules[diffusers_name], kind).copy_(value)
                file[f"{ldm_name}.{kind}"] = value
    own = ("input_hint_block.", "zero_convs.", "middle_block_out.")
    file.update({k: v for k, v in controlnet_to_original(expected, prefix="").items() if k.startswith(own)})
    save_file({k: v.contiguous() for k, v in file.items()}, str(path))
    return expected


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_sd1_file):
    from webui.context import build_context
    from webui.server import create_app

    models = own_models_root(tmp_path_factory, tiny_sd1_file)
    (models / "ControlNet").mkdir()
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    path = models / "ControlNet" / "control_lora_rank128_v11p_sd15_canny.safetensors"
    expected = _build(ctx.models.current.components.unet, path)  # made from the loaded checkpoint's U-Net
    client = TestClient(create_app(api_only(ctx)))
    assert any(m.startswith(path.stem) for m in client.get("/controlnet/model_list").json()["model_list"])  # rescan
    return {"ctx": ctx, "client": client, "path": path, "expected": expected}


def test_the_control_lora_becomes_the_controlnet_it_describes(env):
    unet = env["ctx"].models.current.components.unet
    built = load_controlnet(env["path"], base_unet=unet)
    want = env["expected"].state_dict()
    got = built.state_dict()
    assert set(got) == set(want)
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want), [
        k for k in want if not torch.allclose(got[k], want[k], atol=1e-6)][:3]
    with pytest.raises(ModelError, match="checkpoint"):
        load_controlnet(env["path"])  # nothing to build it from


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB"))


def test_a_control_lora_unit_steers_the_generation(env):
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, 16:48] = 255
    unit = {"module": "none", "model": "control_lora_rank128_v11p_sd15_canny", "image": _b64(Image.fromarray(arr)),
            "resize_mode": "Just Resize"}
    body = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 2, "sampler_name": "Euler",
            "save_images": False}

    def run(units):
        extra = {"alwayson_scripts": {"controlnet": {"args": units}}} if units else {}
        return env["client"].post("/sdapi/v1/txt2img", json={**body, **extra})

    plain = _pixels(run([]))
    steered = run([unit])
    assert np.abs(_pixels(steered).astype(int) - plain).mean() > 1
    assert "control_lora_rank128_v11p_sd15_canny" in steered.json()["info"]
    assert np.array_equal(_pixels(run([{**unit, "weight": 0}])), plain)


def test_a_control_lora_of_another_family_is_a_422_naming_it(env):
    """An SDXL control-LoRA on the SD 1 checkpoint (stand-in: the test's file with its cross-attention pair at
    SDXL's 2048-wide text, as SDXL's control-LoRAs have): a 422 on the unit's model naming the file."""
    from safetensors.torch import load_file

    file = load_file(str(env["path"]))
    file["input_blocks.1.1.transformer_blocks.0.attn2.to_k.down"] = torch.zeros(4, 2048)
    path = env["path"].with_name("control-lora-canny-rank128-sdxl.safetensors")
    save_file(file, str(path))
    try:
        env["client"].get("/controlnet/model_list")
        unit = {"module": "none", "model": "control-lora-canny-rank128-sdxl", "image": _b64(Image.new("RGB", (64, 64))),
                "resize_mode": "Just Resize"}
        response = env["client"].post("/sdapi/v1/txt2img", json={
            "prompt": "x", "steps": 1, "width": 64, "height": 64, "save_images": False,
            "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    finally:
        path.unlink()
        env["client"].get("/controlnet/model_list")
    text = response.text
    assert response.status_code == 422 and "control-lora-canny-rank128-sdxl" in text
    assert "do not fit this checkpoint's U-Net" in text and "model family" in text, text


def test_sd_webui_controlnets_control_lora_payload(env):
    """Its generation_test.py ``test_control_lora``: the default unit with module "canny" and the model its
    ``get_model("control_lora_rank128_v11p_sd15_canny")`` finds, through txt2img: the picture, then the map."""
    from tests.test_controlnet_a1111_api import a1111_canny_unit_images

    _, info = a1111_canny_unit_images(env["client"], "control_lora_rank128_v11p_sd15_canny")
    assert "control_lora_rank128_v11p_sd15_canny" in info
