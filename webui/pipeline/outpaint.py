"""Outpainting: extend the canvas in chosen directions and inpaint the new area.

The image is placed on a larger canvas whose new border is first filled by stretching the image's
edge pixels outward; the mask covers the new border plus ``mask_blur`` pixels of overlap into the
original, so the seam is repainted too. The request then runs as an ordinary whole-picture inpaint
at the canvas size -- no tiles, so the model sees the whole picture at once (A1111's "Poor man's
outpainting" works tile by tile and "Outpainting mk2" adds shaped noise; both map onto this).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from webui.errors import RequestError
from webui.infotext import MASKED_CONTENT
from webui.pipeline.init_image import flatten
from webui.pipeline.request import MAX_SIDE, SIZE_MULTIPLE, GenerationRequest

DIRECTIONS = ("left", "right", "up", "down")
SCRIPT_NAMES = ("poor man's outpainting", "outpainting mk2")


def _sides(pixels: int, directions: Iterable[str]) -> dict[str, int]:
    chosen = {d.lower() for d in directions}
    return {d: pixels if d in chosen else 0 for d in DIRECTIONS}


def outpaint_canvas(image: Image.Image, pixels: int, directions: Iterable[str],
                    mask_blur: int = 4) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image on a canvas grown by ``pixels`` on each chosen side, the new area
    edge-extended, and the mask (255 = repaint) over the new area and a ``mask_blur`` overlap.

    Each grown side is widened further so the canvas is a multiple of 8 (the VAE's factor)."""
    image = flatten(image)
    s = _sides(pixels, directions)
    for axis, (a, b) in (("x", ("left", "right")), ("y", ("up", "down"))):
        size = image.width if axis == "x" else image.height
        total = size + s[a] + s[b]
        extra = -total % SIZE_MULTIPLE
        if extra and (s[a] or s[b]):
            s[b if s[b] else a] += extra
    arr = np.asarray(image)
    canvas = np.pad(arr, ((s["up"], s["down"]), (s["left"], s["right"]), (0, 0)), mode="edge")
    h, w = canvas.shape[:2]
    keep = np.zeros((h, w), dtype=bool)
    x1 = s["left"] + (mask_blur if s["left"] else 0)
    y1 = s["up"] + (mask_blur if s["up"] else 0)
    x2 = s["left"] + image.width - (mask_blur if s["right"] else 0)
    y2 = s["up"] + image.height - (mask_blur if s["down"] else 0)
    keep[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    mask = np.where(keep, 0, 255).astype(np.uint8)
    return Image.fromarray(canvas), Image.fromarray(mask, "L")


def outpaint_request(req: GenerationRequest, pixels: int, directions: Sequence[str], mask_blur: int = 4,
                     inpainting_fill: int = 0) -> GenerationRequest:
    """``req`` (img2img) turned into the inpaint request that outpaints its first init image."""
    if not req.init_images:
        raise RequestError("init_images", "outpainting needs an init image")
    if not isinstance(pixels, int) or isinstance(pixels, bool) or not 8 <= pixels <= 1024:
        raise RequestError("script_args", f"pixels to expand must be an integer between 8 and 1024, got {pixels!r}")
    unknown = [d for d in directions if str(d).lower() not in DIRECTIONS]
    if unknown or not directions:
        raise RequestError("script_args", f"directions must be some of {', '.join(DIRECTIONS)}, got {list(directions)}")
    if not isinstance(mask_blur, int) or not 0 <= mask_blur <= 64:
        raise RequestError("script_args", f"mask blur must be an integer between 0 and 64, got {mask_blur!r}")
    canvas, mask = outpaint_canvas(req.init_images[0], pixels, directions, mask_blur)
    w, h = canvas.size
    if w > MAX_SIDE or h > MAX_SIDE:
        raise RequestError("script_args", f"the outpainted canvas {w}x{h} is larger than {MAX_SIDE}")
    if w % SIZE_MULTIPLE or h % SIZE_MULTIPLE:  # a side that was not grown and is not a multiple of 8
        w, h = max(64, w // SIZE_MULTIPLE * SIZE_MULTIPLE), max(64, h // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return req.with_(init_images=(canvas,), mask=mask, width=w, height=h, resize_mode=0, inpaint_full_res=False,
                     inpainting_fill=inpainting_fill, mask_blur_x=mask_blur, mask_blur_y=mask_blur,
                     inpainting_mask_invert=0)


def outpaint_from_script(req: GenerationRequest, name: str, args: Sequence[Any] | Mapping[str, Any]
                         ) -> GenerationRequest:
    """A1111's outpainting scripts by ``script_name``/``script_args``.

    Positional forms: "Poor man's outpainting" ``[pixels, mask_blur, inpainting_fill, direction]``,
    "Outpainting mk2" ``[_, pixels, mask_blur, direction, noise_q, color_variation]``; or keywords
    ``{"pixels", "mask_blur", "direction", "inpainting_fill"}``.
    """
    key = name.strip().lower()
    if isinstance(args, Mapping):
        kw = dict(args)
    elif key == SCRIPT_NAMES[0]:
        kw = dict(zip(("pixels", "mask_blur", "inpainting_fill", "direction"), args))
    else:
        kw = dict(zip(("_", "pixels", "mask_blur", "direction", "noise_q", "color_variation"), args))
    direction = kw.get("direction", list(DIRECTIONS))
    if isinstance(direction, str):
        direction = [direction]
    fill = kw.get("inpainting_fill", 0 if key == SCRIPT_NAMES[1] else 1)
    if isinstance(fill, str):
        names = list(MASKED_CONTENT.values())
        fill = names.index(fill) if fill in names else -1
    if fill not in (0, 1, 2, 3):
        raise RequestError("script_args", f"masked content must be 0-3, got {fill!r}")
    return outpaint_request(req, kw.get("pixels", 128), list(direction), kw.get("mask_blur", 4), fill)
