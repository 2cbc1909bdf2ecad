"""Generation (txt2img, img2img, inpainting, hires fix), read top to bottom like a diffusers ``__call__``:

1. check inputs and resolve names      5. denoise loop (per-step hook: progress, interrupt, previews)
2. extra networks, encode prompts       6. hires fix second pass (txt2img)
3. init latents and masks (img2img)     7. decode, overlay, post-process hooks
4. per-batch seeded noise               8. infotext + save
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from webui.errors import RequestError, UnknownChoice
from webui.filenames import request_fields, timestamp_of
from webui.infotext import format_infotext
from webui.jobs import Interrupted, Job
from webui.models.manager import LoadedModel
from webui.networks.embeddings import Embedding, EmbeddingDB
from webui.networks.lora import AppliedLoras, LoraRegistry, apply_loras
from webui.pipeline.conditioning import EncodeOptions
from webui.pipeline.generation_info import apply_infotext_options, info_json, infotext_params
from webui.pipeline.guidance import Inpaint, cfg_denoiser
from webui.pipeline.hires import HiresPlan, hires_infotext, plan_hires, upscale_latents
from webui.pipeline.init_latents import InitLatents, img2img_steps, inpaint_infotext, prepare_init
from webui.pipeline.noise import ImageRNG, resolve_seed
from webui.pipeline.patches import UNetPatch, close_patches, modified_noise, postprocess_pixels
from webui.pipeline.prompt_schedule import JobConditioning, build_job_conditioning, compat_infotext
from webui.pipeline.request import GenerationRequest, check_request
from webui.pipeline.result import GenerationResult
from webui.pipeline.sample import eta_infotext, sample, sigmas_for
from webui.pipeline.sampler_params import sigma_params
from webui.pipeline.state import ImageState, StepState
from webui.pipeline.tiling import circular_padding
from webui.pipeline.vae import decode_to_pixels, tiling_wanted, to_images
from webui.prompts.parser import parse_extra_networks
from webui.restoration.registry import FaceRestorerDef, FaceRestorerRegistry
from webui.sampling.flow import for_flow_model, model_shift, noise_to
from webui.sampling.registry import SamplerDef, SamplerRegistry
from webui.sampling.schedules import ScheduleDef
from webui.saving import ImageSaver
from webui.styles import StyleStore
from webui.upscaling.registry import UpscalerDef, UpscalerRegistry

log = logging.getLogger(__name__)


class GenerationHooks(Protocol):
    """The hooks a generation calls. :class:`webui.plugins.Hooks` is one; the pipeline only names what it
    calls, so it does not import the plugin layer (which sits above it)."""

    def before_generate(self, request: GenerationRequest, job: Job) -> None: ...

    def prepare_model(self, request: GenerationRequest, model: LoadedModel, opts: Mapping[str, Any]
                      ) -> dict[str, Any]: ...

    def unet_patches(self, request: GenerationRequest, model: LoadedModel, job: Job) -> list[UNetPatch]: ...

    def extra_infotext(self, request: GenerationRequest) -> dict[str, Any]: ...

    def on_step_end(self, state: StepState) -> None: ...

    def postprocess_image(self, state: ImageState) -> None: ...

    def after_generate(self, result: GenerationResult, job: Job) -> None: ...

    def image_saved(self, path: str, infotext: str, image: Image.Image) -> None: ...


@dataclass
class PipelineEnv:
    """What a generation needs from the application, passed down explicitly."""

    hooks: GenerationHooks
    samplers: SamplerRegistry
    saver: ImageSaver
    data_dir: Path
    styles: StyleStore | None = None
    loras: LoraRegistry | None = None
    embeddings: EmbeddingDB | None = None
    file_hash: Callable[[Path], str] | None = None  # sha256 of a file (cached)
    upscalers: UpscalerRegistry | None = None
    face_restorers: FaceRestorerRegistry | None = None
    load_refiner: Callable[[str], LoadedModel] | None = None  # a second model beside the current one


class _StopSampling(Exception):
    def __init__(self, denoised: torch.Tensor, skipped: bool):
        self.denoised = denoised
        self.skipped = skipped


@dataclass
class _Run:
    """Everything resolved once per job."""

    env: PipelineEnv
    model: LoadedModel
    req: GenerationRequest
    job: Job
    opts: Mapping[str, Any]
    sampler: SamplerDef
    schedule: ScheduleDef | None
    clip_skip: int
    seed: int
    subseed: int
    result: GenerationResult
    conds: JobConditioning | None = None
    hr_conds: JobConditioning | None = None
    hires: HiresPlan | None = None
    restorer: FaceRestorerDef | None = None
    patches: list[Any] = field(default_factory=list)
    refiner: LoadedModel | None = None
    refiner_conds: JobConditioning | None = None
    init: InitLatents | None = None
    steps_run: int = 0
    schedule_steps: int = 0  # img2img: the steps of the schedule whose last steps_run steps run
    sampler_params: dict[str, Any] = field(default_factory=dict)
    hr_sampler_params: dict[str, Any] = field(default_factory=dict)
    extra_noise: float = 0.0  # option img2img_extra_noise (img2img and the hires pass)
    img2img_upscaler: UpscalerDef | None = None  # option upscaler_for_img2img (None: Lanczos)
    ensd: int = 0
    extra_info: dict[str, Any] = field(default_factory=dict)
    zero_terminal_snr: bool = False  # the schedule is rescaled (checkpoint marker or option sd_noise_schedule)
    cfg_rescale: float = 0.0
    raw_prompts: tuple[str, str] = ("", "")  # prompt and negative prompt before styles (file name patterns)


def generate(env: PipelineEnv, model: LoadedModel, req: GenerationRequest, job: Job,
             opts: Mapping[str, Any]) -> GenerationResult:
    """Run a generation job (any mode). Raises RequestError (UnknownChoice for an unknown name) for bad input
    before model work."""
    # 1. check inputs, resolve names
    check_request(req)
    req = _option_defaults(req, opts)
    sampler, schedule = env.samplers.resolve(req.sampler_name, req.scheduler)
    spec = model.components.spec
    if spec.is_flow:
        sampler, schedule = _flow_checks(env, req, sampler, schedule)
    img2img_upscaler = _img2img_upscaler(env, req, opts) if req.mode == "img2img" else None
    hires = None
    if req.mode == "txt2img" and req.enable_hr:
        hires = plan_hires(req, env.samplers, env.upscalers, sampler, schedule)
        if spec.is_flow:
            hr_sampler, hr_schedule = for_flow_model(hires.sampler, hires.schedule, req.hr_scheduler or req.scheduler,
                                                     env.samplers.schedules, "hr_sampler_name")
            hires = replace(hires, sampler=hr_sampler, schedule=hr_schedule)
    hires_checkpoint = _hires_checkpoint(req, model) if hires is not None else None
    restorer = _face_restorer(env, req, opts)
    raw_prompts, req = (req.prompt, req.negative_prompt), _apply_styles(env, req)
    run = _Run(env, model, req, job, opts, sampler, schedule, int(opts.get("CLIP_stop_at_last_layers", 1)),
               resolve_seed(req.seed), resolve_seed(req.subseed), GenerationResult(), hires=hires, restorer=restorer,
               img2img_upscaler=img2img_upscaler)
    env.hooks.before_generate(req, job)
    model_info = env.hooks.prepare_model(req, model, opts)
    run.patches = env.hooks.unet_patches(req, model, job)
    if spec.family == "sd3" and model.components.t5 is None:
        run.result.warnings.append(f"{model.title} runs without T5-XXL (zeros in its place, CLIP only): put "
                                   "t5xxl_fp16.safetensors into models/text_encoder for full prompt following")
    unfit = [type(p).__name__ for p in run.patches if spec.is_flow and not hasattr(p, "transformer_residuals")]
    if unfit:
        raise RequestError("alwayson_scripts", f"{', '.join(unfit)} only patch U-Nets and cannot run on "
                                               f"{spec.label}; disable them for this model")
    if hires_checkpoint is not None:
        model_info["Hires checkpoint"] = hires_checkpoint
    run.refiner = _load_refiner(env, req, model)
    if run.refiner is not None:
        model_info["Refiner"] = run.refiner.title
        model_info["Refiner switch at"] = req.refiner_switch_at
    run.raw_prompts = raw_prompts
    _save_init_images(run)
    job.begin_generation(req.n_iter)
    run.extra_info = {**model_info, **env.hooks.extra_infotext(req)}
    c = model.components

    # 2. extra networks from the prompt (applied for this job only), then encode each distinct
    #    prompt text once for the whole job (schedules, AND parts)
    prompt_text, tags = parse_extra_networks(req.prompt)
    applied, network_info, bundled = _apply_networks(env, c, tags, run.result)
    try:
        enc = EncodeOptions(clip_skip=run.clip_skip, emphasis=str(opts.get("emphasis", "Original")),
                            comma_padding_backtrack=int(opts.get("comma_padding_backtrack", 20)),
                            old_emphasis=bool(opts.get("use_old_emphasis_implementation", False)))
        old_timelines = bool(opts.get("use_old_scheduling", False))
        # FLUX.1 has no per-token CLIP conditioning (its CLIP-L gives only the pooled vector): no embeddings
        lookup = env.embeddings.lookup(c, bundled) if env.embeddings is not None and spec.family != "flux" else None
        run.conds = build_job_conditioning(c, prompt_text, req.negative_prompt, req.steps, enc, lookup,
                                           use_old_scheduling=old_timelines)
        if run.refiner is not None:
            ref_lookup = env.embeddings.lookup(run.refiner.components, bundled) if env.embeddings is not None \
                else None
            run.refiner_conds = build_job_conditioning(run.refiner.components, prompt_text, req.negative_prompt,
                                                       req.steps, enc, ref_lookup, use_old_scheduling=old_timelines)
        if hires is not None:
            hr_text, _ = parse_extra_networks(hires.prompt)
            run.hr_conds = build_job_conditioning(c, hr_text, hires.negative_prompt, req.steps, enc, lookup,
                                                  hires_steps=hires.steps, use_old_scheduling=old_timelines)
        if lookup is not None and lookup.used and env.file_hash is not None:
            network_info["TI hashes"] = _ti_hashes(env, lookup.used, bundled, opts) or None
        run.extra_info = {**run.extra_info, **network_info, **compat_infotext(opts, run.conds, run.hr_conds)}
        with circular_padding(c.unet, c.vae, enabled=req.tiling):
            _prepare(run)
            _run_batches(run)
    finally:
        applied.restore()
        close_patches(run.patches)
    run.result.info = info_json(req, model, sampler, schedule, run.clip_skip, run.seed, run.subseed, run.extra_info,
                                run.result)
    for patch in run.patches:  # e.g. ControlNet's detected maps, shown after the images
        run.result.extra_images.extend(getattr(patch, "extra_images", ()))
    env.hooks.after_generate(run.result, job)
    return run.result


def _flow_checks(env: PipelineEnv, req: GenerationRequest, sampler: SamplerDef, schedule: ScheduleDef | None):
    """SD 3.x / FLUX.1: sizes in multiples of 16 (2x2 latent patches), a sampler that can run a flow model."""
    for name in ("width", "height"):
        if getattr(req, name) % 16:
            raise RequestError(name, f"must be a multiple of 16 for SD 3.x and FLUX.1 models, got {getattr(req, name)}")
    return for_flow_model(sampler, schedule, req.scheduler, env.samplers.schedules)


def _option_defaults(req: GenerationRequest, opts: Mapping[str, Any]) -> GenerationRequest:
    """A1111 1.10 (``process_images_inner``): ``restore_faces`` / ``tiling`` left unset (None) take the
    options ``face_restoration`` / ``tiling``."""
    changes: dict[str, Any] = {}
    if req.restore_faces is None:
        changes["restore_faces"] = bool(opts.get("face_restoration", False))
    if req.tiling is None:
        changes["tiling"] = bool(opts.get("tiling", False))
    return req.with_(**changes) if changes else req


def _img2img_upscaler(env: PipelineEnv, req: GenerationRequest, opts: Mapping[str, Any]) -> UpscalerDef | None:
    """The upscaler of option ``upscaler_for_img2img`` (None, empty or "None": Lanczos). An unknown name
    is the request's error when the request set it in ``override_settings``; a saved one is logged and
    Lanczos is used (A1111 prints a warning and falls back too)."""
    name = opts.get("upscaler_for_img2img")
    if name is None or str(name).strip() in ("", "None", "none"):
        return None
    try:
        return (env.upscalers or UpscalerRegistry()).get(str(name), "upscaler_for_img2img")
    except UnknownChoice as exc:
        if "upscaler_for_img2img" in req.override_settings:
            raise exc.for_field("override_settings.upscaler_for_img2img") from None
        log.warning("Option %s; img2img resizes with Lanczos", exc)
        return None


def _load_refiner(env: PipelineEnv, req: GenerationRequest, model: LoadedModel) -> LoadedModel | None:
    """The refiner model (A1111 1.6+), which must share the base model's latent space."""
    name = req.refiner_checkpoint
    if name in (None, "", "None") or env.load_refiner is None:
        return None
    try:
        refiner = env.load_refiner(name)
    except UnknownChoice as exc:
        raise exc.for_field("refiner_checkpoint") from None
    if refiner.spec.family != model.spec.family and {refiner.spec.family, model.spec.family} != {"sd1", "sd2"}:
        raise RequestError("refiner_checkpoint", f"{refiner.title} is {refiner.spec.label}; it cannot continue "
                                                 f"the latents of {model.title} ({model.spec.label})")
    return refiner


