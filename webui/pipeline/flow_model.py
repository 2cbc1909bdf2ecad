"""Calling an SD 3.x or FLUX.1 transformer for the sampler: the velocity at ``(x, sigma)`` under a conditioning.

SD 3.x takes the latents as they are, the timestep ``1000 * sigma``, the token context (CLIP-L + CLIP-G
padded to T5's width, then T5) and the pooled CLIP vectors. FLUX.1 takes its latents packed into 2x2
patches with their (row, column) positions, the timestep ``sigma``, the T5 context and CLIP-L's pooled
vector, and (dev) the distilled guidance strength. As in the reference pipelines. Keyword arguments of the
velocity function (ControlNet residuals, see :data:`~webui.pipeline.patches.BLOCK_RESIDUALS`) go to the
transformer unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.pipeline.conditioning import Conditioning

VelocityFn = Callable[..., torch.Tensor]  # (x, sigma, conditioning, **block residuals) -> velocity


def pack_flux(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` latents as ``[B, H/2 * W/2, 4C]`` tokens of 2x2 patches (row-major)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_flux(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_flux` for latents of ``height x width``."""
    b, _, d = tokens.shape
    return tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(
        b, d // 4, height, width)


def flux_image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """Positions ``(0, row, column)`` of each 2x2 patch of ``height x width`` latents."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


def velocity_fn(model, guidance: float) -> VelocityFn:
    """The velocity function of the model's transformer (``guidance``: FLUX.1 dev's distilled guidance)."""
    c = model.components
    transformer = c.unet
    device, dtype = model.device, model.dtype

    if c.spec.family == "sd3":
        def sd3(x: torch.Tensor, sigma: torch.Tensor, ctx: Conditioning, **residuals) -> torch.Tensor:
            t = (sigma.float() * 1000).to(device, dtype)
            out = transformer(hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=ctx.context,
                              pooled_projections=ctx.pooled, return_dict=False, **residuals)[0]
            return out.float()
        return sd3

    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (h, w, text tokens) -> (image ids, text ids)

    def flux(x: torch.Tensor, sigma: torch.Tensor, ctx: Conditioning, **residuals) -> torch.Tensor:
        b, _, h, w = x.shape
        key = (h, w, ctx.context.shape[1])
        if key not in cache:
            cache.clear()
            cache[key] = (flux_image_ids(h, w, device, dtype),
                          torch.zeros(ctx.context.shape[1], 3, device=device, dtype=dtype))
        img_ids, txt_ids = cache[key]
        t = sigma.float().to(device, dtype)
        g = torch.full((b,), float(guidance), device=device, dtype=dtype) \
            if transformer.config.guidance_embeds else None
        out = transformer(hidden_states=pack_flux(x.to(dtype)), timestep=t, guidance=g,
                          pooled_projections=ctx.pooled, encoder_hidden_states=ctx.context,
                          txt_ids=txt_ids, img_ids=img_ids, return_dict=False, **residuals)[0]
        return unpack_flux(out, h, w).float()
    return flux
