"""Driving a sampler the way A1111 does: sigmas for the schedule, initial latents, noise source."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from webui.pipeline.noise import ImageRNG
from webui.sampling.brownian import BrownianTreeNoise
from webui.sampling.denoiser import DiscreteSchedule
from webui.sampling.registry import SamplerDef
from webui.sampling.schedules import ScheduleDef, uniform


def cpu_schedule(ds: DiscreteSchedule) -> DiscreteSchedule:
    """A CPU copy of a model's discrete schedule (sigma schedules are computed on the CPU)."""
    cpu = DiscreteSchedule.__new__(DiscreteSchedule)
    cpu.family = ds.family
    cpu.sigmas, cpu.log_sigmas = ds.sigmas.cpu(), ds.log_sigmas.cpu()
    return cpu


def sigmas_for(sampler: SamplerDef, schedule: ScheduleDef | None, steps: int, ds: DiscreteSchedule) -> torch.Tensor:
    """The sigmas of a run, on the CPU so the loop's control flow never syncs the device.

    The sampler's own grid wins (timestep samplers); otherwise the schedule type (uniform for
    "Automatic" without a sampler default). Samplers flagged ``discard_next_to_last_sigma`` get
    ``steps + 1`` sigmas with the next-to-last removed, as A1111 does.
    """
    cpu = cpu_schedule(ds)
    if sampler.sigmas_fn is not None:
        return sampler.sigmas_fn(steps, cpu).float()
    fn = schedule.fn if schedule is not None else uniform
    if sampler.discard_next_to_last_sigma:
        s = fn(steps + 1, cpu).float()
        return torch.cat([s[:-2], s[-1:]])
    return fn(steps, cpu).float()


def uses_eta(sampler: SamplerDef) -> bool:
    """Samplers that take eta in A1111 (ancestral, SDE, DPM fast/adaptive, DDIM-style)."""
    return sampler.uses_ensd or sampler.brownian_noise or sampler.eta_option == "eta_ddim"


def eta_infotext(sampler: SamplerDef, eta: float) -> dict[str, Any]:
    """A1111 writes ``Eta`` when not 1 (k-diffusion samplers) and ``Eta DDIM`` when not 0."""
    if not uses_eta(sampler):
        return {}
    if sampler.eta_option == "eta_ddim":
        return {"Eta DDIM": eta} if eta != 0.0 else {}
    return {"Eta": eta} if eta != 1.0 else {}


def sample(
    sampler: SamplerDef,
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ds: DiscreteSchedule,
    sigmas: torch.Tensor,
    rng: ImageRNG,
    seeds: Sequence[int],
    *,
    params: Mapping[str, float],
    callback: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None],
    x: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``sampler`` from fresh noise (or from ``x`` already at ``sigmas[0]``) to the final latents."""
    if x is None:
        noise = rng.first()
        scale = (1 + sigmas[0] ** 2) ** 0.5 if sampler.vp_init else sigmas[0]
        x = noise * scale.to(noise.device)
    if sampler.brownian_noise:
        positive = sigmas[sigmas > 0]
        noise_sampler = BrownianTreeNoise(x, float(positive.min()), float(sigmas.max()), seeds)
    else:
        noise_sampler = lambda _sigma, _sigma_next: rng.next()  # noqa: E731 - A1111 draws from per-image generators
    extra: dict[str, Any] = dict(sampler.options)
    if sampler.full_range:
        extra.update(sigma_min=float(ds.sigma_min), sigma_max=float(ds.sigma_max), n=len(sigmas) - 1)
    return sampler.fn(model_fn, x, sigmas, noise_sampler=noise_sampler, callback=callback, schedule=ds,
                      **params, **extra)
