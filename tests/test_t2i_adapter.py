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


# --- TencentARC's first-generation files: sd14v1 full adapters, the light (color) adapter ------------------------
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


# --- the style adapter (t2iadapter_style_sd14v1): CLIP ViT-L/14 image tokens -> extra prompt tokens --------------
STYLE_WIDTH, STYLE_TOKENS, STYLE_LAYERS = 64, 8, 3  # TencentARC's StyleAdapter has 1024, 8 and 3 (8 heads)
TINY_VITL = dict(hidden_size=STYLE_WIDTH, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                 patch_size=8, image_size=32, projection_dim=48, hidden_act="gelu", layer_norm_eps=1e-5)


def _style_state(seed: int = 0, context_dim: int = 32) -> dict[str, torch.Tensor]:
    """A tiny random StyleAdapter in TencentARC's key layout (``ldm/modules/encoders/adapter.py``)."""
    g = torch.Generator().manual_seed(seed)
    w, d = {}, STYLE_WIDTH

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    w["style_embedding"] = rnd(1, STYLE_TOKENS, d, scale=1.0)
    w["proj"] = rnd(d, context_dim, scale=0.5)
    for norm in ("ln_pre", "ln_post"):
        w[f"{norm}.weight"], w[f"{norm}.bias"] = 1 + rnd(d), rnd(d)
    for i in range(STYLE_LAYERS):
        p = f"transformer_layes.{i}."
        w[p + "attn.in_proj_weight"], w[p + "attn.in_proj_bias"] = rnd(3 * d, d), rnd(3 * d)
        w[p + "attn.out_proj.weight"], w[p + "attn.out_proj.bias"] = rnd(d, d), rnd(d)
        w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = rnd(4 * d, d), rnd(4 * d)
        w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = rnd(d, 4 * d), rnd(d)
        for norm in ("ln_1", "ln_2"):
            w[p + f"{norm}.weight"], w[p + f"{norm}.bias"] = 1 + rnd(d), rnd(d)
    return w


