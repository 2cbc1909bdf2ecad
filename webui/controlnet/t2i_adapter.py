"""T2I-Adapters (TencentARC) as ControlNet units: diffusers' ``T2IAdapter`` from the files people download.

Layouts, told apart by their keys:

- diffusers folders (``config.json`` naming ``T2IAdapter``) and diffusers-named single files (``adapter.*``);
- SDXL adapters (TencentARC's ``t2i-adapter-*-sdxl-1.0``; diffusers' ``full_adapter_xl``), told apart by their
  ``conv_in`` reading pixels unshuffled by 16 instead of 8;
- TencentARC's original files in ``models/ControlNet`` (``t2iadapter_canny_sd14v1.pth``,
  ``t2iadapter_canny_sd15v2.pth``, ...): ``conv_in``, ``body.<k>.block1/block2`` (and ``in_conv`` where the width
  changes), block ``k = level * blocks + j``. Both the first generation (``*_sd14v1``) and the v2 adapters are
  TencentARC's ``Adapter`` built with ``sk=True, ksize=1, use_conv=False`` (sd-webui-controlnet's
  ``t2iadapter_*_sd14v1.yaml`` / ``image_adapter_v14.yaml``, and its ``build_model_by_guess``): 1x1 second
  convolutions, no skip convolutions, average-pool downsampling — diffusers' ``FullAdapter`` (its
  ``scripts/convert_original_t2i_adapter.py`` maps the sd14v1 files the same way). Files of the ``Adapter``
  class's other settings are refused by name: ``skep`` skip convolutions (``sk=False``; sd-webui-controlnet
  builds every adapter with ``sk=True`` and would drop them), strided-convolution downsampling
  (``down_opt.op``, ``use_conv=True``) or 3x3 second convolutions (``ksize=3``), which diffusers' adapter has not;
- TencentARC's "light" adapter (``t2iadapter_color_sd14v1.pth``, ``Adapter_light``: per level ``in_conv`` to a
  quarter of the width, ``body.<level>.body.<j>`` resnet blocks with two 3x3 convolutions, ``out_conv``), which is
  diffusers' ``LightAdapter`` (its conversion script's ``convert_light_adapter``);
- the style adapter (``t2iadapter_style_sd14v1.pth``, ``style_embedding``) is no adapter of feature maps: it
  turns CLIP ViT-L/14 image tokens into extra prompt tokens (:mod:`webui.controlnet.style_adapter`).

An adapter reads the control map once per sampling pass (pixels in [0, 1], grey for one-channel adapters such
as canny and sketch) and gives one feature map per U-Net level, added inside the U-Net's down blocks
(diffusers' ``down_intrablock_additional_residuals``) at every step of the unit's guidance window, times its
weight, on the conditional and unconditional passes ("ControlNet is more important": the conditional only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import T2IAdapter

from webui.errors import ModelError
from webui.models.infer_config import _indices
from webui.models.safeload import folder_class


def adapter_layout(sd: Mapping[str, torch.Tensor]) -> str | None:
    """A T2I-Adapter's layout from its keys: "diffusers", "original" (TencentARC's ``Adapter``), "light"
    (``Adapter_light``), "unsupported" (an ``Adapter`` diffusers cannot build), else None (the style adapter:
    :mod:`webui.controlnet.style_adapter`)."""
    if "adapter.conv_in.weight" in sd or "adapter.body.0.in_conv.weight" in sd:
        return "diffusers"
    if "conv_in.weight" in sd and "body.0.block1.weight" in sd:
        return "unsupported" if _unsupported_adapter(sd) else "original"
    if "body.0.in_conv.weight" in sd and "body.0.body.0.block1.weight" in sd and "body.0.out_conv.weight" in sd:
        return "light"
    return None


def _unsupported_adapter(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Why an original-layout ``Adapter`` is not diffusers' ``FullAdapter``, or None."""
    if any(k.endswith(".skep.weight") for k in sd):
        return "it has skip convolutions (skep: TencentARC's Adapter with sk=False)"
    if any(k.endswith(".down_opt.op.weight") for k in sd):
        return "it downsamples with strided convolutions (down_opt: TencentARC's Adapter with use_conv=True)"
    if sd["body.0.block2.weight"].shape[-1] != 1:
        return "its second convolutions are 3x3 (TencentARC's Adapter with ksize=3)"
    return None


