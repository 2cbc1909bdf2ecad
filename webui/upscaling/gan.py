"""ESRGAN / Real-ESRGAN super-resolution models: architecture detection, safe loading, tiled inference.

Supported weight layouts (read only through :func:`webui.models.safeload.read_state_dict`, i.e.
safetensors or ``torch.load(weights_only=True)``; ``params_ema`` / ``params`` wrappers are unwrapped):

* basicsr ``RRDBNet`` (RealESRGAN_x4plus, x4plus_anime_6B, x2plus; x2/x1 use pixel-unshuffle),
* old ESRGAN ``model.N...`` keys (converted to basicsr names; ``2**n`` for n upsampling convs),
* Real-ESRGAN ``SRVGGNetCompact`` (realesr-general-x4v3, realesr-animevideov3).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from webui.compat import patch_torchvision_functional_tensor
from webui.errors import ModelError
from webui.models.safeload import read_state_dict

patch_torchvision_functional_tensor()  # must run before basicsr / realesrgan are imported

from basicsr.archs.arch_util import pixel_unshuffle  # noqa: E402
from basicsr.archs.rrdbnet_arch import RRDBNet  # noqa: E402
from realesrgan.archs.srvgg_arch import SRVGGNetCompact  # noqa: E402

StateDict = dict[str, torch.Tensor]
_NOT_GAN = "it is not an ESRGAN/Real-ESRGAN model"


@dataclass(frozen=True)
class GanSpec:
    """Architecture hyper-parameters read from a state dict's keys and shapes."""

    arch: Literal["RRDB", "Compact"]
    scale: int
    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 23  # RRDB: RRDB blocks in the trunk
    num_grow_ch: int = 32  # RRDB: growth channels of the dense blocks
    num_upsample: int = 2  # RRDB: nearest-x2 + conv stages
    unshuffle: int = 1  # RRDB: pixel-unshuffle factor applied to the input (2 for x2, 4 for x1)
    num_conv: int = 16  # Compact: body convolutions
    act_type: str = "prelu"  # Compact


@dataclass
class LoadedGan:
    """A model ready to run: the network (eval mode, on ``device`` in ``dtype``) and its spec."""

    path: Path
    spec: GanSpec
    model: nn.Module
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return self.spec.scale


def unwrap(state_dict: StateDict) -> StateDict:
    """Strip the ``params_ema.`` (preferred) or ``params.`` prefix that :func:`read_state_dict` leaves
    when flattening official ``{"params_ema": {...}}`` files; a bare dict is returned as is."""
    for prefix in ("params_ema.", "params."):
        inner = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if inner:
            return inner
    return state_dict


def to_basicsr_keys(state_dict: StateDict) -> StateDict:
    """Rename old ESRGAN keys (``model.0``, ``model.1.sub.N.RDBk.convj.0``, ...) to basicsr RRDBNet names;
    other state dicts are returned unchanged."""
    if "model.0.weight" not in state_dict or not any(k.startswith("model.1.sub.") for k in state_dict):
        return state_dict
    out: StateDict = {}
    tail = sorted({int(m[1]) for k in state_dict if (m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", k))
                   and int(m[1]) >= 2})
    names = {i: f"conv_up{n + 1}" for n, i in enumerate(tail[:-2])}
    names.update(zip(tail[-2:], ("conv_hr", "conv_last")))
    for key, value in state_dict.items():
        if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif m := re.fullmatch(r"model\.1\.sub\.\d+\.(weight|bias)", key):
            out[f"conv_body.{m[1]}"] = value
        elif (m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key)) and (int(m[1]) == 0 or int(m[1]) in names):
            out[f"{'conv_first' if m[1] == '0' else names[int(m[1])]}.{m[2]}"] = value
        else:
            out[key] = value  # unknown: strict loading will report it
    return out


