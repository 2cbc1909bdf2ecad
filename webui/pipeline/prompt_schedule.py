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
    #: ``use_old_scheduling`` was on and changed a schedule (A1111 then writes "Old prompt editing timelines")
    old_timelines: bool = False

    def at(self, step: int) -> tuple[list[tuple[Conditioning, float]], Conditioning]:
        return [(p.at(step), w) for p, w in self.positives], self.negative.at(step)


def build_job_conditioning(components, prompt: str, negative: str, steps: int,
                           opts: EncodeOptions, embeddings=None, *, hires_steps: int | None = None,
                           use_old_scheduling: bool = False) -> JobConditioning:
    """Parse schedules and AND-parts of both prompts and encode every distinct text once.

    ``steps`` are the first pass's steps; for the hires pass ``hires_steps`` are its own steps, and
    ``[a:b:N]`` counts from the end of the first pass (A1111's ``get_learned_conditioning`` with
    ``hires_steps``). ``use_old_scheduling`` is A1111's "Old prompt editing timelines" option.
    """
    res_indexes, flat, _ = get_multicond_prompt_list([prompt])
    pos_schedules = get_learned_conditioning_prompt_schedules(flat, steps, hires_steps, use_old_scheduling)
    neg_schedule = get_learned_conditioning_prompt_schedules([negative], steps, hires_steps, use_old_scheduling)[0]
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
    return JobConditioning(positives, scheduled(neg_schedule, True), len(texts),
                           use_old_scheduling and old_timelines_differ([prompt, negative], steps, hires_steps))


def old_timelines_differ(prompts: list[str], steps: int, hires_steps: int | None = None) -> bool:
    """Whether the old and the new prompt-editing rule give different schedules for these (whole) prompts.

    A1111 (``processing.get_conds_with_caching``) compares both rules on the prompts of each pass when
    ``use_old_scheduling`` is on and writes "Old prompt editing timelines: True" only if they differ.
    """
    old = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, True)
    new = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, False)
    return old != new


def compat_infotext(opts, *jobs: JobConditioning | None) -> dict[str, bool]:
    """The infotext keys A1111 writes for the compatibility options in effect.

    * "Old prompt editing timelines: True" when ``use_old_scheduling`` changed a schedule of the job
      (``processing.get_conds_with_caching``);
    * "Downcast alphas_cumprod: True" whenever ``use_downcasted_alpha_bar`` is on
      (``sd_models.apply_alpha_schedule_override``).

    ``use_old_emphasis_implementation`` has no infotext key in A1111 (its option defines none).
    """
    info: dict[str, bool] = {}
    if any(job is not None and job.old_timelines for job in jobs):
        info["Old prompt editing timelines"] = True
    if opts.get("use_downcasted_alpha_bar", False):
        info["Downcast alphas_cumprod"] = True
    return info


def stack(conds: list[Conditioning], batch: int, device: torch.device, dtype: torch.dtype) -> Conditioning:
    """Concatenate conditionings, each repeated for ``batch`` images."""
    context = torch.cat([c.context.expand(batch, -1, -1) for c in conds]).to(device, dtype)
    pooled = None
    if conds[0].pooled is not None:
        pooled = torch.cat([c.pooled.expand(batch, -1) for c in conds]).to(device, dtype)
    return Conditioning(context, pooled)
