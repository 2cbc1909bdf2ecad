"""Hires fix: the second pass of txt2img.

The first pass's latents are enlarged -- in latent space (the ``Latent*`` modes) or as pixels with a
registered upscaler -- then noised to the second pass's first sigma and denoised again, A1111-style:
with ``hr_second_pass_steps = n`` (0: the first pass's steps) and denoising strength ``d`` the
schedule has ``int(n / min(d, 0.999))`` steps and the last ``n`` of them run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from webui.errors import UnknownChoice
from webui.models.manager import LoadedModel
from webui.pipeline.init_image import image_to_tensor
from webui.pipeline.request import GenerationRequest, hires_target
from webui.pipeline.vae import decode_latents, encode_pixels, tiling_wanted
from webui.sampling.registry import SamplerDef, SamplerRegistry
from webui.sampling.schedules import ScheduleDef
from webui.upscaling.registry import UpscalerDef, UpscalerRegistry, upscale_to

#: A1111's latent upscale modes: name -> (interpolation, antialias).
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"


@dataclass(frozen=True)
class HiresPlan:
    width: int
    height: int
    crop: bool  # both hr_resize_x and hr_resize_y: cover and centre-crop
    upscaler_name: str
    latent_mode: tuple[str, bool] | None
    upscaler: UpscalerDef | None
    steps: int  # steps the second pass runs
    sampler: SamplerDef
    schedule: ScheduleDef | None
    prompt: str
    negative_prompt: str

    def sigmas(self, full: torch.Tensor) -> torch.Tensor:
        """The tail of a ``total_steps`` schedule that the second pass runs."""
        return full[len(full) - self.steps - 1:]

    def total_steps(self, denoising_strength: float) -> int:
        """A1111's ``setup_img2img_steps`` with explicit steps, which the hires pass always gives: the
        "fixed steps" rule whatever the option ``img2img_fix_steps`` says."""
        return int(self.steps / min(denoising_strength, 0.999))


def plan_hires(req: GenerationRequest, samplers: SamplerRegistry, upscalers: UpscalerRegistry | None,
               sampler: SamplerDef, schedule: ScheduleDef | None) -> HiresPlan:
    """Resolve the hires fields of ``req`` (:class:`~webui.errors.UnknownChoice` for unknown names)."""
    w, h = hires_target(req)
    name = req.hr_upscaler or "Latent"
    latent_mode = LATENT_UPSCALE_MODES.get(name)
    upscaler = None
    if latent_mode is None:
        try:
            upscaler = (upscalers or UpscalerRegistry()).get(name, "hr_upscaler")
        except UnknownChoice as exc:  # the latent modes are valid too
            raise UnknownChoice(exc.field, exc.what, name, [*exc.choices, *LATENT_UPSCALE_MODES]) from None
        name = upscaler.name
    hr_sampler, hr_schedule = sampler, schedule
    same_sampler = req.hr_sampler_name in (None, "", SAME_SAMPLER)
    same_scheduler = req.hr_scheduler in (None, "", SAME_SCHEDULER)
    if not (same_sampler and same_scheduler):
        try:
            hr_sampler, hr_schedule = samplers.resolve(
                req.sampler_name if same_sampler else req.hr_sampler_name,
                req.scheduler if same_scheduler else req.hr_scheduler)
        except UnknownChoice as exc:
            raise exc.for_field("hr_sampler_name" if not same_sampler else "hr_scheduler") from None
    return HiresPlan(w, h, req.hr_resize_x > 0 and req.hr_resize_y > 0, name, latent_mode, upscaler,
                     req.hr_second_pass_steps or req.steps, hr_sampler, hr_schedule,
                     req.hr_prompt or req.prompt, req.hr_negative_prompt or req.negative_prompt)


def upscale_latents(plan: HiresPlan, model: LoadedModel, latents: torch.Tensor,
                    opts: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The first pass's latents at the hires size (latent interpolation, or decode-upscale-encode)."""
    h8, w8 = plan.height // 8, plan.width // 8
    if plan.latent_mode is not None:
        mode, antialias = plan.latent_mode
        size = _cover(latents.shape[-2], latents.shape[-1], h8, w8) if plan.crop else (h8, w8)
        out = F.interpolate(latents.float(), size=size, mode=mode, antialias=antialias)
        return _centre_crop(out, h8, w8)
    images = decode_latents(model, latents, tiled=tiling_wanted(opts, latents.shape[-1] * 8, latents.shape[-2] * 8))
    pixels = [image_to_tensor(upscale_to(plan.upscaler, im, plan.width, plan.height, crop=plan.crop, opts=opts))
              for im in images]
    tiled = tiling_wanted(opts, plan.width, plan.height)
    return torch.cat([encode_pixels(model, p, tiled=tiled) for p in pixels])


def _cover(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    s = max(th / h, tw / w)
    return max(th, round(h * s)), max(tw, round(w * s))


def _centre_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def hires_infotext(req: GenerationRequest, plan: HiresPlan) -> dict[str, Any]:
    """A1111's hires fields (``Size`` stays the first pass's size)."""
    info: dict[str, Any] = {"Denoising strength": req.denoising_strength}
    if req.hr_resize_x or req.hr_resize_y:
        info["Hires resize"] = f"{plan.width}x{plan.height}"
    else:
        info["Hires upscale"] = req.hr_scale
    if req.hr_second_pass_steps:
        info["Hires steps"] = req.hr_second_pass_steps
    info["Hires upscaler"] = plan.upscaler_name
    if req.hr_sampler_name not in (None, "", SAME_SAMPLER):
        info["Hires sampler"] = plan.sampler.name
    if req.hr_scheduler not in (None, "", SAME_SCHEDULER) and plan.schedule is not None:
        info["Hires schedule type"] = plan.schedule.label
    if req.hr_prompt and req.hr_prompt != req.prompt:
        info["Hires prompt"] = req.hr_prompt
    if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt:
        info["Hires negative prompt"] = req.hr_negative_prompt
    return info
