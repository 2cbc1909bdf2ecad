"""Sigma schedules (A1111 "Schedule type").  Each returns ``n`` sigmas plus a final 0."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from webui.sampling.denoiser import DiscreteSchedule


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Timesteps evenly spaced from the last to the first (k-diffusion ``get_sigmas``)."""
    t_max = len(schedule.sigmas) - 1
    t = torch.linspace(t_max, 0, n, device=schedule.sigmas.device)
    return _append_zero(schedule.t_to_sigma(t))


def karras(n: int, schedule: DiscreteSchedule, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    smin, smax = float(schedule.sigma_min), float(schedule.sigma_max)
    ramp = torch.linspace(0, 1, n, device=schedule.sigmas.device)
    min_inv, max_inv = smin ** (1 / rho), smax ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return _append_zero(sigmas)


def exponential(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    smin, smax = float(schedule.sigma_min), float(schedule.sigma_max)
    sigmas = torch.linspace(math.log(smax), math.log(smin), n, device=schedule.sigmas.device).exp()
    return _append_zero(sigmas)


def polyexponential(n: int, schedule: DiscreteSchedule, rho: float = 1.0) -> torch.Tensor:
    smin, smax = float(schedule.sigma_min), float(schedule.sigma_max)
    ramp = torch.linspace(1, 0, n, device=schedule.sigmas.device) ** rho
    sigmas = torch.exp(ramp * (math.log(smax) - math.log(smin)) + math.log(smin))
    return _append_zero(sigmas)


def sgm_uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Evenly spaced timesteps from sigma_max to sigma_min, without the last point (SGM)."""
    start = schedule.sigma_to_t(torch.tensor(float(schedule.sigma_max)))
    end = schedule.sigma_to_t(torch.tensor(float(schedule.sigma_min)))
    ts = torch.linspace(float(start), float(end), n + 1)[:-1]
    sigmas = [float(schedule.t_to_sigma(t.to(schedule.sigmas.device))) for t in ts]
    return _append_zero(torch.tensor(sigmas, device=schedule.sigmas.device, dtype=torch.float32))


@dataclass(frozen=True)
class ScheduleDef:
    """A schedule type: A1111 name, label, aliases, and the function."""

    name: str  # A1111's internal name, e.g. "karras"
    label: str  # shown to users and written to infotext, e.g. "Karras"
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
    ]