SAME_CHECKPOINT = "Use same checkpoint"


def _hires_checkpoint(req: GenerationRequest, model: LoadedModel) -> str | None:
    """A1111's ``hr_checkpoint_name``: the hires pass on another checkpoint. Only the checkpoint in use can be named
    (by title, file name, name or short hash; infotext "Hires checkpoint" with its title, as A1111 writes it); any
    other is refused naming the field -- the hires pass never silently runs on a model it was not asked for."""
    name = req.hr_checkpoint_name
    if name is None or not str(name).strip() or str(name).strip() == SAME_CHECKPOINT:
        return None
    text = str(name).strip()
    info = model.info
    if text.split(" [", 1)[0] in (info.name, info.model_name, info.path.name) or text in (model.title,
                                                                                         model.short_hash):
        return model.title
    raise RequestError("hr_checkpoint_name", f"the hires pass runs on the checkpoint in use ({model.title}); "
                                             f"another checkpoint ({text}) is not supported: use {SAME_CHECKPOINT!r} "
                                             "or switch the checkpoint (sd_model_checkpoint) for the whole job")


def _face_restorer(env: PipelineEnv, req: GenerationRequest, opts: Mapping[str, Any]) -> FaceRestorerDef | None:
    """The restorer "Restore faces" uses (option ``face_restoration_model``)."""
    if not req.restore_faces:
        return None
    name = str(opts.get("face_restoration_model", "CodeFormer"))
    return (env.face_restorers or FaceRestorerRegistry()).get(name, "restore_faces")


