"""Built-in plugin: the k-diffusion samplers and schedule types A1111 offers."""

from __future__ import annotations

from webui.hookspecs import hookimpl
from webui.sampling import samplers as k
from webui.sampling.registry import SamplerDef
from webui.sampling.schedules import ScheduleDef, builtin_schedules


@hookimpl
def register_samplers() -> list[SamplerDef]:
    return [
        SamplerDef("DPM++ 2M", k.sample_dpmpp_2m, aliases=("k_dpmpp_2m",), default_scheduler="karras"),
        SamplerDef("Euler a", k.sample_euler_ancestral, aliases=("k_euler_a", "k_euler_ancestral"),
                   options={"uses_ensd": True}, ancestral=True),
        SamplerDef("Euler", k.sample_euler, aliases=("k_euler",)),
        SamplerDef("Heun", k.sample_heun, aliases=("k_heun",), second_order=True),
    ]


@hookimpl
def register_schedules() -> list[ScheduleDef]:
    return builtin_schedules()
