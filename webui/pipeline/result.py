"""The result of a generation job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class GenerationResult:
    """Images with their seeds, infotexts and saved paths, plus A1111's ``info`` fields."""

    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    #: images shown after the generated ones, with a label (ControlNet's detected maps); not saved, no infotext
    extra_images: list[tuple[Image.Image, str]] = field(default_factory=list)