def _apply_styles(env: PipelineEnv, req: GenerationRequest) -> GenerationRequest:
    if not req.styles:
        return req
    if env.styles is None:
        raise RequestError("styles", "styles are not available")
    prompt, negative = env.styles.apply(req.prompt, req.negative_prompt, list(req.styles))  # UnknownChoice
    return req.with_(prompt=prompt, negative_prompt=negative)


def _apply_networks(env: PipelineEnv, components, tags, result: GenerationResult
                    ) -> tuple[AppliedLoras, dict[str, Any], dict[str, Embedding]]:
    """Apply ``<lora:name:te[:unet]>`` tags; unknown names are reported, not fatal (A1111). Also returns the
    embeddings the applied LoRA files bundle (usable in this job's prompts)."""
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
        return AppliedLoras(), {}, {}
    applied = apply_loras(components, loras)
    info: dict[str, Any] = {}
    if env.file_hash is not None:
        info["Lora hashes"] = ", ".join(f"{lo.name}: {env.file_hash(lo.path)[:12]}" for lo, _, _ in loras)
    bundled = {name: emb for lo, _, _ in loras for name, emb in lo.embeddings.items()}
    return applied, info, bundled


def _ti_hashes(env: PipelineEnv, used: dict[str, Embedding], bundled: dict[str, Embedding], opts) -> str:
    """A1111's "TI hashes": ``name: short hash`` of each embedding file used; an embedding bundled in a LoRA
    names its LoRA file instead (only with the option ``lora_bundled_ti_to_infotext``, as A1111)."""
    parts = []
    for name, emb in used.items():
        if bundled.get(name) is emb:
            if opts.get("lora_bundled_ti_to_infotext", True):
                parts.append(f"{name}: {emb.path.stem}")
        else:
            parts.append(f"{name}: {env.file_hash(emb.path)[:12]}")
    return ", ".join(parts)