def is_adapter_folder(path: Path) -> bool:
    return folder_class(path) == "T2IAdapter"


def original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """TencentARC's v2 adapter keys under ``T2IAdapter``'s names, and its config read from the shapes."""
    blocks = _indices(sd, r"body\.(\d+)\.block1\.")
    widths = [int(sd[f"body.{k}.block1.weight"].shape[0]) for k in blocks]
    # a level starts where the width changes (its first block has an in_conv), or every nums_rb blocks
    starts = [k for k in blocks if k == 0 or f"body.{k}.in_conv.weight" in sd]
    per_level = starts[1] - starts[0] if len(starts) > 1 else len(blocks)
    if len(blocks) % per_level:
        raise ValueError(f"{len(blocks)} blocks do not split into levels of {per_level}")
    levels = len(blocks) // per_level
    channels = [widths[i * per_level] for i in range(levels)]
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        out[f"adapter.conv_in.{kind}"] = sd[f"conv_in.{kind}"]
        for k in blocks:
            level, j = divmod(k, per_level)
            for conv in ("block1", "block2"):
                out[f"adapter.body.{level}.resnets.{j}.{conv}.{kind}"] = sd[f"body.{k}.{conv}.{kind}"]
            if f"body.{k}.in_conv.{kind}" in sd:
                out[f"adapter.body.{level}.in_conv.{kind}"] = sd[f"body.{k}.in_conv.{kind}"]
    return out, {"channels": channels, "num_res_blocks": per_level, **_input_config(int(sd["conv_in.weight"].shape[1]))}


def _input_config(unshuffled: int) -> dict:
    """Pixel-unshuffle factor, input channels and kind from ``conv_in``'s input width: 3 (RGB) or 1 (grey)
    channels times 8² (SD 1.x / 2.x ``full_adapter``) or 16² (SDXL ``full_adapter_xl``, whose levels sit at the
    SDXL U-Net's 1/16, 1/16, 1/32 and middle)."""
    for factor, kind in ((16, "full_adapter_xl"), (8, "full_adapter")):
        for channels in (3, 1):
            if unshuffled == channels * factor * factor:
                return {"in_channels": channels, "downscale_factor": factor, "adapter_type": kind}
    raise ValueError(f"conv_in reads {unshuffled} channels: not 1 or 3 unshuffled by 8 or 16")


def _diffusers_config(sd: Mapping[str, torch.Tensor]) -> dict:
    if "adapter.body.0.out_conv.weight" in sd:  # diffusers' light adapter
        levels = _indices(sd, r"adapter\.body\.(\d+)\.out_conv\.")
        return {"channels": [int(sd[f"adapter.body.{i}.out_conv.weight"].shape[0]) for i in levels][:-1],
                "num_res_blocks": len(_indices(sd, r"adapter\.body\.0\.resnets\.(\d+)\.")),
                "in_channels": int(sd["adapter.body.0.in_conv.weight"].shape[1]) // 64, "downscale_factor": 8,
                "adapter_type": "light_adapter"}
    levels = _indices(sd, r"adapter\.body\.(\d+)\.")
    blocks = _indices(sd, r"adapter\.body\.0\.resnets\.(\d+)\.")
    channels = [int(sd[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0]) for i in levels]
    return {"channels": channels, "num_res_blocks": len(blocks),
            **_input_config(int(sd["adapter.conv_in.weight"].shape[1]))}


