"""VAE encode and decode for the pipeline (one place for precision and tiling decisions)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from webui.models.manager import LoadedModel


@torch.no_grad()
def encode_pixels(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """Latents (float32, scaled) of ``[N, 3, H, W]`` pixels in [-1, 1]; the posterior's mean (deterministic)."""
    vae = model.components.vae
    x = pixels.to(model.device, vae.dtype)
    return (vae.encode(x).latent_dist.mode() * model.components.vae_scaling_factor).float()


@torch.no_grad()
def decode_to_pixels(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` float32 pixels in [0, 1]."""
    vae = model.components.vae
    x = vae.decode(latents.to(model.device, vae.dtype) / model.components.vae_scaling_factor, return_dict=False)[0]
    return ((x.float() + 1) / 2).clamp(0, 1)


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    arr = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    return to_images(decode_to_pixels(model, latents))
