"""Upscaler registry and :func:`upscale_to`, which resizes an image to an exact size with an upscaler.

An upscaler is an :class:`UpscalerDef`: a name (as A1111 lists it in ``/sdapi/v1/upscalers`` and
the "Hires upscaler"/"Upscaler" menus), its native scale and a function ``upscale(image, scale, opts)``
(``opts``: the request's options, e.g. ``ESRGAN_tile``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from webui.registry import NamedRegistry

UpscaleFn = Callable[[Image.Image, float, Mapping[str, Any]], Image.Image]


@dataclass(frozen=True)
class UpscalerDef:
    """An upscaler. ``upscale(image, scale, opts)`` returns the image enlarged by about ``scale``
    (a model with a fixed native scale may return its own scale; :func:`upscale_to` fixes the size)."""

    name: str
    upscale: UpscaleFn
    scale: float = 4.0
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None


class UpscalerRegistry(NamedRegistry[UpscalerDef]):
    """Upscalers by name (case-insensitive lookup); filled from the hook, refreshable."""

    what = field = "upscaler"


def upscale_to(upscaler: UpscalerDef | None, image: Image.Image, width: int, height: int,
               crop: bool = False, opts: Mapping[str, Any] | None = None) -> Image.Image:
    """``image`` at exactly ``width x height``: enlarged with ``upscaler`` (up to three passes, as
    A1111 does for big factors), then fitted with Lanczos -- stretched, or scaled to cover and
    centre-cropped when ``crop``."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    if upscaler is not None:
        for _ in range(3):
            if image.width >= width and image.height >= height:
                break
            before = image.size
            image = upscaler.upscale(image, scale, opts or {}).convert("RGB")
            if image.size == before:  # the identity ("None") upscaler
                break
            scale = max(width / image.width, height / image.height)
    if crop:
        s = max(width / image.width, height / image.height)
        cw, ch = max(width, round(image.width * s)), max(height, round(image.height * s))
        image = image.resize((cw, ch), Image.Resampling.LANCZOS)
        left, top = (cw - width) // 2, (ch - height) // 2
        return image.crop((left, top, left + width, top + height))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image