def _style_forward(w: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 8) -> torch.Tensor:
    """TencentARC's ``StyleAdapter.forward``, written out: the style embedding appended to the image tokens,
    ln_pre, pre-norm blocks (multi-head attention from the packed in_proj, QuickGELU MLP), ln_post of the last
    ``num_token`` rows, times ``proj``."""
    F = torch.nn.functional

    def norm(t, name):
        return F.layer_norm(t, t.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], 1e-5)

    n, d = x.shape[0], x.shape[-1]
    x = norm(torch.cat([x, w["style_embedding"].expand(n, -1, -1)], dim=1), "ln_pre")
    for i in range(STYLE_LAYERS):
        p = f"transformer_layes.{i}."
        h = norm(x, p + "ln_1") @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]
        q, k, v = (t.reshape(n, -1, heads, d // heads).transpose(1, 2) for t in h.split(d, dim=-1))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1) @ v
        x = x + att.transpose(1, 2).reshape(n, -1, d) @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        h = norm(x, p + "ln_2") @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
    return norm(x[:, -STYLE_TOKENS:], "ln_post") @ w["proj"]


def _style_picture() -> tuple[Image.Image, np.ndarray]:
    """A 64x64 picture of 2x2 blocks and its 32x32 area-resized version (each block's colour)."""
    small = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(small.repeat(2, 0).repeat(2, 1)), small


@pytest.fixture()
def style_files(env):
    """The style adapter in models/ControlNet and, as a whole CLIP model's file (text tower too, as OpenAI's
    clip-vit-large-patch14 is), the tiny ViT-L-layout encoder under sd-webui-controlnet's name clip_vitl.pth;
    both removed afterwards (the other tests' model lists stay as they were)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(9)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VITL)).eval()
    weights = _style_state()
    style = env["models"] / "ControlNet" / "t2iadapter_style_sd14v1.pth"
    clip_dir = env["models"] / "ControlNet" / "annotators" / "clip_vision"
    clip_dir.mkdir(parents=True, exist_ok=True)
    clip = clip_dir / "clip_vitl.pth"
    torch.save(weights, style)
    env["client"].get("/controlnet/model_list")  # the registry sees the new file
    whole = {**encoder.state_dict(), "text_model.embeddings.token_embedding.weight": torch.zeros(10, 8),
             "text_projection.weight": torch.zeros(8, 8), "logit_scale": torch.tensor(2.0)}
    try:
        yield {"encoder": encoder, "weights": weights, "clip": clip, "whole": whole}
    finally:
        style.unlink()
        clip.unlink(missing_ok=True)
        env["client"].get("/controlnet/model_list")  # forget it again


def test_the_style_adapter_appends_its_tokens_to_the_unets_context(env, style_files):
    """The U-Net's context is the prompt's, then (inside the guidance window) the adapter's tokens of the picture's
    CLIP last_hidden_state times the weight on the conditional row and zeros on the unconditional one
    (sd-webui-controlnet's hook: ``context = cat([context, control * weight * cond_mark])``); the tokens equal
    TencentARC's forward written out on the reference encoder's states. Weight 0 gives the picture without the
    unit; a missing encoder is a 422 naming clip_vitl and its folder."""
    picture, small = _style_picture()
    unit = {"module": "t2ia_style_clipvision", "model": "t2iadapter_style_sd14v1", "image": _b64(picture),
            "weight": 0.6, "guidance_end": 0.5}
    missing = _txt2img(env, [unit])
    assert missing.status_code == 422 and "args[0].module" in missing.text
    assert "clip_vitl.pth" in missing.text and str(style_files["clip"].parent) in missing.text

    torch.save(style_files["whole"], style_files["clip"])
    unet = env["ctx"].models.current.components.unet
    seen = []
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        with_unit = _txt2img(env, [unit])
        plain_seen = len(seen)
        plain = _txt2img(env, [])
    finally:
        handle.remove()
    assert with_unit.status_code == 200, with_unit.text
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    pixels = ((torch.from_numpy(small).float() / 255 - mean) / std).permute(2, 0, 1)[None]
    with torch.no_grad():
        hidden = style_files["encoder"](pixels).last_hidden_state
        tokens = _style_forward(style_files["weights"], hidden)
    text = seen[plain_seen]  # the same prompts without the unit
    assert [c.shape[1] for c in seen[:plain_seen]] == [text.shape[1] + STYLE_TOKENS] * 2 + [text.shape[1]]
    for got in seen[:2]:  # steps 0 and 1 of 3 are inside guidance_end 0.5, step 2 is not
        assert got.shape[0] == 2 and torch.equal(got[:, :text.shape[1]], text)
        assert torch.allclose(got[0, text.shape[1]:], 0.6 * tokens[0], atol=1e-4)
        assert torch.equal(got[1, text.shape[1]:], torch.zeros_like(tokens[0]))
    assert not np.array_equal(_pixels(with_unit), _pixels(plain))
    assert np.array_equal(_pixels(_txt2img(env, [{**unit, "weight": 0}])), _pixels(plain))
    wrong = _txt2img(env, [{**unit, "module": "none"}])
    assert wrong.status_code == 422 and "t2ia_style_clipvision" in wrong.text


def test_the_style_module_is_listed_under_t2i_adapter(env, style_files):
    """sd-webui-controlnet's module ``clip_vision`` (shown as ``t2ia_style_clipvision``) in the T2I-Adapter control
    type, whose model list holds the style adapter (its name has ``t2iadapter``)."""
    modules = env["client"].get("/controlnet/module_list").json()["module_list"]
    shown = env["client"].get("/controlnet/module_list", params={"alias_names": True}).json()["module_list"]
    assert "clip_vision" in modules and "t2ia_style_clipvision" in shown
    t2i = env["client"].get("/controlnet/control_types").json()["control_types"]["T2I-Adapter"]
    assert "t2ia_style_clipvision" in t2i["module_list"]
    assert any(m.startswith("t2iadapter_style_sd14v1") for m in t2i["model_list"])


def test_sd_webui_controlnets_t2i_adapter_payload(env):
    """Its generation_test.py ``test_t2i_adapter``: the default unit with module "canny" and the model its
    ``get_model("t2iadapter_canny_sd15v2")`` finds, through txt2img: the picture, then the canny map."""
    from tests.test_controlnet_a1111_api import a1111_canny_unit_images

    _, info = a1111_canny_unit_images(env["client"], "t2iadapter_canny_sd15v2")
    assert "t2iadapter_canny_sd15v2" in info
