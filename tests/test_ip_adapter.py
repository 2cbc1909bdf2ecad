"""IP-Adapter units (issue 27): h94's file layouts (plain ``image_proj.proj`` and the "plus" resampler, whose
original key names are restated here by hand), CLIP image encoders from the annotator folder, and the U-Net's output
with the unit equal to diffusers' own IP-Adapter attention (``_load_ip_adapter_weights`` on a copy of the same U-Net)
fed with image embeddings made by transformers' ``CLIPImageProcessor`` and ``CLIPVisionModelWithProjection``.
"""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from tests.conftest import api_only, make_settings, own_models_root
from tests.test_controlnet import b64

CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, patch_size=8,
            image_size=32, projection_dim=48, hidden_act="gelu", layer_norm_eps=1e-5)
PAYLOAD = dict(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64, seed=11,
               sampler_name="Euler", cfg_scale=7, save_images=False)


def _clip_vision(seed: int = 0) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP)).eval()


def _cross_attentions(unet) -> list:
    return [m for name, m in unet.named_modules() if name.endswith("attn2")]


def _ip_layers(unet, generator) -> dict[str, torch.Tensor]:
    """``ip_adapter.<n>.to_k_ip / to_v_ip``: n = 1, 3, 5, ... over the cross-attentions in processor order."""
    out = {}
    width = int(unet.config.cross_attention_dim)
    for k, attn in enumerate(_cross_attentions(unet)):
        inner = attn.to_k.out_features
        for name in ("to_k_ip", "to_v_ip"):
            out[f"ip_adapter.{2 * k + 1}.{name}.weight"] = torch.randn(inner, width, generator=generator) * 0.3
    return out


def plain_adapter(unet, image_dim: int, seed: int = 0, width: int | None = None) -> dict[str, torch.Tensor]:
    """h94's ``ip-adapter_sd15`` layout: 4 tokens from ``image_proj.proj`` (Linear) + ``image_proj.norm``."""
    g = torch.Generator().manual_seed(seed)
    cross = width or int(unet.config.cross_attention_dim)
    sd = {"image_proj.proj.weight": torch.randn(4 * cross, image_dim, generator=g) * 0.2,
          "image_proj.proj.bias": torch.randn(4 * cross, generator=g) * 0.1,
          "image_proj.norm.weight": 1 + 0.1 * torch.randn(cross, generator=g),
          "image_proj.norm.bias": 0.1 * torch.randn(cross, generator=g)}
    if width is None:
        sd.update(_ip_layers(unet, g))
    else:  # another family's width
        for k, attn in enumerate(_cross_attentions(unet)):
            for name in ("to_k_ip", "to_v_ip"):
                sd[f"ip_adapter.{2 * k + 1}.{name}.weight"] = torch.randn(attn.to_k.out_features, width, generator=g)
    return sd


def plus_adapter(unet, hidden_dim: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """h94's ``ip-adapter-plus`` Resampler layout (4 layers): ``latents``, ``proj_in``, ``proj_out``, ``norm_out``,
    ``layers.<i>.0.{norm1,norm2,to_q,to_kv,to_out}`` (attention; to_kv = k and v stacked) and
    ``layers.<i>.1.{0,1,3}`` (LayerNorm, Linear, Linear of the feed-forward)."""
    g = torch.Generator().manual_seed(seed)
    cross, inner, queries = int(unet.config.cross_attention_dim), 64, 4

    def w(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"image_proj.latents": w(1, queries, inner, scale=0.5), "image_proj.proj_in.weight": w(inner, hidden_dim),
          "image_proj.proj_in.bias": w(inner, scale=0.05), "image_proj.proj_out.weight": w(cross, inner),
          "image_proj.proj_out.bias": w(cross, scale=0.05), "image_proj.norm_out.weight": 1 + w(cross, scale=0.05),
          "image_proj.norm_out.bias": w(cross, scale=0.05)}
    for i in range(4):
        p = f"image_proj.layers.{i}."
        sd.update({p + "0.norm1.weight": 1 + w(inner, scale=0.05), p + "0.norm1.bias": w(inner, scale=0.05),
                   p + "0.norm2.weight": 1 + w(inner, scale=0.05), p + "0.norm2.bias": w(inner, scale=0.05),
                   p + "0.to_q.weight": w(64, inner), p + "0.to_kv.weight": w(128, inner),
                   p + "0.to_out.weight": w(inner, 64),
                   p + "1.0.weight": 1 + w(inner, scale=0.05), p + "1.0.bias": w(inner, scale=0.05),
                   p + "1.1.weight": w(4 * inner, inner), p + "1.3.weight": w(inner, 4 * inner)})
    sd.update(_ip_layers(unet, g))
    return sd


def full_face_adapter(unet, hidden_dim: int, seed: int = 2) -> dict[str, torch.Tensor]:
    """h94's ``ip-adapter-full-face_sd15`` layout: every hidden state of the image encoder through a feed-forward
    (``proj.0`` Linear, GELU, ``proj.2`` Linear) and ``proj.3`` LayerNorm; 257 tokens at the real size."""
    g = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)
    sd = {"image_proj.proj.0.weight": torch.randn(hidden_dim, hidden_dim, generator=g) * 0.2,
          "image_proj.proj.0.bias": torch.randn(hidden_dim, generator=g) * 0.05,
          "image_proj.proj.2.weight": torch.randn(cross, hidden_dim, generator=g) * 0.2,
          "image_proj.proj.2.bias": torch.randn(cross, generator=g) * 0.05,
          "image_proj.proj.3.weight": 1 + 0.05 * torch.randn(cross, generator=g),
          "image_proj.proj.3.bias": 0.05 * torch.randn(cross, generator=g)}
    sd.update(_ip_layers(unet, g))
    return sd


