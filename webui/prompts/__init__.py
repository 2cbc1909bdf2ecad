"""Prompt syntax: emphasis, prompt editing and alternation, composable prompts, extra networks."""

from webui.prompts.parser import (
    ExtraNetworkTag,
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_extra_networks,
    parse_prompt_attention,
)

__all__ = [
    "ExtraNetworkTag",
    "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list",
    "parse_extra_networks",
    "parse_prompt_attention",
]
