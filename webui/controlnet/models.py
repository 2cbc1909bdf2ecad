"""ControlNet model files: the A1111 single-file layout, diffusers single files and diffusers folders.

sd-webui-controlnet users keep files such as ``control_v11p_sd15_canny.pth`` (original LDM keys,
optionally under ``control_model.``) in ``models/ControlNet``. They are read safely
(:func:`~webui.models.safeload.read_state_dict`), their config is inferred from tensor shapes like a
checkpoint's UNet, and the weights are renamed onto diffusers' ``ControlNetModel``:

- ``input_blocks`` / ``middle_block`` / ``time_embed`` / ``label_emb``: as in the UNet;
- ``input_hint_block.{0, 2, ..., 2n}``: the conditioning embedding (first conv, n-1 inner convs, last);
- ``zero_convs.i.0`` -> ``controlnet_down_blocks.i``; ``middle_block_out.0`` -> ``controlnet_mid_block``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import (
    ControlNetModel,
    FluxControlNetModel,
    SD3ControlNetModel,
    T2IAdapter,
)

from webui.controlnet.control_lora import assemble, is_control_lora
from webui.controlnet.flow_models import (
    FlowControlNet,
    flow_family,
    flow_layout,
    is_diffusers_flow_folder,
    load_flow_controlnet,
)
from webui.controlnet.ip_adapter import (
    IPAdapterModel,
    is_ip_adapter_state,
    load_ip_adapter,
)
from webui.controlnet.style_adapter import StyleAdapter, is_style_state, load_style_adapter
from webui.controlnet.t2i_adapter import adapter_layout, is_adapter_folder, load_adapter
from webui.controlnet.union_sdxl import is_union_state, load_union
from webui.errors import ModelError
from webui.models.infer_config import unet_config_from_ldm
from webui.models.original_layout import _RESNET_UNET, _rename, _unet_table
from webui.models.safeload import diffusers_class, folder_class, read_state_dict
from webui.models.spec import ModelSpec

_CN_CONFIG_KEYS = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
                   "use_linear_projection", "norm_num_groups", "upcast_attention", "attention_head_dim",
                   "transformer_layers_per_block", "addition_embed_type", "addition_time_embed_dim",
                   "projection_class_embeddings_input_dim")


def _hint_convs(sd: Mapping[str, torch.Tensor]) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(r"input_hint_block\.(\d+)\.weight$", k))})


def controlnet_table(cn: ControlNetModel) -> dict[str, str]:
    """diffusers module path -> original module path for a ControlNetModel."""
    shim = SimpleNamespace(config=cn.config, down_blocks=cn.down_blocks, up_blocks=[])
    table = {k: v for k, v in _unet_table(shim).items() if not k.startswith(("conv_norm_out", "conv_out"))}
    for path, ldm in list(table.items()):
        if ".resnets." in path:
            for inner, ldm_inner in _RESNET_UNET.items():
                table[f"{path}.{inner}"] = f"{ldm}.{ldm_inner}"
    emb = cn.controlnet_cond_embedding
    table["controlnet_cond_embedding.conv_in"] = "input_hint_block.0"
    for i in range(len(emb.blocks)):
        table[f"controlnet_cond_embedding.blocks.{i}"] = f"input_hint_block.{2 * (i + 1)}"
    table["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * (len(emb.blocks) + 1)}"
    for i in range(len(cn.controlnet_down_blocks)):
        table[f"controlnet_down_blocks.{i}"] = f"zero_convs.{i}.0"
    table["controlnet_mid_block"] = "middle_block_out.0"
    return table


def controlnet_to_original(cn: ControlNetModel, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """ControlNet weights under the original (A1111/sd-webui-controlnet) keys."""
    table = controlnet_table(cn)
    return {prefix + _rename(k, table): v.detach().clone().contiguous() for k, v in cn.state_dict().items()}


def _original_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The original-layout ControlNet keys (prefix removed), or None when the file is not in that layout."""
    for prefix in ("control_model.", ""):
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if "input_hint_block.0.weight" in sub and "zero_convs.0.0.weight" in sub:
            return sub
    return None


