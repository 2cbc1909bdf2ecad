"""Turning Gradio ``ImageEditor`` values into img2img inputs (A1111's Sketch / Inpaint tabs).

An editor value is ``{"background": image, "layers": [image, ...], "composite": image}``; brush
strokes live in the layers (transparent elsewhere).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def _get(value: Any, key: str) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get(key)
    return getattr(value, key, None)


def strokes_mask(value: Any, size: tuple[int, int]) -> Image.Image | None:
    """``L`` mask (255 where any layer has paint) at ``size``; None when nothing was drawn."""
    layers = [layer for layer in (_get(value, "layers") or []) if layer is not None]
    if not layers:
        return None
    alpha = np.zeros((size[1], size[0]), dtype=np.uint8)
    for layer in layers:
        if not isinstance(layer, Image.Image):
            layer = Image.fromarray(np.asarray(layer))
        a = layer.convert("RGBA").getchannel("A")
        if a.size != size:
            a = a.resize(size, Image.Resampling.NEAREST)
        alpha = np.maximum(alpha, np.asarray(a))
    if not alpha.any():
        return None
    return Image.fromarray(np.where(alpha > 0, 255, 0).astype(np.uint8), "L")


def _image(value: Any, key: str) -> Image.Image | None:
    im = _get(value, key)
    if im is None:
        return None
    return im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))


def sketch_input(value: Any) -> Image.Image | None:
    """Sketch: the picture with the strokes painted in is the init image."""
    return _image(value, "composite") or _image(value, "background")


def inpaint_input(value: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """Inpaint: the background is the init image; the strokes are the mask (their colour is ignored)."""
    background = _image(value, "background")
    if background is None:
        return None, None
    return background, strokes_mask(value, background.size)


def inpaint_sketch_input(value: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """Inpaint sketch: the coloured strokes become part of the init image and also mark the mask."""
    composite = sketch_input(value)
    if composite is None:
        return None, None
    return composite, strokes_mask(value, composite.size)


def editor_value(image: Image.Image | None) -> dict[str, Any] | None:
    """An editor value showing ``image`` with nothing drawn (for "send to inpaint")."""
    if image is None:
        return None
    return {"background": image, "layers": [], "composite": image}
