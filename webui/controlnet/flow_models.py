"""ControlNets for SD 3.x and FLUX.1 (transformer ControlNets): diffusers' ``SD3ControlNetModel`` and
``FluxControlNetModel`` from the files people download.

Layouts, told apart by their keys (never by the file name):

- diffusers folders (``config.json`` + weights) and diffusers-named single files (InstantX's SD 3 and FLUX.1
  ControlNets, Shakker-Labs' FLUX.1 Union, as ComfyUI users keep them in ``models/ControlNet``);
- Stability's SD 3.5 ControlNets (``sd3.5_large_controlnet_canny.safetensors``: single-stream blocks with fused
  ``attn.qkv``, ``mlp.fc1/fc2``, ``adaLN_modulation.1``; no position embedding of their own, they use the
  checkpoint's);
- XLabs' FLUX.1 ControlNets (``flux-canny-controlnet-v3.safetensors``: Black Forest Labs' names for the double
  blocks, ``input_hint_block.*`` convolutions on the control image, ``pos_embed_input``).

Configs come from tensor shapes as for checkpoints. What the weights cannot tell (the head size of blocks
without q/k norms) is the checkpoint's (``head_dim``), which is what such a ControlNet was trained against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxControlNetModel, SD3ControlNetModel

from webui.errors import ModelError
from webui.models.flow_config import flux_axes, flux_to_diffusers
from webui.models.infer_config import _indices
from webui.models.safeload import folder_class

FlowControlNet = SD3ControlNetModel | FluxControlNetModel


def flow_layout(sd: Mapping[str, torch.Tensor]) -> str | None:
    """"sd3" / "sd3_stability" / "flux" / "flux_xlabs" for a transformer ControlNet's keys, else None."""
    if "controlnet_blocks.0.weight" not in sd:
        return None
    if "controlnet_x_embedder.weight" in sd:
        return "flux"
    if "double_blocks.0.img_attn.qkv.weight" in sd and "pos_embed_input.weight" in sd:
        return "flux_xlabs"
    if "pos_embed_input.proj.weight" in sd:
        return "sd3_stability" if "transformer_blocks.0.attn.qkv.weight" in sd else "sd3"
    return None


def _blocks(sd: Mapping[str, torch.Tensor], name: str) -> list[int]:
    return _indices(sd, rf"{name}\.(\d+)\.")