def config_from_original(sd: Mapping[str, torch.Tensor], name: str = "", time_embed_dim: int = 256) -> dict[str, Any]:
    """A ``ControlNetModel`` config from original-layout tensor shapes.

    SDXL ControlNets hold no text projection, so the split of ``label_emb``'s input into pooled text
    and time ids uses ``time_embed_dim`` (256 in SDXL; the checkpoint's value is passed when known)."""
    context = next((int(v.shape[1]) for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    if context is None:
        raise ModelError(Path(name or "<controlnet>"), "the ControlNet has no cross-attention layers.")
    family = "sdxl" if "label_emb.0.0.weight" in sd else ("sd2" if context == 1024 else "sd1")
    if family == "sdxl":
        adm = int(sd["label_emb.0.0.weight"].shape[1])
        if adm - 6 * time_embed_dim <= 0:  # the hint came from another family: any valid split will do,
            time_embed_dim = 256 if adm > 6 * 256 else max(1, adm // 12)  # the caller refuses the mismatch
        text_dim = adm - 6 * time_embed_dim
        sd = {**sd, "conditioner.embedders.1.model.text_projection": torch.empty(1, max(text_dim, 1))}
    unet_cfg = unet_config_from_ldm(sd, ModelSpec(family), decoder=False)
    config = {k: unet_cfg[k] for k in _CN_CONFIG_KEYS if k in unet_cfg}
    convs = _hint_convs(sd)
    outs = [int(sd[f"input_hint_block.{i}.weight"].shape[0]) for i in convs[:-1]]
    config["conditioning_channels"] = int(sd[f"input_hint_block.{convs[0]}.weight"].shape[1])
    config["conditioning_embedding_out_channels"] = [outs[0], *outs[2::2]]
    config["global_pool_conditions"] = "shuffle" in name.lower()  # v1.1 shuffle pools its conditions
    return config


def config_from_diffusers_keys(sd: Mapping[str, torch.Tensor], time_embed_dim: int = 256) -> dict[str, Any]:
    """A ``ControlNetModel`` config from diffusers-named tensor shapes (single-file diffusers format)."""
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"down_blocks\.(\d+)\.", k))})
    layers = len({int(m.group(1)) for k in sd if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))})
    channels = [int(sd[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in levels]
    depths = [len({m.group(1) for k in sd if (m := re.match(rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks"
                                                            r"\.(\d+)\.", k))}) for i in levels]
    to_k = next(v for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in sd.items() if k.endswith("proj_in.weight"))
    family = "sdxl" if "add_embedding.linear_1.weight" in sd else ("sd2" if int(to_k.shape[1]) == 1024 else "sd1")
    emb = sorted({int(m.group(1)) for k in sd if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))})
    config: dict[str, Any] = {
        "in_channels": int(sd["conv_in.weight"].shape[1]),
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "block_out_channels": channels, "layers_per_block": layers, "cross_attention_dim": int(to_k.shape[1]),
        "use_linear_projection": proj_in.ndim == 2, "upcast_attention": family == "sd2",
        "attention_head_dim": 8 if family == "sd1" else [max(1, c // 64) for c in channels],
        "conditioning_channels": int(sd["controlnet_cond_embedding.conv_in.weight"].shape[1]),
        "conditioning_embedding_out_channels": [int(sd["controlnet_cond_embedding.conv_in.weight"].shape[0])]
        + [int(sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]) for i in emb[1::2]],
    }
    if "add_embedding.linear_1.weight" in sd:
        adm = int(sd["add_embedding.linear_1.weight"].shape[1])
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
                      projection_class_embeddings_input_dim=adm,
                      transformer_layers_per_block=[max(1, d) for d in depths])
    else:
        config["transformer_layers_per_block"] = max([1, *depths])
    return config


