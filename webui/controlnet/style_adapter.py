"""TencentARC's style T2I-Adapter (``t2iadapter_style_sd14v1.pth``) as a ControlNet unit.

The file is TencentARC's ``StyleAdapter`` (``ldm/modules/encoders/adapter.py``): ``num_token`` learnt
``style_embedding`` vectors are appended to a picture's CLIP ViT-L/14 image tokens (the vision transformer's
``last_hidden_state``, 257 tokens 1024 wide), the sequence goes through ``ln_pre``, ``n_layes`` pre-norm
transformer blocks (``transformer_layes.<i>``: ``ln_1``, 8-head ``attn``, ``ln_2``, ``mlp.c_fc`` / QuickGELU /
``mlp.c_proj``), and the last ``num_token`` outputs through ``ln_post`` and the ``proj`` matrix become that many
extra prompt tokens (768 wide, SD 1.x's text width). The widths, token count and depth are read from the file;
the head count is TencentARC's (8) as its weights do not tell it.

sd-webui-controlnet (``scripts/hook.py``, "handle prompt token control"): inside the unit's guidance window the
tokens times the unit's weight are appended to the U-Net's cross-attention context, on the conditional rows;
the unconditional rows get as many zero tokens (its ``cond_mark``), whatever the control mode. The image
encoder is its ``clip_vision`` / ``t2ia_style_clipvision`` preprocessor: ``clip_vitl.pth`` (OpenAI's
``clip-vit-large-patch14``) in the annotators' ``clip_vision`` folder, the picture resized to the encoder's
size with area interpolation, then CLIP's normalisation (``annotator/clipvision``). Here the encoder is never
downloaded: a missing file is a 422 naming it. A unit of weight 0 (or outside its window) appends nothing, so
it leaves the picture as it is without the unit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from webui.errors import ModelError

#: sd-webui-controlnet's preprocessor for the style adapter (its internal name; shown as t2ia_style_clipvision)
STYLE_MODULE = "clip_vision"
#: the CLIP image encoder it reads (ip_adapter's file table names the files)
STYLE_ENCODER = "clip_vitl"
HEADS = 8  # TencentARC's StyleAdapter(num_head=8), as sd-webui-controlnet builds it


def is_style_state(sd: Mapping[str, torch.Tensor]) -> bool:
    return "style_embedding" in sd and "proj" in sd


class _Block(nn.Module):
    """A pre-norm transformer block under TencentARC's names (``ResidualAttentionBlock``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, 4 * width), "c_proj": nn.Linear(4 * width, width)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp["c_fc"](self.ln_2(x))
        return x + self.mlp["c_proj"](h * torch.sigmoid(1.702 * h))  # QuickGELU


class StyleAdapter(nn.Module):
    """CLIP image tokens ``[N, L, width]`` -> ``[N, num_token, context_dim]`` extra prompt tokens."""

    def __init__(self, width: int, context_dim: int, layers: int, num_token: int, heads: int = HEADS):
        super().__init__()
        self.num_token = num_token
        self.style_embedding = nn.Parameter(torch.zeros(1, num_token, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer_layes = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    @property
    def width(self) -> int:
        return int(self.style_embedding.shape[-1])

    @property
    def context_dim(self) -> int:
        return int(self.proj.shape[1])

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image_tokens, self.style_embedding.expand(image_tokens.shape[0], -1, -1)], dim=1)
        x = self.transformer_layes(self.ln_pre(x))
        return self.ln_post(x[:, -self.num_token:]) @ self.proj


def load_style_adapter(path: Path, sd: Mapping[str, torch.Tensor]) -> StyleAdapter:
    """The style adapter of TencentARC's state dict (its key layout); ModelError naming ``path`` otherwise."""
    try:
        _, num_token, width = (int(s) for s in sd["style_embedding"].shape)
        context_dim = int(sd["proj"].shape[1])
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"transformer_layes\.(\d+)\.", k)))
        if width % HEADS:
            raise ValueError(f"its width {width} does not split into {HEADS} heads")
        adapter = StyleAdapter(width, context_dim, layers, num_token)
        adapter.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelError(path, "its weights do not form TencentARC's style adapter "
                               f"({type(exc).__name__}: {str(exc)[:300]}).") from exc
    return adapter.eval()


def is_style_adapter(model: Any) -> bool:
    return isinstance(model, StyleAdapter)


def style_mismatch(adapter: StyleAdapter, unet: Any) -> str | None:
    """Why ``adapter``'s tokens cannot join ``unet``'s text context (their widths), or None."""
    wanted = int(unet.config.cross_attention_dim)
    if adapter.context_dim != wanted:
        return f"its tokens are {adapter.context_dim} wide, the checkpoint's U-Net reads text {wanted} wide"
    return None


def style_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """sd-webui-controlnet's ``ClipVisionDetector`` input: the picture resized to ``size`` x ``size`` (area
    interpolation), scaled to [0, 1] and normalised with CLIP's mean / std."""
    import cv2

    from webui.controlnet.ip_adapter import _CLIP_MEAN, _CLIP_STD

    rgb = np.ascontiguousarray(image[..., :3])
    arr = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    return (x - torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(_CLIP_STD).view(1, 3, 1, 1)


def style_tokens(adapter: StyleAdapter, encoder: Any, image: np.ndarray) -> torch.Tensor:
    """The unit's ``[1, num_token, context_dim]`` tokens: the picture's CLIP ``last_hidden_state`` through the
    adapter."""
    param = next(encoder.parameters())
    pixels = style_pixels(image, int(encoder.config.image_size)).to(param.device, param.dtype)
    with torch.no_grad():
        hidden = encoder(pixels).last_hidden_state
        ap = next(adapter.parameters())
        return adapter(hidden.to(ap.device, ap.dtype))


@dataclass
class StyleUnit:
    unit: Any
    tokens: torch.Tensor  # [1, num_token, context_dim]


class StylePatch:
    """The :class:`~webui.pipeline.patches.UNetPatch` of a job's style units: extra context tokens per call."""

    def __init__(self, units: list[StyleUnit]):
        self.units = units

    def prepare(self, width: int, height: int, hires: bool = False) -> None:
        return None

    def residuals(self, call: Any) -> None:
        return None

    def extra_context(self, call: Any) -> torch.Tensor | None:
        """``[rows, tokens, width]`` appended to this call's text context: each acting unit's tokens times its
        weight on the conditional rows, zeros on the unconditional ones (they come last), in unit order."""
        from webui.controlnet.patch import _acts

        rows = call.x.shape[0]
        uncond = call.batch if call.has_uncond else 0
        parts = []
        for u in self.units:
            if not _acts(u.unit, call):
                continue
            tokens = u.tokens.to(call.context.device, call.context.dtype) * float(u.unit.weight)
            parts.append(torch.cat([tokens.expand(rows - uncond, -1, -1),
                                    torch.zeros_like(tokens).expand(uncond, -1, -1)]))
        return torch.cat(parts, dim=1) if parts else None

