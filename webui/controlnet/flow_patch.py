"""SD 3.x / FLUX.1 ControlNets during sampling: the control image's input and the per-block residuals.

As diffusers' ``StableDiffusion3ControlNetPipeline`` and ``FluxControlNetPipeline`` run them:

- the control image at the pass's size goes through the checkpoint's VAE (the posterior's mean) and is
  scaled like the latents; InstantX's SD 3 ControlNets (trained with zero pooled vectors) take it without
  the VAE's shift; FLUX.1 ControlNets take it packed into 2x2 patches, except XLabs' ones, which read the
  pixels (in [-1, 1]) through their own convolutions;
- the ControlNet sees the transformer's input at the same timestep (SD 3.5's without text, through the
  checkpoint's position embedding), and its outputs are scaled by the unit's weight and added after the
  transformer's blocks, block ``i`` taking output ``i * outputs // blocks`` (XLabs': ``i % outputs``).

A1111-CN's control modes act as on U-Nets where they have a meaning without a U-Net's depth order:
"ControlNet is more important" leaves the unconditional rows without control; soft injection
("My prompt is more important", the hires pass) has no transformer counterpart and weighs all blocks alike.
``advanced_weighting`` scales the residual of each transformer block in order (double blocks, then single
blocks) in place of the weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from webui.pipeline.flow_model import flux_image_ids, pack_flux
from webui.pipeline.patches import BLOCK_RESIDUALS, TransformerCall

#: FLUX.1 Union ControlNets' control types (InstantX / Shakker-Labs: the order of their mode embedding)
FLUX_UNION_MODES = ("canny", "tile", "depth", "blur", "pose", "gray", "low quality")
_UNION_ALIASES = {"openpose": "pose", "grey": "gray", "lq": "low quality", "low_quality": "low quality"}
#: preprocessor name prefixes -> control type, for ``union_control_type`` "Unknown"
_UNION_FROM_MODULE = (("canny", "canny"), ("depth", "depth"), ("openpose", "pose"), ("dw_openpose", "pose"),
                      ("tile", "tile"), ("blur", "blur"))

Encode = Callable[[torch.Tensor], torch.Tensor]  # pixels [N, 3, H, W] in [-1, 1] -> scaled latents


def union_mode(control_type: str, module: str) -> int | None:
    """The FLUX.1 Union mode index for sd-webui-controlnet's ``union_control_type`` (or, when "Unknown", the
    unit's preprocessor); None when neither names one of :data:`FLUX_UNION_MODES`."""
    name = str(control_type or "").strip().lower()
    name = _UNION_ALIASES.get(name, name)
    if name in FLUX_UNION_MODES:
        return FLUX_UNION_MODES.index(name)
    module = str(module or "").lower()
    for prefix, kind in _UNION_FROM_MODULE:
        if module.startswith(prefix):
            return FLUX_UNION_MODES.index(kind)
    return None


def control_input(model: Any, hint: torch.Tensor, encode: Encode, shift_scale: tuple[float, float]) -> torch.Tensor:
    """The ControlNet's ``controlnet_cond`` for a ``[1, 3, H, W]`` hint in [0, 1] (see the module doc)."""
    pixels = hint * 2 - 1
    if getattr(model, "input_hint_block", None) is not None:  # XLabs FLUX.1
        return pixels
    latents = encode(pixels)
    if hasattr(model, "controlnet_x_embedder"):  # FLUX.1
        return pack_flux(latents)
    if bool(getattr(model.config, "force_zeros_for_pooled_projection", False)):  # InstantX SD 3: no shift
        shift, scale = shift_scale
        latents = latents + shift * scale
    return latents


def block_residuals(model: Any, cond: torch.Tensor, call: TransformerCall, mode: int | None) -> dict[str, list]:
    """One ControlNet's outputs for ``call`` spread over the transformer's blocks (unweighted)."""
    n = call.x.shape[0]
    dtype = next(model.parameters()).dtype
    x = call.x.to(dtype)
    cond = cond.to(x.device, dtype).expand(n, *cond.shape[1:])
    if hasattr(model, "controlnet_x_embedder"):
        b, _, h, w = x.shape
        guidance = torch.full((b,), float(call.guidance), device=x.device, dtype=dtype) \
            if model.config.guidance_embeds else None
        kwargs: dict[str, Any] = {}
        if getattr(model, "union", False):
            kwargs["controlnet_mode"] = torch.full((b, 1), int(mode or 0), device=x.device, dtype=torch.long)
        double, single = model(hidden_states=pack_flux(x), controlnet_cond=cond,
                               timestep=call.sigma.to(x.device, dtype), guidance=guidance,
                               pooled_projections=call.pooled.to(dtype),
                               encoder_hidden_states=call.context.to(dtype),
                               txt_ids=torch.zeros(call.context.shape[1], 3, device=x.device, dtype=dtype),
                               img_ids=flux_image_ids(h, w, x.device, dtype), return_dict=False, **kwargs)
        repeat = model.input_hint_block is not None
        blocks = call.transformer
        names = BLOCK_RESIDUALS["flux"]
        out = {names[0]: _spread(double, len(blocks.transformer_blocks), repeat),
               names[1]: _spread(single, len(blocks.single_transformer_blocks), False)}
        return {k: v for k, v in out.items() if v}  # e.g. XLabs' have no single blocks
    pooled = call.pooled.to(dtype)
    if model.config.force_zeros_for_pooled_projection:
        pooled = torch.zeros_like(pooled)
    hidden = x
    if model.pos_embed is None:  # SD 3.5's ControlNets: the checkpoint's position embedding, no text
        hidden = call.transformer.pos_embed(x)
    context = call.context.to(dtype) if model.context_embedder is not None else None
    timestep = (call.sigma.float() * 1000).to(x.device, dtype)
    samples = model(hidden_states=hidden, controlnet_cond=cond, timestep=timestep, encoder_hidden_states=context,
                    pooled_projections=pooled, return_dict=False)[0]
    return {BLOCK_RESIDUALS["sd3"][0]: _spread(samples, len(call.transformer.transformer_blocks), False,
                                               ratio=True)}


def _spread(samples: Any, blocks: int, repeat: bool, ratio: bool = False) -> list[torch.Tensor]:
    """One residual per transformer block, as diffusers' transformers pick them from fewer outputs:
    FLUX.1 ``i // ceil(blocks / outputs)`` (XLabs: ``i % outputs``), SD 3 ``int(i / (blocks / outputs))``."""
    if not samples:
        return []
    count = len(samples)
    if repeat:
        return [samples[i % count] for i in range(blocks)]
    if ratio:
        return [samples[int(i / (blocks / count))] for i in range(blocks)]
    interval = int(math.ceil(blocks / count))
    return [samples[i // interval] for i in range(blocks)]
