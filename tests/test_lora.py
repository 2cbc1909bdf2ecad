"""LoRA in kohya layout: applied for one job, removed bit for bit, hashes in infotext, missing reported."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import api_only, make_settings, own_models_root
from webui.context import build_context
from webui.models.original_layout import ldm_module_name, unet_module_table
from webui.networks.lora import apply_loras, read_lora
from webui.pipeline.request import GenerationRequest

BASE = dict(steps=3, width=64, height=64, seed=21, sampler_name="Euler", save_images=False)
UNET_TARGETS = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                "down_blocks.0.attentions.0.proj_in",  # 1x1 conv in SD 1.x
                "down_blocks.0.resnets.0.conv1",  # 3x3 conv (LoCon)
                "mid_block.resnets.0.conv2"]
TE_TARGETS = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1"]


def kohya_lora(components, *, ldm_names: bool = False, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LoRA for ``components`` in kohya's key layout (diffusers or LDM UNet names)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    unet_mods = dict(components.unet.named_modules())
    table = unet_module_table(components.unet)
    for name in UNET_TARGETS:
        w = unet_mods[name].weight
        key_name = ldm_module_name(name, table) if ldm_names else name
        key = "lora_unet_" + key_name.replace(".", "_")
        kh, kw = (w.shape[2], w.shape[3]) if w.ndim == 4 else (None, None)
        down_shape = (rank, w.shape[1], kh, kw) if w.ndim == 4 else (rank, w.shape[1])
        up_shape = (w.shape[0], rank, 1, 1) if w.ndim == 4 else (w.shape[0], rank)
        out[key + ".lora_down.weight"] = torch.randn(down_shape, generator=g) * 0.5
        out[key + ".lora_up.weight"] = torch.randn(up_shape, generator=g) * 0.5
        out[key + ".alpha"] = torch.tensor(rank / 2)
    te_mods = dict(components.text_encoders[0].named_modules())
    for name in TE_TARGETS:
        w = te_mods[name].weight
        key = "lora_te_text_model_" + name.replace(".", "_")
        out[key + ".lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.5
        out[key + ".lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.5
        out[key + ".alpha"] = torch.tensor(float(rank))
    return out


@pytest.fixture(scope="module")
def lora_ctx(tmp_path_factory, tiny_sd1_file):
    root = own_models_root(tmp_path_factory, tiny_sd1_file)
    (root / "Lora" / "styles").mkdir(parents=True)
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), root), load_model=True)
    comps = ctx.models.current.components
    save_file(kohya_lora(comps), str(root / "Lora" / "film.safetensors"))
    save_file(kohya_lora(comps, ldm_names=True), str(root / "Lora" / "styles" / "film_ldm.safetensors"))
    ctx.loras.refresh()
    return ctx


def _img(ctx, prompt):
    res = ctx.generate(GenerationRequest(prompt=prompt, **BASE))
    return res, res.images[0].tobytes()


def test_lora_changes_the_image_and_is_removed_exactly(lora_ctx):
    before = {k: v.clone() for k, v in lora_ctx.models.current.components.unet.state_dict().items()}
    _, plain = _img(lora_ctx, "a cat")
    res, with_lora = _img(lora_ctx, "a cat <lora:film:1>")
    _, again = _img(lora_ctx, "a cat")
    assert with_lora != plain and again == plain
    after = lora_ctx.models.current.components.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert re.search(r'Lora hashes: "film: [0-9a-f]{12}"', res.infotexts[0])
    assert res.infotexts[0].startswith("a cat <lora:film:1>\n")  # the prompt keeps the tag


def test_zero_weight_equals_no_lora(lora_ctx):
    assert _img(lora_ctx, "a cat <lora:film:0>")[1] == _img(lora_ctx, "a cat")[1]


def test_ldm_named_keys_apply_like_diffusers_names(lora_ctx):
    assert _img(lora_ctx, "a cat <lora:film_ldm:0.7>")[1] == _img(lora_ctx, "a cat <lora:film:0.7>")[1]


def test_text_encoder_and_unet_weights_are_separate(lora_ctx):
    both = _img(lora_ctx, "a cat <lora:film:1>")[1]
    te_only = _img(lora_ctx, "a cat <lora:film:1:0>")[1]
    plain = _img(lora_ctx, "a cat")[1]
    assert len({both, te_only, plain}) == 3


def test_missing_lora_is_reported_not_fatal(lora_ctx):
    res, img = _img(lora_ctx, "a cat <lora:nope:1>")
    assert img == _img(lora_ctx, "a cat")[1]
    assert "Networks not found: nope" in res.warnings and "nope" in res.info["comments"]


def test_delta_math_and_restore(lora_ctx):
    comps = lora_ctx.models.current.components
    lora = read_lora(lora_ctx.loras.paths()["film"])
    module = dict(comps.unet.named_modules())[UNET_TARGETS[0]]
    original = module.weight.detach().clone()
    mod = lora.modules["lora_unet_" + UNET_TARGETS[0].replace(".", "_")]
    applied = apply_loras(comps, [(lora, 1.0, 0.5)])
    expect = original + (mod.up @ mod.down) * (mod.alpha / 4) * 0.5
    assert torch.allclose(module.weight, expect, atol=1e-6)
    applied.restore()
    assert torch.equal(module.weight, original)


def test_api_lists_loras(lora_ctx):
    from fastapi.testclient import TestClient

    from webui.server import create_app

    client = TestClient(create_app(api_only(lora_ctx)))
    names = [x["name"] for x in client.get("/sdapi/v1/loras").json()]
    assert names == ["film", "film_ldm"]
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200


def test_lycoris_loha_and_lokr(lora_ctx, tmp_path):
    """LoHa and LoKr files (LyCORIS) apply with their formulas and are removed exactly."""
    comps = lora_ctx.models.current.components
    name = UNET_TARGETS[0]
    module = dict(comps.unet.named_modules())[name]
    out_f, in_f = module.weight.shape
    key = "lora_unet_" + name.replace(".", "_")
    g = torch.Generator().manual_seed(3)
    loha = {key + ".hada_w1_a": torch.randn(out_f, 2, generator=g),
            key + ".hada_w1_b": torch.randn(2, in_f, generator=g),
            key + ".hada_w2_a": torch.randn(out_f, 2, generator=g),
            key + ".hada_w2_b": torch.randn(2, in_f, generator=g),
            key + ".alpha": torch.tensor(1.0)}
    lokr = {key + ".lokr_w1": torch.randn(4, 4, generator=g),
            key + ".lokr_w2": torch.randn(out_f // 4, in_f // 4, generator=g)}
    save_file(loha, str(tmp_path / "loha.safetensors"))
    save_file(lokr, str(tmp_path / "lokr.safetensors"))
    original = module.weight.detach().clone()
    for path, expect in (
        (tmp_path / "loha.safetensors",
         (loha[key + ".hada_w1_a"] @ loha[key + ".hada_w1_b"]) * (loha[key + ".hada_w2_a"] @ loha[key + ".hada_w2_b"])
         * 0.5),
        (tmp_path / "lokr.safetensors", torch.kron(lokr[key + ".lokr_w1"], lokr[key + ".lokr_w2"])),
    ):
        applied = apply_loras(comps, [(read_lora(path), 1.0, 1.0)])
        assert torch.allclose(module.weight - original, expect, atol=1e-4)
        applied.restore()
        assert torch.equal(module.weight, original)


def test_ui_picker_inserts_lora_tag(lora_ctx):
    from gradio_client import Client

    from tests.live_server import LiveServer
    from webui.server import create_app

    with LiveServer(create_app(lora_ctx)) as srv:
        client = Client(srv.url, verbose=False)
        assert client.predict("a cat", "film", api_name="/txt2img_add_lora") == "a cat <lora:film:1>"
        assert client.predict("", "film_ldm", api_name="/txt2img_add_lora") == "<lora:film_ldm:1>"