def _picture() -> Image.Image:
    rng = np.random.default_rng(3)
    arr = np.kron(rng.integers(0, 256, (6, 5, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 48 high, 40 wide
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_sd1_file):
    from webui.context import build_context
    from webui.server import create_app

    models = own_models_root(tmp_path_factory, tiny_sd1_file)
    (models / "ControlNet" / "annotators" / "clip_vision").mkdir(parents=True)
    encoder = _clip_vision()
    save_file(encoder.state_dict(), str(models / "ControlNet" / "annotators" / "clip_vision" / "clip_h.safetensors"))
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=True)
    unet = ctx.models.current.components.unet
    files = {"ip-adapter_tiny_sd15": plain_adapter(unet, CLIP["projection_dim"]),
             "ip-adapter-plus_tiny_sd15": plus_adapter(unet, CLIP["hidden_size"]),
             "ip-adapter-full-face_tiny_sd15": full_face_adapter(unet, CLIP["hidden_size"]),
             "ip-adapter_tiny_wide": plain_adapter(unet, CLIP["projection_dim"], width=96)}
    for name, sd in files.items():
        save_file(sd, str(models / "ControlNet" / f"{name}.safetensors"))
    # the names sd-webui-controlnet's generation_test looks up (get_model: a substring of a model_list entry)
    save_file(files["ip-adapter-plus_tiny_sd15"], str(models / "ControlNet" / "ip-adapter-plus-face_sd15.safetensors"))
    save_file(files["ip-adapter-full-face_tiny_sd15"],
              str(models / "ControlNet" / "ip-adapter-full-face_sd15.safetensors"))
    torch.save({"image_proj": {k[11:]: v for k, v in files["ip-adapter_tiny_sd15"].items()
                               if k.startswith("image_proj.")},
                "ip_adapter": {k[11:]: v for k, v in files["ip-adapter_tiny_sd15"].items()
                               if k.startswith("ip_adapter.")}}, models / "ControlNet" / "ip-adapter_tiny_bin.bin")
    client = TestClient(create_app(api_only(ctx)))
    assert client.get("/controlnet/model_list").status_code == 200  # refresh: the files were added after start
    return {"ctx": ctx, "client": client, "encoder": encoder, "files": files, "models": models}


def _unit(model: str, module: str = "ip-adapter_clip_h", **kw) -> dict:
    return {"enabled": True, "module": module, "model": model, "weight": 1.0, "image": b64(_picture()), **kw}


def _txt2img(world, units, **kw):
    return world["client"].post("/sdapi/v1/txt2img", json={**PAYLOAD, **kw,
                                                          "alwayson_scripts": {"controlnet": {"args": units}}})


def _pixels(response, index=0) -> np.ndarray:
    data = response.json()["images"][index]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.int16)


def _reference_embeds(world, plus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative image features, the way diffusers' IP-Adapter pipelines make them."""
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pixels = processor(images=_picture(), return_tensors="pt").pixel_values
    encoder = world["encoder"]
    with torch.no_grad():
        if plus:
            pos = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            neg = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        else:
            pos = encoder(pixels).image_embeds
            neg = torch.zeros_like(pos)
    return pos, neg


def _diffusers_reference(unet, source: dict, scale: float):
    """A copy of ``unet`` with the IP-Adapter file's weights loaded by diffusers itself, at ``scale``."""
    state = {"image_proj": {k[11:]: v for k, v in source.items() if k.startswith("image_proj.")},
             "ip_adapter": {k[11:]: v for k, v in source.items() if k.startswith("ip_adapter.")}}
    reference = copy.deepcopy(unet)
    reference._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    for processor in reference.attn_processors.values():
        if hasattr(processor, "scale"):
            processor.scale = [scale]
    return reference


def _first_unet_call(unet, run) -> tuple[object, dict]:
    """``run()``'s result and the U-Net's first call during it: ``args``, ``kwargs`` and ``output``."""
    seen: dict = {}

    def record(module, args, kwargs, output):
        if "args" not in seen:
            seen.update(args=args, kwargs=kwargs, output=output[0] if isinstance(output, tuple) else output.sample)

    handle = unet.register_forward_hook(record, with_kwargs=True)
    try:
        return run(), seen
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ["ip-adapter_tiny_sd15", "ip-adapter-plus_tiny_sd15", "ip-adapter-full-face_tiny_sd15",
                                  "ip-adapter_tiny_bin"])
