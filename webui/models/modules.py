"""Separate model files that complete a checkpoint: VAEs (``models/VAE``) and text encoders
(``models/text_encoder``: CLIP-L, CLIP-G, T5-XXL files as people download them), listed as Forge's
``GET /sdapi/v1/sd-modules`` lists them (``model_name`` and the absolute ``filename``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from webui.models.vae_files import list_vae_files

TEXT_ENCODER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ModuleFile:
    model_name: str  # the file name, as Forge shows it
    path: Path
    kind: str  # "vae" or "text_encoder"


def list_text_encoder_files(dirs: Iterable[Path]) -> list[ModuleFile]:
    found: dict[Path, ModuleFile] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in TEXT_ENCODER_SUFFIXES:
                found.setdefault(p.resolve(), ModuleFile(p.name, p.resolve(), "text_encoder"))
    return list(found.values())


def list_modules(vae_dirs: Iterable[Path], text_encoder_dirs: Iterable[Path]) -> list[ModuleFile]:
    """The VAE files (as Settings lists them) then the text-encoder files."""
    vaes = [ModuleFile(v.name, v.path.resolve(), "vae") for v in list_vae_files(vae_dirs)]
    return vaes + list_text_encoder_files(text_encoder_dirs)
