"""Built-in plugin: A1111's samplers and schedule types.

The k-diffusion samplers use A1111 v1.10's names, aliases and per-sampler defaults
(default schedule, discarding the next-to-last sigma, Brownian noise for SDE samplers).
"""

from __future__ import annotations

from webui.hookspecs import hookimpl
from webui.sampling import samplers as k
from webui.sampling.extra_samplers import extra_sampler_defs
from webui.sampling.registry import SamplerDef
from webui.sampling.schedules import ScheduleDef, builtin_schedules


def kdiffusion_sampler_defs() -> list[SamplerDef]:
    return [
        SamplerDef("DPM++ 2M", k.sample_dpmpp_2m, ("k_dpmpp_2m",), default_scheduler="karras"),
        SamplerDef("DPM++ SDE", k.sample_dpmpp_sde, ("k_dpmpp_sde",), default_scheduler="karras",
                   second_order=True, brownian_noise=True),
        SamplerDef("DPM++ 2M SDE", k.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), default_scheduler="exponential",
                   brownian_noise=True),
        SamplerDef("DPM++ 2M SDE Heun", k.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",),
                   options={"solver_type": "heun"}, default_scheduler="exponential", brownian_noise=True),
        SamplerDef("DPM++ 2S a", k.sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), default_scheduler="karras",
                   second_order=True, uses_ensd=True),
        SamplerDef("DPM++ 3M SDE", k.sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), default_scheduler="exponential",
                   discard_next_to_last_sigma=True, brownian_noise=True),
        SamplerDef("Euler a", k.sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), uses_ensd=True),
        SamplerDef("Euler", k.sample_euler, ("k_euler",)),
        SamplerDef("LMS", k.sample_lms, ("k_lms",)),
        SamplerDef("Heun", k.sample_heun, ("k_heun",), second_order=True),
        SamplerDef("DPM2", k.sample_dpm_2, ("k_dpm_2",), default_scheduler="karras",
                   discard_next_to_last_sigma=True, second_order=True),
        SamplerDef("DPM2 a", k.sample_dpm_2_ancestral, ("k_dpm_2_a",), default_scheduler="karras",
                   discard_next_to_last_sigma=True, second_order=True, uses_ensd=True),
        SamplerDef("DPM fast", k.sample_dpm_fast, ("k_dpm_fast",), uses_ensd=True, full_range=True),
        SamplerDef("DPM adaptive", k.sample_dpm_adaptive, ("k_dpm_ad",), uses_ensd=True, full_range=True),
    ]


@hookimpl
def register_samplers() -> list[SamplerDef]:
    return kdiffusion_sampler_defs() + extra_sampler_defs()


@hookimpl
def register_schedules() -> list[ScheduleDef]:
    return builtin_schedules()
