"""Reference units (issue 27): sd-webui-controlnet's ``reference_only`` / ``reference_adain`` /
``reference_adain+attn``, with its own API test payload (model "None", ``threshold_a`` 64 out of the style-fidelity
slider), the attention-sharing and AdaIN rules checked on their invariants, and the LDM block positions
sd-webui-controlnet picks restated by hand for the real SD 1.5 U-Net."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import api_only, make_settings, own_models_root
from tests.test_controlnet import b64
from webui.controlnet.reference import _Bank, _RefAttention, _State, ldm_blocks

PAYLOAD = dict(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64, seed=5,
               sampler_name="Euler", cfg_scale=7, save_images=False)


def _reference_image() -> Image.Image:
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, :32] = (220, 40, 40)
    arr[:, 32:] = (30, 60, 200)
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_sd1_file):
    from webui.context import build_context
    from webui.server import create_app

    models = own_models_root(tmp_path_factory, tiny_sd1_file)
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    return {"ctx": ctx, "client": TestClient(create_app(api_only(ctx)))}


def _unit(module: str = "reference_only", **kw) -> dict:
    # sd-webui-controlnet's tests/web_api default unit, as its test_reference sends it
    return {"control_mode": 0, "enabled": True, "guidance_end": 1, "guidance_start": 0, "pixel_perfect": True,
            "processor_res": 512, "resize_mode": 1, "threshold_a": 64, "threshold_b": 64, "weight": 1,
            "module": module, "model": "None", "image": b64(_reference_image()), **kw}


def _post(world, units, **kw):
    return world["client"].post("/sdapi/v1/txt2img", json={**PAYLOAD, **kw,
                                                          "alwayson_scripts": {"ControlNet": {"args": units}}})


def _pixels(response, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][index]))).convert("RGB"),
                      dtype=np.int16)


def test_sd_webui_controlnet_reference_payload(world, caplog):
    with caplog.at_level("WARNING"):
        response = _post(world, [_unit()])
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2  # n_iter * batch_size + units, as its CQ check counts
    assert "[reference_only.threshold_a] Invalid value(64), using default value 0.5" in caplog.text
    assert 'Module: reference_only, Model: None' in response.json()["info"]
    unet = world["ctx"].models.current.components.unet
    assert not any("_Ref" in type(p).__name__ for p in unet.attn_processors.values())  # put back afterwards


@pytest.mark.parametrize("module", ["reference_only", "reference_adain", "reference_adain+attn"])
def test_each_mode_changes_the_picture_deterministically_and_weight_zero_is_none(world, module):
    plain = _pixels(world["client"].post("/sdapi/v1/txt2img", json=PAYLOAD))
    first = _pixels(_post(world, [_unit(module, threshold_a=0.5)]))
    again = _pixels(_post(world, [_unit(module, threshold_a=0.5)]))
    assert np.abs(first - plain).mean() > 0.5
    assert np.array_equal(first, again)  # the reference's noise is seeded
    assert np.array_equal(_pixels(_post(world, [_unit(module, weight=0)])), plain)
    late = _post(world, [_unit(module, guidance_start=0.9)])
    assert np.array_equal(_pixels(late), plain)  # the window never opens in 3 steps


def test_style_fidelity_and_control_modes(world):
    def pixels(**kw):
        return _pixels(_post(world, [_unit(**kw)]))

    balanced_0 = pixels(threshold_a=0.0)
    balanced_1 = pixels(threshold_a=1.0)
    assert np.abs(balanced_0 - balanced_1).mean() > 0.1  # fidelity keeps the negative rows closer to their own
    assert np.array_equal(pixels(threshold_a=0.3, control_mode=2), balanced_1)  # "ControlNet is more important"
    assert np.array_equal(pixels(threshold_a=0.7, control_mode=1), balanced_0)  # "My prompt is more important"


def test_a_unit_without_an_image_is_refused_by_name(world):
    no_image = {k: v for k, v in _unit().items() if k != "image"}
    response = _post(world, [no_image])
    assert response.status_code == 422 and "args[0].image" in response.text


def _attention():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    attn.set_processor(AttnProcessor2_0())
    return attn


def test_shared_attention_rules():
    attn = _attention()
    inner = attn.processor
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        plain = inner(attn, x)
        state = _State()
        bank = _Bank(0.0, states=[x.clone()], fidelities=[0.0])
        # keys / values = own states + an identical copy: softmax attention over duplicated keys is unchanged
        same = _RefAttention(inner, bank, state)(attn, x)
        torch.testing.assert_close(same, plain)
        assert not bank.states  # read once, then cleared
        other = torch.randn(2, 7, 16)
        bank.states.append(other)
        bank.fidelities.append(0.0)
        shared = _RefAttention(inner, bank, state)(attn, x)
        expected = inner(attn, x, torch.cat([x, other], dim=1))
        torch.testing.assert_close(shared, expected)
        # fidelity 1: the unconditional row (the last) keeps its own self-attention, the conditional one shares
        state.uncond = slice(1, 2)
        bank.states.append(other)
        bank.fidelities.append(1.0)
        kept = _RefAttention(inner, bank, state)(attn, x)
        torch.testing.assert_close(kept[1:], plain[1:])
        torch.testing.assert_close(kept[:1], expected[:1])
        # writing: the states are recorded only when the unit's weight is above the block's rank weight
        writer = _Bank(0.5)
        state.writing = type("U", (), {"unit": type("W", (), {"weight": 0.4})(), "attention": True})()
        _RefAttention(inner, writer, state)(attn, x)
        assert writer.states == []
        state.writing.unit.weight = 0.6
        _RefAttention(inner, writer, state)(attn, x)
        assert len(writer.states) == 1


def test_ldm_block_positions_of_the_real_sd15_unet():
    """sd-webui-controlnet hooks LDM ``input_blocks`` / ``output_blocks`` by index; the diffusers module that ends
    each of them in SD 1.5 (written out by hand from the LDM layout: 2 layers per level, a downsampler after each
    level but the last, 3 layers per up level, an upsampler after each up level but the last)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from tests.test_models_loading import REAL_UNET

    with init_empty_weights():
        unet = UNet2DConditionModel(**REAL_UNET["sd1"])
    names = {id(m): n for n, m in unet.named_modules()}
    inputs, outputs = ldm_blocks(unet)
    assert [names[id(m)] if m is not None else None for m in inputs] == [
        None, "down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "down_blocks.0.downsamplers.0",
        "down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "down_blocks.1.downsamplers.0",
        "down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "down_blocks.2.downsamplers.0",
        "down_blocks.3.resnets.0", "down_blocks.3.resnets.1"]
    assert [names[id(m)] for m in outputs] == [
        "up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.0.upsamplers.0",
        "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.upsamplers.0",
        "up_blocks.2.attentions.0", "up_blocks.2.attentions.1", "up_blocks.2.upsamplers.0",
        "up_blocks.3.attentions.0", "up_blocks.3.attentions.1", "up_blocks.3.attentions.2"]


