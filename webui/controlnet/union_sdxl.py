"""SDXL ControlNet++ Union (xinsir's ``controlnet-union-sdxl-1.0``, also its "promax" file): one ControlNet for many
control types, told which by ``union_control_type``.

The files are diffusers-named (``task_embedding``, ``transformer_layes.*``, ``spatial_ch_projs``,
``control_add_embedding`` beside a ControlNet's usual weights) and run as diffusers' ``ControlNetUnionModel``; the
config comes from the shapes (the fuser's 8 attention heads are not in the weights: xinsir's value).

Control types as sd-webui-controlnet numbers them for this model: OpenPose 0, Depth 1, Soft Edge 2 (hed, pidi,
scribble, TEED), Hard Edge 3 (canny, lineart, MLSD), Normal Map 4, Segmentation 5, Tile 6, Inpaint 7. With
``union_control_type`` "Unknown" the unit's preprocessor decides (its control type), as there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from webui.errors import ModelError

UNION_TYPES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint")
#: other spellings sd-webui-controlnet's ``from_str`` accepts
_ALIASES = {"openpose": 0, "depth": 1, "soft edge": 2, "softedge": 2, "scribble": 2, "hard edge": 3, "canny": 3,
            "lineart": 3, "mlsd": 3, "normal map": 4, "normal": 4, "segmentation": 5, "tile": 6, "blur": 6,
            "inpaint": 7}
#: a preprocessor's control type -> the union type, for "Unknown"
_FROM_CONTROL_TYPE = {"OpenPose": 0, "Depth": 1, "SoftEdge": 2, "Scribble/Sketch": 2, "Canny": 3, "Lineart": 3,
                      "MLSD": 3, "NormalMap": 4, "Segmentation": 5, "Tile/Blur": 6, "Inpaint": 7}
TRANSFORMER_HEADS = 8


def is_union_state(sd: Mapping[str, torch.Tensor]) -> bool:
    return "task_embedding" in sd and "controlnet_cond_embedding.conv_in.weight" in sd


def is_union(model: Any) -> bool:
    from diffusers import ControlNetUnionModel

    return isinstance(model, ControlNetUnionModel)


def load_union(path: Path, sd: Mapping[str, torch.Tensor], config: dict[str, Any]) -> Any:
    """A ``ControlNetUnionModel`` from its diffusers-named weights; ``config``: the ControlNet part's config
    (from :func:`~webui.controlnet.models.config_from_diffusers_keys`)."""
    from diffusers import ControlNetUnionModel

    try:
        tasks = sd["task_embedding"]
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("transformer_layes."))
        # its own time-embedding width (the control types' embedding is that many per type), not the checkpoint's
        config = {**config, "addition_time_embed_dim":
                  int(sd["control_add_embedding.linear_1.weight"].shape[1]) // int(tasks.shape[0])}
        model = ControlNetUnionModel(**config, num_control_type=int(tasks.shape[0]),
                                     num_trans_channel=int(tasks.shape[1]), num_trans_layer=layers,
                                     num_trans_head=TRANSFORMER_HEADS,
                                     num_proj_channel=int(sd["spatial_ch_projs.weight"].shape[0]))
        model.load_state_dict(dict(sd), strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelError(path, f"its weights do not form a ControlNet++ Union model ({type(exc).__name__}: "
                               f"{str(exc)[:300]}).") from exc
    return model.eval()


def union_index(control_type: str, preprocessor_type: str) -> int | None:
    """The control type's index for ``union_control_type`` (or, when "Unknown", the preprocessor's control
    type); None when neither names one."""
    name = str(control_type or "").strip().lower()
    if name and name != "unknown":
        return _ALIASES.get(name)
    return _FROM_CONTROL_TYPE.get(preprocessor_type)


def union_residuals(model: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, hint: torch.Tensor,
                    index: int, added: dict | None):
    """The down-block and mid-block residuals of one union ControlNet call (unscaled)."""
    rows = x.shape[0]
    control_type = torch.zeros(rows, int(model.config.num_control_type), device=x.device, dtype=x.dtype)
    control_type[:, index] = 1
    return model(x, t, encoder_hidden_states=context, controlnet_cond=[hint], control_type=control_type,
                 control_type_idx=[index], conditioning_scale=[1.0], added_cond_kwargs=added, return_dict=False)
