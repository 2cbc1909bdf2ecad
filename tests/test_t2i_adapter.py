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


# --- TencentARC's first-generation files: sd14v1 full adapters, the light (color) adapter, the style adapter -------
def _tencentarc_full_forward(w: dict[str, torch.Tensor], x: torch.Tensor, levels: int, blocks: int) -> list:
    """TencentARC's ``Adapter`` (sk=True, ksize=1, use_conv=False, as sd-webui-controlnet builds the sd14v1 /
    sd15v2 files), written out: pixel-unshuffle by 8, conv_in, then per level (average-pool halving from the
    second level on) ``blocks`` resnet blocks ``x' = in_conv(x) if present; x' + block2(relu(block1(x')))``."""
    F = torch.nn.functional
    x = F.conv2d(F.pixel_unshuffle(x, 8), w["conv_in.weight"], w["conv_in.bias"], padding=1)
    features = []
    for level in range(levels):
        for j in range(blocks):
            k = level * blocks + j
            if level and j == 0:
                x = F.avg_pool2d(x, 2)
            if f"body.{k}.in_conv.weight" in w:
                x = F.conv2d(x, w[f"body.{k}.in_conv.weight"], w[f"body.{k}.in_conv.bias"])
            h = F.relu(F.conv2d(x, w[f"body.{k}.block1.weight"], w[f"body.{k}.block1.bias"], padding=1))
            x = x + F.conv2d(h, w[f"body.{k}.block2.weight"], w[f"body.{k}.block2.bias"])
        features.append(x)
    return features


def _light_original(seed: int, cin: int = 192, outs=(32, 64, 64), blocks: int = 2) -> dict[str, torch.Tensor]:
    """A tiny random ``Adapter_light`` (t2iadapter_color_sd14v1's layout): per level ``in_conv`` (1x1, to a quarter
    of the width), ``body.<j>.block1/block2`` (3x3), ``out_conv`` (1x1)."""
    g = torch.Generator().manual_seed(seed)
    w, prev = {}, cin
    for k, out in enumerate(outs):
        mid = out // 4
        shapes = {"in_conv": (mid, prev, 1, 1), "out_conv": (out, mid, 1, 1),
                  **{f"body.{j}.block{b}": (mid, mid, 3, 3) for j in range(blocks) for b in (1, 2)}}
        for name, shape in shapes.items():
            w[f"body.{k}.{name}.weight"] = torch.randn(shape, generator=g) * 0.3
            w[f"body.{k}.{name}.bias"] = torch.randn(shape[0], generator=g) * 0.1
        prev = out
    return w


def _light_forward(w: dict[str, torch.Tensor], x: torch.Tensor, levels: int, blocks: int) -> list:
    """TencentARC's ``Adapter_light``, written out: pixel-unshuffle by 8; per level (average-pool halving from the
    second on) in_conv, ``blocks`` times ``x + block2(relu(block1(x)))``, out_conv."""
    F = torch.nn.functional
    x = F.pixel_unshuffle(x, 8)
    features = []
    for k in range(levels):
        if k:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, w[f"body.{k}.in_conv.weight"], w[f"body.{k}.in_conv.bias"])
        for j in range(blocks):
            h = F.relu(F.conv2d(x, w[f"body.{k}.body.{j}.block1.weight"], w[f"body.{k}.body.{j}.block1.bias"],
                                padding=1))
            x = x + F.conv2d(h, w[f"body.{k}.body.{j}.block2.weight"], w[f"body.{k}.body.{j}.block2.bias"], padding=1)
        x = F.conv2d(x, w[f"body.{k}.out_conv.weight"], w[f"body.{k}.out_conv.bias"])
        features.append(x)
    return features


def _light_to_diffusers_reference(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' ``scripts/convert_original_t2i_adapter.py`` mapping (``convert_light_adapter``), restated."""
    out = {}
    for key, value in w.items():
        parts = key.split(".")
        if parts[2] == "body":  # body.<k>.body.<j>.blockN.*
            out[f"adapter.body.{parts[1]}.resnets.{parts[3]}.{'.'.join(parts[4:])}"] = value
        else:
            out[f"adapter.{key}"] = value
    return out


def test_sd14v1_full_adapters_load_as_tencentarcs_adapter_computes(tmp_path):
    """t2iadapter_*_sd14v1 files are the ``Adapter`` layout the v2 ones have: a tiny random one (one-channel canny,
    cin 64) loads, and its features equal TencentARC's forward written out and diffusers' ``FullAdapter``."""
    weights = _to_tencentarc(_adapter(seed=5))
    torch.save(weights, tmp_path / "t2iadapter_canny_sd14v1.pth")
    loaded = load_controlnet(tmp_path / "t2iadapter_canny_sd14v1.pth")
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = loaded(x)
        want = _tencentarc_full_forward(weights, x, len(CHANNELS), 2)
    assert [tuple(f.shape) for f in got] == [(1, 32, 8, 8), (1, 64, 4, 4)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want, strict=True))


