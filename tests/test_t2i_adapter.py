"""T2I-Adapters as ControlNet units (issue 27): TencentARC's v2 files and diffusers' ``T2IAdapter`` folders load
the source weights exactly, and the U-Net receives what diffusers' ``StableDiffusionAdapterPipeline`` gives it:
the adapter's features of the control image times the weight, on every row, as
``down_intrablock_additional_residuals``.

The original-layout writer below follows TencentARC's ``ldm/modules/encoders/adapter.py`` names (``conv_in``,
``body.<level * blocks + j>.block1/block2``, ``in_conv`` where the width changes).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from conftest import api_only, make_settings, own_models_root
from diffusers import T2IAdapter
from fastapi.testclient import TestClient
from PIL import Image

from webui.controlnet.models import load_controlnet

CHANNELS = [32, 64]  # the tiny SD 1 U-Net's levels


def _adapter(seed: int = 0, channels=CHANNELS) -> T2IAdapter:
    torch.manual_seed(seed)
    adapter = T2IAdapter(in_channels=1, channels=channels, num_res_blocks=2, downscale_factor=8).eval()
    with torch.no_grad():
        for p in adapter.parameters():
            p.mul_(3.0)  # larger than the default initialisation, so a tiny adapter visibly steers
    return adapter


def _to_tencentarc(adapter: T2IAdapter) -> dict[str, torch.Tensor]:
    w = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    out = {"conv_in.weight": w.pop("adapter.conv_in.weight"), "conv_in.bias": w.pop("adapter.conv_in.bias")}
    blocks = int(adapter.config.num_res_blocks)
    for level in range(len(adapter.config.channels)):
        for j in range(blocks):
            k = level * blocks + j
            for conv in ("block1", "block2"):
                for kind in ("weight", "bias"):
                    out[f"body.{k}.{conv}.{kind}"] = w.pop(f"adapter.body.{level}.resnets.{j}.{conv}.{kind}")
        for kind in ("weight", "bias"):
            if f"adapter.body.{level}.in_conv.{kind}" in w:
                out[f"body.{level * blocks}.in_conv.{kind}"] = w.pop(f"adapter.body.{level}.in_conv.{kind}")
    assert not w, sorted(w)[:3]
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_sd1_file):
    from webui.context import build_context
    from webui.server import create_app

    models = own_models_root(tmp_path_factory, tiny_sd1_file)
    cn = models / "ControlNet"
    cn.mkdir()
    adapter = _adapter()
    torch.save(_to_tencentarc(adapter), cn / "t2iadapter_canny_sd15v2.pth")
    _adapter(seed=1).save_pretrained(cn / "t2i-adapter-diffusers", safe_serialization=True)
    _adapter(seed=2, channels=[64, 64]).save_pretrained(cn / "t2iadapter_wide", safe_serialization=True)
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    return {"ctx": ctx, "client": TestClient(create_app(api_only(ctx))), "adapter": adapter, "models": models}


def test_both_layouts_load_the_source_weights(env):
    loaded = load_controlnet(env["models"] / "ControlNet" / "t2iadapter_canny_sd15v2.pth")
    assert isinstance(loaded, T2IAdapter) and list(loaded.config.channels) == CHANNELS
    source = env["adapter"].state_dict()
    assert all(torch.equal(loaded.state_dict()[k], source[k]) for k in source)
    folder = load_controlnet(env["models"] / "ControlNet" / "t2i-adapter-diffusers")
    assert isinstance(folder, T2IAdapter)


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _control() -> Image.Image:
    arr = np.zeros((64, 64), np.uint8)
    arr[16:48, 20:44] = 255
    return Image.fromarray(arr).convert("RGB")  # grey: what a one-channel adapter reads is the same either way


def _txt2img(env, units, **kw):
    body = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 3, "cfg_scale": 7,
            "sampler_name": "Euler", "save_images": False, **kw}
    if units:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return env["client"].post("/sdapi/v1/txt2img", json=body)


def _pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB"))


def test_the_unet_gets_the_adapter_features_times_the_weight(env):
    ctx = env["ctx"]
    unet = ctx.models.current.components.unet
    seen = []

    def record(module, args, kwargs):
        res = kwargs.get("down_intrablock_additional_residuals")
        seen.append(None if res is None else [r.clone() for r in res])

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    unit = {"module": "none", "model": "t2iadapter_canny_sd15v2", "image": _b64(_control()), "weight": 0.7,
            "resize_mode": "Just Resize"}
    try:
        with_unit = _txt2img(env, [unit])
    finally:
        handle.remove()
    assert with_unit.status_code == 200, with_unit.text
    hint = torch.from_numpy(np.asarray(_control().convert("L"), dtype=np.float32) / 255)[None, None]
    with torch.no_grad():
        expected = [f * 0.7 for f in env["adapter"](hint)]
    assert len(seen) == 3 and all(s is not None for s in seen)
    for got, want in zip(seen[0], expected, strict=True):
        assert got.shape[0] == 2  # conditional and unconditional rows (CFG 7)
        assert torch.allclose(got, want.expand_as(got), atol=1e-5)
    plain = _pixels(_txt2img(env, []))
    assert np.abs(_pixels(with_unit).astype(int) - plain).mean() > 1
    assert len(with_unit.json()["images"]) == 2  # the detected map follows
    assert np.array_equal(_pixels(_txt2img(env, [{**unit, "weight": 0}])), plain)
    assert np.array_equal(_pixels(_txt2img(env, [{**unit, "guidance_start": 0.9}])), plain)
    more = _pixels(_txt2img(env, [{**unit, "control_mode": "ControlNet is more important"}]))
    assert not np.array_equal(more, _pixels(with_unit))


def test_an_adapter_of_other_widths_is_refused_by_name(env):
    wide = _txt2img(env, [{"module": "none", "model": "t2iadapter_wide", "image": _b64(_control())}])
    assert wide.status_code == 422 and "args[0].model" in wide.text and "[64, 64]" in wide.text
    assert _txt2img(env, []).status_code == 200


def test_control_types_group_the_adapters_as_sd_webui_controlnet_does(env):
    """Its rule (``preprocessor_filters_aliases``): a model is under a type when its name holds the type's name or
    an alias (``t2iadapter``, ``t2ia``, ...)."""
    types = env["client"].get("/controlnet/control_types").json()["control_types"]
    t2i = types["T2I-Adapter"]["model_list"]
    assert t2i[0] == "None" and {m.split(" [")[0] for m in t2i[1:]} == {
        "t2iadapter_canny_sd15v2", "t2i-adapter-diffusers", "t2iadapter_wide"}
    assert any(m.startswith("t2iadapter_canny_sd15v2") for m in types["Canny"]["model_list"])
    assert not any(m.startswith("t2iadapter_wide") for m in types["Canny"]["model_list"])
    assert len(types["All"]["model_list"]) == 4