def _prepare(run: _Run) -> None:
    """Sampler parameters, and (img2img) the init latents and masks -- once per request."""
    req, opts, sampler = run.req, run.opts, run.sampler
    eta = req.eta if req.eta is not None else float(opts.get(sampler.eta_option, 1.0))
    sigmas, sigma_info = sigma_params(sampler, req, opts)
    run.sampler_params = {"eta": eta, **sigmas}
    run.ensd = int(opts.get("eta_noise_seed_delta", 0))
    info = {**eta_infotext(sampler, eta), **sigma_info,
            **({"ENSD": run.ensd} if run.ensd and sampler.uses_ensd else {})}
    if run.hires is not None:  # the second pass's sampler takes its own sigma parameters (A1111)
        hr_sigmas, hr_sigma_info = sigma_params(run.hires.sampler, req, opts)
        run.hr_sampler_params = {"eta": eta, **hr_sigmas}
        info = {**info, **hr_sigma_info}
    # A1111: extra noise (option img2img_extra_noise) is added after the usual noising in img2img and in
    # the hires pass, when > 0 (sd_samplers_kdiffusion.sample_img2img)
    run.extra_noise = max(float(opts.get("img2img_extra_noise", 0.0)), 0.0)
    run.steps_run = run.schedule_steps = req.steps
    if req.mode == "img2img":
        run.init = prepare_init(run.model, req, opts, upscaler=run.img2img_upscaler)
        run.schedule_steps, run.steps_run = img2img_steps(req.steps, req.denoising_strength,
                                                          bool(opts.get("img2img_fix_steps", False)))
        info = {"Denoising strength": req.denoising_strength, **inpaint_infotext(req), **info}
        if _noise_multiplier(run) != 1.0:
            info["Noise multiplier"] = _noise_multiplier(run)
        if run.extra_noise > 0 and run.steps_run > 0:
            info["Extra noise"] = run.extra_noise
    elif run.hires is not None and run.extra_noise > 0 and req.denoising_strength > 0:
        info["Extra noise"] = run.extra_noise
    spec = run.model.components.spec
    if spec.is_flow:  # Forge's keys
        if spec.distilled_guidance:
            info["Distilled CFG Scale"] = req.distilled_cfg_scale
        info["Shift"] = model_shift(spec, req.width, req.height)[0]
        for i, path in enumerate((run.model.components.module_files or {}).values(), start=1):
            info[f"Module {i}"] = path.name  # Forge's keys; read back into forge_additional_modules
    run.zero_terminal_snr = _zero_terminal_snr(spec, opts)
    if run.zero_terminal_snr:
        info["Noise Schedule"] = "Zero Terminal SNR"  # A1111's key (option sd_noise_schedule)
    run.cfg_rescale = float(req.cfg_rescale) if req.cfg_rescale is not None else (
        0.7 if spec.zero_terminal_snr and spec.prediction_type == "v_prediction" else 0.0)
    if run.cfg_rescale > 0:
        info["CFG Rescale φ"] = run.cfg_rescale  # the key of A1111's CFG-rescale extensions and reForge
    if req.tiling:
        info["Tiling"] = True
    if run.restorer is not None:
        info["Face restoration"] = run.restorer.name
    if run.hires is not None:
        info = {**info, **hires_infotext(req, run.hires)}
    run.extra_info = {**info, **run.extra_info}


