"""LoRA in kohya layout: applied for one job, removed bit for bit, hashes in infotext, missing reported.

The reference for what a kohya file does to the weights is diffusers' own loader (``load_lora_weights`` with its
kohya / SGM key conversion, then ``fuse_lora``, which needs ``peft``) on the same file and the same base weights; the
key names are written out by hand as kohya's sd-scripts names them (``lora_unet_`` + the diffusers module path for
SD 1.x, + the original LDM path for SDXL; ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` + the text model's path).
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import api_only, make_settings, own_models_root
from webui.context import build_context
from webui.models.tiny import build_tiny_components
from webui.networks.lora import apply_loras, read_lora
from webui.pipeline.request import GenerationRequest

BASE = dict(steps=3, width=64, height=64, seed=21, sampler_name="Euler", save_images=False)
#: diffusers module path -> its LDM path in the tiny SD 1.x U-Net (2 levels, 1 layer each: input block 1 is level 0's
#: resnet + attention, 2 its downsampler, 3 level 1's resnet; the middle block is resnet, attention, resnet), by hand
UNET_TARGETS = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q":
                "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k":
                "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
                "down_blocks.0.attentions.0.proj_in": "input_blocks.1.1.proj_in",  # 1x1 conv in SD 1.x
                "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",  # 3x3 conv (LoCon)
                "mid_block.resnets.0.conv2": "middle_block.0.out_layers.3"}
TE_TARGETS = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1"]


def kohya_lora(components, *, ldm_names: bool = False, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LoRA for ``components`` in kohya's key layout (diffusers or LDM UNet names)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    unet_mods = dict(components.unet.named_modules())
    for name, ldm in UNET_TARGETS.items():
        w = unet_mods[name].weight
        key = "lora_unet_" + (ldm if ldm_names else name).replace(".", "_")
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
    module = dict(comps.unet.named_modules())[next(iter(UNET_TARGETS))]
    original = module.weight.detach().clone()
    mod = lora.modules["lora_unet_" + next(iter(UNET_TARGETS)).replace(".", "_")]
    applied = apply_loras(comps, [(lora, 1.0, 0.5)])
    expect = original + (mod.up @ mod.down) * (mod.alpha / 4) * 0.5
    assert torch.allclose(module.weight, expect, atol=1e-6)
    applied.restore()
    assert torch.equal(module.weight, original)


#: kohya key -> the module it changes (diffusers path; "te<i>:" + the path in text encoder i), written by hand.
#: SD 1.x: kohya's sd-scripts names U-Net layers by their diffusers paths.
KOHYA_SD1 = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k":
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0":
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj":
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2":
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
    "lora_unet_down_blocks_0_attentions_0_proj_in": "down_blocks.0.attentions.0.proj_in",
    "lora_unet_up_blocks_1_attentions_1_proj_out": "up_blocks.1.attentions.1.proj_out",
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v":
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
    "lora_unet_down_blocks_0_resnets_0_conv1": "down_blocks.0.resnets.0.conv1",
    "lora_unet_up_blocks_0_resnets_1_time_emb_proj": "up_blocks.0.resnets.1.time_emb_proj",
    "lora_unet_up_blocks_1_resnets_0_conv_shortcut": "up_blocks.1.resnets.0.conv_shortcut",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "te0:encoder.layers.0.self_attn.q_proj",
    "lora_te_text_model_encoder_layers_1_mlp_fc1": "te0:encoder.layers.1.mlp.fc1",
    "lora_te_text_model_encoder_layers_2_self_attn_out_proj": "te0:encoder.layers.2.self_attn.out_proj",
}
#: SDXL: sd-scripts trains on the original (SGM) U-Net, so the keys carry LDM paths. The tiny SDXL U-Net: input block
#: 1 = level 0's resnet, 2 its downsampler, 3 = level 1's resnet (.0) + attention with 2 transformer layers (.1);
#: middle block = resnet, attention, resnet; output blocks 0-1 = up level 0 (resnet + attention each), 2-3 up level 1.
KOHYA_SDXL = {
    "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q":
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k":
        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
    "lora_unet_input_blocks_3_1_proj_in": "down_blocks.1.attentions.0.proj_in",  # linear in SDXL
    "lora_unet_input_blocks_3_1_transformer_blocks_0_ff_net_2":
        "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
    "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_v":
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_v",
    "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_out_0":
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "lora_unet_output_blocks_1_1_proj_out": "up_blocks.0.attentions.1.proj_out",
    "lora_unet_input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "lora_unet_output_blocks_2_0_out_layers_3": "up_blocks.1.resnets.0.conv2",
    "lora_unet_input_blocks_3_0_emb_layers_1": "down_blocks.1.resnets.0.time_emb_proj",
    "lora_unet_input_blocks_3_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "lora_unet_middle_block_2_in_layers_2": "mid_block.resnets.1.conv1",
    "lora_te1_text_model_encoder_layers_0_self_attn_k_proj": "te0:encoder.layers.0.self_attn.k_proj",
    "lora_te1_text_model_encoder_layers_2_self_attn_out_proj": "te0:encoder.layers.2.self_attn.out_proj",
    "lora_te2_text_model_encoder_layers_1_self_attn_v_proj": "te1:text_model.encoder.layers.1.self_attn.v_proj",
    "lora_te2_text_model_encoder_layers_0_self_attn_out_proj": "te1:text_model.encoder.layers.0.self_attn.out_proj",
    "lora_te2_text_model_encoder_layers_2_mlp_fc2": "te1:text_model.encoder.layers.2.mlp.fc2",
}


def _parts(components) -> dict[str, torch.nn.Module]:
    return {"unet": components.unet, **{f"te{i}": e for i, e in enumerate(components.text_encoders)}}


def _target(components, path: str) -> tuple[str, str]:
    part, _, name = path.rpartition(":")
    return part or "unet", name


def _random_kohya(components, table: dict[str, str], rank: int = 4) -> dict[str, torch.Tensor]:
    """lora_down (rank x in [x kh x kw]), lora_up (out x rank [x 1 x 1]) and alpha for each key of ``table``."""
    g = torch.Generator().manual_seed(5)
    parts, out = _parts(components), {}
    for key, path in table.items():
        part, name = _target(components, path)
        w = dict(parts[part].named_modules())[name].weight
        conv = w.ndim == 4
        out[key + ".lora_down.weight"] = torch.randn((rank, w.shape[1], *w.shape[2:]) if conv else (rank, w.shape[1]),
                                                     generator=g) * 0.3
        out[key + ".lora_up.weight"] = torch.randn((w.shape[0], rank, 1, 1) if conv else (w.shape[0], rank),
                                                   generator=g) * 0.3
        out[key + ".alpha"] = torch.tensor(rank / 2)
    return out


@pytest.mark.parametrize("family, table, te, unet", [("sd1", KOHYA_SD1, 0.4, 0.7), ("sdxl", KOHYA_SDXL, 1.0, 0.6)])
def test_kohya_file_patches_the_weights_diffusers_load_lora_weights_patches(tmp_path, family, table, te, unet):
    """Our loader and diffusers' (``load_lora_weights``, then ``fuse_lora`` with the text-encoder and U-Net
    multipliers) change the same weights, and exactly the ones the hand-written table names, to the same values."""
    import peft  # noqa: F401 - diffusers' LoRA loading needs it (requirements-test.txt installs it)

    path = tmp_path / "style.safetensors"
    ours = build_tiny_components(family, seed=1)
    save_file(_random_kohya(ours, table), str(path))
    applied = apply_loras(ours, [(read_lora(path), te, unet)])
    assert not applied.unmatched
    theirs = build_tiny_components(family, seed=1)
    pipe = theirs.diffusers_pipeline()
    pipe.load_lora_weights(str(path))
    encoders = ["text_encoder", "text_encoder_2"][:len(theirs.text_encoders)]
    pipe.fuse_lora(components=["unet"], lora_scale=unet)
    pipe.fuse_lora(components=encoders, lora_scale=te)
    pipe.unload_lora_weights()  # the fused weights stay; the modules are plain again
    base = _parts(build_tiny_components(family, seed=1))
    expected_changed = {f"{part}:{name}.weight" for part, name in (_target(ours, p) for p in table.values())}
    changed = set()
    for part, module in _parts(ours).items():
        mine, ref, before = module.state_dict(), _parts(theirs)[part].state_dict(), base[part].state_dict()
        assert mine.keys() == ref.keys()
        for key, value in mine.items():
            torch.testing.assert_close(value, ref[key], rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{part}:{k}: {m}")
            if not torch.equal(value, before[key]):
                changed.add(f"{part}:{key}")
    assert changed == expected_changed
    applied.restore()
    assert all(torch.equal(v, base[part].state_dict()[key])
               for part, module in _parts(ours).items() for key, v in module.state_dict().items())


def test_layers_a_model_lacks_are_counted_and_the_others_applied(tmp_path, caplog):
    """A file made for another model (an SDXL LoRA on SD 1.x, a newer block layout): the layers that match are
    applied, the others are counted per file and named in one warning, as A1111 logs networks it cannot match."""
    ours = build_tiny_components("sd1", seed=1)
    tensors = _random_kohya(ours, KOHYA_SD1)
    foreign = _random_kohya(build_tiny_components("sdxl", seed=1), {
        "lora_te2_text_model_encoder_layers_0_mlp_fc1": "te1:text_model.encoder.layers.0.mlp.fc1",
        "lora_te2_text_model_encoder_layers_0_mlp_fc2": "te1:text_model.encoder.layers.0.mlp.fc2"})
    path = tmp_path / "mixed.safetensors"
    save_file({**tensors, **foreign}, str(path))
    clean = tmp_path / "clean.safetensors"
    save_file(tensors, str(clean))
    expected = build_tiny_components("sd1", seed=1)
    apply_loras(expected, [(read_lora(clean), 1.0, 1.0)])
    with caplog.at_level("WARNING", logger="webui.networks.lora"):
        applied = apply_loras(ours, [(read_lora(path), 1.0, 1.0)])
    assert applied.unmatched == {"mixed": 2}
    assert "LoRA mixed: 2 of " in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(ours.unet.state_dict().values(), expected.unet.state_dict().values()))


def test_api_lists_loras(lora_ctx):
    from fastapi.testclient import TestClient

    from webui.server import create_app

    client = TestClient(create_app(api_only(lora_ctx)))
    names = [x["name"] for x in client.get("/sdapi/v1/loras").json()]
    assert names == ["film", "film_ldm"]
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200


def _first_target(lora_ctx):
    """The context's components, the first U-Net layer of UNET_TARGETS and its kohya key."""
    comps = lora_ctx.models.current.components
    name = next(iter(UNET_TARGETS))
    return comps, dict(comps.unet.named_modules())[name], "lora_unet_" + name.replace(".", "_")


