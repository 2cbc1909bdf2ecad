"""Sampler and schedule-type registries, filled from the ``register_samplers`` /
``register_schedules`` hooks.

The sampler contract (see also docs/extensions.md)::

    fn(model, x, sigmas, *, noise_sampler, callback, schedule, eta, s_noise, s_churn, s_tmin, s_tmax,
       **options) -> x0

* ``model(x, sigma_batch) -> denoised`` -- the CFG-guided denoiser in k-diffusion's space
  (``x = x0 + sigma * eps``).
* ``x`` -- the initial latents, already scaled (``noise * sigmas[0]``, or
  ``noise * sqrt(1 + sigmas[0]**2)`` when ``SamplerDef.vp_init``).
* ``sigmas`` -- 1-D float32 CPU tensor ending in 0 (so loop control flow never syncs a GPU).
* ``noise_sampler(sigma, sigma_next) -> Tensor`` -- fresh noise like ``x``, drawn from the
  per-image seeded generators (or a per-image seeded Brownian tree for ``brownian_noise``).
* ``callback(i, x, denoised, sigma)`` -- call after every step; it may raise to stop sampling.
* ``schedule`` -- the model's :class:`~webui.sampling.denoiser.DiscreteSchedule` (for samplers that
  work on training timesteps).
* ``options`` -- the ``SamplerDef.options`` dict, passed as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from webui.errors import UnknownChoice
from webui.sampling.schedules import ScheduleDef

#: Legacy A1111 combined names end in one of these schedule labels ("DPM++ 2M Karras").
_LEGACY_SUFFIXES = ("SGM Uniform", "Polyexponential", "Exponential", "Karras", "Uniform")


@dataclass(frozen=True)
class SamplerDef:
    """A sampler: A1111 name, aliases, the sampling function and how the pipeline drives it.

    :param default_scheduler: the ScheduleDef name "Automatic" resolves to (None: uniform).
    :param discard_next_to_last_sigma: compute ``steps + 1`` sigmas and drop the next-to-last (A1111).
    :param brownian_noise: SDE sampler: noise comes from a Brownian tree seeded per image.
    :param uses_ensd: draws extra noise (A1111 "uses_ensd"); informational.
    :param sigmas_fn: ``fn(steps, schedule) -> sigmas`` when the sampler chooses its own steps
        (timestep samplers such as DDIM); overrides the schedule type.
    :param vp_init: start from ``noise * sqrt(1 + sigma_0**2)`` (unit-variance noise in the VP space
        that timestep samplers work in) instead of ``noise * sigma_0``.
    :param full_range: the sampler integrates between the model's own sigma_min and sigma_max and
        ignores the schedule (DPM fast / DPM adaptive).
    :param eta_option: which option supplies ``eta`` (``"eta_ancestral"`` or ``"eta_ddim"``).
    """

    name: str
    fn: Callable[..., Any]
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    default_scheduler: str | None = None
    second_order: bool = False
    discard_next_to_last_sigma: bool = False
    brownian_noise: bool = False
    uses_ensd: bool = False
    sigmas_fn: Callable[[int, Any], torch.Tensor] | None = None
    vp_init: bool = False
    full_range: bool = False
    eta_option: str = "eta_ancestral"

    def public_options(self) -> dict[str, str]:
        """A1111's ``options`` dict shape for ``GET /sdapi/v1/samplers``."""
        out = {k: str(v) for k, v in self.options.items()}
        if self.default_scheduler:
            out["scheduler"] = self.default_scheduler
        for flag in ("second_order", "discard_next_to_last_sigma", "brownian_noise", "uses_ensd"):
            if getattr(self, flag):
                out[flag] = "True"
        return out


class SamplerRegistry:
    """Name lookup over samplers and schedule types (case-insensitive, aliases)."""

    def __init__(self, samplers: Iterable[SamplerDef], schedules: Iterable[ScheduleDef]):
        self.samplers: dict[str, SamplerDef] = {}
        for s in samplers:
            self.samplers.setdefault(s.name, s)
        self.schedules: dict[str, ScheduleDef] = {}
        for d in schedules:
            self.schedules.setdefault(d.name, d)
        self._sampler_index = {k.lower(): s for s in self.samplers.values() for k in (s.name, *s.aliases)}
        self._schedule_index = {k.lower(): s for s in self.schedules.values() for k in (s.name, s.label, *s.aliases)}

    def sampler(self, name: str) -> SamplerDef:
        s = self._sampler_index.get(name.lower())
        if s is None:
            raise UnknownChoice("sampler_name", "sampler", name, self.samplers)
        return s

    def schedule(self, name: str) -> ScheduleDef | None:
        """Return the schedule for ``name``; ``None`` for "Automatic"."""
        if name.lower() == "automatic" or name == "":
            return None
        s = self._schedule_index.get(name.lower())
        if s is None:
            valid = ["Automatic", *(d.label for d in self.schedules.values())]
            raise UnknownChoice("scheduler", "scheduler", name, valid)
        return s

    def resolve(self, sampler_name: str, scheduler: str | None) -> tuple[SamplerDef, ScheduleDef | None]:
        """Resolve names, splitting legacy combined names ("DPM++ 2M Karras").

        Returns the sampler and the effective schedule (None = uniform, k-diffusion's default).
        """
        if sampler_name.lower() not in self._sampler_index:
            for suffix in _LEGACY_SUFFIXES:
                if sampler_name.endswith(" " + suffix):
                    base = sampler_name[: -len(suffix) - 1]
                    if base.lower() in self._sampler_index:
                        if scheduler in (None, "", "Automatic", "automatic"):
                            scheduler = suffix
                        sampler_name = base
                        break
        sampler = self.sampler(sampler_name)
        sched = self.schedule(scheduler or "Automatic")
        if sched is None and sampler.default_scheduler:
            sched = self.schedules.get(sampler.default_scheduler)
        return sampler, sched