def _noise_multiplier(run: _Run) -> float:
    if run.req.initial_noise_multiplier is not None:
        return float(run.req.initial_noise_multiplier)
    return float(run.opts.get("initial_noise_multiplier", 1.0))


def _run_batches(run: _Run) -> None:
    req, job, result = run.req, run.job, run.result
    hr_steps = run.hires.steps if run.hires is not None and req.denoising_strength > 0 else 0
    for it in range(req.n_iter):
        if job.interrupted:
            break
        job.clear_skip()
        seeds = [run.seed + it * req.batch_size + j for j in range(req.batch_size)]
        subseeds = [run.subseed + it * req.batch_size + j for j in range(req.batch_size)]
        job.set_stage(it, run.steps_run + hr_steps, f"Batch {it + 1} out of {req.n_iter}")
        try:
            latents = _first_pass(run, it, seeds, subseeds)
            if run.hires is not None:
                latents = _hires_pass(run, latents, seeds, subseeds, hr_steps)
        except _StopSampling as stop:
            latents = stop.denoised
            result.interrupted = result.interrupted or not stop.skipped
        except Interrupted:
            result.interrupted = True
            break
        out_w, out_h = (run.hires.width, run.hires.height) if run.hires is not None else (req.width, req.height)
        pixels = decode_to_pixels(run.model, latents, tiled=tiling_wanted(run.opts, out_w, out_h))
        images = to_images(postprocess_pixels(run.patches, pixels))
        _emit(run, it, images, seeds, subseeds)
        if result.interrupted:
            break


