"""img2img input: resize the init image as A1111's resize modes do (``init_latents`` encodes it).

Modes: 0 just resize (stretch), 1 crop and resize (cover, centre crop), 2 resize and fill (fit, then
extend the edge rows/columns into the empty borders), 3 latent upscale (encode at the image's own
size, rounded to a multiple of 8, and resize the latent bilinearly).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

RESIZE_MODES = {0: "Just resize", 1: "Crop and resize", 2: "Resize and fill", 3: "Just resize (latent upscale)"}
_LANCZOS = Image.Resampling.LANCZOS


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """RGB image; transparent pixels are put on ``background`` (A1111's ``img2img_background_color``)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        out = Image.new("RGBA", rgba.size, background)
        out.alpha_composite(rgba)
        return out.convert("RGB")
    return image.convert("RGB")


#: ``resize(image, width, height)``: how the image itself is scaled inside a resize mode (default: Lanczos)
Resize = Callable[[Image.Image, int, int], Image.Image]


def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), _LANCZOS)


def resize_image(image: Image.Image, width: int, height: int, mode: int, resize: Resize | None = None) -> Image.Image:
    """``image`` at ``width x height`` by resize mode ``mode``; ``resize`` scales the picture itself (A1111's
    ``resize_image`` with an upscaler name; the filled bands of mode 2 are always plain resizes)."""
    image = image.convert("RGB")
    resize = resize or _lanczos
    if mode in (0, 3):
        return resize(image, width, height)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        scale_w = width if ratio > src_ratio else image.width * height // image.height
        scale_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = resize(image, scale_w, scale_h)
        out = Image.new("RGB", (width, height))
        out.paste(resized, (width // 2 - scale_w // 2, height // 2 - scale_h // 2))
        return out
    if mode == 2:
        scale_w = width if ratio < src_ratio else image.width * height // image.height
        scale_h = height if ratio >= src_ratio else image.height * width // image.width
        resized = resize(image, scale_w, scale_h)
        out = Image.new("RGB", (width, height))
        x0, y0 = width // 2 - scale_w // 2, height // 2 - scale_h // 2
        out.paste(resized, (x0, y0))
        if ratio < src_ratio and y0 > 0:  # bands above and below: stretch the first/last rows
            out.paste(resized.crop((0, 0, scale_w, 1)).resize((width, y0)), (0, 0))
            bottom = height - (y0 + scale_h)
            if bottom > 0:
                out.paste(resized.crop((0, scale_h - 1, scale_w, scale_h)).resize((width, bottom)), (0, y0 + scale_h))
        elif ratio > src_ratio and x0 > 0:  # bands left and right: stretch the first/last columns
            out.paste(resized.crop((0, 0, 1, scale_h)).resize((x0, height)), (0, 0))
            right = width - (x0 + scale_w)
            if right > 0:
                out.paste(resized.crop((scale_w - 1, 0, scale_w, scale_h)).resize((right, height)),
                          (x0 + scale_w, 0))
        return out
    raise ValueError(f"resize_mode must be one of {sorted(RESIZE_MODES)}")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> ``[1, 3, H, W]`` in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]
