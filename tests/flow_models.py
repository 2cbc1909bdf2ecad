"""Tiny random SD 3.x and FLUX.1 models saved as people download them.

The modules are diffusers' / transformers' own classes at toy sizes; the writers put their weights into the
original layouts with tables written here from Stability's MMDiT and Black Forest Labs' FLUX.1 reference
code (``sd3_impls.py`` / ``flux/model.py`` parameter names): an SD 3 single file (``model.diffusion_model.*``,
``first_stage_model.*``, ``text_encoders.{clip_l,clip_g,t5xxl}.transformer.*``), a FLUX.1 transformer-only
file (``double_blocks.*``, ``single_blocks.*``), ``ae.safetensors``, ``clip_l.safetensors`` and
``t5xxl.safetensors`` in ComfyUI's split-file layout, and diffusers folders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from webui.models.components import SDComponents, shipped_t5_tokenizer, shipped_tokenizers
from webui.models.infer_config import CLIP_BOS, CLIP_EOS, CLIP_VOCAB, VAE_SCALING, VAE_SHIFT
from webui.models.original_layout import _canonical_text_keys, vae_to_original
from webui.models.spec import ModelSpec

CLIP_L, CLIP_G, T5_WIDTH = 32, 48, 64


def _clip(width: int, act: str, projection: bool, seed: int):
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                            num_attention_heads=1, max_position_embeddings=77, projection_dim=width, hidden_act=act,
                            layer_norm_eps=1e-5, bos_token_id=CLIP_BOS, eos_token_id=CLIP_EOS,
                            pad_token_id=CLIP_EOS)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=32128, d_model=T5_WIDTH, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                      tie_word_embeddings=False)
    return T5EncoderModel(config).eval()


def _vae(family: str, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 32, 32, 32],
                         layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=1024,
                         scaling_factor=VAE_SCALING[family], shift_factor=VAE_SHIFT[family],
                         use_quant_conv=False, use_post_quant_conv=False).eval()


def tiny_sd3(*, t5: bool = True, sd35: bool = False, seed: int = 0, layers: int = 2) -> SDComponents:
    """SD 3 medium's shape at toy size (``sd35``: SD 3.5's q/k RMS norms and a dual-attention block; only then
    may ``layers`` differ from the head count, as the files without q/k norms have one head per block)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=T5_WIDTH, caption_projection_dim=32, pooled_projection_dim=CLIP_L + CLIP_G,
        out_channels=16, pos_embed_max_size=16, dual_attention_layers=(0,) if sd35 else (),
        qk_norm="rms_norm" if sd35 else None).eval()
    return SDComponents(spec=ModelSpec("sd3", "flow"), unet=transformer, vae=_vae("sd3", seed + 1),
                        text_encoders=[_clip(CLIP_L, "quick_gelu", True, seed + 2),
                                       _clip(CLIP_G, "gelu", True, seed + 3)],
                        tokenizers=shipped_tokenizers("sd3"), alphas_cumprod=torch.zeros(1000),
                        vae_scaling_factor=VAE_SCALING["sd3"], vae_shift_factor=VAE_SHIFT["sd3"],
                        t5=_t5(seed + 4) if t5 else None, t5_tokenizer=shipped_t5_tokenizer(256))