def test_unet_output_equals_diffusers_ip_adapter_attention(world, name):
    ctx = world["ctx"]
    unet = ctx.models.current.components.unet
    response, seen = _first_unet_call(unet, lambda: _txt2img(world, [_unit(name, weight=0.8)]))
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2  # the image, then the unit's detected map (sd-webui-controlnet)
    assert not any(type(p).__name__ == "_IPAttention" for p in unet.attn_processors.values())  # put back

    plus = "plus" in name or "full-face" in name  # both read the penultimate hidden states
    source = world["files"]["ip-adapter_tiny_sd15" if name.endswith("bin") else name]
    reference = _diffusers_reference(unet, source, 0.8)
    x, t = seen["args"][0], seen["args"][1]
    context = seen["kwargs"]["encoder_hidden_states"]
    pos, neg = _reference_embeds(world, plus)
    rows = x.shape[0]  # the conditional row, then the unconditional one
    embeds = torch.cat([pos, neg])[:, None]
    assert rows == 2
    with torch.no_grad():
        theirs = reference(x, t, encoder_hidden_states=context,
                           added_cond_kwargs={"image_embeds": [embeds]}).sample
        plain = copy.deepcopy(unet)(x, t, encoder_hidden_states=context).sample
    ours = seen["output"]
    assert (ours - plain).abs().max() > 1e-3  # the adapter does act
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-3)


def test_changes_the_picture_weight_zero_is_no_unit_and_window(world):
    plain = _pixels(world["client"].post("/sdapi/v1/txt2img", json=PAYLOAD))
    with_unit = _txt2img(world, [_unit("ip-adapter_tiny_sd15")])
    assert np.abs(_pixels(with_unit) - plain).mean() > 1
    assert np.array_equal(_pixels(_txt2img(world, [_unit("ip-adapter_tiny_sd15", weight=0.0)])), plain)
    outside = _txt2img(world, [_unit("ip-adapter_tiny_sd15", guidance_start=0.9, guidance_end=1.0)])
    assert np.array_equal(_pixels(outside), plain)  # 3 steps: 0, 1/3, 2/3 all before 0.9
    detected = _pixels(with_unit, 1)
    assert detected.shape[:2] == (48, 40)  # the unit's image as given, after the generated one


def test_auto_picks_the_encoder_and_logs_it(world, caplog):
    with caplog.at_level("INFO", logger="webui.controlnet.ip_adapter"):
        response = _txt2img(world, [_unit("ip-adapter_tiny_sd15", module="ip-adapter-auto")])
    assert response.status_code == 200
    assert "ip-adapter-auto => ip-adapter_clip_h" in caplog.text
    legacy = _txt2img(world, [_unit("ip-adapter_tiny_sd15", module="ip-adapter_clip_sd15")])
    assert np.array_equal(_pixels(legacy), _pixels(response))


def test_refusals_name_the_field(world):
    client = world["client"]
    wide = _txt2img(world, [_unit("ip-adapter_tiny_wide")])
    assert wide.status_code == 422 and "args[0].model" in wide.text and "96-wide" in wide.text
    wrong_module = _txt2img(world, [_unit("ip-adapter_tiny_sd15", module="canny")])
    assert wrong_module.status_code == 422 and "args[0].module" in wrong_module.text
    missing = _txt2img(world, [_unit("ip-adapter_tiny_sd15", module="ip-adapter_clip_g")])
    assert missing.status_code == 422 and "clip_g" in missing.text and "clip_vision" in missing.text
    listed = client.get("/controlnet/control_types").json()["control_types"]["IP-Adapter"]
    assert listed["default_option"] == "ip-adapter-auto"
    assert {"ip-adapter_tiny_sd15", "ip-adapter-plus_tiny_sd15"} <= {m.split(" [")[0] for m in listed["model_list"]}
    assert client.post("/sdapi/v1/txt2img", json=PAYLOAD).status_code == 200  # still serving


