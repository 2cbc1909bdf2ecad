"""Infotext parameters and A1111's ``info`` JSON for a generation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui import __version__
from webui.models.manager import LoadedModel
from webui.pipeline.request import GenerationRequest
from webui.pipeline.result import GenerationResult
from webui.sampling.registry import SamplerDef
from webui.sampling.schedules import ScheduleDef


def schedule_label(sampler: SamplerDef, schedule: ScheduleDef | None) -> str | None:
    """The schedule type as written to infotext; None for samplers that ignore schedules."""
    if sampler.sigmas_fn is not None or sampler.full_range:
        return None
    return schedule.label if schedule is not None else "Uniform"


def infotext_params(req: GenerationRequest, model: LoadedModel, sampler: SamplerDef,
                    schedule: ScheduleDef | None, seed: int, subseed: int, clip_skip: int,
                    extra: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": sampler.name,
        "Schedule type": schedule_label(sampler, schedule),
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model.short_hash,
        "Model": model.info.model_name,
    }
    if req.subseed_strength > 0:
        params["Variation seed"] = subseed
        params["Variation seed strength"] = req.subseed_strength
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
    if clip_skip > 1:
        params["Clip skip"] = clip_skip
    params.update(extra)
    params["Version"] = f"webui-{__version__}"
    return params


#: infotext keys the A1111 "Add ... to infotext" options leave out when they are off
INFOTEXT_OPTIONS: tuple[tuple[str, str], ...] = (
    ("add_model_name_to_info", "Model"),
    ("add_model_hash_to_info", "Model hash"),
    ("add_vae_name_to_info", "VAE"),
    ("add_vae_hash_to_info", "VAE hash"),
    ("add_version_to_infotext", "Version"),
)


def apply_infotext_options(params: dict[str, Any], opts: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without the keys whose A1111 "Add ... to infotext" option is off."""
    return {k: v for k, v in params.items()
            if not any(k == key and not opts.get(option, True) for option, key in INFOTEXT_OPTIONS)}



def info_json(req: GenerationRequest, model: LoadedModel, sampler: SamplerDef, schedule: ScheduleDef | None,
          clip_skip: int, seed: int, subseed: int, extra_info: Mapping[str, Any],
          result: GenerationResult) -> dict[str, Any]:
    """A1111's ``info`` JSON for the API."""
    return {
        "prompt": req.prompt,
        "all_prompts": result.prompts,
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": result.negative_prompts,
        "seed": seed,
        "all_seeds": result.seeds,
        "subseed": subseed,
        "all_subseeds": result.subseeds,
        "subseed_strength": req.subseed_strength,
        "width": req.width,
        "height": req.height,
        "sampler_name": sampler.name,
        "scheduler": schedule_label(sampler, schedule) or "Automatic",
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "denoising_strength": req.denoising_strength if req.mode == "img2img" or req.enable_hr else None,
        "resize_mode": req.resize_mode,
        "batch_size": req.batch_size,
        "n_iter": req.n_iter,
        "clip_skip": clip_skip,
        "sd_model_name": model.info.model_name,
        "sd_model_hash": model.short_hash,
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "restore_faces": req.restore_faces,
        "extra_generation_params": dict(extra_info),
        "index_of_first_image": 0,
        "infotexts": result.infotexts,
        "styles": list(req.styles),
        "job_timestamp": "",
        "version": __version__,
        "interrupted": result.interrupted,
        "warnings": result.warnings,
        "comments": "\n".join(result.warnings),
    }

