"""SDXL ControlNet++ Union (issue 27): xinsir's diffusers-named single file loads as diffusers'
``ControlNetUnionModel``; the residuals the U-Net receives equal that model's own output for the control type
sd-webui-controlnet's numbering gives (OpenPose 0, Depth 1, Soft Edge 2, Hard Edge 3, Normal Map 4, Segmentation 5,
Tile 6, Inpaint 7; "Unknown" from the preprocessor), times the weight."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import api_only, make_settings, own_models_root
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components

PAYLOAD = dict(prompt="a red cube", negative_prompt="blurry", steps=2, width=64, height=64, seed=3,
               sampler_name="Euler", cfg_scale=5, save_images=False)


def _union(unet) -> torch.nn.Module:
    from diffusers import ControlNetUnionModel

    torch.manual_seed(0)
    cfg = unet.config
    model = ControlNetUnionModel(
        in_channels=4, down_block_types=tuple(cfg.down_block_types), block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.cross_attention_dim,
        transformer_layers_per_block=cfg.transformer_layers_per_block, attention_head_dim=cfg.attention_head_dim,
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=cfg.addition_time_embed_dim,
        projection_class_embeddings_input_dim=cfg.projection_class_embeddings_input_dim,
        conditioning_embedding_out_channels=(16, 16, 16, 32), num_control_type=8, num_trans_channel=32,
        num_trans_head=8, num_trans_layer=1, num_proj_channel=32)
    with torch.no_grad():  # trained models' zero convolutions and projections are not zero
        for name, param in model.named_parameters():
            if name.startswith(("controlnet_down", "controlnet_mid", "spatial_ch_projs",
                                "controlnet_cond_embedding.conv_out")):
                param.copy_(torch.randn(param.shape) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from webui.context import build_context
    from webui.server import create_app

    models = tmp_path_factory.mktemp("union-models")
    components = build_tiny_components("sdxl", seed=2)
    save_single_file(components, models / "Stable-diffusion" / "tiny-xl.safetensors")
    (models / "ControlNet").mkdir()
    union = _union(components.unet)
    save_file({k: v.contiguous() for k, v in union.state_dict().items()},
              str(models / "ControlNet" / "controlnet-union-sdxl-promax.safetensors"))
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    return {"ctx": ctx, "client": TestClient(create_app(api_only(ctx))), "union": union}


def _hint() -> Image.Image:
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, 16:48] = 255
    return Image.fromarray(arr)


def _unit(**kw) -> dict:
    buf = io.BytesIO()
    _hint().save(buf, format="PNG")
    return {"enabled": True, "module": "none", "model": "controlnet-union-sdxl-promax", "weight": 0.7,
            "resize_mode": "Just Resize", "image": base64.b64encode(buf.getvalue()).decode(), **kw}


def _post(world, unit):
    return world["client"].post("/sdapi/v1/txt2img",
                                json={**PAYLOAD, "alwayson_scripts": {"controlnet": {"args": [unit]}}})


@pytest.mark.parametrize("union_type, module, index", [("Hard Edge", "none", 3), ("Depth", "none", 1),
                                                       ("Unknown", "invert", None), ("Unknown", "canny", 3),
                                                       ("softedge", "none", 2)])
def test_residuals_equal_the_union_model_for_the_control_type(world, union_type, module, index):
    unet = world["ctx"].models.current.components.unet
    seen = {}

    def record(mod, args, kwargs):
        if "down" not in seen and "down_block_additional_residuals" in kwargs:
            seen.update(x=args[0], t=args[1], context=kwargs["encoder_hidden_states"],
                        added=kwargs["added_cond_kwargs"], down=kwargs["down_block_additional_residuals"],
                        mid=kwargs["mid_block_additional_residual"])

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        response = _post(world, _unit(union_control_type=union_type, module=module))
    finally:
        handle.remove()
    if index is None:  # "invert" names no control type
        assert response.status_code == 422 and "union_control_type" in response.text
        return
    assert response.status_code == 200, response.text
    hint = torch.from_numpy(np.asarray(_hint(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    if module == "canny":
        hint = None  # the preprocessor's map: only the index is checked, below
    rows = seen["x"].shape[0]
    control_type = torch.zeros(rows, 8)
    control_type[:, index] = 1
    if hint is not None:
        with torch.no_grad():
            down, mid = world["union"](seen["x"], seen["t"], encoder_hidden_states=seen["context"],
                                       controlnet_cond=[hint.expand(rows, -1, -1, -1)], control_type=control_type,
                                       control_type_idx=[index], conditioning_scale=[1.0],
                                       added_cond_kwargs=seen["added"], return_dict=False)
        for ours, theirs in zip(seen["down"], down, strict=True):
            torch.testing.assert_close(ours, theirs * 0.7, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(seen["mid"], mid * 0.7, atol=1e-5, rtol=1e-4)
    else:  # the canny map: "Unknown" with a canny preprocessor is Hard Edge
        same = _post(world, _unit(union_control_type="Hard Edge", module="canny"))
        other = _post(world, _unit(union_control_type="Depth", module="canny"))
        pix = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))) for r in
               (response, same, other)]
        assert np.array_equal(pix[0], pix[1]) and not np.array_equal(pix[0], pix[2])


def test_control_types_differ_and_unknown_names_are_refused(world):
    def pixels(**kw):
        response = _post(world, _unit(**kw))
        assert response.status_code == 200, response.text
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))), dtype=np.int16)

    assert np.abs(pixels(union_control_type="Depth") - pixels(union_control_type="Tile")).mean() > 0.2
    bad = _post(world, _unit(union_control_type="Gray"))  # a FLUX.1 Union type, not one of ControlNet++'s
    assert bad.status_code == 422 and "args[0].union_control_type" in bad.text and "Hard Edge" in bad.text


def test_weight_zero_is_no_unit_and_sd15_checkpoints_refuse_it(world, tmp_path_factory, tiny_sd1_file):
    plain = world["client"].post("/sdapi/v1/txt2img", json=PAYLOAD).json()["images"][0]
    zero = _post(world, _unit(union_control_type="Depth", weight=0))

    def pixels(data):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))), dtype=np.int16)

    assert np.array_equal(pixels(zero.json()["images"][0]), pixels(plain))
    # the SDXL union model with an SD 1.x checkpoint: a 422 naming the unit's model and both families
    from webui.context import build_context
    from webui.server import create_app

    root = own_models_root(tmp_path_factory, tiny_sd1_file)
    (root / "ControlNet").mkdir()
    source = world["ctx"].settings.model_dir("ControlNet") / "controlnet-union-sdxl-promax.safetensors"
    (root / "ControlNet" / source.name).write_bytes(source.read_bytes())
    sd1 = build_context(make_settings(tmp_path_factory.mktemp("sd1-data"), root), load_model=True)
    refused = TestClient(create_app(api_only(sd1))).post(
        "/sdapi/v1/txt2img", json={**PAYLOAD, "alwayson_scripts": {"controlnet": {"args": [_unit()]}}})
    assert refused.status_code == 422 and "args[0].model" in refused.text and "SDXL" in refused.text