def test_adain_moves_each_channel_to_the_reference_statistics():
    from webui.controlnet.reference import ReferencePatch

    patch = ReferencePatch([], model=None, encode=None)
    bank = _Bank(0.0)
    hook = patch._adain_hook(bank)
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(2, 3, 4, 4, generator=g) * 3 + 5
    x = torch.randn(2, 3, 4, 4, generator=g)
    patch.state.writing = type("U", (), {"unit": type("W", (), {"weight": 1.0})(), "adain": True})()
    patch.state.fidelity = 0.0
    assert hook(None, (), reference) is None  # the reference pass only records
    patch.state.writing = None
    y = hook(None, (), x)
    var, mean = torch.var_mean(y, dim=(2, 3), correction=0)
    ref_var, ref_mean = torch.var_mean(reference, dim=(2, 3), correction=0)
    torch.testing.assert_close(mean, ref_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(var, ref_var, atol=1e-3, rtol=1e-4)
    assert not bank.stats  # read once
    assert hook(None, (), x) is None  # nothing recorded: the output stays as it is
    # fidelity 1 keeps the unconditional row (the last) as it was
    patch.state.writing = type("U", (), {"unit": type("W", (), {"weight": 1.0})(), "adain": True})()
    patch.state.fidelity = 1.0
    hook(None, (), reference)
    patch.state.writing, patch.state.uncond = None, slice(1, 2)
    kept = hook(None, (), x)
    torch.testing.assert_close(kept[1:], x[1:])
    torch.testing.assert_close(kept[:1], y[:1])