@pytest.mark.parametrize(("loha_alpha", "lokr_alpha", "loha_scale"), [(1.0, None, 0.5), (None, 3.0, 1.0)])
def test_lycoris_loha_and_lokr(lora_ctx, tmp_path, loha_alpha, lokr_alpha, loha_scale):
    """LoHa and LoKr files (LyCORIS) apply with their formulas and are removed exactly. The scale is A1111's
    networks.NetworkModule.calc_scale: alpha / dim when both are known, else 1.0 -- a LoHa without an alpha tensor
    has no alpha, and a LoKr with both factors stored whole has no dim (rank), so its alpha is not used."""
    comps, module, key = _first_target(lora_ctx)
    out_f, in_f = module.weight.shape
    g = torch.Generator().manual_seed(3)
    loha = {key + ".hada_w1_a": torch.randn(out_f, 2, generator=g),
            key + ".hada_w1_b": torch.randn(2, in_f, generator=g),
            key + ".hada_w2_a": torch.randn(out_f, 2, generator=g),
            key + ".hada_w2_b": torch.randn(2, in_f, generator=g)}
    lokr = {key + ".lokr_w1": torch.randn(4, 4, generator=g),
            key + ".lokr_w2": torch.randn(out_f // 4, in_f // 4, generator=g)}
    for tensors, alpha in ((loha, loha_alpha), (lokr, lokr_alpha)):
        if alpha is not None:
            tensors[key + ".alpha"] = torch.tensor(alpha)
    save_file(loha, str(tmp_path / "loha.safetensors"))
    save_file(lokr, str(tmp_path / "lokr.safetensors"))
    original = module.weight.detach().clone()
    for path, expect in (
        (tmp_path / "loha.safetensors",
         (loha[key + ".hada_w1_a"] @ loha[key + ".hada_w1_b"]) * (loha[key + ".hada_w2_a"] @ loha[key + ".hada_w2_b"])
         * loha_scale),
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


def test_lokr_with_both_factors_decomposed_and_a_half_precision_alpha(lora_ctx, tmp_path):
    """A LoKr whose Kronecker factors are both stored as low-rank pairs (LyCORIS ``decompose_both``), with the alpha
    saved in float16 as trainers do: A1111's network_lokr.py -- w1 = w1_a @ w1_b, w2 = w2_a @ w2_b, the dim taken
    from w2_b, scale = alpha.item() / dim (a Python float: 5 / 3, not float16's 1.667)."""
    comps, module, key = _first_target(lora_ctx)
    out_f, in_f = module.weight.shape
    g = torch.Generator().manual_seed(8)
    lokr = {key + ".lokr_w1_a": torch.randn(4, 2, generator=g), key + ".lokr_w1_b": torch.randn(2, 4, generator=g),
            key + ".lokr_w2_a": torch.randn(out_f // 4, 3, generator=g),
            key + ".lokr_w2_b": torch.randn(3, in_f // 4, generator=g),
            key + ".alpha": torch.tensor(5.0, dtype=torch.float16)}
    save_file(lokr, str(tmp_path / "lokr2.safetensors"))
    w1 = lokr[key + ".lokr_w1_a"] @ lokr[key + ".lokr_w1_b"]
    w2 = lokr[key + ".lokr_w2_a"] @ lokr[key + ".lokr_w2_b"]
    original = module.weight.detach().clone()
    applied = apply_loras(comps, [(read_lora(tmp_path / "lokr2.safetensors"), 1.0, 0.8)])
    torch.testing.assert_close(module.weight - original, torch.kron(w1, w2) * (5.0 / 3) * 0.8, rtol=1e-5, atol=1e-5)
    applied.restore()
    assert torch.equal(module.weight, original)


def test_lokr_on_a_convolution_keeps_the_kernel_in_its_second_factor(lora_ctx, tmp_path):
    """A1111's network_lokr.make_kron for a 4-D second factor: w1 gets two unit axes, so the kernel stays w2's:
    delta[a*C + c, b*D + d, h, w] = w1[a, b] * w2[c, d, h, w]; here w1 is stored as w1_a @ w1_b, so dim is w1_b's
    rank and the scale alpha / dim (calc_scale)."""
    comps = lora_ctx.models.current.components
    name, module = next((n, m) for n, m in comps.unet.named_modules()
                        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.weight.shape[0] % 4 == 0
                        and m.weight.shape[1] % 4 == 0)
    out_c, in_c, kh, kw = module.weight.shape
    g = torch.Generator().manual_seed(8)
    key = "lora_unet_" + name.replace(".", "_")
    tensors = {key + ".lokr_w1_a": torch.randn(4, 2, generator=g), key + ".lokr_w1_b": torch.randn(2, 4, generator=g),
               key + ".lokr_w2": torch.randn(out_c // 4, in_c // 4, kh, kw, generator=g),
               key + ".alpha": torch.tensor(1.0)}
    save_file(tensors, str(tmp_path / "lokr_conv.safetensors"))
    w1 = tensors[key + ".lokr_w1_a"] @ tensors[key + ".lokr_w1_b"]
    expected = torch.einsum("ab,cdhw->acbdhw", w1, tensors[key + ".lokr_w2"]).reshape(out_c, in_c, kh, kw) * 0.5
    original = module.weight.detach().clone()
    applied = apply_loras(comps, [(read_lora(tmp_path / "lokr_conv.safetensors"), 1.0, 0.8)])
    try:
        assert not applied.unmatched
        torch.testing.assert_close(module.weight.detach().float() - original.float(), expected * 0.8,
                                   rtol=1e-3, atol=1e-3)
    finally:
        applied.restore()
    assert torch.equal(module.weight.detach(), original)


def test_registry_lists_a1111s_suffixes_and_keeps_eight_files_in_ram(tmp_path, monkeypatch):
    """A1111 lists .safetensors, .pt and .ckpt LoRA files (networks.py); the registry reads a file once and keeps
    the last CACHE_SIZE (8) read in RAM, the least recently used one leaving first."""
    from webui.networks import lora as lora_module
    from webui.networks.lora import CACHE_SIZE, LoraRegistry

    pair = {"lora_unet_x.lora_down.weight": torch.ones(1, 2), "lora_unet_x.lora_up.weight": torch.ones(2, 1)}
    save_file(pair, str(tmp_path / "a.safetensors"))
    torch.save(pair, tmp_path / "b.pt")
    torch.save(pair, tmp_path / "c.ckpt")
    (tmp_path / "d.txt").write_text("not a LoRA")
    (tmp_path / "more").mkdir()
    for i in range(CACHE_SIZE - 2):
        save_file(pair, str(tmp_path / "more" / f"m{i}.safetensors"))
    reg = LoraRegistry([tmp_path])
    assert CACHE_SIZE == 8
    assert {"a", "b", "c"} <= set(reg.names()) and "d" not in reg.names()
    reads: list[str] = []
    real = lora_module.read_lora
    monkeypatch.setattr(lora_module, "read_lora", lambda path: reads.append(path.stem) or real(path))
    order = ["a", "b", "c", *(f"m{i}" for i in range(CACHE_SIZE - 2))]  # 9 files
    for name in order:
        assert reg.get(name) is not None
    assert reg.get("b") is not None and reads.count("b") == 1  # still cached: the oldest of the last 8
    assert reg.get("a") is not None and reads.count("a") == 2  # evicted by the ninth file, read again


def test_lokr_with_only_the_first_factor_decomposed(lora_ctx, tmp_path):
    """A1111 network_lokr.py: the dim comes from w1_b when w2 is stored whole: scale = alpha / w1_b.shape[0]."""
    comps, module, key = _first_target(lora_ctx)
    out_f, in_f = module.weight.shape
    g = torch.Generator().manual_seed(9)
    lokr = {key + ".lokr_w1_a": torch.randn(4, 2, generator=g), key + ".lokr_w1_b": torch.randn(2, 4, generator=g),
            key + ".lokr_w2": torch.randn(out_f // 4, in_f // 4, generator=g), key + ".alpha": torch.tensor(3.0)}
    save_file(lokr, str(tmp_path / "lokr1.safetensors"))
    original = module.weight.detach().clone()
    applied = apply_loras(comps, [(read_lora(tmp_path / "lokr1.safetensors"), 1.0, 1.0)])
    w1 = lokr[key + ".lokr_w1_a"] @ lokr[key + ".lokr_w1_b"]
    torch.testing.assert_close(module.weight - original, torch.kron(w1, lokr[key + ".lokr_w2"]) * 1.5,
                               rtol=1e-5, atol=1e-5)
    applied.restore()
