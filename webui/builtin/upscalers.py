"""Built-in plugin: the plain upscalers every install has (None, Lanczos, Nearest)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from webui.hookspecs import hookimpl
from webui.settings import Settings
from webui.upscaling.registry import UpscalerDef


def _resample(method: Image.Resampling):
    def upscale(image: Image.Image, scale: float, opts: Mapping[str, Any]) -> Image.Image:
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), method)

    return upscale


def _identity(image: Image.Image, scale: float, opts: Mapping[str, Any]) -> Image.Image:
    return image


@hookimpl
def register_upscalers(settings: Settings) -> list[UpscalerDef]:
    return [
        UpscalerDef("None", _identity, scale=1.0),
        UpscalerDef("Lanczos", _resample(Image.Resampling.LANCZOS)),
        UpscalerDef("Nearest", _resample(Image.Resampling.NEAREST)),
    ]
