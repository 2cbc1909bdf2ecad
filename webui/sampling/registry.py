"""Sampler and schedule-type registries, filled from the ``register_samplers`` hook."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from webui.sampling.schedules import ScheduleDef

#: Legacy A1111 combined names end in one of these schedule labels ("DPM++ 2M Karras").
_LEGACY_SUFFIXES = ("Karras", "Exponential", "Polyexponential", "SGM Uniform", "Uniform")


@dataclass(frozen=True)
class SamplerDef:
    """A sampler: A1111 name, aliases, the sampling function and its defaults.

    ``fn(model, x, sigmas, *, noise, callback, **options)`` -- see :mod:`webui.sampling.samplers`.
    ``default_scheduler`` is the schedule "Automatic" resolves to (a ScheduleDef name, or None for uniform).
    """

    name: str
    fn: Callable[..., Any]
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    default_scheduler: str | None = None
    second_order: bool = False
    ancestral: bool = False


class UnknownName(ValueError):
    """An unknown sampler/scheduler name; ``valid`` lists the accepted names."""

    def __init__(self, field_name: str, value: str, valid: Iterable[str]):
        self.field_name = field_name
        self.value = value
        self.valid = list(valid)
        super().__init__(f"unknown {field_name} {value!r}; valid: {', '.join(self.valid)}")


class SamplerRegistry:
    """Name lookup over samplers and schedule types (case-insensitive, aliases)."""

    def __init__(self, samplers: Iterable[SamplerDef], schedules: Iterable[ScheduleDef]):
        self.samplers: dict[str, SamplerDef] = {}
        for s in samplers:
            self.samplers.setdefault(s.name, s)
        self.schedules: dict[str, ScheduleDef] = {s.name: s for s in schedules}
        self._sampler_index = {k.lower(): s for s in self.samplers.values() for k in (s.name, *s.aliases)}
        self._schedule_index = {k.lower(): s for s in self.schedules.values() for k in (s.name, s.label, *s.aliases)}

    def sampler(self, name: str) -> SamplerDef:
        s = self._sampler_index.get(name.lower())
        if s is None:
            raise UnknownName("sampler_name", name, self.samplers)
        return s

    def schedule(self, name: str) -> ScheduleDef | None:
        """Return the schedule for ``name``; ``None`` for "Automatic"."""
        if name.lower() == "automatic" or name == "":
            return None
        s = self._schedule_index.get(name.lower())
        if s is None:
            raise UnknownName("scheduler", name, ["Automatic", *(d.label for d in self.schedules.values())])
        return s

    def resolve(self, sampler_name: str, scheduler: str | None) -> tuple[SamplerDef, ScheduleDef | None]:
        """Resolve names, splitting legacy combined names ("DPM++ 2M Karras")."""
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