def tiny_flux(*, dev: bool = True, seed: int = 0, double: int = 1, single: int = 2) -> SDComponents:
    """FLUX.1 dev (guidance embedder) or schnell at toy size: width 64, heads of 32."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                                         attention_head_dim=32, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                         pooled_projection_dim=CLIP_L, guidance_embeds=dev,
                                         axes_dims_rope=(4, 14, 14)).eval()
    return SDComponents(spec=ModelSpec("flux", "flow", distilled_guidance=dev), unet=transformer,
                        vae=_vae("flux", seed + 1), text_encoders=[_clip(CLIP_L, "quick_gelu", False, seed + 2)],
                        tokenizers=shipped_tokenizers("flux"), alphas_cumprod=torch.zeros(1000),
                        vae_scaling_factor=VAE_SCALING["flux"], vae_shift_factor=VAE_SHIFT["flux"],
                        t5=_t5(seed + 4), t5_tokenizer=shipped_t5_tokenizer(512 if dev else 256))


# --- original layouts ---------------------------------------------------------------------------------------

def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def sd3_to_stability(transformer: SD3Transformer2DModel) -> dict[str, torch.Tensor]:
    """diffusers' SD3 transformer weights under the names of Stability's MMDiT (``sd3_impls.py``)."""
    w = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    out = {"pos_embed": w.pop("pos_embed.pos_embed"),
           "x_embedder.proj.weight": w.pop("pos_embed.proj.weight"),
           "x_embedder.proj.bias": w.pop("pos_embed.proj.bias"),
           "context_embedder.weight": w.pop("context_embedder.weight"),
           "context_embedder.bias": w.pop("context_embedder.bias")}
    for kind in ("weight", "bias"):
        out[f"t_embedder.mlp.0.{kind}"] = w.pop(f"time_text_embed.timestep_embedder.linear_1.{kind}")
        out[f"t_embedder.mlp.2.{kind}"] = w.pop(f"time_text_embed.timestep_embedder.linear_2.{kind}")
        out[f"y_embedder.mlp.0.{kind}"] = w.pop(f"time_text_embed.text_embedder.linear_1.{kind}")
        out[f"y_embedder.mlp.2.{kind}"] = w.pop(f"time_text_embed.text_embedder.linear_2.{kind}")
        out[f"final_layer.linear.{kind}"] = w.pop(f"proj_out.{kind}")
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap(w.pop(f"norm_out.linear.{kind}"))
    n = transformer.config.num_layers
    for i in range(n):
        d, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == n - 1
        for kind in ("weight", "bias"):
            out[f"{x}attn.qkv.{kind}"] = torch.cat([w.pop(f"{d}attn.to_{q}.{kind}") for q in "qkv"])
            out[f"{c}attn.qkv.{kind}"] = torch.cat([w.pop(f"{d}attn.add_{q}_proj.{kind}") for q in "qkv"])
            out[f"{x}attn.proj.{kind}"] = w.pop(f"{d}attn.to_out.0.{kind}")
            out[f"{x}adaLN_modulation.1.{kind}"] = w.pop(f"{d}norm1.linear.{kind}")
            ctx_mod = w.pop(f"{d}norm1_context.linear.{kind}")
            out[f"{c}adaLN_modulation.1.{kind}"] = _swap(ctx_mod) if last else ctx_mod
            out[f"{x}mlp.fc1.{kind}"] = w.pop(f"{d}ff.net.0.proj.{kind}")
            out[f"{x}mlp.fc2.{kind}"] = w.pop(f"{d}ff.net.2.{kind}")
            if not last:
                out[f"{c}attn.proj.{kind}"] = w.pop(f"{d}attn.to_add_out.{kind}")
                out[f"{c}mlp.fc1.{kind}"] = w.pop(f"{d}ff_context.net.0.proj.{kind}")
                out[f"{c}mlp.fc2.{kind}"] = w.pop(f"{d}ff_context.net.2.{kind}")
            if f"{d}attn2.to_q.{kind}" in w:
                out[f"{x}attn2.qkv.{kind}"] = torch.cat([w.pop(f"{d}attn2.to_{q}.{kind}") for q in "qkv"])
                out[f"{x}attn2.proj.{kind}"] = w.pop(f"{d}attn2.to_out.0.{kind}")
        for src, dst in (("attn.norm_q", f"{x}attn.ln_q"), ("attn.norm_k", f"{x}attn.ln_k"),
                         ("attn.norm_added_q", f"{c}attn.ln_q"), ("attn.norm_added_k", f"{c}attn.ln_k"),
                         ("attn2.norm_q", f"{x}attn2.ln_q"), ("attn2.norm_k", f"{x}attn2.ln_k")):
            if f"{d}{src}.weight" in w:
                out[f"{dst}.weight"] = w.pop(f"{d}{src}.weight")
    assert not w, f"unmapped SD3 weights: {sorted(w)[:5]}"
    return out


def flux_to_bfl(transformer: FluxTransformer2DModel, strict: bool = True) -> dict[str, torch.Tensor]:
    """diffusers' FLUX.1 transformer weights under Black Forest Labs' names (``flux/model.py``); ``strict``
    False: weights without BFL names (a ControlNet's own) are kept under their diffusers names."""
    w = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    top = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
           "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
           "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
           "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
           "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
           "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
           "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer"}
    double = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj",
              "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
              "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
    for kind in ("weight", "bias"):
        for src, dst in top.items():
            if f"{src}.{kind}" in w:
                out[f"{dst}.{kind}"] = w.pop(f"{src}.{kind}")
        if strict or f"norm_out.linear.{kind}" in w:
            out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap(w.pop(f"norm_out.linear.{kind}"))
        for i in range(transformer.config.num_layers):
            d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
            for src, dst in double.items():
                out[f"{b}{dst}.{kind}"] = w.pop(f"{d}{src}.{kind}")
            out[f"{b}img_attn.qkv.{kind}"] = torch.cat([w.pop(f"{d}attn.to_{q}.{kind}") for q in "qkv"])
            out[f"{b}txt_attn.qkv.{kind}"] = torch.cat([w.pop(f"{d}attn.add_{q}_proj.{kind}") for q in "qkv"])
        for i in range(transformer.config.num_single_layers):
            d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
            out[f"{b}linear1.{kind}"] = torch.cat([w.pop(f"{d}attn.to_q.{kind}"), w.pop(f"{d}attn.to_k.{kind}"),
                                                   w.pop(f"{d}attn.to_v.{kind}"), w.pop(f"{d}proj_mlp.{kind}")])
            out[f"{b}linear2.{kind}"] = w.pop(f"{d}proj_out.{kind}")
            out[f"{b}modulation.lin.{kind}"] = w.pop(f"{d}norm.linear.{kind}")
    for i in range(transformer.config.num_layers):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for src, dst in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                         ("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")):
            out[f"{b}{dst}.scale"] = w.pop(f"{d}attn.{src}.weight")
    for i in range(transformer.config.num_single_layers):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        out[f"{b}norm.query_norm.scale"] = w.pop(f"{d}attn.norm_q.weight")
        out[f"{b}norm.key_norm.scale"] = w.pop(f"{d}attn.norm_k.weight")
    assert not (strict and w), f"unmapped FLUX weights: {sorted(w)[:5]}"
    return {**out, **w}