def test_the_light_color_adapter_loads_as_diffusers_light_adapter(tmp_path):
    """t2iadapter_color_sd14v1 (``Adapter_light``): its features through the loader equal diffusers'
    ``T2IAdapter(adapter_type="light_adapter")`` on the weights mapped by diffusers' conversion script, and
    TencentARC's forward written out; the four levels are as wide as SD 1.5's U-Net expects."""
    from diffusers import T2IAdapter as Diffusers

    weights = _light_original(7)
    save_path = tmp_path / "t2iadapter_color_sd14v1.pth"
    torch.save(weights, save_path)
    loaded = load_controlnet(save_path)
    reference = Diffusers(in_channels=3, channels=[32, 64], num_res_blocks=2, adapter_type="light_adapter")
    reference.load_state_dict(_light_to_diffusers_reference(weights), strict=True)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want, written = loaded(x), reference(x), _light_forward(weights, x, 3, 2)
    assert [tuple(f.shape) for f in got] == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4)]
    for a, b, c in zip(got, want, written, strict=True):
        assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-5)
    from webui.controlnet.t2i_adapter import adapter_mismatch

    class Unet:  # SD 1.5's widths, scaled down: the light adapter's last level repeats the last width
        config = type("C", (), {"block_out_channels": (32, 64, 64), "addition_embed_type": None})()

    assert adapter_mismatch(loaded, Unet()) is None
    Unet.config.block_out_channels = (32, 64)
    assert "[32, 64, 64]" in adapter_mismatch(loaded, Unet())


@pytest.mark.parametrize("extra, words", [
    ({"body.0.skep.weight": torch.zeros(32, 32, 1, 1)}, "skip convolutions"),
    ({"body.2.down_opt.op.weight": torch.zeros(32, 32, 3, 3)}, "strided convolutions"),
])
def test_adapter_variants_diffusers_cannot_build_are_refused_by_name(tmp_path, extra, words):
    from webui.errors import ModelError

    path = tmp_path / "t2iadapter_variant_sd14v1.pth"
    torch.save({**_to_tencentarc(_adapter()), **extra}, path)
    with pytest.raises(ModelError) as err:
        load_controlnet(path)
    assert words in str(err.value) and "t2iadapter_variant_sd14v1.pth" in str(err.value)


def test_the_style_adapter_is_refused_with_its_reason(env):
    """t2iadapter_style_sd14v1 (``StyleAdapter``: ``style_embedding``, transformer layers, ``proj``): a 4xx that
    says why (CLIP ViT-L/14 image tokens appended to the prompt)."""
    path = env["models"] / "ControlNet" / "t2iadapter_style_sd14v1.pth"
    torch.save({"style_embedding": torch.zeros(1, 8, 16), "proj": torch.zeros(16, 8),
                "ln_pre.weight": torch.ones(16), "ln_pre.bias": torch.zeros(16)}, path)
    try:
        env["client"].get("/controlnet/model_list")  # the registry sees the new file
        response = _txt2img(env, [{"module": "none", "model": "t2iadapter_style_sd14v1", "image": _b64(_control())}])
    finally:
        path.unlink()
        env["client"].get("/controlnet/model_list")  # forget it again
    assert response.status_code == 422 and "style adapter" in response.text and "ViT-L/14" in response.text


def test_sd_webui_controlnets_t2i_adapter_payload(env):
    """Its generation_test.py ``test_t2i_adapter``: the default unit with module "canny" and the model its
    ``get_model("t2iadapter_canny_sd15v2")`` finds, through txt2img: the picture, then the canny map."""
    from tests.test_controlnet_a1111_api import TXT2IMG, UNIT, girl

    unit = {**UNIT, "module": "canny", "model": "t2iadapter_canny_sd15v2", "image": _b64(girl())}
    r = env["client"].post("/sdapi/v1/txt2img", json={**TXT2IMG, "alwayson_scripts": {
        "ControlNet": {"args": [unit]}}})
    assert r.status_code == 200, r.text
    images = [Image.open(io.BytesIO(base64.b64decode(i))) for i in r.json()["images"]]
    assert len(images) == 2 and images[0].size == (64, 64)
    edges = np.asarray(images[1].convert("L"))
    assert set(np.unique(edges)) <= {0, 255} and 0 < (edges == 255).mean() < 0.5
    assert "t2iadapter_canny_sd15v2" in r.json()["info"]
