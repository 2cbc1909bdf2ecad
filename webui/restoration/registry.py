"""Face restorer registry.

A restorer is a :class:`FaceRestorerDef`: a name (as in A1111's ``face_restoration_model`` option and
``GET /sdapi/v1/face-restorers``) and ``restore(image, opts) -> image``, which finds the faces in a
whole picture, restores them and pastes them back (an image without faces comes back unchanged).
``opts`` are the request's options (e.g. ``code_former_weight``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from webui.registry import NamedRegistry

RestoreFn = Callable[[Image.Image, Mapping[str, Any]], Image.Image]


@dataclass(frozen=True)
class FaceRestorerDef:
    name: str
    restore: RestoreFn
    model_path: str | None = None


class FaceRestorerRegistry(NamedRegistry[FaceRestorerDef]):
    """Face restorers by name (case-insensitive lookup); filled from the hook, refreshable."""

    what, field = "face restorer", "face_restoration_model"


def blend(original: Image.Image, restored: Image.Image, visibility: float) -> Image.Image:
    """``restored`` mixed over ``original`` (A1111's visibility sliders); 1 = only the restored image."""
    if visibility >= 1.0:
        return restored
    if visibility <= 0.0:
        return original
    if restored.size != original.size:
        original = original.resize(restored.size, Image.Resampling.LANCZOS)
    return Image.blend(original.convert("RGB"), restored.convert("RGB"), visibility)
