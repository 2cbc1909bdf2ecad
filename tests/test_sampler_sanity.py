"""Reference-free sanity test of every registered sampler.

The data distribution is a Gaussian, N(MU, S**2) independently per latent dimension
(MU = 0.5, S = 0.3, latents 4x16x16, 64 samples).  Its exact denoiser in k-diffusion's space
(``x = x0 + sigma * eps``) is known in closed form::

    D(x, sigma) = E[x0 | x] = (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)

so a correct sampler driven by D, started from noise, must return samples whose mean is MU and
whose standard deviation is S.  Each sampler runs the way the pipeline drives it (its own sigma
grid or its default schedule type, ``discard_next_to_last_sigma``, ``vp_init`` scaling, the
model's full sigma range for ``full_range`` samplers, per-sampler eta default, options) and
also on the Karras schedule when a schedule type applies to it.

Tolerance: sample mean within MU +- 0.05 and sample std within S +- 0.05.  Why that wide:

* the statistic itself is noisy only at the 1e-3 level (64 * 1024 = 65536 values);
* the start is deliberately the pipeline's (N(0, 1) * sigma_max, mean 0 instead of MU):
  the exact flow carries that error to a mean bias of MU * S / sigma_max ~ 0.01-0.014;
* samplers that end at the smallest training sigma instead of 0 (DPM fast/adaptive, and DDIM,
  PLMS, UniPC which return A1111's VP latent at t = 1 or 0) keep up to ~0.04 of noise, i.e. +0.003
  on the std, and a VP scale factor 0.999 on the mean;
* with a generous step count a correct sampler is then within ~0.02, while the usual bugs --
  a wrong sign or coefficient, noise added at the wrong scale, a missed step, an update in the
  wrong space -- move the std by far more than 0.05 (e.g. no re-noising in an ancestral step
  collapses it, double noise inflates it, a VP/k-space mix-up scales the mean).

Step counts: 30 by default; 100 for first-order samplers (Euler, Euler a, DPM2 a, DDIM) and for the
samplers on A1111's uniform-timestep grids (PLMS, UniPC), whose last steps are coarse exactly where
this narrow (S = 0.3) distribution is resolved (sigma ~ 0.05-0.3).

LCM is a consistency-model sampler: its model must return a *sample* of the data given x (the
flow's end point), not the posterior mean.  It is driven by the exact consistency function of this
Gaussian, ``F(x, sigma) = MU + (x - MU) * S / sqrt(S**2 + sigma**2)``; with the posterior-mean
denoiser every re-noising round shrinks the variance and no step count makes it pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from webui.models.components import scaled_linear_alphas_cumprod
from webui.plugins import make_plugin_manager
from webui.sampling.denoiser import DiscreteSchedule
from webui.sampling.extra_samplers import extra_sampler_defs
from webui.sampling.registry import SamplerDef, SamplerRegistry
from webui.sampling.schedules import ScheduleDef, karras, uniform

MU, S = 0.5, 0.3
SHAPE = (64, 4, 16, 16)
TOL = 0.05
DEFAULT_STEPS = 30
MANY_STEPS = 100
#: first order, or on A1111's uniform-timestep grid (see the module docstring)
LOW_ORDER = {"Euler", "Euler a", "DPM2 a", "DDIM", "PLMS", "UniPC"}
#: samplers whose model is a consistency function, not a denoiser
CONSISTENCY = {"LCM"}
#: failures that are properties of the algorithm as A1111 runs it, not of our implementation
KNOWN_FAILURES = {
    ("DPM adaptive", "default"): (
        "DPM adaptive with A1111's default eta 1 (eta_ancestral) and k-diffusion's default tolerances "
        "(rtol 0.05, atol 0.0078) ends at std ~0.355 on this problem; k-diffusion's own "
        "sample_dpm_adaptive gives the same 0.3553 with the same noise, and with eta 0 it passes "
        "(see the 'eta0' case)"
    ),
}


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (S**2 * x + s**2 * MU) / (S**2 + s**2)


def gaussian_consistency(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return MU + (x - MU) * S / (S**2 + s**2).sqrt()


class BrownianNoise:
    """``noise_sampler`` for ``brownian_noise`` samplers: increments of one Brownian motion W(sigma).

    The SDE samplers query overlapping intervals (e.g. t->s and t->t_next within one step) and rely on
    those increments being consistent; independent Gaussians per call would bias them (DPM++ SDE
    ends at std 0.268 instead of 0.298 at 30 Karras steps).  The pipeline uses a per-image
    ``torchsde`` Brownian tree (too slow for 64 images here); this samples the same process exactly
    and lazily: W(0) = 0, new points by Brownian-bridge interpolation between known neighbours (or an
    independent increment beyond the last one).  A call returns ``(W(b) - W(a)) / sqrt(|b - a|)``.
    """

    def __init__(self, shape: tuple[int, ...], generator: torch.Generator):
        self.shape = shape
        self.gen = generator
        self.points: dict[float, torch.Tensor] = {0.0: torch.zeros(shape, dtype=torch.float64)}

    def _w(self, t: float) -> torch.Tensor:
        if t in self.points:
            return self.points[t]
        z = torch.randn(self.shape, generator=self.gen, dtype=torch.float64)
        lo = max(k for k in self.points if k < t)
        higher = [k for k in self.points if k > t]
        if not higher:
            w = self.points[lo] + math.sqrt(t - lo) * z
        else:
            hi = min(higher)
            frac = (t - lo) / (hi - lo)
            mean = self.points[lo] + frac * (self.points[hi] - self.points[lo])
            w = mean + math.sqrt((t - lo) * (hi - t) / (hi - lo)) * z
        self.points[t] = w
        return w

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        return ((self._w(b) - self._w(a)) / math.sqrt(abs(b - a))).float()


def build_registry() -> SamplerRegistry:
    hooks = make_plugin_manager(disable_extensions=True).hooks
    defs = list(hooks.register_samplers())
    names = {d.name for d in defs}
    defs += [d for d in extra_sampler_defs() if d.name not in names]
    return SamplerRegistry(defs, hooks.register_schedules())


def cpu_schedule() -> DiscreteSchedule:
    return DiscreteSchedule(scaled_linear_alphas_cumprod())


@dataclass
class Run:
    out: torch.Tensor
    sigmas: torch.Tensor
    calls: int
    callbacks: int


def run_sampler(sampler: SamplerDef, sched: ScheduleDef | None, steps: int, schedule: DiscreteSchedule,
                model: Any = gaussian_denoiser, seed: int = 0, eta: float | None = None) -> Run:
    """Drive ``sampler`` as the pipeline does (see ``webui.pipeline.sample``)."""
    if sampler.full_range:
        sigmas = karras(steps, schedule).float()  # spans exactly [sigma_min, sigma_max] of the model
    elif sampler.sigmas_fn is not None:
        sigmas = sampler.sigmas_fn(steps, schedule).float()
    else:
        fn = sched.fn if sched is not None else uniform
        if sampler.discard_next_to_last_sigma:
            s = fn(steps + 1, schedule).float()
            sigmas = torch.cat([s[:-2], s[-1:]])
        else:
            sigmas = fn(steps, schedule).float()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(SHAPE, generator=gen)
    sigma_0 = float(schedule.sigma_max) if sampler.full_range else float(sigmas[0])
    x = noise * (math.sqrt(1 + sigma_0**2) if sampler.vp_init else sigma_0)
    counts = {"model": 0, "callback": 0}

    def counted_model(x_: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        counts["model"] += 1
        return model(x_, sigma)

    def callback(i: int, x_: torch.Tensor, denoised: torch.Tensor, sigma: Any) -> None:
        counts["callback"] += 1

    def gaussian_noise(sigma: Any, sigma_next: Any) -> torch.Tensor:
        return torch.randn(SHAPE, generator=gen)

    noise_sampler = BrownianNoise(SHAPE, gen) if sampler.brownian_noise else gaussian_noise

    extra: dict[str, Any] = dict(sampler.options)
    if sampler.full_range:
        extra.update(sigma_min=float(schedule.sigma_min), sigma_max=float(schedule.sigma_max), n=len(sigmas) - 1)
    if eta is None:  # A1111's defaults of the two options
        eta = 0.0 if sampler.eta_option == "eta_ddim" else 1.0
    out = sampler.fn(counted_model, x, sigmas, noise_sampler=noise_sampler, callback=callback, schedule=schedule,
                     eta=eta, s_noise=1.0, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), **extra)
    return Run(out, sigmas, counts["model"], counts["callback"])


def _cases() -> list[Any]:
    registry = build_registry()
    cases = []
    for name in registry.samplers:
        sampler, default = registry.resolve(name, None)
        known = KNOWN_FAILURES.get((name, "default"))
        marks = [pytest.mark.xfail(strict=True, reason=known)] if known else []
        cases.append(pytest.param(name, "default", id=f"{name}-default", marks=marks))
        if known:
            cases.append(pytest.param(name, "eta0", id=f"{name}-eta0"))
        own_grid = sampler.sigmas_fn is not None or sampler.full_range
        if not own_grid and (default is None or default.name != "karras"):
            cases.append(pytest.param(name, "karras", id=f"{name}-karras"))
    return cases


@pytest.fixture(scope="module")
def registry() -> SamplerRegistry:
    return build_registry()


def test_all_a1111_samplers_are_registered(registry: SamplerRegistry) -> None:
    for name in ("DDIM", "PLMS", "UniPC", "Restart", "LCM"):
        assert name in registry.samplers


@pytest.mark.parametrize(("name", "which"), _cases())
def test_sampler_reproduces_gaussian(registry: SamplerRegistry, name: str, which: str) -> None:
    sampler, default = registry.resolve(name, None)
    sched = registry.schedule("Karras") if which == "karras" else default
    steps = MANY_STEPS if name in LOW_ORDER else DEFAULT_STEPS
    model = gaussian_consistency if name in CONSISTENCY else gaussian_denoiser
    run = run_sampler(sampler, sched, steps, cpu_schedule(), model=model, eta=0.0 if which == "eta0" else None)
    out = run.out
    assert out.shape == SHAPE
    assert torch.isfinite(out).all()
    mean, std = float(out.mean()), float(out.std())
    print(f"{name:>20} {which:>8} steps={steps:3d} evals={run.calls:4d} mean={mean:.4f} std={std:.4f}")
    assert run.callbacks >= 1
    assert abs(mean - MU) < TOL, f"{name} ({which}): mean {mean:.4f}, expected {MU} +- {TOL}"
    assert abs(std - S) < TOL, f"{name} ({which}): std {std:.4f}, expected {S} +- {TOL}"
