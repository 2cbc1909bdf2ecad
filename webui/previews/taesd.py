"""TAESD preview decoders (madebyollin/taesd): tiny convolutional decoders from latents to RGB.

``taesd_decoder`` (SD 1.x / 2.x) and ``taesdxl_decoder`` (SDXL) are read from ``models/VAE-approx``
(``.safetensors`` first, then ``.pth``/``.pt``), the files A1111 and ComfyUI use. The module below has
the official layout -- an ``nn.Sequential`` whose state-dict keys are ``1.weight``, ``3.conv.0.weight``,
``7.weight`` ... -- so the official files load with ``strict=True``. The decoder takes the *scaled*
latents the sampler works with and returns RGB in [0, 1] at 8x the latent size. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

#: family -> decoder file stem in models/VAE-approx.
DECODER_STEMS = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}
EXTENSIONS = (".safetensors", ".pth", ".pt")


class TAESDMissing(FileNotFoundError):
    """No TAESD decoder file for a model family in the VAE-approx folder."""

    def __init__(self, family: str, folder: Path) -> None:
        stem = DECODER_STEMS.get(family, DECODER_STEMS["sd1"])
        self.family, self.folder, self.stem = family, folder, stem
        super().__init__(f"TAESD live preview needs {stem}.safetensors (or {stem}.pth) in {folder} "
                         f"(from https://github.com/madebyollin/taesd); using 'Approx cheap' instead")


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to about [-3, 3]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual block: three 3x3 convolutions plus a skip (1x1 only when the channel count changes)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def build_decoder(latent_channels: int = 4, width: int = 64) -> nn.Sequential:
    """The TAESD decoder: clamp, stem, then three (3 blocks, x2 upsample, conv) stages, a block and RGB."""
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, width), nn.ReLU()]
    for _ in range(3):
        layers += [Block(width, width), Block(width, width), Block(width, width),
                   nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
    layers += [Block(width, width), _conv(width, 3)]
    return nn.Sequential(*layers)


def find_decoder_file(folder: Path, family: str) -> Path:
    """The decoder file for ``family`` in ``folder``; :class:`TAESDMissing` when there is none."""
    stem = DECODER_STEMS.get(family, DECODER_STEMS["sd1"])
    for ext in EXTENSIONS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    raise TAESDMissing(family, folder)


def load_decoder(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Read ``path`` (safely) into a decoder with the official layout, strictly; eval mode on ``device``."""
    from webui.models.safeload import read_state_dict

    state, _ = read_state_dict(path)
    if state and all(k.startswith("decoder.") for k in state):  # saved from a TAESD(nn.Module) wrapper
        state = {k[len("decoder."):]: v for k, v in state.items()}
    channels = int(state["1.weight"].shape[1]) if "1.weight" in state else 4
    decoder = build_decoder(channels)
    decoder.load_state_dict(state, strict=True)
    return decoder.to(device, dtype).eval().requires_grad_(False)


@torch.no_grad()
def decode(decoder: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """``[N, 3, 8h, 8w]`` float32 RGB in [0, 1] from ``[N, 4, h, w]`` scaled latents."""
    param = next(decoder.parameters())
    return decoder(latents.to(param.device, param.dtype)).float().clamp(0, 1)


class TAESDDecoders:
    """Loaded decoders by family, read on first use from one folder (reloaded when the file changes)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._loaded: dict[str, tuple[Path, float, nn.Module]] = {}
        self._lock = threading.Lock()

    def get(self, family: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
        """The decoder for ``family``; raises :class:`TAESDMissing` or a load error."""
        path = find_decoder_file(self.folder, family)
        mtime = path.stat().st_mtime
        key = DECODER_STEMS.get(family, DECODER_STEMS["sd1"])
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None and hit[0] == path and hit[1] == mtime:
                decoder = hit[2]
            else:
                decoder = load_decoder(path)
                log.info("Loaded TAESD preview decoder %s", path)
            decoder = decoder.to(device, dtype)
            self._loaded[key] = (path, mtime, decoder)
            return decoder

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
