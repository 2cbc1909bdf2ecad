"""txt2img, read top to bottom like a diffusers ``__call__``:

1. check inputs           4. prepare latents (per-image seeded noise)
2. resolve model/sampler  5. denoise loop (per-step hook: progress, interrupt, previews)
3. encode prompt          6. decode -> 7. post-process hooks -> 8. infotext + save
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui import __version__
from webui.images import ImageSaver
from webui.infotext import format_infotext
from webui.jobs import Interrupted, Job
from webui.models.manager import LoadedModel
from webui.networks.embeddings import EmbeddingDB
from webui.networks.lora import AppliedLoras, LoraRegistry, apply_loras
from webui.pipeline.conditioning import Conditioning, EncodeOptions
from webui.pipeline.init_image import encode_init_images
from webui.pipeline.noise import ImageRNG, resolve_seed
from webui.pipeline.prompt_schedule import (
    JobConditioning,
    build_job_conditioning,
    stack,
)
from webui.pipeline.request import GenerationRequest, RequestError, check_request
from webui.pipeline.result import GenerationResult
from webui.pipeline.sample import eta_infotext, sample, sigmas_for
from webui.pipeline.state import ImageState, StepState
from webui.plugins import Hooks
from webui.prompts.parser import parse_extra_networks
from webui.sampling.denoiser import Denoiser, DiscreteSchedule
from webui.sampling.registry import SamplerDef, SamplerRegistry
from webui.sampling.schedules import ScheduleDef
from webui.styles import StyleStore

log = logging.getLogger(__name__)


@dataclass
class PipelineEnv:
    """What a generation needs from the application, passed down explicitly."""

    hooks: Hooks
    samplers: SamplerRegistry
    saver: ImageSaver
    data_dir: Path
    styles: StyleStore | None = None
    loras: LoraRegistry | None = None
    embeddings: EmbeddingDB | None = None
    file_hash: Callable[[Path], str] | None = None  # sha256 of a file (cached)


class _StopSampling(Exception):
    def __init__(self, denoised: torch.Tensor, skipped: bool):
        self.denoised = denoised
        self.skipped = skipped


def _cfg_denoiser(model: LoadedModel, conds: JobConditioning, cfg_scale: float,
                  width: int, height: int, batch: int) -> tuple[Any, DiscreteSchedule]:
    """The CFG-guided denoiser ``D(x, sigma)`` for one batch, following the prompt schedules.

    Composable prompts: ``uncond + cfg * sum_k w_k (cond_k - uncond)`` (A1111's combine step).
    The uncond pass is skipped when CFG is 1 and there is a single part.
    """
    c = model.components
    unet = c.unet
    schedule = DiscreteSchedule(c.alphas_cumprod, c.spec.family).to(model.device)
    use_uncond = not (cfg_scale == 1.0 and len(conds.positives) == 1)
    groups = len(conds.positives) + (1 if use_uncond else 0)
    time_ids = None
    if c.spec.family == "sdxl":
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=model.device, dtype=model.dtype)
        time_ids = time_ids.expand(batch * groups, -1)
    image_cond = None
    if c.spec.inpainting:
        image_cond = _txt2img_inpaint_conditioning(model, batch * groups, width, height)
    calls = [0]
    cached: dict[str, Any] = {"key": None}

    def context_at(step: int) -> tuple[Conditioning, list[float]]:
        parts, neg = conds.at(step)
        key = (tuple(id(p) for p, _ in parts), id(neg))
        if cached["key"] != key:
            cached["ctx"] = stack([p for p, _ in parts] + ([neg] if use_uncond else []), batch, model.device,
                                  model.dtype)
            cached["key"] = key
        return cached["ctx"], [w for _, w in parts]

    current: dict[str, Any] = {}

    def unet_fn(x_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = current["ctx"]
        added = None if time_ids is None else {"text_embeds": ctx.pooled, "time_ids": time_ids}
        x_in = x_scaled.to(model.dtype)
        if image_cond is not None:
            x_in = torch.cat([x_in, image_cond], dim=1)
        out = unet(x_in, t, encoder_hidden_states=ctx.context, added_cond_kwargs=added, return_dict=False)[0]
        return out.float()

    # built once per batch: the denoiser keeps a host copy of the sigmas, which must not be made per step
    denoiser = Denoiser(schedule, unet_fn, c.spec.prediction_type)

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        current["ctx"], weights = context_at(calls[0])
        calls[0] += 1
        out = denoiser(x.repeat(groups, 1, 1, 1), sigma.repeat(groups)).chunk(groups)
        if not use_uncond:
            return out[0]
        neg = out[-1]
        result = neg.clone()
        for part, w in zip(out[:-1], weights):
            result += (part - neg) * (w * cfg_scale)
        return result

    return guided, schedule


@torch.no_grad()
def _txt2img_inpaint_conditioning(model: LoadedModel, n: int, width: int, height: int) -> torch.Tensor:
    """Inpainting UNets in txt2img: a full mask and the latent of a neutral grey image (A1111)."""
    vae = model.components.vae
    grey = torch.zeros(1, 3, height, width, device=model.device, dtype=vae.dtype)
    latent = vae.encode(grey).latent_dist.mode() * model.components.vae_scaling_factor
    mask = torch.ones(1, 1, latent.shape[2], latent.shape[3], device=model.device, dtype=latent.dtype)
    return torch.cat([mask, latent], dim=1).to(model.dtype).expand(n, -1, -1, -1)


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.components.vae
    x = vae.decode(latents.to(vae.dtype) / model.components.vae_scaling_factor, return_dict=False)[0]
    x = ((x.float() + 1) / 2).clamp(0, 1)
    arr = (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


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


def txt2img(env: PipelineEnv, model: LoadedModel, req: GenerationRequest, job: Job,
            opts: Mapping[str, Any]) -> GenerationResult:
    """Run a txt2img job. Raises RequestError / UnknownName for bad input before any model work."""
    # 1. check inputs
    check_request(req)
    sampler, schedule = env.samplers.resolve(req.sampler_name, req.scheduler)
    if req.styles:
        if env.styles is None:
            raise RequestError("styles", "styles are not available")
        try:
            prompt, negative = env.styles.apply(req.prompt, req.negative_prompt, list(req.styles))
        except KeyError as exc:
            raise RequestError("styles", str(exc.args[0])) from None
        req = req.with_(prompt=prompt, negative_prompt=negative)
    clip_skip = int(opts.get("CLIP_stop_at_last_layers", 1))
    seed, subseed = resolve_seed(req.seed), resolve_seed(req.subseed)
    env.hooks.before_generate(req, job)
    job.job_count = req.n_iter
    result = GenerationResult()
    extra_info = env.hooks.extra_infotext(req)
    c = model.components

    # 2. extra networks from the prompt (applied for this job only), then encode each distinct
    #    prompt text once for the whole job (schedules, AND parts)
    prompt_text, tags = parse_extra_networks(req.prompt)
    applied, lora_info = _apply_networks(env, c, tags, result)
    try:
        enc = EncodeOptions(clip_skip=clip_skip, emphasis=str(opts.get("emphasis", "Original")),
                            comma_padding_backtrack=int(opts.get("comma_padding_backtrack", 20)))
        lookup = env.embeddings.lookup(c) if env.embeddings is not None else None
        conds = build_job_conditioning(c, prompt_text, req.negative_prompt, req.steps, enc, lookup)
        if lookup is not None and lookup.used and env.file_hash is not None:
            lora_info["TI hashes"] = ", ".join(f"{name}: {env.file_hash(e.path)[:12]}"
                                               for name, e in lookup.used.items())
        _sample_all(env, model, req, job, opts, sampler, schedule, clip_skip, seed, subseed, conds,
                    {**extra_info, **lora_info}, result)
    finally:
        applied.restore()
    result.info = _info(req, model, sampler, schedule, clip_skip, seed, subseed, {**extra_info, **lora_info},
                        result)
    env.hooks.after_generate(result, job)
    return result


def _apply_networks(env: PipelineEnv, components, tags, result: GenerationResult
                    ) -> tuple[AppliedLoras, dict[str, Any]]:
    """Apply ``<lora:name:te[:unet]>`` tags; unknown names are reported, not fatal (A1111)."""
    loras, missing = [], []
    for tag in tags:
        if tag.kind != "lora" or not tag.args:
            continue
        lora = env.loras.get(tag.args[0]) if env.loras is not None else None
        if lora is None:
            missing.append(tag.args[0])
            continue
        try:
            te = float(tag.args[1]) if len(tag.args) > 1 else 1.0
            unet = float(tag.args[2]) if len(tag.args) > 2 else te
        except ValueError:
            raise RequestError("prompt", f"bad LoRA weight in <lora:{':'.join(tag.args)}>") from None
        loras.append((lora, te, unet))
    if missing:
        result.warnings.append("Networks not found: " + ", ".join(missing))
    if not loras:
        return AppliedLoras(), {}
    applied = apply_loras(components, loras)
    info: dict[str, Any] = {}
    if env.file_hash is not None:
        info["Lora hashes"] = ", ".join(f"{lo.name}: {env.file_hash(lo.path)[:12]}" for lo, _, _ in loras)
    return applied, info


def _sample_all(env: PipelineEnv, model: LoadedModel, req: GenerationRequest, job: Job, opts: Mapping[str, Any],
                sampler: SamplerDef, schedule: ScheduleDef | None, clip_skip: int, seed: int, subseed: int,
                conds: JobConditioning, extra_info: dict[str, Any], result: GenerationResult) -> None:
    """Steps 3-6 for every batch of the job."""
    c = model.components

    latent_shape = (c.unet.config.out_channels, req.height // 8, req.width // 8)
    eta = req.eta if req.eta is not None else float(opts.get(sampler.eta_option, 1.0))
    sampler_params = {
        "eta": eta,
        "s_noise": req.s_noise if req.s_noise is not None else float(opts.get("s_noise", 1.0)),
        "s_churn": req.s_churn, "s_tmin": req.s_tmin, "s_tmax": req.s_tmax,
    }
    ensd = int(opts.get("eta_noise_seed_delta", 0))
    extra_info = {**eta_infotext(sampler, eta), **({"ENSD": ensd} if ensd and sampler.uses_ensd else {}),
                  **extra_info}
    init = None
    steps_run = req.steps
    if req.mode == "img2img":
        # encoded once per request; image i of the job uses init image i (or the last one)
        init = encode_init_images(model, list(req.init_images), req.width, req.height, req.resize_mode)
        # A1111: t_enc = int(strength * steps); sampling runs the last t_enc + 1 sigmas of a `steps` schedule.
        # Strength 0 is the exception: it returns the init image without any step.
        t_enc = int(min(req.denoising_strength, 0.999) * req.steps)
        steps_run = t_enc + 1 if req.denoising_strength > 0 else 0
        extra_info = {"Denoising strength": req.denoising_strength, **extra_info}
    for it in range(req.n_iter):
        if job.interrupted:
            break
        job.clear_skip()
        seeds = [seed + it * req.batch_size + j for j in range(req.batch_size)]
        subseeds = [subseed + it * req.batch_size + j for j in range(req.batch_size)]
        job.set_stage(it, steps_run, f"Batch {it + 1} out of {req.n_iter}")

        # 3. prepare latents: per-image seeded noise at the first sigma
        model_fn, ds = _cfg_denoiser(model, conds, req.cfg_scale, req.width, req.height, req.batch_size)
        sigmas = sigmas_for(sampler, schedule, req.steps, ds)
        rng = ImageRNG(latent_shape, seeds, device=model.device, source=str(opts.get("randn_source", "GPU")),
                       subseeds=subseeds, subseed_strength=req.subseed_strength,
                       seed_resize_from=(req.seed_resize_from_w, req.seed_resize_from_h), ensd=ensd)

        # 4. denoise
        def on_step(i: int, x_i: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> None:
            state = StepState(job, i, steps_run, sigma, x_i, denoised)
            env.hooks.on_step_end(state)
            if state.latents is not x_i:
                x_i.copy_(state.latents)
            job.step(min(i + 1, steps_run))
            if job.interrupted or job.skipped:
                raise _StopSampling(denoised, skipped=job.skipped and not job.interrupted)

        try:
            if init is None:
                latents = sample(sampler, model_fn, ds, sigmas, rng, seeds, params=sampler_params,
                                 callback=on_step)
            else:
                first = [min(it * req.batch_size + j, len(init) - 1) for j in range(req.batch_size)]
                x0 = init[first]
                noise = rng.first()
                if steps_run == 0:  # strength 0: the init image, no denoising step
                    latents = x0
                else:
                    tail = sigmas[len(sigmas) - steps_run - 1:]
                    latents = sample(sampler, model_fn, ds, tail, rng, seeds, params=sampler_params,
                                     callback=on_step, x=x0 + noise * tail[0].to(noise.device))
        except _StopSampling as stop:
            latents = stop.denoised
            result.interrupted = result.interrupted or not stop.skipped
        except Interrupted:
            result.interrupted = True
            break

        # 5. decode
        images = decode_latents(model, latents)

        # 6. post-process and save
        for j, image in enumerate(images):
            index = it * req.batch_size + j
            state = ImageState(image, seeds[j], index, req)
            env.hooks.postprocess_image(state)
            params = infotext_params(req, model, sampler, schedule, seeds[j], subseeds[j], clip_skip,
                                     {**extra_info, **state.extra_infotext})
            if req.subseed_strength <= 0:
                params.pop("Variation seed", None)
            infotext = format_infotext(req.prompt, req.negative_prompt, params)
            if req.save_images and opts.get("samples_save", True):
                key, default = (("outdir_img2img_samples", "outputs/img2img-images") if req.mode == "img2img"
                                else ("outdir_txt2img_samples", "outputs/txt2img-images"))
                outdir = env.data_dir / str(opts.get(key, default))
                try:
                    path = env.saver.save(state.image, outdir, seeds[j],
                                          infotext if opts.get("enable_pnginfo", True) else None,
                                          add_number=bool(opts.get("save_images_add_number", True)))
                    result.paths.append(str(path))
                    env.hooks.image_saved(str(path), infotext, state.image)
                except OSError as exc:
                    msg = f"could not save image to {outdir}: {exc}"
                    log.error(msg)
                    result.warnings.append(msg)
            result.images.append(state.image)
            result.seeds.append(seeds[j])
            result.subseeds.append(subseeds[j])
            result.infotexts.append(infotext)
            result.prompts.append(req.prompt)
            result.negative_prompts.append(req.negative_prompt)
        if result.interrupted:
            break


def _info(req: GenerationRequest, model: LoadedModel, sampler: SamplerDef, schedule: ScheduleDef | None,
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
        "denoising_strength": req.denoising_strength if req.mode == "img2img" else None,
        "resize_mode": req.resize_mode,
        "batch_size": req.batch_size,
        "n_iter": req.n_iter,
        "clip_skip": clip_skip,
        "sd_model_name": model.info.model_name,
        "sd_model_hash": model.short_hash,
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "restore_faces": False,
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

