"""The conditioning of a job: prompt editing, alternation and composable (AND) prompts.

Each distinct prompt text is encoded once per job. During sampling the denoiser asks for the
conditioning at its call count (A1111 counts denoiser calls, so second-order samplers advance
the schedule twice per step -- kept for compatibility). All texts are padded with empty chunks
to the same number of 75-token chunks, so positive, negative and every AND part batch together.
For SDXL an empty negative prompt is encoded as zeros (A1111 and diffusers agree on this).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from webui.pipeline.conditioning import (
    Conditioning,
    EncodeOptions,
    chunk_count,
    encode_prompt,
)
from webui.prompts.parser import (
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
)


@dataclass
class ScheduledPrompt:
    """``[(end_step, Conditioning)]``: the entry used while ``step <= end_step``."""

    entries: list[tuple[int, Conditioning]]

    def at(self, step: int) -> Conditioning:
        for end, cond in self.entries:
            if step <= end:
                return cond
        return self.entries[-1][1]


@dataclass
class JobConditioning:
    """Weighted positive parts (AND) and the negative prompt, each scheduled over the steps."""

    positives: list[tuple[ScheduledPrompt, float]]
    negative: ScheduledPrompt
    distinct_texts: int

    def at(self, step: int) -> tuple[list[tuple[Conditioning, float]], Conditioning]:
        return [(p.at(step), w) for p, w in self.positives], self.negative.at(step)


def build_job_conditioning(components, prompt: str, negative: str, steps: int,
                           opts: EncodeOptions, embeddings=None) -> JobConditioning:
    """Parse schedules and AND-parts of both prompts and encode every distinct text once."""
    res_indexes, flat, _ = get_multicond_prompt_list([prompt])
    pos_schedules = get_learned_conditioning_prompt_schedules(flat, steps)
    neg_schedule = get_learned_conditioning_prompt_schedules([negative], steps)[0]
    texts = {t for sched in pos_schedules for _, t in sched} | {t for _, t in neg_schedule}
    n_chunks = max(chunk_count(components, t, opts, embeddings) for t in texts)
    cache: dict[str, Conditioning] = {
        t: encode_prompt(components, t, opts, n_chunks=n_chunks, embeddings=embeddings) for t in texts}
    zero_negative = components.spec.family == "sdxl"

    def scheduled(schedule: list, is_negative: bool = False) -> ScheduledPrompt:
        entries = []
        for end, text in schedule:
            cond = cache[text]
            if is_negative and zero_negative and text == "":
                cond = cond.zeros_like()
            entries.append((int(end), cond))
        return ScheduledPrompt(entries)

    positives = [(scheduled(pos_schedules[i]), float(w)) for i, w in res_indexes[0]]
    return JobConditioning(positives, scheduled(neg_schedule, True), len(texts))


def stack(conds: list[Conditioning], batch: int, device: torch.device, dtype: torch.dtype) -> Conditioning:
    """Concatenate conditionings, each repeated for ``batch`` images."""
    context = torch.cat([c.context.expand(batch, -1, -1) for c in conds]).to(device, dtype)
    pooled = None
    if conds[0].pooled is not None:
        pooled = torch.cat([c.pooled.expand(batch, -1) for c in conds]).to(device, dtype)
    return Conditioning(context, pooled)