def family_of(cn: Any) -> str:
    """"sd3" / "flux" (transformer ControlNets), "sdxl" (extra time/text embedding), "sd2" (1024-wide text)
    or "sd1"."""
    if isinstance(cn, IPAdapterModel):
        return cn.family
    flow = flow_family(cn)
    if flow is not None:
        return flow
    if isinstance(cn, T2IAdapter | StyleAdapter):
        return "t2i_adapter"  # any U-Net whose levels are as wide as its own (see adapter_mismatch)
    if getattr(cn.config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return "sd2" if int(cn.config.cross_attention_dim) == 1024 else "sd1"


def load_controlnet(path: Path, dtype: torch.dtype = torch.float32, time_embed_dim: int = 256,
                    head_dim: int = 64, in_channels: int = 16, base_unet=None) -> ControlNetModel | FlowControlNet:
    """Load a ControlNet file or diffusers folder; ModelError naming the file for anything unusable.

    ``time_embed_dim``: the SDXL checkpoint's ``addition_time_embed_dim`` (see :func:`config_from_original`);
    ``head_dim`` / ``in_channels``: the SD 3.x checkpoint's, for SD 3 ControlNets whose weights do not tell
    (see :mod:`webui.controlnet.flow_models`); ``base_unet``: the checkpoint's U-Net, which a control-LoRA
    is built from (:mod:`webui.controlnet.control_lora`)."""
    path = Path(path)
    if path.is_dir():
        if is_adapter_folder(path):
            try:
                return T2IAdapter.from_pretrained(path, local_files_only=True, torch_dtype=dtype).eval()
            except (OSError, ValueError, RuntimeError) as exc:
                raise ModelError(path, f"diffusers could not load it ({exc}).") from exc
        flow_class = is_diffusers_flow_folder(path)
        if flow_class is not None:
            cls = SD3ControlNetModel if flow_class.startswith("SD3") else FluxControlNetModel
            try:
                return cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype).eval()
            except (OSError, ValueError, RuntimeError) as exc:
                raise ModelError(path, f"diffusers could not load it ({exc}).") from exc
        cls = ControlNetModel
        if folder_class(path) == "ControlNetUnionModel":  # xinsir's ControlNet++ Union folder
            from diffusers import ControlNetUnionModel as cls
        else:
            diffusers_class(path, "ControlNetModel", "ControlNet")
        try:
            return cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(path, f"diffusers could not load it ({exc}).") from exc
    sd, _ = read_state_dict(path)
    if is_control_lora(sd):
        if base_unet is None or not hasattr(base_unet, "down_blocks"):
            raise ModelError(path, "a control-LoRA is built from a U-Net checkpoint's own weights; load an SD 1.x / "
                                   "2.x / SDXL checkpoint first.")
        try:
            sd = assemble(sd, base_unet)
        except (KeyError, RuntimeError, ValueError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise ModelError(path, f"its weights do not fit this checkpoint's U-Net ({detail}): a control-LoRA only "
                                   "works with the model family it was made for (SD 1.5 or SDXL).") from exc
    if is_ip_adapter_state(sd):
        return load_ip_adapter(path, sd).to(dtype)
    if is_style_state(sd):
        return load_style_adapter(path, sd).to(dtype)
    layout = flow_layout(sd)
    if layout is not None:
        return load_flow_controlnet(path, sd, layout, head_dim, in_channels).to(dtype)
    adapter = adapter_layout(sd)
    if adapter is not None:
        return load_adapter(path, sd, adapter).to(dtype)
    original = _original_keys(sd)
    try:
        if original is not None:
            config = config_from_original(original, path.name, time_embed_dim)
            cn = ControlNetModel(**config)
            table = controlnet_table(cn)
            reverse = {_rename(k, table): k for k in cn.state_dict()}
            missing = [k for k in reverse if k not in original]
            if missing:
                raise ModelError(path, f"the ControlNet is incomplete: key '{missing[0]}' is missing.")
            weights = {reverse[k]: v for k, v in original.items() if k in reverse}
        elif is_union_state(sd):  # SDXL ControlNet++ Union (xinsir)
            return load_union(path, sd, config_from_diffusers_keys(sd, time_embed_dim)).to(dtype)
        elif "controlnet_cond_embedding.conv_in.weight" in sd:
            cn = ControlNetModel(**config_from_diffusers_keys(sd, time_embed_dim))
            weights = dict(sd)
        else:
            raise ModelError(path, "it is not a ControlNet (no input_hint_block / controlnet_cond_embedding "
                                   "weights, nor SD 3 / FLUX.1 controlnet_blocks, nor a T2I-Adapter's, nor "
                                   "a control-LoRA's).")
        cn.load_state_dict(weights, strict=True)
    except (KeyError, RuntimeError, StopIteration, ValueError) as exc:
        raise ModelError(path, f"its weights do not form a ControlNet ({type(exc).__name__}: {exc}).") from exc
    return cn.to(dtype).eval()
