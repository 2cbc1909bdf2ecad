"""Samplers with k-diffusion's update rules (the ones A1111 runs).

Each sampler is ``fn(model, x, sigmas, *, noise, callback, eta, s_noise, ...) -> x0``
where ``model(x, sigma)`` is a CFG-guided denoiser, ``sigmas`` ends in 0,
``noise()`` returns fresh per-image noise (seeded per image), and ``callback``
is called after every step with ``(i, x, denoised, sigma)`` and may raise
:class:`webui.jobs.Interrupted`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    return (x - denoised) / sigma


def _ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones([x.shape[0]])


@torch.no_grad()
def sample_euler(model: Model, x, sigmas, *, noise: NoiseFn, callback: StepCallback,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0, **_: object) -> torch.Tensor:
    """Euler (Karras et al. Algorithm 2, with optional churn)."""
    s_in = _ones(x)
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= float(sigma) <= s_tmax and s_churn > 0 else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + noise() * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
        callback(i, x, denoised, sigma)
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Model, x, sigmas, *, noise: NoiseFn, callback: StepCallback,
                           eta: float = 1.0, s_noise: float = 1.0, **_: object) -> torch.Tensor:
    """Euler ancestral."""
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = _to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise() * s_noise * sigma_up
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model: Model, x, sigmas, *, noise: NoiseFn, callback: StepCallback,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0, **_: object) -> torch.Tensor:
    """Heun's second-order method (Karras et al. Algorithm 2)."""
    s_in = _ones(x)
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= float(sigma) <= s_tmax and s_churn > 0 else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + noise() * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = model(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = _to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
        callback(i, x, denoised, sigma)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x, sigmas, *, noise: NoiseFn, callback: StepCallback, **_: object) -> torch.Tensor:
    """DPM-Solver++(2M)."""
    s_in = _ones(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        callback(i, x, denoised, sigmas[i])
    return x