@pytest.mark.parametrize("wanted", ["ip-adapter-plus-face_sd15", "ip-adapter-full-face_sd15"])
def test_sd_webui_controlnet_ip_adapter_face_payloads(world, wanted):
    """generation_test.py's test_ip_adapter_face / _fullface: its default unit (pixel perfect, processor_res 512,
    thresholds 64, "Crop and Resize") with ``ip-adapter_clip_sd15`` and the model found by name; its CPU check
    counts the images: the generated one plus the unit's map."""
    titles = world["client"].get("/controlnet/model_list").json()["model_list"]
    model = next(t for t in titles if wanted in t.lower())
    unit = {"control_mode": 0, "enabled": True, "guidance_end": 1, "guidance_start": 0, "pixel_perfect": True,
            "processor_res": 512, "resize_mode": 1, "threshold_a": 64, "threshold_b": 64, "weight": 1,
            "module": "ip-adapter_clip_sd15", "model": model, "image": b64(_picture())}
    response = world["client"].post("/sdapi/v1/txt2img", json={**PAYLOAD, "sampler_name": "Euler a",
                                                               "alwayson_scripts": {"ControlNet": {"args": [unit]}}})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2


@pytest.fixture(scope="module")
def xl_world(tmp_path_factory):
    """A tiny SDXL checkpoint with a tiny clip_g encoder and an ``ip-adapter_sdxl``-layout file for its U-Net."""
    from webui.context import build_context
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components
    from webui.server import create_app

    models = tmp_path_factory.mktemp("xl-ip")
    (models / "Stable-diffusion").mkdir()
    save_single_file(build_tiny_components("sdxl", seed=1), models / "Stable-diffusion" / "tiny-xl.safetensors")
    (models / "ControlNet" / "annotators" / "clip_vision").mkdir(parents=True)
    encoder = _clip_vision(seed=5)
    save_file(encoder.state_dict(), str(models / "ControlNet" / "annotators" / "clip_vision" / "clip_g.safetensors"))
    ctx = build_context(make_settings(tmp_path_factory.mktemp("xl-ip-data"), models), load_model=True)
    source = plain_adapter(ctx.models.current.components.unet, CLIP["projection_dim"], seed=6)
    save_file(source, str(models / "ControlNet" / "ip-adapter_tiny_sdxl.safetensors"))
    client = TestClient(create_app(api_only(ctx)))
    assert client.get("/controlnet/model_list").status_code == 200
    return {"ctx": ctx, "client": client, "encoder": encoder, "source": source, "models": models}


def test_sdxl_ip_adapter_equals_diffusers_and_is_refused_on_sd15(xl_world, world):
    """SDXL (``ip-adapter_sdxl`` layout, ``ip-adapter_clip_g``): the U-Net call's output equals diffusers' IP-Adapter
    attention on the same SDXL U-Net (with its text_embeds / time_ids); weight 0 is the picture without the unit;
    the same file on the SD 1.5 checkpoint is a 422 on the unit's model."""
    unet = xl_world["ctx"].models.current.components.unet
    response, seen = _first_unet_call(unet, lambda: _txt2img(
        xl_world, [_unit("ip-adapter_tiny_sdxl", module="ip-adapter_clip_g", weight=0.8)], steps=2))
    assert response.status_code == 200, response.text
    source = xl_world["source"]
    reference = _diffusers_reference(unet, source, 0.8)
    pos, neg = _reference_embeds(xl_world, plus=False)
    added = dict(seen["kwargs"]["added_cond_kwargs"])
    added = {k: v for k, v in added.items() if k in ("text_embeds", "time_ids")}
    with torch.no_grad():
        theirs = reference(seen["args"][0], seen["args"][1],
                           encoder_hidden_states=seen["kwargs"]["encoder_hidden_states"],
                           added_cond_kwargs={**added, "image_embeds": [torch.cat([pos, neg])[:, None]]}).sample
    torch.testing.assert_close(seen["output"], theirs, atol=2e-4, rtol=1e-3)
    plain = _pixels(xl_world["client"].post("/sdapi/v1/txt2img", json={**PAYLOAD, "steps": 2}))
    assert np.abs(_pixels(response) - plain).mean() > 0.5
    zero = _txt2img(xl_world, [_unit("ip-adapter_tiny_sdxl", module="ip-adapter_clip_g", weight=0.0)], steps=2)
    assert np.array_equal(_pixels(zero), plain)
    (world["models"] / "ControlNet" / "ip-adapter_tiny_sdxl.safetensors").write_bytes(
        (xl_world["models"] / "ControlNet" / "ip-adapter_tiny_sdxl.safetensors").read_bytes())
    world["client"].get("/controlnet/model_list")
    wrong = _txt2img(world, [_unit("ip-adapter_tiny_sdxl")])
    assert wrong.status_code == 422 and "args[0].model" in wrong.text and "does not fit" in wrong.text, wrong.text
