"""Configs of SD 3.x / FLUX.1 transformers and T5 encoders read from the weights, and Black Forest Labs'
FLUX.1 key layout converted to diffusers' names.

As with :mod:`webui.models.infer_config`, nothing here reads a reference config: widths, depths, head sizes
and the conditioning widths come from tensor shapes, so the real 12B FLUX.1 file and a tiny test file take
the same path. diffusers' own BFL converter fixes the width at 3072 (the real model's); ours reads it.

Values a file cannot tell follow the published models: SD 3.x without q/k norms has one attention head per
block (heads = depth, as Stability's MMDiT is built); FLUX.1's rotary axes split the head size 1/8, 7/16,
7/16 (16, 56, 56 for its 128-wide heads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from transformers import T5Config

from webui.errors import ModelError
from webui.models.infer_config import STATE_DICT, _indices, _need


def sd3_transformer_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``SD3Transformer2DModel`` config from Stability's MMDiT keys (prefix removed)."""
    proj = _need(sd, "x_embedder.proj.weight", "SD 3 transformer")
    inner, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    depth = len(_indices(sd, r"joint_blocks\.(\d+)\."))
    ln_q = sd.get("joint_blocks.0.x_block.attn.ln_q.weight")
    head_dim = int(ln_q.shape[0]) if ln_q is not None else inner // max(depth, 1)
    if depth == 0 or inner % head_dim:
        raise ModelError(STATE_DICT, f"the SD 3 transformer has {depth} blocks of width {inner}; it is damaged.")
    context = _need(sd, "context_embedder.weight", "SD 3 transformer")
    final = _need(sd, "final_layer.linear.weight", "SD 3 transformer")
    positions = int(_need(sd, "pos_embed", "SD 3 transformer").shape[1])
    return {
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": depth,
        "attention_head_dim": head_dim,
        "num_attention_heads": inner // head_dim,
        "joint_attention_dim": int(context.shape[1]),
        "caption_projection_dim": int(context.shape[0]),
        "pooled_projection_dim": int(_need(sd, "y_embedder.mlp.0.weight", "SD 3 transformer").shape[1]),
        "out_channels": int(final.shape[0]) // (patch * patch),
        "pos_embed_max_size": math.isqrt(positions),
        "dual_attention_layers": tuple(_indices(sd, r"joint_blocks\.(\d+)\.x_block\.attn2\.")),
        "qk_norm": "rms_norm" if ln_q is not None else None,
    }


