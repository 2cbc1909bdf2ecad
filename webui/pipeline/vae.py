"""VAE encode and decode for the pipeline (one place for precision and tiling decisions).

Tiled VAE: above ``vae_tiling_threshold`` pixels on a side (default 1536), or always with
``vae_tiling_enabled``, images are encoded/decoded in 512-pixel tiles with 25% overlap (diffusers'
blended tiles). 1536 is where a full-frame SD decode stops fitting comfortably on 8 GB cards: the
decoder's last blocks hold several 128-channel activations at full resolution (about 1.2 GB each in
fp16 at 1536x1536), and the mid-block attention runs over (side/8)^2 tokens. Below it, whole-frame
decoding is faster and has no seams. Independently of the threshold, a decode or encode that runs
out of device memory is retried tiled, with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.models.manager import LoadedModel

log = logging.getLogger(__name__)

TILE_PIXELS = 512
TILE_OVERLAP = 0.25


def tiling_wanted(opts: Mapping[str, Any] | None, width: int, height: int) -> bool:
    """Whether an image of this size is encoded/decoded in tiles under ``opts``."""
    if opts is None:
        return False
    if opts.get("vae_tiling_enabled", False):
        return True
    threshold = int(opts.get("vae_tiling_threshold", 1536) or 0)
    return threshold > 0 and max(width, height) > threshold


@contextmanager
def vae_tiles(vae: Any, enabled: bool) -> Iterator[None]:
    """Temporarily switch the VAE to tiled encode/decode (a no-op for VAEs without tiling support)."""
    if not enabled or not hasattr(vae, "use_tiling"):
        yield
        return
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor)
    vae.use_tiling, vae.tile_sample_min_size = True, TILE_PIXELS
    vae.tile_latent_min_size, vae.tile_overlap_factor = TILE_PIXELS // 8, TILE_OVERLAP
    try:
        yield
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = saved


def _retry_tiled(what: str, fn, tiled: bool, vae: Any):
    try:
        with vae_tiles(vae, tiled):
            return fn()
    except torch.OutOfMemoryError:
        if tiled or not hasattr(vae, "use_tiling"):
            raise
        from webui.devices import free_memory

        free_memory()
        log.warning("VAE %s ran out of memory; retrying with tiled VAE (%d px tiles)", what, TILE_PIXELS)
        with vae_tiles(vae, True):
            return fn()


@torch.no_grad()
def encode_pixels(model: LoadedModel, pixels: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """Latents (float32, scaled) of ``[N, 3, H, W]`` pixels in [-1, 1]; the posterior's mean (deterministic)."""
    vae = model.components.vae
    x = pixels.to(model.device, vae.dtype)
    latent = _retry_tiled("encode", lambda: vae.encode(x).latent_dist.mode(), tiled, vae)
    c = model.components
    return ((latent - getattr(c, "vae_shift_factor", 0.0)) * c.vae_scaling_factor).float()


@torch.no_grad()
def decode_to_pixels(model: LoadedModel, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """``[N, 3, H, W]`` float32 pixels in [0, 1].

    NaN-safe: a half-precision decode that yields NaN/inf (A1111's black images) is redone in float32,
    and the VAE stays in float32 from then on (``--no-half-vae`` does that from the start)."""
    vae = model.components.vae
    scaled = latents / model.components.vae_scaling_factor + getattr(model.components, "vae_shift_factor", 0.0)
    x = _retry_tiled("decode", lambda: vae.decode(scaled.to(model.device, vae.dtype), return_dict=False)[0],
                     tiled, vae)
    if vae.dtype in (torch.float16, torch.bfloat16) and not bool(torch.isfinite(x).all()):
        log.warning("The VAE produced NaN/inf in %s; decoding again in float32 and keeping the VAE in float32 "
                    "(start with --no-half-vae to skip the retry)", str(vae.dtype).removeprefix("torch."))
        vae.to(torch.float32)
        x = _retry_tiled("decode", lambda: vae.decode(scaled.to(model.device, torch.float32), return_dict=False)[0],
                         tiled, vae)
    return ((x.float() + 1) / 2).clamp(0, 1)


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    arr = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def decode_latents(model: LoadedModel, latents: torch.Tensor, tiled: bool = False) -> list[Image.Image]:
    return to_images(decode_to_pixels(model, latents, tiled))
