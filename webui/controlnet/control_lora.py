"""Stability's control-LoRAs (``control-lora-canny-rank128.safetensors``, ``control_lora_rank128_v11p_sd15_canny``):
a ControlNet stored as changes to the checkpoint's own U-Net.

The file (marked by a ``lora_controlnet`` tensor) holds, in the original (LDM) layout, the ControlNet's own parts
in full (``input_hint_block.*``, ``zero_convs.*``, ``middle_block_out.*``, and layers it replaces, such as
norms), and for the U-Net layers it adapts a low-rank pair ``<layer>.up`` / ``<layer>.down``. As ComfyUI and
sd-webui-controlnet build it: start from the checkpoint's U-Net encoder (``input_blocks``, ``middle_block``,
``time_embed``, ``label_emb``), take every full tensor of the file, and give each adapted layer the weight
``W + up.flatten(1) @ down.flatten(1)`` (no alpha). The result is an ordinary ControlNet in the original
layout, loaded by :func:`webui.controlnet.models.load_controlnet`'s converter; it belongs to that checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from webui.models.original_layout import unet_to_original

MARKER = "lora_controlnet"
_ENCODER = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")


def is_control_lora(sd: Mapping[str, torch.Tensor]) -> bool:
    return MARKER in sd


def control_lora_family(sd: Mapping[str, torch.Tensor]) -> str:
    """"sdxl" or "sd1"/"sd2" as sd-webui-controlnet tells them (SD 1.x/2.x have ``input_blocks.11``)."""
    if "input_blocks.11.0.in_layers.0.weight" in sd or not any(k.startswith("input_blocks.") for k in sd):
        return "sd1"
    return "sdxl"


def assemble(sd: Mapping[str, torch.Tensor], unet) -> dict[str, torch.Tensor]:
    """The ControlNet's original-layout weights: the U-Net's encoder, the file's full tensors over it, and the
    adapted layers' weights changed by their low-rank pairs. KeyError names a pair without its base layer."""
    weights = {k: v for k, v in unet_to_original(unet).items() if k.startswith(_ENCODER)}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key == MARKER:
            continue
        stem, _, part = key.rpartition(".")
        if part in ("up", "down"):
            pairs.setdefault(stem, {})[part] = value
        else:
            weights[key] = value
    for stem, pair in pairs.items():
        base = weights.get(f"{stem}.weight")
        if base is None or "up" not in pair or "down" not in pair:
            raise KeyError(f"{stem}: a low-rank pair without its base layer or half of the pair")
        delta = pair["up"].float().flatten(1) @ pair["down"].float().flatten(1)
        weights[f"{stem}.weight"] = (base.float() + delta.reshape(base.shape)).to(base.dtype)
    return weights