def _plain(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()
            if not k.endswith("position_ids")}


def _t5_weights(t5: T5EncoderModel) -> dict[str, torch.Tensor]:
    w = _plain(t5)
    w.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight, stored once in the downloaded files
    return w


def save_sd3_file(c: SDComponents, path: Path, *, with_encoders: bool = True) -> Path:
    """SD 3 single file in Stability's layout (with CLIP-L/G and, when ``c`` has one, T5 inside)."""
    sd = {"model.diffusion_model." + k: v for k, v in sd3_to_stability(c.unet).items()}
    sd.update({"first_stage_model." + k: v for k, v in vae_to_original(c.vae).items()})
    if with_encoders:
        sd.update({"text_encoders.clip_l.transformer." + k: v
                   for k, v in _canonical_text_keys(c.text_encoders[0]).items()})
        sd.update({"text_encoders.clip_g.transformer." + k: v
                   for k, v in _canonical_text_keys(c.text_encoders[1]).items()})
        if c.t5 is not None:
            sd.update({"text_encoders.t5xxl.transformer." + k: v for k, v in _t5_weights(c.t5).items()})
    save_file(sd, str(path))
    return path


def save_flux_files(c: SDComponents, folder: Path, *, prefix: str = "") -> dict[str, Path]:
    """``flux1-*.safetensors`` (transformer only, BFL layout), ``ae.safetensors``, ``clip_l.safetensors`` and
    ``t5xxl.safetensors`` in ``folder``: ComfyUI's / Forge's split files."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "flux1-dev.safetensors" if c.spec.distilled_guidance else "flux1-schnell.safetensors"
    paths = {"transformer": folder / name, "vae": folder / "ae.safetensors", "clip_l": folder / "clip_l.safetensors",
             "t5": folder / "t5xxl.safetensors"}
    save_file({prefix + k: v for k, v in flux_to_bfl(c.unet).items()}, str(paths["transformer"]))
    save_file({k: v.contiguous() for k, v in vae_to_original(c.vae).items()}, str(paths["vae"]))
    save_file({k: v.contiguous() for k, v in _canonical_text_keys(c.text_encoders[0]).items()}, str(paths["clip_l"]))
    save_file(_t5_weights(c.t5), str(paths["t5"]))
    return paths


def lay_out_flux(paths: dict[str, Path], models: Path) -> None:
    """Copy :func:`save_flux_files`' files into a models folder as a Forge user lays them out: the transformer
    in ``Stable-diffusion``, ``ae`` in ``VAE``, ``clip_l`` and ``t5xxl`` in ``text_encoder``."""
    import shutil

    for key, folder in (("transformer", "Stable-diffusion"), ("vae", "VAE"), ("clip_l", "text_encoder"),
                        ("t5", "text_encoder")):
        (models / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[key], models / folder / paths[key].name)


def save_flow_folder(c: SDComponents, folder: Path) -> Path:
    """A diffusers folder (``save_pretrained`` of the reference pipeline)."""
    c.diffusers_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


# --- ControlNets for SD 3.x and FLUX.1 -------------------------------------------------------------------------
def _unzero(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """ControlNets start with zeroed output layers; random values make a tiny one change the image."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0, 0.3)
    return module.eval()