def detect(state_dict: StateDict) -> GanSpec:
    """The architecture of an (unwrapped) ESRGAN / Real-ESRGAN state dict; raises ValueError if it is none."""
    sd = to_basicsr_keys(state_dict)
    if "conv_first.weight" in sd and "conv_last.weight" in sd:
        num_feat, in_ch = sd["conv_first.weight"].shape[:2]
        out_ch = sd["conv_last.weight"].shape[0]
        blocks = [k for k in sd if re.fullmatch(r"body\.\d+\.rdb1\.conv1\.weight", k)]
        ups = [k for k in sd if re.fullmatch(r"conv_up\d+\.weight", k)]
        if not blocks:
            raise ValueError(f"{_NOT_GAN} (RRDB keys without 'body.N.rdb1' blocks)")
        unshuffle = next((f for f in (4, 2) if in_ch == out_ch * f * f), 1)
        if 2 ** len(ups) < unshuffle:
            raise ValueError(f"{_NOT_GAN} ({in_ch} input channels but {len(ups)} upsampling convs)")
        return GanSpec("RRDB", 2 ** len(ups) // unshuffle, in_ch // unshuffle ** 2, out_ch, num_feat, len(blocks),
                       sd["body.0.rdb1.conv1.weight"].shape[0], len(ups), unshuffle)
    body = {int(m[1]): v for k, v in sd.items() if (m := re.fullmatch(r"body\.(\d+)\.weight", k))}
    convs = sorted(i for i, v in body.items() if v.ndim == 4)
    if len(convs) >= 2 and convs[0] == 0 and all(re.fullmatch(r"body\.\d+\.(weight|bias)", k) for k in sd):
        first, last = body[0], body[convs[-1]]
        in_ch, num_feat = first.shape[1], first.shape[0]
        scale = math.isqrt(last.shape[0] // in_ch)
        if scale < 1 or in_ch * scale * scale != last.shape[0]:
            raise ValueError(f"{_NOT_GAN} (last conv has {last.shape[0]} channels, not 3*scale^2)")
        # PReLU has weights; ReLU / LeakyReLU have none and cannot be told apart (the official models use PReLU)
        act = "prelu" if any(v.ndim == 1 for v in body.values()) else "leakyrelu"
        return GanSpec("Compact", scale, in_ch, in_ch, num_feat, num_conv=len(convs) - 2, act_type=act)
    raise ValueError(f"{_NOT_GAN} (no RRDBNet, old ESRGAN or SRVGGNetCompact keys found)")


class FlexRRDBNet(RRDBNet):
    """basicsr's RRDBNet with any number of x2 upsampling stages (old ESRGAN 1x/2x/8x models).

    Used only when a model does not have exactly two stages; the blocks are basicsr's own."""

    def __init__(self, spec: GanSpec):
        super().__init__(spec.num_in_ch, spec.num_out_ch, {1: 4, 2: 2, 4: 1}[spec.unshuffle], spec.num_feat,
                         spec.num_block, spec.num_grow_ch)
        del self.conv_up1, self.conv_up2
        self.unshuffle_factor = spec.unshuffle
        self.ups = [f"conv_up{i + 1}" for i in range(spec.num_upsample)]
        for name in self.ups:
            self.add_module(name, nn.Conv2d(spec.num_feat, spec.num_feat, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = pixel_unshuffle(x, self.unshuffle_factor) if self.unshuffle_factor > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        for name in self.ups:
            feat = self.lrelu(getattr(self, name)(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def build(spec: GanSpec) -> nn.Module:
    """An untrained network of the architecture ``spec`` describes."""
    if spec.arch == "Compact":
        return SRVGGNetCompact(spec.num_in_ch, spec.num_out_ch, spec.num_feat, spec.num_conv, spec.scale,
                               spec.act_type)
    if spec.num_upsample == 2:
        return RRDBNet(spec.num_in_ch, spec.num_out_ch, spec.scale, spec.num_feat, spec.num_block, spec.num_grow_ch)
    return FlexRRDBNet(spec)


def load_gan(path: Path | str, device: torch.device, dtype: torch.dtype) -> LoadedGan:
    """Read, detect and build the model in ``path``; raises ModelError (naming the file) when unusable."""
    path = Path(path)
    tensors, _ = read_state_dict(path)  # safetensors or weights-only pickle; raises ModelError
    sd = to_basicsr_keys(unwrap(tensors))
    try:
        spec = detect(sd)
    except ValueError as exc:
        raise ModelError(path, f"{exc}. Put only ESRGAN/Real-ESRGAN .pth/.safetensors files in this folder.") from None
    if spec.num_in_ch != 3 or spec.num_out_ch != 3:
        raise ModelError(path, f"it is a {spec.num_in_ch}->{spec.num_out_ch} channel model; only RGB models work.")
    with torch.device("meta"):  # no random init: every weight comes from the file (strict)
        model = build(spec)
    model.to_empty(device=device)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[1:3] or [str(exc)]
        raise ModelError(path, f"{_NOT_GAN} of a known shape ({' '.join(s.strip() for s in reason)[:300]})") from None
    # channels-last: the convolutions run ~15% faster on the CPU (oneDNN) and use tensor cores on CUDA
    model.eval().requires_grad_(False).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    return LoadedGan(path, spec, model, torch.device(device), dtype)


def _input_multiple(model: nn.Module) -> int:
    """Input sizes a model needs divisible by (its pixel-unshuffle factor)."""
    if isinstance(model, FlexRRDBNet):
        return model.unshuffle_factor
    if isinstance(model, RRDBNet):
        return {2: 2, 1: 4}.get(model.scale, 1)
    return 1


def forward_tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Run ``model`` on ``x`` (1xCxHxW) whole, or tile by tile when ``tile`` > 0 and ``x`` is larger.

    Each ``tile`` x ``tile`` input tile is run with up to ``overlap`` pixels of context on every side
    (less at the image border); only the output of the tile itself is kept. With ``overlap`` at least the
    network's receptive radius the result equals the untiled one. Inputs are padded (replicate) to the
    model's pixel-unshuffle multiple and the output cropped back to exactly ``scale`` x the input size.
    """
    mod = _input_multiple(model)
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % mod, -w % mod
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    ph, pw = x.shape[-2:]
    if tile <= 0 or (ph <= tile and pw <= tile):
        out = model(x)
    else:
        tile = max(mod, tile // mod * mod)
        overlap = -(-max(0, overlap) // mod) * mod
        out = torch.empty(0)
        s = 0
        for y0 in range(0, ph, tile):
            for x0 in range(0, pw, tile):
                y1, x1 = min(y0 + tile, ph), min(x0 + tile, pw)
                cy, cx = max(y0 - overlap, 0), max(x0 - overlap, 0)
                res = model(x[..., cy:min(y1 + overlap, ph), cx:min(x1 + overlap, pw)])
                if not s:
                    s = res.shape[-1] // (min(x1 + overlap, pw) - cx)
                    out = res.new_empty((*res.shape[:2], ph * s, pw * s))
                out[..., y0 * s:y1 * s, x0 * s:x1 * s] = res[..., (y0 - cy) * s:(y1 - cy) * s,
                                                             (x0 - cx) * s:(x1 - cx) * s]
    s = out.shape[-1] // pw
    return out[..., :h * s, :w * s]


def upscale_tiled(model: LoadedGan | nn.Module, image: Image.Image, tile: int, overlap: int,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Image.Image:
    """``image`` enlarged by the model's native scale (RGB, tiled as :func:`forward_tiled` does)."""
    if isinstance(model, LoadedGan):
        device, dtype, model = device or model.device, dtype or model.dtype, model.model
    param = next(model.parameters())
    device, dtype = device or param.device, dtype or param.dtype
    arr = np.asarray(image.convert("RGB"))
    with torch.inference_mode():
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].to(device=device, dtype=dtype).div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        out = forward_tiled(model, x, tile, overlap)[0]
        out = out.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(out, "RGB")