def _rng(run: _Run, latent_shape: tuple[int, ...], seeds: list[int], subseeds: list[int]) -> ImageRNG:
    req = run.req
    return ImageRNG(latent_shape, seeds, device=run.model.device, source=str(run.opts.get("randn_source", "GPU")),
                    subseeds=subseeds, subseed_strength=req.subseed_strength,
                    seed_resize_from=(req.seed_resize_from_w, req.seed_resize_from_h), ensd=run.ensd)


def _step_callback(run: _Run, offset: int, steps: int):
    hooks, job, total = run.env.hooks, run.job, run.job.sampling_steps

    def on_step(i: int, x_i: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> None:
        state = StepState(job, i, steps, sigma, x_i, denoised, run.model, run.opts)
        hooks.on_step_end(state)
        if state.latents is not x_i:
            x_i.copy_(state.latents)
        job.step(min(offset + i + 1, total))
        if job.interrupted or job.skipped:
            raise _StopSampling(denoised, skipped=job.skipped and not job.interrupted)

    return on_step


def _step_of(run: _Run, offset: int, steps: int):
    job = run.job
    return lambda: (job.sampling_step - offset, steps)


def _zero_terminal_snr(spec: Any, opts: Mapping[str, Any]) -> bool:
    """Whether a model samples on the zero-terminal-SNR schedule: its own marker, or A1111's option
    ``sd_noise_schedule``."""
    return bool(spec.zero_terminal_snr) or opts.get("sd_noise_schedule") == "Zero Terminal SNR"


def _denoiser_options(run: _Run) -> dict[str, Any]:
    """Options of the guided denoiser: A1111's ``use_downcasted_alpha_bar`` and ``sd_noise_schedule``, SDXL
    crop coordinates, CFG rescale."""
    return {"downcast_alphas": bool(run.opts.get("use_downcasted_alpha_bar", False)),
            "guidance": run.req.distilled_cfg_scale,
            "zero_terminal_snr": run.zero_terminal_snr, "cfg_rescale": run.cfg_rescale,
            "sdxl_crop": (int(run.opts.get("sdxl_crop_top", 0)), int(run.opts.get("sdxl_crop_left", 0)))}


def _first_pass(run: _Run, it: int, seeds: list[int], subseeds: list[int]) -> torch.Tensor:
    """Seeded noise and the sampling loop of one batch (txt2img, or img2img from the init latents)."""
    req, model, c = run.req, run.model, run.model.components
    for patch in run.patches:
        patch.prepare(req.width, req.height, False)
    patch_args = {"patches": run.patches, "step_of": _step_of(run, 0, run.steps_run), **_denoiser_options(run)}
    latent_shape = (c.latent_channels, req.height // 8, req.width // 8)
    rng = modified_noise(_rng(run, latent_shape, seeds, subseeds), run.patches)
    on_step = _step_callback(run, 0, run.steps_run)
    if run.init is None:
        model_fn, ds = cfg_denoiser(model, run.conds, req.cfg_scale, req.width, req.height, req.batch_size,
                                    **patch_args)
        model_fn, on_step = _with_refiner(run, model_fn, on_step, None)
        sigmas = sigmas_for(run.sampler, run.schedule, req.steps, ds)
        return sample(run.sampler, model_fn, ds, sigmas, rng, seeds, params=run.sampler_params, callback=on_step)
    noise = rng.first()
    x0, inpaint = run.init.for_batch(it * req.batch_size, req.batch_size, noise)
    if run.steps_run == 0:  # strength 0: the init image, no denoising step
        return x0
    model_fn, ds = cfg_denoiser(model, run.conds, req.cfg_scale, req.width, req.height, req.batch_size, inpaint,
                                **patch_args)
    model_fn, on_step = _with_refiner(run, model_fn, on_step, inpaint)
    tail = sigmas_for(run.sampler, run.schedule, run.schedule_steps, ds)[-run.steps_run - 1:]
    x = _noised(run, x0, noise * _noise_multiplier(run), tail[0])
    latents = sample(run.sampler, model_fn, ds, tail, rng, seeds, params=run.sampler_params, callback=on_step, x=x)
    if inpaint.keep is not None:  # A1111 blends once more after sampling
        latents = inpaint.init * inpaint.keep + latents * (1 - inpaint.keep)
    return latents


def _noised(run: _Run, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x0`` at noise level ``sigma`` for img2img and the hires pass: ``x0 + sigma * noise`` plus A1111's
    extra noise (option ``img2img_extra_noise``); flow models (SD 3.x, FLUX.1): ``(1 - sigma) x0 + sigma *
    noise`` (no extra noise)."""
    if run.model.spec.is_flow:
        return noise_to(x0, noise, sigma)
    x = x0.to(noise.device) + noise * sigma.to(noise.device)
    if run.extra_noise > 0:
        x = x + noise * run.extra_noise
    return x


def _with_refiner(run: _Run, base_fn, on_step, inpaint: Inpaint | None):
    """A1111 1.6+: after the step where ``refiner_switch_at`` of the steps are done, the refiner (with its
    own text conditioning) answers every further denoiser call of this pass."""
    if run.refiner is None:
        return base_fn, on_step
    req = run.req
    # A1111 applies use_downcasted_alpha_bar and sd_noise_schedule to whichever model is loaded (the refiner too,
    # besides its own zero-terminal-SNR marker); CFG rescale acts on every denoiser call
    options = {**_denoiser_options(run), "zero_terminal_snr": _zero_terminal_snr(run.refiner.spec, run.opts)}
    refiner_fn, _ = cfg_denoiser(run.refiner, run.refiner_conds, req.cfg_scale, req.width, req.height,
                                 req.batch_size, inpaint, **options)
    state = {"refining": False}
    total = max(run.steps_run, 1)

    def model_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (refiner_fn if state["refining"] else base_fn)(x, sigma)

    def step(i: int, x_i: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> None:
        on_step(i, x_i, denoised, sigma)
        if not state["refining"] and (i + 1) / total >= req.refiner_switch_at:
            state["refining"] = True
            run.job.textinfo = f"{run.job.textinfo} (refiner)".strip()

    return model_fn, step


def _hires_pass(run: _Run, latents: torch.Tensor, seeds: list[int], subseeds: list[int],
                steps: int) -> torch.Tensor:
    """Hires fix: enlarge the first pass, re-noise it and denoise the last ``steps`` sigmas."""
    plan, req, model = run.hires, run.req, run.model
    latents = upscale_latents(plan, model, latents, run.opts)
    if steps == 0:  # denoising strength 0: the enlarged first pass as it is
        return latents
    rng = _rng(run, tuple(latents.shape[1:]), seeds, subseeds)
    for patch in run.patches:
        patch.prepare(plan.width, plan.height, True)
    model_fn, ds = cfg_denoiser(model, run.hr_conds, req.cfg_scale, plan.width, plan.height, req.batch_size,
                                Inpaint(), patches=run.patches, step_of=_step_of(run, run.steps_run, steps),
                                hires=True, **_denoiser_options(run))
    tail = plan.sigmas(sigmas_for(plan.sampler, plan.schedule, plan.total_steps(req.denoising_strength), ds))
    x = _noised(run, latents, rng.first(), tail[0])
    return sample(plan.sampler, model_fn, ds, tail, rng, seeds, params=run.hr_sampler_params,
                  callback=_step_callback(run, run.steps_run, steps), x=x)


def _emit(run: _Run, it: int, images: list[Image.Image], seeds: list[int], subseeds: list[int]) -> None:
    """Overlay (inpainting), post-process hooks, infotext, save; append to the result."""
    env, req, opts, result = run.env, run.req, run.opts, run.result
    for j, image in enumerate(images):
        index = it * req.batch_size + j
        if run.restorer is not None:  # before the overlay, so unmasked pixels stay the original's (A1111)
            image = _restore_faces(run, image)
        if run.init is not None:  # colour correction (option), then the overlay -- A1111's order
            image = run.init.finish(run.init.correct_colors(image, index), index)
        state = ImageState(image, seeds[j], index, req)
        env.hooks.postprocess_image(state)
        params = infotext_params(req, run.model, run.sampler, run.schedule, seeds[j], subseeds[j], run.clip_skip,
                                 {**run.extra_info, **state.extra_infotext})
        if req.subseed_strength <= 0:
            params.pop("Variation seed", None)
        params = apply_infotext_options(params, opts)
        infotext = format_infotext(req.prompt, req.negative_prompt, params)
        if req.save_images and opts.get("samples_save", True):
            _save(run, state.image, seeds[j], infotext, index)
        result.images.append(state.image)
        result.seeds.append(seeds[j])
        result.subseeds.append(subseeds[j])
        result.infotexts.append(infotext)
        result.prompts.append(req.prompt)
        result.negative_prompts.append(req.negative_prompt)


def _restore_faces(run: _Run, image: Image.Image) -> Image.Image:
    """"Restore faces" on one image. Without the restorer's weight files (never downloaded) the job goes on
    without restoration: the rest of the job skips it too, and the warning names the files to install."""
    from webui.restoration.faces import MissingWeights

    assert run.restorer is not None
    try:
        return run.restorer.restore(image, run.opts)
    except MissingWeights as exc:
        msg = f"Restore faces skipped ({run.restorer.name}): {exc}"
        log.warning(msg)
        run.result.warnings.append(msg)
        run.restorer = None
        run.extra_info.pop("Face restoration", None)
        return image


def _save(run: _Run, image: Image.Image, seed: int, infotext: str, index: int = 0) -> None:
    """Save one generated image as A1111 does (webui/saving.py); a failed write is a warning."""
    env, opts, req = run.env, run.opts, run.req
    scheduler = req.scheduler or "Automatic"
    if scheduler == "Automatic" and run.schedule is not None and req.sampler_name != run.sampler.name:
        scheduler = run.schedule.label  # a legacy combined name ("DPM++ 2M Karras")
    styles = [env.styles.get(name) if env.styles is not None else None for name in req.styles]
    fields = request_fields(
        req, seed=seed, request_prompt=run.raw_prompts[0], negative_prompt=run.raw_prompts[1],
        sampler=run.sampler.name, scheduler=scheduler, default_scheduler=run.sampler.default_scheduler,
        style_prompts=tuple(s.prompt for s in styles if s is not None), model_name=run.model.info.model_name,
        model_hash=run.model.short_hash, vae_file=run.extra_info.get("VAE"), index=index,
        all_seeds=tuple(run.seed + k for k in range(req.n_iter * req.batch_size)),
        job_timestamp=timestamp_of(run.job.started))
    try:
        saved = env.saver.save_image(image, "samples", opts, env.data_dir, fields, infotext, hooks=env.hooks)
        run.result.paths.append(str(saved.path))
    except OSError as exc:
        msg = f"could not save image: {exc}"
        log.error(msg)
        run.result.warnings.append(msg)


def _save_init_images(run: _Run) -> None:
    """A1111 ``save_init_img``: each img2img init image as ``<outdir_init_images>/<md5 of its pixels>.png``
    (whether or not the request saves its results)."""
    if run.req.mode != "img2img" or not run.opts.get("save_init_img", False):
        return
    for image in run.req.init_images:
        try:
            run.env.saver.save_image(image, "init", run.opts, run.env.data_dir, hooks=run.env.hooks)
        except OSError as exc:
            msg = f"could not save the init image: {exc}"
            log.error(msg)
            run.result.warnings.append(msg)