def light_to_diffusers(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """TencentARC's ``Adapter_light`` keys under ``T2IAdapter``'s ``light_adapter`` names, and its config.

    Its levels' widths are ``[c0, c1, ..., cn, cn]``: diffusers' ``LightAdapter`` takes ``channels`` without the
    repeated last width (its last block keeps the width and halves the size)."""
    levels = _indices(sd, r"body\.(\d+)\.in_conv\.")
    outs = [int(sd[f"body.{k}.out_conv.weight"].shape[0]) for k in levels]
    if len(outs) < 2 or outs[-1] != outs[-2]:
        raise ValueError(f"light adapter levels {outs}: the last two must be as wide")
    blocks = _indices(sd, r"body\.0\.body\.(\d+)\.block1\.")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = re.fullmatch(r"body\.(\d+)\.body\.(\d+)\.(block[12]\.(?:weight|bias))", key)
        if m:
            out[f"adapter.body.{m.group(1)}.resnets.{m.group(2)}.{m.group(3)}"] = value
        elif re.fullmatch(r"body\.\d+\.(?:in|out)_conv\.(?:weight|bias)", key):
            out[f"adapter.{key}"] = value
        else:
            raise ValueError(f"unexpected light adapter key {key!r}")
    unshuffled = int(sd["body.0.in_conv.weight"].shape[1])
    if unshuffled not in (64, 192):
        raise ValueError(f"in_conv reads {unshuffled} channels: not 1 or 3 unshuffled by 8")
    return out, {"channels": outs[:-1], "num_res_blocks": len(blocks), "in_channels": unshuffled // 64,
                 "downscale_factor": 8, "adapter_type": "light_adapter"}


def load_adapter(path: Path, sd: Mapping[str, torch.Tensor], layout: str) -> T2IAdapter:
    """A ``T2IAdapter`` from a single file's state dict; ModelError naming the file otherwise."""
    if layout == "unsupported":
        raise ModelError(path, f"this T2I-Adapter cannot be loaded: {_unsupported_adapter(sd)}. TencentARC's "
                               "released adapters (t2iadapter_*_sd14v1, *_sd15v2) and diffusers' T2IAdapter "
                               "files work.")
    try:
        if layout == "original":
            weights, config = original_to_diffusers(sd)
        elif layout == "light":
            weights, config = light_to_diffusers(sd)
        else:
            weights, config = dict(sd), _diffusers_config(sd)
        adapter = T2IAdapter(**config)
        adapter.load_state_dict(weights, strict=True)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise ModelError(path, f"its weights do not form a T2I-Adapter ({type(exc).__name__}: {exc}).") from exc
    return adapter.eval()


def adapter_mismatch(adapter: T2IAdapter, unet) -> str | None:
    """Why ``adapter`` cannot steer ``unet`` (its levels' widths must be the U-Net's), or None."""
    kind = str(getattr(adapter.config, "adapter_type", "full_adapter"))
    if kind not in ("full_adapter", "full_adapter_xl", "light_adapter"):
        return f"{kind} T2I-Adapters are not supported; full and light adapters are"
    channels = [int(c) for c in adapter.config.channels]
    if kind == "light_adapter":  # its last block repeats the last width one level down
        channels = [*channels, channels[-1]]
    wanted = [int(c) for c in unet.config.block_out_channels]
    xl_unet = getattr(unet.config, "addition_embed_type", None) == "text_time"
    if (kind == "full_adapter_xl") != xl_unet:
        return "an SDXL T2I-Adapter needs an SDXL checkpoint" if xl_unet is False else \
            "an SD 1.x / 2.x T2I-Adapter cannot steer an SDXL checkpoint"
    if kind == "full_adapter_xl":  # its levels: the down blocks' outputs and the middle block
        wanted = [*wanted, wanted[-1]]
    if channels != wanted:
        return f"its levels are {channels} wide, the checkpoint's U-Net {wanted}"
    return None


def adapter_features(adapter: T2IAdapter, hint: torch.Tensor) -> list[torch.Tensor]:
    """The adapter's feature maps for a ``[1, 3, H, W]`` hint in [0, 1] (grey for one-channel adapters)."""
    x = hint
    if int(adapter.config.in_channels) == 1:
        x = (hint * torch.tensor([0.299, 0.587, 0.114], device=hint.device, dtype=hint.dtype).view(1, 3, 1, 1)).sum(
            1, keepdim=True)
    with torch.no_grad():
        return list(adapter(x.to(next(adapter.parameters()).dtype)))


def is_adapter(model) -> bool:
    return isinstance(model, T2IAdapter)

