"""LaMa for sd-webui-controlnet's ``inpaint_only+lama`` preprocessor.

The weights are ``ControlNetLama.pth`` (``lllyasviel/Annotators``; sd-webui-controlnet keeps it in its
``annotator/downloads/lama`` folder, here it goes in ``models/ControlNet/annotators`` with the other annotator
files). It holds the LaMa generator's state dict (``model.<n>.…``, an ``FFCResNetGenerator``: big-lama's ngf 64,
3 downsamplings, 18 FFC resnet blocks). The network is spandrel's implementation of that generator, built with
the sizes read from the file's shapes; the file is read with :func:`~webui.models.safeload.read_state_dict`
(safetensors or ``torch.load(weights_only=True)``), never unpickled freely.

The fill follows sd-webui-controlnet (``scripts/preprocessor/lama_inpaint.py``, ``annotator/lama``): the RGBA
picture is resized so its short side is 256 (cubic when enlarging, area when shrinking) and edge-padded to
multiples of 64; the generator reads the colour (0..1) with the masked pixels (alpha > 0.5) zeroed, plus the
mask; its output is kept in the masked area, back to 0..255 (truncated), unpadded, resized to the picture's size
(bilinear) and blended with the picture by the alpha (0..1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch

from webui.errors import ModelError

LAMA_FILE = "ControlNetLama.pth"
LAMA_RESOLUTION = 256  # "Always use 256 since lama is trained on 256"


def _generator_class():
    # spandrel's LaMa architecture (spandrel exports the wrapper; the generator sits in its private module)
    from spandrel.architectures.LaMa.__arch.LaMa import FFCResNetGenerator

    return FFCResNetGenerator


def generator_keys(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The generator's own keys (``model.<n>.…``) of a LaMa file: as they are, or under ``generator.`` (a training
    checkpoint's state dict) or ``model.`` (spandrel's wrapper)."""
    for prefix in ("generator.", "model."):
        if any(k.startswith(prefix + "model.") for k in tensors):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix + "model.")}
    return dict(tensors)


def generator_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """``FFCResNetGenerator`` arguments from the shapes: input/output channels, ngf, downsamplings, resnet blocks."""
    first = sd["model.1.ffc.convl2l.weight"]
    layers = sorted({int(m.group(1)) for k in sd for m in [re.match(r"model\.(\d+)\.", k)] if m})
    down = sum(1 for i in layers if i >= 2 and f"model.{i}.ffc.convl2l.weight" in sd)
    blocks = sum(1 for i in layers if f"model.{i}.conv1.ffc.convl2l.weight" in sd)
    last = max(i for i in layers if f"model.{i}.weight" in sd and sd[f"model.{i}.weight"].ndim == 4)
    return {"input_nc": int(first.shape[1]), "output_nc": int(sd[f"model.{last}.weight"].shape[0]),
            "ngf": int(first.shape[0]), "n_downsampling": down, "n_blocks": blocks}


def load_lama(path: Path) -> torch.nn.Module:
    """The LaMa generator of ``path`` (eval mode, float32); ModelError naming the file if it is not one."""
    from webui.models.safeload import read_state_dict

    tensors, _ = read_state_dict(path)
    sd = generator_keys(tensors)
    try:
        config = generator_config(sd)
        net = _generator_class()(**config)
        net.load_state_dict(sd, strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(path, f"it is not a LaMa generator ({type(exc).__name__}: {detail}). Download "
                               f"{LAMA_FILE} again from lllyasviel/Annotators.") from exc
    return net.float().eval()


def _resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, int, int]:
    h, w = image.shape[:2]
    k = resolution / min(h, w)
    th, tw = int(np.round(h * k)), int(np.round(w * k))
    resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, [[0, -th % 64], [0, -tw % 64], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), th, tw


@torch.no_grad()
def lama_fill(picture: np.ndarray, net: torch.nn.Module) -> np.ndarray:
    """``picture`` (H x W x 4 uint8, alpha = mask) with the masked area filled by LaMa; the alpha is kept."""
    h, w = picture.shape[:2]
    padded, th, tw = _resize_with_pad(picture, LAMA_RESOLUTION)
    param = next(net.parameters())
    color = torch.from_numpy(padded[:, :, :3].astype(np.float32) / 255.0).to(param.device)
    mask = (torch.from_numpy(padded[:, :, 3:4].astype(np.float32) / 255.0).to(param.device) > 0.5).float()
    color = color * (1 - mask)
    feed = torch.cat([color, mask], dim=2).permute(2, 0, 1)[None].to(param.dtype)
    out = net(feed[:, :3], feed[:, 3:])[0].float().permute(1, 2, 0)
    out = (out * mask + color * (1 - mask)) * 255.0
    filled = out.cpu().numpy().clip(0, 255).astype(np.uint8)[:th, :tw]
    filled = cv2.resize(filled, (w, h)).astype(np.float32)
    alpha = picture[:, :, 3:4].astype(np.float32) / 255.0
    result = (filled * alpha + picture[:, :, :3].astype(np.float32) * (1 - alpha)).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.concatenate([result, picture[:, :, 3:4]], axis=2))