def sd3_config(sd: Mapping[str, torch.Tensor], head_dim: int = 64, in_channels: int = 16) -> dict[str, Any]:
    """``SD3ControlNetModel`` config from diffusers-named shapes (``head_dim`` / ``in_channels``: the
    checkpoint's, used where the weights do not tell)."""
    proj_in = sd["pos_embed_input.proj.weight"]
    inner, patch = int(proj_in.shape[0]), int(proj_in.shape[2])
    norm_q = sd.get("transformer_blocks.0.attn.norm_q.weight")
    head = int(norm_q.shape[0]) if norm_q is not None else head_dim
    if inner % head:
        raise ValueError(f"width {inner} is not a multiple of the head size {head}")
    own_pos = sd.get("pos_embed.proj.weight")
    if own_pos is not None:
        in_channels = int(own_pos.shape[1])
    context = sd.get("context_embedder.weight")
    config: dict[str, Any] = {
        "sample_size": 128, "patch_size": patch, "in_channels": in_channels, "out_channels": in_channels,
        "num_layers": len(_blocks(sd, "transformer_blocks")), "attention_head_dim": head,
        "num_attention_heads": inner // head,
        "joint_attention_dim": int(context.shape[1]) if context is not None else None,
        "caption_projection_dim": int(context.shape[0]) if context is not None else inner,
        "pooled_projection_dim": int(sd["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
        "extra_conditioning_channels": int(proj_in.shape[1]) - in_channels,
        "dual_attention_layers": tuple(_indices(sd, r"transformer_blocks\.(\d+)\.attn2\.")),
        "qk_norm": "rms_norm" if norm_q is not None else None,
        # InstantX's (joint blocks) were trained with zero pooled vectors; Stability's SD 3.5 ones were not
        "force_zeros_for_pooled_projection": context is not None,
    }
    if own_pos is not None:
        config["pos_embed_max_size"] = math.isqrt(int(sd["pos_embed.pos_embed"].shape[1]))
    else:  # Stability's SD 3.5 ControlNets use the checkpoint's position embedding
        config.update(use_pos_embed=False, pos_embed_max_size=None, pos_embed_type=None)
    return config


_SD3_STABILITY_BLOCK = {"attn.proj": "attn.to_out.0", "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2",
                        "adaLN_modulation.1": "norm1.linear"}


def sd3_stability_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stability's SD 3.5 ControlNet keys under ``SD3ControlNetModel``'s names (the fused q/k/v split in three)."""
    out = {k: v for k, v in sd.items() if k.startswith(("controlnet_blocks.", "pos_embed_input.", "time_text_embed."))}
    for i in _blocks(sd, "transformer_blocks"):
        p = f"transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{p}attn.qkv.{kind}"].chunk(3, dim=0)
            out[f"{p}attn.to_q.{kind}"], out[f"{p}attn.to_k.{kind}"], out[f"{p}attn.to_v.{kind}"] = q, k, v
            for old, new in _SD3_STABILITY_BLOCK.items():
                out[f"{p}{new}.{kind}"] = sd[f"{p}{old}.{kind}"]
    return out


def flux_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``FluxControlNetModel`` config from diffusers-named shapes."""
    x_in = sd["x_embedder.weight"]
    inner = int(x_in.shape[0])
    norm = sd.get("transformer_blocks.0.attn.norm_q.weight", sd.get("single_transformer_blocks.0.attn.norm_q.weight"))
    if norm is None:
        raise ValueError("no attention norm to read the head size from")
    head = int(norm.shape[0])
    config: dict[str, Any] = {
        "patch_size": 1, "in_channels": int(x_in.shape[1]),
        "num_layers": len(_blocks(sd, "transformer_blocks")),
        "num_single_layers": len(_blocks(sd, "single_transformer_blocks")),
        "attention_head_dim": head, "num_attention_heads": inner // head,
        "joint_attention_dim": int(sd["context_embedder.weight"].shape[1]),
        "pooled_projection_dim": int(sd["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in sd,
        "axes_dims_rope": flux_axes(head),
    }
    if "controlnet_mode_embedder.weight" in sd:  # a Union ControlNet: one learnt token per control type
        config["num_mode"] = int(sd["controlnet_mode_embedder.weight"].shape[0])
    if "input_hint_block.conv_out.weight" in sd:  # XLabs: convolutions on the control image itself
        channels = int(sd["input_hint_block.conv_out.weight"].shape[0])
        # their output is cut into patches as wide as the latent tokens (16 channels x 2x2 for FLUX.1)
        config.update(conditioning_embedding_channels=channels,
                      patch_size=math.isqrt(config["in_channels"] // channels))
    return config


def flux_xlabs_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """XLabs' FLUX.1 ControlNet keys (BFL names) under ``FluxControlNetModel``'s names."""
    out = flux_to_diffusers(sd, final_layer=False)
    convs = _indices(sd, r"input_hint_block\.(\d+)\.weight")
    names = ["conv_in", *[f"blocks.{j}" for j in range(len(convs) - 2)], "conv_out"]
    for index, name in zip(convs, names, strict=True):
        for kind in ("weight", "bias"):
            out[f"input_hint_block.{name}.{kind}"] = sd[f"input_hint_block.{index}.{kind}"]
    for kind in ("weight", "bias"):
        out[f"controlnet_x_embedder.{kind}"] = sd[f"pos_embed_input.{kind}"]
        for i in _blocks(sd, "controlnet_blocks"):
            out[f"controlnet_blocks.{i}.{kind}"] = sd[f"controlnet_blocks.{i}.{kind}"]
    return out


def load_flow_controlnet(path: Path, sd: Mapping[str, torch.Tensor], layout: str, head_dim: int = 64,
                         in_channels: int = 16) -> FlowControlNet:
    """A transformer ControlNet from a single file's state dict in ``layout`` (see :func:`flow_layout`)."""
    try:
        if layout.startswith("sd3"):
            weights = sd3_stability_to_diffusers(sd) if layout == "sd3_stability" else dict(sd)
            model: FlowControlNet = SD3ControlNetModel(**sd3_config(weights, head_dim, in_channels))
        else:
            weights = flux_xlabs_to_diffusers(sd) if layout == "flux_xlabs" else dict(sd)
            model = FluxControlNetModel(**flux_config(weights))
        model.load_state_dict(weights, strict=True)
    except (KeyError, RuntimeError, ValueError, ModelError) as exc:
        reason = exc.message if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
        raise ModelError(path, f"its weights do not form an SD 3 / FLUX.1 ControlNet ({reason}).") from exc
    return model.eval()


def flow_family(cn: Any) -> str | None:
    """"sd3" / "flux" for a transformer ControlNet, None for a U-Net one."""
    if isinstance(cn, SD3ControlNetModel):
        return "sd3"
    if isinstance(cn, FluxControlNetModel):
        return "flux"
    return None


def mismatch(cn: FlowControlNet, transformer: Any) -> str | None:
    """Why ``cn`` cannot steer ``transformer`` (widths of the added hidden states, the text width), or None."""
    cn_inner = int(cn.config.num_attention_heads) * int(cn.config.attention_head_dim)
    inner = int(transformer.config.num_attention_heads) * int(transformer.config.attention_head_dim)
    if cn_inner != inner:
        return f"its width is {cn_inner}, the checkpoint's transformer is {inner} wide"
    text = cn.config.joint_attention_dim
    if text is not None and int(text) != int(transformer.config.joint_attention_dim):
        return f"it reads text {text} wide, the checkpoint's {transformer.config.joint_attention_dim}"
    return None


def is_diffusers_flow_folder(path: Path) -> str | None:
    """The transformer ControlNet class a diffusers folder names, or None."""
    name = folder_class(path)
    return name if name in ("SD3ControlNetModel", "FluxControlNetModel") else None