def flux_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX.1's rotary axes for a head size: (16, 56, 56) for 128, the same proportions (even sizes) else."""
    first = max(2, (head_dim // 8) // 2 * 2)
    rest = head_dim - first
    second = rest // 2 // 2 * 2
    return first, second, rest - second


def flux_transformer_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``FluxTransformer2DModel`` config from BFL keys (prefix removed)."""
    img_in = _need(sd, "img_in.weight", "FLUX.1 transformer")
    hidden = int(img_in.shape[0])
    head_dim = int(_need(sd, "double_blocks.0.img_attn.norm.query_norm.scale", "FLUX.1 transformer").shape[0])
    mlp = int(_need(sd, "double_blocks.0.img_mlp.0.weight", "FLUX.1 transformer").shape[0])
    if hidden % head_dim or mlp != 4 * hidden:
        raise ModelError(STATE_DICT, f"the FLUX.1 transformer has width {hidden}, head size {head_dim} and MLP "
                                     f"width {mlp}; only FLUX.1's proportions (MLP 4x the width) are supported.")
    return {
        "patch_size": 1,
        "in_channels": int(img_in.shape[1]),
        "out_channels": int(_need(sd, "final_layer.linear.weight", "FLUX.1 transformer").shape[0]),
        "num_layers": len(_indices(sd, r"double_blocks\.(\d+)\.")),
        "num_single_layers": len(_indices(sd, r"single_blocks\.(\d+)\.")),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": int(_need(sd, "txt_in.weight", "FLUX.1 transformer").shape[1]),
        "pooled_projection_dim": int(_need(sd, "vector_in.in_layer.weight", "FLUX.1 transformer").shape[1]),
        "guidance_embeds": "guidance_in.in_layer.weight" in sd,
        "axes_dims_rope": flux_axes(head_dim),
    }


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation gives (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift)."""
    shift, scale = t.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


_FLUX_TOP = {
    "img_in": "x_embedder", "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_FLUX_DOUBLE = {
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
}
_FLUX_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}


def flux_to_diffusers(sd: Mapping[str, torch.Tensor], final_layer: bool = True) -> dict[str, torch.Tensor]:
    """BFL FLUX.1 weights (prefix removed) under ``FluxTransformer2DModel``'s names; the fused q/k/v and the
    single blocks' ``linear1`` are split at the width read from ``img_in``. ``final_layer`` False: the weights
    have no output layer (XLabs' FLUX.1 ControlNets, which reuse these names)."""
    hidden = int(_need(sd, "img_in.weight", "FLUX.1 transformer").shape[0])
    out: dict[str, torch.Tensor] = {}
    for old, new in _FLUX_TOP.items():
        for kind in ("weight", "bias"):
            if f"{old}.{kind}" in sd:
                out[f"{new}.{kind}"] = sd[f"{old}.{kind}"]
    for kind in ("weight", "bias") if final_layer else ():
        out[f"norm_out.linear.{kind}"] = _swap_halves(_need(sd, f"final_layer.adaLN_modulation.1.{kind}",
                                                            "FLUX.1 transformer"))
    for i in _indices(sd, r"double_blocks\.(\d+)\."):
        src, dst = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for old, new in _FLUX_DOUBLE.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{new}.{kind}"] = _need(sd, f"{src}{old}.{kind}", "FLUX.1 transformer")
        for old, new in _FLUX_DOUBLE_NORMS.items():
            out[dst + new] = _need(sd, src + old, "FLUX.1 transformer")
        for stream, names in (("img_attn", ("to_q", "to_k", "to_v")),
                              ("txt_attn", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for kind in ("weight", "bias"):
                parts = _need(sd, f"{src}{stream}.qkv.{kind}", "FLUX.1 transformer").split(hidden, dim=0)
                for name, part in zip(names, parts, strict=True):
                    out[f"{dst}attn.{name}.{kind}"] = part
    for i in _indices(sd, r"single_blocks\.(\d+)\."):
        src, dst = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            linear1 = _need(sd, f"{src}linear1.{kind}", "FLUX.1 transformer")
            mlp = linear1.shape[0] - 3 * hidden
            q, k, v, m = linear1.split([hidden, hidden, hidden, mlp], dim=0)
            out[f"{dst}attn.to_q.{kind}"], out[f"{dst}attn.to_k.{kind}"] = q, k
            out[f"{dst}attn.to_v.{kind}"], out[f"{dst}proj_mlp.{kind}"] = v, m
            out[f"{dst}proj_out.{kind}"] = _need(sd, f"{src}linear2.{kind}", "FLUX.1 transformer")
            out[f"{dst}norm.linear.{kind}"] = _need(sd, f"{src}modulation.lin.{kind}", "FLUX.1 transformer")
        out[f"{dst}attn.norm_q.weight"] = _need(sd, f"{src}norm.query_norm.scale", "FLUX.1 transformer")
        out[f"{dst}attn.norm_k.weight"] = _need(sd, f"{src}norm.key_norm.scale", "FLUX.1 transformer")
    return out


def t5_config(sd: Mapping[str, torch.Tensor]) -> T5Config:
    """``T5Config`` of a T5 v1.1 encoder (FLUX.1's and SD 3.x's T5-XXL) from its weights (HF layout)."""
    shared = sd.get("shared.weight")
    if shared is None:
        shared = _need(sd, "encoder.embed_tokens.weight", "T5 text encoder")
    query = _need(sd, "encoder.block.0.layer.0.SelfAttention.q.weight", "T5 text encoder")
    bias = _need(sd, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "T5 text encoder")
    heads = int(bias.shape[1])
    return T5Config(
        vocab_size=int(shared.shape[0]), d_model=int(shared.shape[1]), d_kv=int(query.shape[0]) // heads,
        d_ff=int(_need(sd, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", "T5 text encoder").shape[0]),
        num_layers=len(_indices(sd, r"encoder\.block\.(\d+)\.")), num_heads=heads,
        relative_attention_num_buckets=int(bias.shape[0]), relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, layer_norm_epsilon=1e-6,
        tie_word_embeddings=False)