def tiny_sd3_controlnet(*, stability: bool = False, seed: int = 10):
    """InstantX's SD 3 ControlNet shape (joint blocks, own position embedding, zero pooled vectors) or
    (``stability``) Stability's SD 3.5 one (single-stream blocks, the checkpoint's position embedding), at the
    size of :func:`tiny_sd3`."""
    from diffusers import SD3ControlNetModel

    torch.manual_seed(seed)
    common = dict(patch_size=2, in_channels=16, attention_head_dim=16, num_attention_heads=2,
                  pooled_projection_dim=CLIP_L + CLIP_G, out_channels=16)
    if stability:
        cn = SD3ControlNetModel(num_layers=6, joint_attention_dim=None, caption_projection_dim=32,
                                pos_embed_max_size=None, pos_embed_type=None, use_pos_embed=False,
                                force_zeros_for_pooled_projection=False, **common)
    else:
        cn = SD3ControlNetModel(sample_size=32, num_layers=1, joint_attention_dim=T5_WIDTH, caption_projection_dim=32,
                                pos_embed_max_size=16, **common)
    return _unzero(cn, seed)


def sd3_controlnet_to_stability(cn) -> dict[str, torch.Tensor]:
    """Stability's SD 3.5 ControlNet layout (``sd3.5_large_controlnet_*.safetensors``), from the names in
    diffusers' ``scripts/convert_sd3_controlnet_to_diffusers.py`` read backwards."""
    w = {k: v.detach().clone() for k, v in cn.state_dict().items()}
    out = {k: w.pop(k) for k in list(w) if k.startswith(("controlnet_blocks.", "pos_embed_input.", "time_text_embed."))}
    for i in range(cn.config.num_layers):
        p = f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{p}attn.qkv.{kind}"] = torch.cat([w.pop(f"{p}attn.to_{q}.{kind}") for q in "qkv"])
            for src, dst in (("attn.to_out.0", "attn.proj"), ("ff.net.0.proj", "mlp.fc1"), ("ff.net.2", "mlp.fc2"),
                             ("norm1.linear", "adaLN_modulation.1")):
                out[f"{p}{dst}.{kind}"] = w.pop(f"{p}{src}.{kind}")
    assert not w, f"unmapped SD 3.5 ControlNet weights: {sorted(w)[:5]}"
    return out


def tiny_flux_controlnet(*, dev: bool = True, union: bool = False, xlabs: bool = False, seed: int = 20):
    """InstantX's FLUX.1 ControlNet shape (latent input, double and single blocks), a Union one (7 control
    types), or XLabs' (convolutions on the pixels, double blocks only), at the size of :func:`tiny_flux`."""
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    cn = FluxControlNetModel(patch_size=2 if xlabs else 1, in_channels=64, num_layers=2 if xlabs else 1,
                             num_single_layers=0 if xlabs else 2, attention_head_dim=32, num_attention_heads=2,
                             joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_L, guidance_embeds=dev,
                             axes_dims_rope=(4, 14, 14), num_mode=7 if union else None,
                             conditioning_embedding_channels=16 if xlabs else None)
    return _unzero(cn, seed)


def flux_controlnet_to_xlabs(cn) -> dict[str, torch.Tensor]:
    """XLabs' FLUX.1 ControlNet layout (x-flux's ``ControlNetFlux``): BFL names for the shared parts,
    ``input_hint_block.{0,2,...,14}`` convolutions, ``pos_embed_input``, ``controlnet_blocks``."""
    w = flux_to_bfl(cn, strict=False)
    out = {k: w.pop(k) for k in list(w) if k.startswith(("img_in.", "txt_in.", "time_in.", "vector_in.",
                                                          "guidance_in.", "double_blocks.", "controlnet_blocks."))}
    convs = ["conv_in", *[f"blocks.{j}" for j in range(6)], "conv_out"]
    for kind in ("weight", "bias"):
        out[f"pos_embed_input.{kind}"] = w.pop(f"controlnet_x_embedder.{kind}")
        for index, name in enumerate(convs):
            out[f"input_hint_block.{2 * index}.{kind}"] = w.pop(f"input_hint_block.{name}.{kind}")
    assert not w, f"unmapped XLabs weights: {sorted(w)[:5]}"
    return out
