"""Sigma schedules (A1111 "Schedule type"). Each ``fn(n, schedule)`` returns ``n`` sigmas and a final 0
(KL Optimal, as in A1111, ends at sigma_min instead)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from webui.sampling.denoiser import DiscreteSchedule


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def _range(schedule: DiscreteSchedule) -> tuple[float, float]:
    return float(schedule.sigma_min), float(schedule.sigma_max)


def uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Timesteps evenly spaced from the last to the first (k-diffusion's ``get_sigmas``)."""
    t_max = len(schedule.sigmas) - 1
    t = torch.linspace(t_max, 0, n, device=schedule.sigmas.device)
    return _append_zero(schedule.t_to_sigma(t))


def karras(n: int, schedule: DiscreteSchedule, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    smin, smax = _range(schedule)
    ramp = torch.linspace(0, 1, n)
    min_inv, max_inv = smin ** (1 / rho), smax ** (1 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    smin, smax = _range(schedule)
    return _append_zero(torch.linspace(math.log(smax), math.log(smin), n).exp())


def polyexponential(n: int, schedule: DiscreteSchedule, rho: float = 1.0) -> torch.Tensor:
    """Log sigma following a polynomial ramp (rho 1 = exponential)."""
    smin, smax = _range(schedule)
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(smax) - math.log(smin)) + math.log(smin)))


def _timesteps_to_sigmas(schedule: DiscreteSchedule, ts: torch.Tensor) -> torch.Tensor:
    return _append_zero(torch.stack([schedule.t_to_sigma(t) for t in ts]).float())


def sgm_uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Evenly spaced timesteps from sigma_max towards sigma_min, dropping the last point (SGM / SDXL)."""
    start = schedule.sigma_to_t(schedule.sigma_max.reshape(1))[0]
    end = schedule.sigma_to_t(schedule.sigma_min.reshape(1))[0]
    return _timesteps_to_sigmas(schedule, torch.linspace(float(start), float(end), n + 1)[:-1])


def normal(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Evenly spaced timesteps from sigma_max to sigma_min, both included."""
    start = schedule.sigma_to_t(schedule.sigma_max.reshape(1))[0]
    end = schedule.sigma_to_t(schedule.sigma_min.reshape(1))[0]
    return _timesteps_to_sigmas(schedule, torch.linspace(float(start), float(end), n))


def simple(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Every (1000 / n)-th training sigma from the top (ComfyUI's "simple")."""
    step = len(schedule.sigmas) / n
    return _append_zero(torch.tensor([float(schedule.sigmas[-(1 + int(i * step))]) for i in range(n)]))


def ddim_uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """The training sigmas at timesteps 1, 1 + k, 1 + 2k, ... (k = 1000 // n), descending."""
    step = max(len(schedule.sigmas) // n, 1)
    picked = [float(schedule.sigmas[i]) for i in range(1, len(schedule.sigmas), step)]
    return _append_zero(torch.tensor(picked[::-1]))


def beta(n: int, schedule: DiscreteSchedule, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """A1111's Beta schedule (Lee et al. 2024, "Beta Sampling is All You Need"): sigma_min plus the Beta(0.6, 0.6)
    quantiles of 1 - linspace(0, 1, n) times (sigma_max - sigma_min). (Forge and ComfyUI instead pick training
    timesteps at those quantiles; A1111 is the reference here.)"""
    from scipy import stats

    smin, smax = _range(schedule)
    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta_)
    return _append_zero(torch.tensor([smin + q * (smax - smin) for q in quantiles], dtype=torch.float32))


def kl_optimal(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """KL-optimal schedule (Sabour et al. 2024): linear in arctan(sigma); n + 1 points ending at sigma_min."""
    smin, smax = _range(schedule)
    a_min, a_max = torch.arctan(torch.tensor(smin)), torch.arctan(torch.tensor(smax))
    idx = torch.arange(n + 1)
    return torch.tan(idx / n * a_min + (1.0 - idx / n) * a_max)


#: Align Your Steps (Sabour et al. 2024) 10-step tables, interpolated log-linearly for other counts.
AYS_SIGMAS = {
    "sd1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
}


def align_your_steps(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    table = AYS_SIGMAS["sdxl" if schedule.family == "sdxl" else "sd1"]
    if n == len(table):
        return torch.tensor([*table, 0.0], dtype=torch.float32)
    xs = np.linspace(0, 1, len(table))
    ys = np.log(table[::-1])
    new = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.tensor(np.append(new, [0.0]), dtype=torch.float32)


@dataclass(frozen=True)
class ScheduleDef:
    """A schedule type: A1111 name, label (shown and written to infotext), aliases, the function."""

    name: str
    label: str
    fn: Callable[[int, DiscreteSchedule], torch.Tensor]
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_inner_model: bool = False


def builtin_schedules() -> list[ScheduleDef]:
    return [
        ScheduleDef("uniform", "Uniform", uniform, need_inner_model=True),
        ScheduleDef("karras", "Karras", karras, default_rho=7.0),
        ScheduleDef("exponential", "Exponential", exponential),
        ScheduleDef("polyexponential", "Polyexponential", polyexponential, default_rho=1.0),
        ScheduleDef("sgm_uniform", "SGM Uniform", sgm_uniform, aliases=("SGMUniform",), need_inner_model=True),
        ScheduleDef("kl_optimal", "KL Optimal", kl_optimal),
        ScheduleDef("align_your_steps", "Align Your Steps", align_your_steps),
        ScheduleDef("simple", "Simple", simple, need_inner_model=True),
        ScheduleDef("normal", "Normal", normal, need_inner_model=True),
        ScheduleDef("ddim", "DDIM", ddim_uniform, need_inner_model=True),
        ScheduleDef("beta", "Beta", beta, need_inner_model=True),
    ]
