"""The ControlNet models in ``models/ControlNet``: listing with sd-webui-controlnet titles, lookup, loading."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ControlNetModel

from webui.controlnet.models import load_controlnet
from webui.errors import ModelError, RequestError

SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")


def legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash (64 KiB at offset 1 MiB), which sd-webui-controlnet shows in titles."""
    target = path
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
        if not found:
            return "00000000"
        target = found[0]
    with open(target, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


def _maybe_control_lora(path: Path) -> bool:
    """Whether a file may be a control-LoRA (which depends on the checkpoint): a ``.safetensors`` header is read
    for the marker; other files are assumed to be one (the cache then keeps them per checkpoint)."""
    if path.is_dir():
        return False
    if path.suffix.lower() != ".safetensors":
        return True
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            return "lora_controlnet" in handle.keys()
    except (OSError, ValueError, RuntimeError):
        return True


@dataclass(frozen=True)
class ControlNetInfo:
    path: Path
    name: str
    hash: str

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"


class ControlNetRegistry:
    """ControlNet files and diffusers folders (not the ``annotators`` folder); at most ``cache`` loaded."""

    def __init__(self, dirs: list[Path], device: torch.device, dtype: torch.dtype, cache: int = 2):
        self.dirs = dirs
        self.device, self.dtype = device, dtype
        self._cache_size = cache
        self._infos: list[ControlNetInfo] = []
        self._loaded: OrderedDict[tuple, ControlNetModel] = OrderedDict()
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> list[ControlNetInfo]:
        infos = []
        for root in self.dirs:
            if not root.is_dir():
                continue
            for p in sorted(root.rglob("*")):
                if "annotators" in p.relative_to(root).parts:
                    continue
                is_model_file = p.is_file() and p.suffix.lower() in SUFFIXES and p.parent == root
                is_folder = p.is_dir() and (p / "config.json").is_file()
                if is_model_file or is_folder:
                    try:
                        infos.append(ControlNetInfo(p, p.stem if p.is_file() else p.name, legacy_hash(p)))
                    except OSError:
                        continue
        self._infos = infos
        return infos

    def infos(self) -> list[ControlNetInfo]:
        return list(self._infos)

    def titles(self) -> list[str]:
        return [i.title for i in self._infos]

    def find(self, name: str, field: str = "model") -> ControlNetInfo:
        """By title (``name [hash]``, any hash) or name, case-insensitively; RequestError listing choices."""
        wanted = name.strip()
        base = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
        for info in self._infos:
            if wanted in (info.title, info.name) or base.lower() == info.name.lower():
                return info
        choices = ", ".join(self.titles()) or "none: put ControlNet models into " + ", ".join(map(str, self.dirs))
        raise RequestError(field, f"unknown ControlNet model {name!r}; available: {choices}")

    def load(self, info: ControlNetInfo, time_embed_dim: int = 256, head_dim: int = 64,
             in_channels: int = 16, base_unet=None, base_key: str = "") -> ControlNetModel:
        """The loaded model (cached per file, the checkpoint's hints and, for a control-LoRA, which is built from
        it, the checkpoint ``base_key``; see :func:`load_controlnet`)."""
        key = (info.path, time_embed_dim, head_dim, in_channels, base_key if _maybe_control_lora(info.path) else "")
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            try:
                cn = load_controlnet(info.path, torch.float32, time_embed_dim, head_dim, in_channels,
                                     base_unet).to(self.device, self.dtype)
            except ModelError:
                raise
            except (OSError, RuntimeError) as exc:
                raise ModelError(info.path, f"it could not be loaded ({exc}).") from exc
            self._loaded[key] = cn
            while len(self._loaded) > self._cache_size:
                self._loaded.popitem(last=False)
            return cn
