"""Face restorer registry.

A restorer is a :class:`FaceRestorerDef`: a name (as in A1111's ``face_restoration_model`` option and
``GET /sdapi/v1/face-restorers``) and ``restore(image, opts) -> image``, which finds the faces in a
whole picture, restores them and pastes them back (an image without faces comes back unchanged).
``opts`` are the request's options (e.g. ``code_former_weight``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

RestoreFn = Callable[[Image.Image, Mapping[str, Any]], Image.Image]


class UnknownFaceRestorer(KeyError):
    def __init__(self, name: str, choices: list[str]):
        super().__init__(name)
        self.name = name
        self.choices = choices

    def __str__(self) -> str:
        return f"unknown face restorer {self.name!r}; choose one of: {', '.join(self.choices) or '(none installed)'}"


@dataclass(frozen=True)
class FaceRestorerDef:
    name: str
    restore: RestoreFn
    model_path: str | None = None


class FaceRestorerRegistry:
    def __init__(self, defs: Iterable[FaceRestorerDef] = ()):
        self._defs: dict[str, FaceRestorerDef] = {}
        self.replace(defs)

    def replace(self, defs: Iterable[FaceRestorerDef]) -> None:
        fresh: dict[str, FaceRestorerDef] = {}
        for d in defs:
            fresh.setdefault(d.name, d)
        self._defs = fresh

    def names(self) -> list[str]:
        return list(self._defs)

    def all(self) -> list[FaceRestorerDef]:
        return list(self._defs.values())

    def get(self, name: str) -> FaceRestorerDef:
        for key, d in self._defs.items():
            if key == name or key.lower() == name.lower():
                return d
        raise UnknownFaceRestorer(name, self.names())


def blend(original: Image.Image, restored: Image.Image, visibility: float) -> Image.Image:
    """``restored`` mixed over ``original`` (A1111's visibility sliders); 1 = only the restored image."""
    if visibility >= 1.0:
        return restored
    if visibility <= 0.0:
        return original
    if restored.size != original.size:
        original = original.resize(restored.size, Image.Resampling.LANCZOS)
    return Image.blend(original.convert("RGB"), restored.convert("RGB"), visibility)
