"""SDXL T2I-Adapters (issue 27): diffusers' ``full_adapter_xl`` (TencentARC's ``t2i-adapter-*-sdxl-1.0``) as a
diffusers-named single file, on an SDXL U-Net with SDXL's three levels (the tiny default has two). The U-Net gets
the adapter's four feature maps (1/16, 1/16, 1/32, middle), times the weight, and uses every one of them, as
``StableDiffusionXLAdapterPipeline`` passes them; an SD 1.x adapter on SDXL (and the other way) is refused by name."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from diffusers import T2IAdapter, UNet2DConditionModel
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import api_only, make_settings
from webui.models.original_layout import save_single_file
from webui.models.spec import ModelSpec
from webui.models.tiny import build_tiny_components, tiny_unet_config

PAYLOAD = dict(prompt="a red cube", negative_prompt="blurry", steps=2, width=64, height=64, seed=3,
               sampler_name="Euler", cfg_scale=5, save_images=False)


def _three_level_xl():
    components = build_tiny_components("sdxl", seed=5)
    config = tiny_unet_config(ModelSpec("sdxl"))
    config.update(block_out_channels=[32, 64, 64], down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2,
                  up_block_types=["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"], transformer_layers_per_block=[1, 1, 1],
                  attention_head_dim=[1, 1, 1])
    torch.manual_seed(5)
    components.unet = UNet2DConditionModel(**config).eval()
    return components


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from webui.context import build_context
    from webui.server import create_app

    models = tmp_path_factory.mktemp("xl-adapter-models")
    save_single_file(_three_level_xl(), models / "Stable-diffusion" / "tiny-xl3.safetensors")
    (models / "ControlNet").mkdir()
    torch.manual_seed(0)
    adapter = T2IAdapter(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=1, downscale_factor=16,
                         adapter_type="full_adapter_xl").eval()
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()},
              str(models / "ControlNet" / "t2i-adapter_diffusers_xl_canny.safetensors"))
    sd1 = T2IAdapter(in_channels=3, channels=[32, 64, 64, 64], num_res_blocks=1, downscale_factor=8).eval()
    save_file({k: v.contiguous() for k, v in sd1.state_dict().items()},
              str(models / "ControlNet" / "t2iadapter_sd15_other.safetensors"))
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    assert list(ctx.models.current.components.unet.config.block_out_channels) == [32, 64, 64]
    return {"ctx": ctx, "client": TestClient(create_app(api_only(ctx))), "adapter": adapter}


def _hint() -> Image.Image:
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[8:40, 16:56] = 255
    return Image.fromarray(arr)


def _unit(model="t2i-adapter_diffusers_xl_canny", **kw) -> dict:
    buf = io.BytesIO()
    _hint().save(buf, format="PNG")
    return {"enabled": True, "module": "none", "model": model, "weight": 0.8, "resize_mode": "Just Resize",
            "image": base64.b64encode(buf.getvalue()).decode(), **kw}


def _post(world, units):
    return world["client"].post("/sdapi/v1/txt2img",
                                json={**PAYLOAD, "alwayson_scripts": {"controlnet": {"args": units}}})


def test_the_unet_gets_and_uses_the_four_features(world):
    unet = world["ctx"].models.current.components.unet
    seen = {}

    def before(module, args, kwargs):
        if "features" not in seen and kwargs.get("down_intrablock_additional_residuals") is not None:
            given = kwargs["down_intrablock_additional_residuals"]
            seen.update(features=[f.clone() for f in given], given=given)

    def after(module, args, kwargs, output):
        if "given" in seen and "left" not in seen:
            seen["left"] = len(seen["given"])  # the U-Net pops each feature it adds

    handles = [unet.register_forward_pre_hook(before, with_kwargs=True),
               unet.register_forward_hook(after, with_kwargs=True)]
    try:
        response = _post(world, [_unit()])
    finally:
        for h in handles:
            h.remove()
    assert response.status_code == 200, response.text
    hint = torch.from_numpy(np.asarray(_hint(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = world["adapter"](hint)
    assert [tuple(f.shape[1:]) for f in seen["features"]] == [(32, 4, 4), (64, 4, 4), (64, 2, 2), (64, 2, 2)]
    for ours, theirs in zip(seen["features"], expected, strict=True):
        torch.testing.assert_close(ours[:1], theirs * 0.8, atol=1e-5, rtol=1e-5)
    assert seen["left"] == 0  # all four were added: three down blocks and the middle block
    plain = world["client"].post("/sdapi/v1/txt2img", json=PAYLOAD).json()["images"][0]

    def pixels(data):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))), dtype=np.int16)

    assert np.abs(pixels(response.json()["images"][0]) - pixels(plain)).mean() > 0.5


def test_families_must_match(world):
    response = _post(world, [_unit("t2iadapter_sd15_other")])
    assert response.status_code == 422 and "args[0].model" in response.text and "SDXL" in response.text
