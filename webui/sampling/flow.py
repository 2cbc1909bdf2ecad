"""Rectified-flow models (SD 3.x, FLUX.1) as k-diffusion-style denoisers.

A flow model sees ``x = (1 - sigma) * x0 + sigma * noise`` with sigma in [0, 1] and predicts the velocity
``v = noise - x0``; its denoised estimate is ``D(x, sigma) = x - sigma * v``. The ODE ``dx/dsigma = v =
(x - D) / sigma`` has the same form as k-diffusion's, so its ODE samplers (Euler, Heun, LMS, DPM2,
DPM++ 2M) run unchanged on a flow model, as in Forge and ComfyUI. Ancestral steps must renoise the flow's
way: :func:`sample_euler_ancestral_flow`. Samplers that need the DDPM ``alphas_cumprod`` or a VE SDE are
not offered for these models (:data:`FLOW_SAMPLERS`).

The training sigmas: ``t = 1/1000 ... 1`` shifted, ``shift * t / (1 + (shift - 1) * t)`` for SD 3.x (shift
3.0), ``e^mu / (e^mu + 1/t - 1)`` for FLUX.1 where dev's ``mu`` grows with the image's token count as in
its reference pipeline (0.5 at 256 tokens to 1.15 at 4096) and schnell uses no shift.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from webui.sampling.denoiser import DiscreteSchedule
from webui.sampling.samplers import _batch

#: Samplers (A1111 / Forge names) that can run on a flow model.
FLOW_SAMPLERS = ("Euler", "Euler a", "Heun", "DPM++ 2M", "LMS", "DPM2")
SD3_SHIFT = 3.0
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT, FLUX_BASE_TOKENS, FLUX_MAX_TOKENS = 0.5, 1.15, 256, 4096
TRAIN_STEPS = 1000


def flux_mu(width: int, height: int) -> float:
    """FLUX.1 dev's resolution-dependent shift: linear in the number of 2x2 latent patches."""
    tokens = (height // 16) * (width // 16)
    slope = (FLUX_MAX_SHIFT - FLUX_BASE_SHIFT) / (FLUX_MAX_TOKENS - FLUX_BASE_TOKENS)
    return FLUX_BASE_SHIFT + slope * (tokens - FLUX_BASE_TOKENS)


def shift_sigmas(t: torch.Tensor, shift: float, exponential: bool) -> torch.Tensor:
    """Flow times ``t`` in (0, 1] shifted: linearly (SD 3) or exponentially with ``mu = shift`` (FLUX.1)."""
    if exponential:
        return math.exp(shift) / (math.exp(shift) + (1.0 / t - 1.0))
    return shift * t / (1.0 + (shift - 1.0) * t)


def model_shift(spec, width: int, height: int) -> tuple[float, bool]:
    """``(shift, exponential)`` of a flow model at a size: SD 3 3.0; FLUX.1 dev ``mu`` by resolution,
    schnell 1.0 (no shift)."""
    if spec.family == "flux":
        return (round(flux_mu(width, height), 4), True) if spec.distilled_guidance else (1.0, False)
    return SD3_SHIFT, False


def flow_schedule(shift: float, exponential: bool, family: str) -> DiscreteSchedule:
    """The 1000 training sigmas of a flow model as a :class:`DiscreteSchedule` (ascending, like
    k-diffusion's), so every schedule type (Simple, Normal, Beta, Karras ...) works on it."""
    t = torch.arange(1, TRAIN_STEPS + 1, dtype=torch.float64) / TRAIN_STEPS
    sigmas = shift_sigmas(t, shift, exponential).float()
    schedule = DiscreteSchedule.__new__(DiscreteSchedule)
    schedule.family = family
    schedule.sigmas, schedule.log_sigmas = sigmas, sigmas.log()
    return schedule


class FlowDenoiser:
    """``D(x, sigma) = x - sigma * v(x, sigma)``; ``model_fn(x, sigma)`` returns the velocity and gets the
    per-image sigma (the model's timestep is ``1000 * sigma``)."""

    def __init__(self, schedule: DiscreteSchedule, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.schedule = schedule
        self.model_fn = model_fn

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = self.model_fn(x, sigma)
        s = sigma.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return x - v * s


def noise_to(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A flow model's noised latents at ``sigma``: ``(1 - sigma) * x0 + sigma * noise``."""
    s = sigma.to(noise.device, noise.dtype)
    return x0.to(noise.device) * (1 - s) + noise * s


@torch.no_grad()
def sample_euler_ancestral_flow(model, x, sigmas, *, noise_sampler, callback, eta: float = 1.0,
                                s_noise: float = 1.0, **_):
    """Ancestral Euler for rectified flow: step down to ``sigma_down`` (the next sigma lowered by ``eta``) on
    the ODE, then scale and add fresh noise so the marginal at the next sigma is the flow's again:
    ``x' = (1 - s') x0 + s' n`` needs ``x' = (a'/a_d) x_d + r n`` with ``a = 1 - sigma`` and
    ``r^2 = s'^2 - (s_d a' / a_d)^2``."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, _batch(x, sigmas[i]))
        if sigma_next == 0:
            x = denoised
        else:
            sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
            alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
            ratio = sigma_down / sigma
            x = x * ratio + denoised * (1 - ratio)
            if eta > 0:
                renoise = max(sigma_next**2 - (sigma_down * alpha_next / alpha_down) ** 2, 0.0) ** 0.5
                x = x * (alpha_next / alpha_down) + noise_sampler(sigmas[i], sigmas[i + 1]) * (s_noise * renoise)
        callback(i, x, denoised, sigmas[i])
    return x


def for_flow_model(sampler, schedule, scheduler_name: str | None, schedules: dict, field: str = "sampler_name"):
    """The sampler and schedule a flow model runs: Euler a becomes its flow form, "Automatic" is Simple (as
    Forge presets these models); a sampler that cannot run on a flow model is the request's error (422)
    listing those that can."""
    from dataclasses import replace

    from webui.errors import RequestError

    if sampler.name not in FLOW_SAMPLERS:
        raise RequestError(field, f"{sampler.name} cannot sample a flow-matching model (SD 3.x, FLUX.1); "
                                  f"use one of: {', '.join(FLOW_SAMPLERS)}")
    if sampler.name == "Euler a":
        sampler = replace(sampler, fn=sample_euler_ancestral_flow)
    if scheduler_name in (None, "", "Automatic", "automatic") and "simple" in schedules:
        schedule = schedules["simple"]
    return sampler, schedule
