"""The CFG-guided denoiser ``D(x, sigma)`` a sampler calls, built once per batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from webui.models.manager import LoadedModel
from webui.pipeline.conditioning import Conditioning
from webui.pipeline.patches import (
    TransformerCall,
    UNetCall,
    adjust_denoised,
    extra_context,
    sum_adapter_residuals,
    sum_residuals,
    sum_transformer_residuals,
    unet_kwargs,
)
from webui.pipeline.prompt_schedule import JobConditioning, stack
from webui.sampling.denoiser import Denoiser, DiscreteSchedule

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Inpaint:
    """What inpainting adds to a batch: the U-Net's extra input channels and the latent blend.

    ``image_cond`` (``[batch, 5, h, w]``: mask + masked-image latent) feeds 9-channel inpainting
    U-Nets. ``init``/``keep`` make every model output keep the original latent where ``keep`` is 1,
    as A1111 does after each denoiser call.
    """

    image_cond: torch.Tensor | None = None
    init: torch.Tensor | None = None
    keep: torch.Tensor | None = None


def cfg_denoiser(model: LoadedModel, conds: JobConditioning, cfg_scale: float, width: int, height: int,
                 batch: int, inpaint: Inpaint | None = None, patches: list[Any] | None = None,
                 step_of: Callable[[], tuple[int, int]] | None = None,
                 hires: bool = False, *, sdxl_crop: tuple[int, int], downcast_alphas: bool,
                 zero_terminal_snr: bool, cfg_rescale: float, guidance: float) -> tuple[ModelFn, DiscreteSchedule]:
    """The guided denoiser for one batch, following the prompt schedules.

    Composable prompts: ``uncond + cfg * sum_k w_k (cond_k - uncond)`` (A1111's combine step).
    The uncond pass is skipped when CFG is 1 and there is a single part. ``patches`` (e.g.
    ControlNets) add residuals to every U-Net call; ``step_of()`` gives (step, steps) of the pass and is required
    with them (their guidance windows depend on it).
    SDXL's added conditioning is A1111's: original size = target size = the pass's size, crop
    coordinates ``sdxl_crop`` = (options ``sdxl_crop_top``, ``sdxl_crop_left``). ``downcast_alphas``: the
    option ``use_downcasted_alpha_bar`` (see :class:`~webui.sampling.denoiser.DiscreteSchedule`);
    ``zero_terminal_snr`` rescales the schedule for any model (A1111's option ``sd_noise_schedule``), a
    checkpoint marked ``ztsnr`` has it anyway. ``cfg_rescale`` (φ, 0..1): :func:`rescale_cfg` after the CFG step.
    SD 3.x / FLUX.1 (flow models): the schedule is the model's shifted flow sigmas
    (:func:`~webui.sampling.flow.model_shift` at the pass's size), the denoiser
    :class:`~webui.sampling.flow.FlowDenoiser`; ``guidance`` is FLUX.1 dev's distilled guidance.
    """
    if patches and step_of is None:
        raise ValueError("cfg_denoiser: U-Net patches need step_of (their guidance windows depend on the step)")
    c = model.components
    unet = c.unet
    if c.spec.is_flow:
        from webui.pipeline.flow_model import velocity_fn
        from webui.sampling.flow import FlowDenoiser, flow_schedule, model_shift

        schedule = flow_schedule(*model_shift(c.spec, width, height), c.spec.family)
    else:
        schedule = DiscreteSchedule(c.alphas_cumprod, c.spec.family, downcast=downcast_alphas,
                                    zero_terminal_snr=zero_terminal_snr or c.spec.zero_terminal_snr).to(model.device)
    use_uncond = not (cfg_scale == 1.0 and len(conds.positives) == 1)
    groups = len(conds.positives) + (1 if use_uncond else 0)
    time_ids = None
    if c.spec.family == "sdxl":  # SD 3.x / FLUX.1 have no size conditioning
        top, left = sdxl_crop
        time_ids = torch.tensor([[height, width, top, left, height, width]], device=model.device, dtype=model.dtype)
        time_ids = time_ids.expand(batch * groups, -1)
    inpaint = inpaint or Inpaint()
    image_cond = None
    if c.spec.inpainting:
        cond = inpaint.image_cond
        if cond is None:
            cond = txt2img_image_conditioning(model, width, height).expand(batch, -1, -1, -1)
        image_cond = cond.to(model.device, model.dtype).repeat(groups, 1, 1, 1)
    calls = [0]
    cached: dict[str, Any] = {"key": None}

    def context_at(step: int) -> tuple[Conditioning, list[float]]:
        parts, neg = conds.at(step)
        key = (tuple(id(p) for p, _ in parts), id(neg))
        if cached["key"] != key:
            cached["ctx"] = stack([p for p, _ in parts] + ([neg] if use_uncond else []), batch, model.device,
                                  model.dtype)
            cached["key"] = key
        return cached["ctx"], [w for _, w in parts]

    current: dict[str, Any] = {}

    def unet_fn(x_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = current["ctx"]
        added = None if time_ids is None else {"text_embeds": ctx.pooled, "time_ids": time_ids}
        x_in = x_scaled.to(model.dtype)
        context = ctx.context
        extra: dict[str, Any] = {}
        if patches:
            step, steps = step_of()
            call = UNetCall(x_in, t, ctx.context, added, batch, groups, use_uncond, step, steps, width, height, hires)
            res = sum_residuals(patches, call)
            if res is not None:
                extra = {"down_block_additional_residuals": res[0], "mid_block_additional_residual": res[1]}
            adapter = sum_adapter_residuals(patches, call)
            if adapter is not None:  # a new list per call: the U-Net pops from it
                extra["down_intrablock_additional_residuals"] = list(adapter)
            more = unet_kwargs(patches, call)
            if more:
                added = {**(added or {}), **more}
            tokens = extra_context(patches, call)
            if tokens is not None:
                context = torch.cat([context, tokens.to(context.dtype)], dim=1)
        if image_cond is not None:
            x_in = torch.cat([x_in, image_cond], dim=1)
        out = unet(x_in, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False,
                   **extra)[0]
        return out.float()

    # built once per batch: the denoiser keeps a host copy of the sigmas, which must not be made per step
    if c.spec.is_flow:
        velocity = velocity_fn(model, guidance)

        def flow_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            ctx = current["ctx"]
            residuals = None
            if patches:
                step, steps = step_of()
                residuals = sum_transformer_residuals(patches, TransformerCall(
                    x, sigma, ctx.context, ctx.pooled, guidance, unet, batch, groups, use_uncond, step, steps, width,
                    height, hires))
            return velocity(x, sigma, ctx, **(residuals or {}))
        denoiser = FlowDenoiser(schedule, flow_fn)
    else:
        denoiser = Denoiser(schedule, unet_fn, c.spec.prediction_type)
    blend = None
    if inpaint.init is not None and inpaint.keep is not None:
        blend = (inpaint.init.to(model.device), inpaint.keep.to(model.device))

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        current["ctx"], weights = context_at(calls[0])
        calls[0] += 1
        out = denoiser(x.repeat(groups, 1, 1, 1), sigma.repeat(groups)).chunk(groups)
        if not use_uncond:
            result = out[0]
        else:
            neg = out[-1]
            result = neg.clone()
            for part, w in zip(out[:-1], weights):
                result += (part - neg) * (w * cfg_scale)
            if cfg_rescale > 0:
                positive = neg + sum((part - neg) * w for part, w in zip(out[:-1], weights))
                # a flow model's output (the velocity) is (x - denoised) / sigma, as an epsilon model's noise
                kind = "epsilon" if c.spec.is_flow else c.spec.prediction_type
                result = rescale_cfg(x, sigma, positive, result, cfg_rescale, kind)
        if patches:
            result = adjust_denoised(patches, x, sigma, result)
        if blend is not None:
            init, keep = blend
            result = init * keep + result * (1 - keep)
        return result

    return guided, schedule


def rescale_cfg(x: torch.Tensor, sigma: torch.Tensor, positive: torch.Tensor, guided: torch.Tensor, phi: float,
                prediction_type: str) -> torch.Tensor:
    """CFG rescale (Lin et al. 2024, eq. 16; diffusers' ``guidance_rescale``, A1111 extensions' "CFG Rescale φ").

    The guided prediction is scaled per image so that its standard deviation matches the positive
    prediction's, mixed ``phi : 1 - phi`` with the plain guided one. As in the paper and diffusers, this
    happens in the model's own output space (noise for epsilon models, v for v-prediction ones): the
    denoised images ``positive`` and ``guided`` (at ``x``, ``sigma``) are turned into model outputs and back.
    """
    s = sigma.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))
    if prediction_type == "epsilon":
        def to_output(d: torch.Tensor) -> torch.Tensor:
            return (x - d) / s

        def to_denoised(o: torch.Tensor) -> torch.Tensor:
            return x - o * s
    else:
        c_skip, c_out = 1.0 / (s**2 + 1.0), -s / (s**2 + 1.0) ** 0.5

        def to_output(d: torch.Tensor) -> torch.Tensor:
            return (d - x * c_skip) / c_out

        def to_denoised(o: torch.Tensor) -> torch.Tensor:
            return o * c_out + x * c_skip
    pos, cfg = to_output(positive), to_output(guided)
    dims = tuple(range(1, x.ndim))
    factor = pos.std(dim=dims, keepdim=True) / cfg.std(dim=dims, keepdim=True)
    return to_denoised(cfg * (phi * factor + (1.0 - phi)))


@torch.no_grad()
def txt2img_image_conditioning(model: LoadedModel, width: int, height: int) -> torch.Tensor:
    """Inpainting U-Nets without an init image: a full mask and the latent of a neutral grey image (A1111)."""
    from webui.pipeline.vae import encode_pixels

    grey = torch.zeros(1, 3, height, width)
    latent = encode_pixels(model, grey)
    mask = torch.ones(1, 1, latent.shape[2], latent.shape[3], dtype=latent.dtype, device=latent.device)
    return torch.cat([mask, latent], dim=1)
