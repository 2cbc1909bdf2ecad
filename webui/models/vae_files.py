"""Standalone VAE files (``models/VAE``): listing, A1111's "Automatic" lookup, loading into a model's VAE.

Files are ``.safetensors``, ``.pt``/``.ckpt`` (read with ``torch.load(weights_only=True)``) in the
original layout (``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv``; a
``first_stage_model.``/``vae.`` prefix or a ``state_dict`` wrapper is accepted) or diffusers folders
(``config.json`` + weights of an ``AutoencoderKL``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file

from webui.errors import ModelError
from webui.models.safeload import diffusers_class, read_state_dict

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")


@dataclass(frozen=True)
class VaeFile:
    path: Path
    name: str  # file name as A1111 shows it, e.g. "vae-ft-mse-840000-ema-pruned.safetensors"


def list_vae_files(dirs: Iterable[Path]) -> list[VaeFile]:
    found: dict[str, VaeFile] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            inside_folder_vae = any((parent / "config.json").is_file() for parent in p.parents
                                    if parent != root and root in parent.parents)
            if inside_folder_vae:
                continue
            if p.is_file() and p.suffix.lower() in VAE_SUFFIXES:
                found.setdefault(p.name, VaeFile(p, p.name))
            elif p.is_dir() and (p / "config.json").is_file():
                found.setdefault(p.name, VaeFile(p, p.name))
    return sorted(found.values(), key=lambda v: v.name.lower())


def automatic_vae(checkpoint: Path, files: list[VaeFile]) -> VaeFile | None:
    """A1111's "Automatic": ``<checkpoint stem>.vae.{pt,ckpt,safetensors}`` next to the checkpoint, else
    a file of that name in the VAE folders; None means the checkpoint's own VAE."""
    stem = checkpoint.stem if checkpoint.is_file() else checkpoint.name
    for suffix in (".vae.safetensors", ".vae.pt", ".vae.ckpt"):
        beside = checkpoint.parent / f"{stem}{suffix}"
        if beside.is_file():
            return VaeFile(beside, beside.name)
    for f in files:
        if f.name in (f"{stem}.vae.safetensors", f"{stem}.vae.pt", f"{stem}.vae.ckpt"):
            return f
    return None


def vae_weights(path: Path, config: Mapping) -> dict[str, torch.Tensor]:
    """The file's weights with the key names of a diffusers ``AutoencoderKL`` built from ``config``."""
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            raise ModelError(path, "a diffusers VAE folder needs diffusion_pytorch_model.safetensors")
        diffusers_class(path, "AutoencoderKL", "VAE")
        return load_file(str(weights[0]))
    sd, _ = read_state_dict(path)
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    if "encoder.conv_in.weight" in sd and "decoder.conv_out.weight" in sd:
        sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}  # training-only keys in some files
        return convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in sd.items()}, dict(config))
    if "encoder.conv_in.weight" in sd and "decoder.up_blocks.0.resnets.0.conv1.weight" in sd:
        return dict(sd)  # already diffusers names
    raise ModelError(path, "it is not a VAE (no encoder/decoder weights). Put VAE files, not checkpoints, "
                           "into models/VAE.")
