"""``/sdapi/v1`` routes (A1111 shapes)."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Body, Request

from webui.api import models as m
from webui.context import AppContext
from webui.errors import RequestError
from webui.extras import ExtrasRequest, postprocessing_text
from webui.image_codec import Fetcher, decode_base64_image, encode_png_base64
from webui.image_metadata import read_image_info
from webui.infotext import backcompat, infotext_to_request, parse_infotext
from webui.jobs import Job
from webui.pipeline.hires import LATENT_UPSCALE_MODES
from webui.pipeline.request import GenerationRequest, request_from_values
from webui.saving import png_bytes
from webui.sections import SECTION_SEP, collect_sections

DEFAULT_SAMPLER = "Euler a"
EXTRAS_FIELDS = {f.name for f in dataclasses.fields(ExtrasRequest)}
B = TypeVar("B", bound=m.Txt2ImgRequest)


def apply_infotext(ctx: AppContext, body: B, mode: str) -> B:
    """A1111 1.8+'s ``infotext`` field: the infotext's parameters fill the fields the request did not set.

    Core keys map through :func:`~webui.infotext.infotext_to_request`; the plugins read their own keys back
    with the ``parse_infotext`` hook: request fields, section values (each mentioned section's ``collect``
    builds its ``alwayson_scripts`` entry, as Generate does in the UI) and ``alwayson_scripts`` entries.
    Fields, options (``override_settings``) and ``alwayson_scripts`` entries set explicitly win.
    With the option ``auto_backcompat`` on, an infotext of an older A1111 version also brings the
    compatibility options it needs (:func:`~webui.infotext.backcompat`)."""
    if not body.infotext:
        return body
    parsed = backcompat(parse_infotext(body.infotext), auto_backcompat(ctx, body.override_settings))
    plugin = ctx.hooks.parse_infotext(parsed, mode)
    fields = infotext_to_request(parsed)
    for key, value in plugin.items():
        if key == "override_settings" and isinstance(value, dict):
            fields[key] = {**(fields.get(key) or {}), **value}
        elif SECTION_SEP not in key and key != "alwayson_scripts":
            fields[key] = value
    explicit = set(body.model_fields_set)
    if explicit & {"mask_blur_x", "mask_blur_y"}:
        explicit.add("mask_blur")  # mask_blur would override the explicit per-axis blur
    known = type(body).model_fields
    updates: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "override_settings" and isinstance(value, dict):
            updates[key] = {**value, **(body.override_settings or {})}
        elif key in known and key not in explicit and key not in ("alwayson_scripts", "infotext"):
            updates[key] = value
    scripts = dict(plugin.get("alwayson_scripts") or {})
    scripts.update(collect_sections(ctx.hooks.ui_sections(ctx, mode), plugin, only_mentioned=True))
    given = {name.lower() for name in body.alwayson_scripts}
    added = {name: entry for name, entry in scripts.items() if name.lower() not in given}
    if added:
        updates["alwayson_scripts"] = {**added, **body.alwayson_scripts}
    return body.model_copy(update=updates)


def auto_backcompat(ctx: AppContext, override_settings: Any = None) -> bool:
    """The option ``auto_backcompat`` for reading an infotext: the request's own ``override_settings``
    value when it gives a boolean (A1111 reads only the server's option), else the server's option."""
    if isinstance(override_settings, dict) and isinstance(override_settings.get("auto_backcompat"), bool):
        return override_settings["auto_backcompat"]
    return bool(ctx.options.current.get("auto_backcompat", True))


#: The request fields an API body sets as they are (None, not given: the field's default; for eta, the
#: sigma parameters, tiling and restore_faces that means the option of the same name, as in A1111).
API_FIELDS = ("prompt", "negative_prompt", "steps", "cfg_scale", "cfg_rescale", "distilled_cfg_scale", "width",
              "height", "seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "batch_size",
              "n_iter",
              "eta", "s_noise", "s_churn", "s_tmin", "s_tmax", "tiling", "restore_faces", "refiner_checkpoint",
              "refiner_switch_at")


def _request_from_api(body: m.Txt2ImgRequest) -> GenerationRequest:
    data = body.model_dump()
    hires: dict[str, Any] = {}
    if data.get("enable_hr"):  # A1111's UI default; the API leaves it unset
        hires["denoising_strength"] = 0.7 if data.get("denoising_strength") is None else data["denoising_strength"]
    return request_from_values(
        data, API_FIELDS, **hires,
        sampler_name=data.get("sampler_name") or data.get("sampler_index") or DEFAULT_SAMPLER,
        scheduler=data.get("scheduler") or "Automatic",
        save_images=bool(data.get("save_images")) and not data.get("do_not_save_samples"),
        override_settings=dict(data.get("override_settings") or {}),
        styles=tuple(data.get("styles") or ()),
        alwayson_scripts=dict(data.get("alwayson_scripts") or {}))


def api_owner(request: Request) -> str | None:
    """Who runs an API job: ``"api:<user>"`` with ``--api-auth``/``--gradio-auth`` (the credentials were
    checked by the router's dependency), else None. ``/interrupt`` and ``/skip`` touch only the caller's own
    jobs when there is a user; without auth there is one anonymous API client, which may stop any job (A1111's
    behaviour, for a server on loopback)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (ValueError, UnicodeDecodeError):
        return None
    return f"api:{user}"


def image_fetcher(ctx: AppContext) -> Fetcher | None:
    """How image fields given as URLs are fetched: not at all unless ``--allow-image-urls``."""
    if not ctx.settings.allow_image_urls:
        return None
    from webui.netfetch import fetch_url

    return lambda url: fetch_url(url, max_bytes=ctx.settings.max_body_mb * 1024 * 1024)


def _inpaint_fields(body: m.Img2ImgRequest, fetch: Fetcher | None = None) -> dict[str, Any]:
    """The mask and A1111's inpainting fields (``mask_blur`` overrides both ``mask_blur_x/y``)."""
    if not body.mask:
        return {}
    mask = decode_base64_image(body.mask, "mask", fetch)
    blur_x = body.mask_blur if body.mask_blur is not None else body.mask_blur_x
    blur_y = body.mask_blur if body.mask_blur is not None else body.mask_blur_y
    return {"mask": mask, "mask_blur_x": blur_x, "mask_blur_y": blur_y, "mask_round": body.mask_round,
            "inpainting_fill": body.inpainting_fill, "inpaint_full_res": bool(body.inpaint_full_res),
            "inpaint_full_res_padding": body.inpaint_full_res_padding,
            "inpainting_mask_invert": int(body.inpainting_mask_invert)}


def memory_report(ctx: AppContext) -> dict[str, Any]:
    """``GET /memory`` in A1111's shape: host RAM, and CUDA memory statistics when a GPU is used."""
    import psutil
    import torch

    vm = psutil.virtual_memory()
    process = psutil.Process()
    ram = {"free": vm.available, "used": process.memory_info().rss, "total": vm.total}
    if not torch.cuda.is_available() or ctx.device.device.type != "cuda":
        return {"ram": ram, "cuda": {"error": "no CUDA device in use"}}
    index = ctx.device.device.index or 0
    free, total = torch.cuda.mem_get_info(index)
    stats = torch.cuda.memory_stats(index)

    def pool(name: str) -> dict[str, int]:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    cuda = {"system": {"free": free, "used": total - free, "total": total},
            "active": pool("active_bytes"), "allocated": pool("allocated_bytes"),
            "reserved": pool("reserved_bytes"), "inactive": pool("inactive_split_bytes"),
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}}
    return {"ram": ram, "cuda": cuda}


def build_router(ctx: AppContext) -> APIRouter:
    """The ``/sdapi/v1`` router: one function per group of routes below."""
    r = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
    fetch = image_fetcher(ctx)
    _generation_routes(r, ctx, fetch)
    _image_routes(r, ctx, fetch)
    _choice_routes(r, ctx)
    _model_and_option_routes(r, ctx)
    _network_and_style_routes(r, ctx)
    return r


def _generation_routes(r: APIRouter, ctx: AppContext, fetch: Fetcher | None) -> None:
    """txt2img, img2img (with scripts), and the running job: progress, interrupt, skip."""
    def owner_of(request: Request) -> str | None:
        return api_owner(request) if ctx.settings.auth_enabled else None

    def _run(req: GenerationRequest, body: m.Txt2ImgRequest, owner: str | None = None) -> m.ImageResponse:
        job = Job(id=body.force_task_id or Job().id, kind=req.mode, owner=owner)
        script = (body.script_name or "").strip()
        if script and script.lower() != "none":
            result = ctx.run_script(req, script, body.script_args, job)
        else:
            result = ctx.generate(req, job)
        images = (
            [encode_png_base64(img, info) for img, info in zip(result.images, result.infotexts)]
            + [encode_png_base64(img) for img, _ in result.extra_images]  # after the images (sd-webui-controlnet)
            if body.send_images
            else []
        )
        parameters = body.model_dump()
        if isinstance(body, m.Img2ImgRequest) and not body.include_init_images:
            parameters["init_images"] = None  # A1111 does not echo the (large) inputs
        return m.ImageResponse(images=images, parameters=parameters, info=json.dumps(result.info, default=str))

    @r.post("/txt2img", response_model=m.ImageResponse)
    def txt2img(body: m.Txt2ImgRequest, request: Request) -> m.ImageResponse:
        body = apply_infotext(ctx, body, "txt2img")
        return _run(_request_from_api(body), body, owner_of(request))

    @r.post("/img2img", response_model=m.ImageResponse)
    def img2img(body: m.Img2ImgRequest, request: Request) -> m.ImageResponse:
        body = apply_infotext(ctx, body, "img2img")
        if not body.init_images:
            raise RequestError("init_images", "at least one base64 image is required")
        images = tuple(decode_base64_image(img, f"init_images[{i}]", fetch) for i, img in enumerate(body.init_images))
        req = _request_from_api(body).with_(mode="img2img", init_images=images, resize_mode=body.resize_mode,
                                            denoising_strength=body.denoising_strength,
                                            initial_noise_multiplier=body.initial_noise_multiplier,
                                            **_inpaint_fields(body, fetch))
        return _run(req, body, owner_of(request))

    @r.get("/progress", response_model=m.ProgressResponse)
    def progress(skip_current_image: bool = False) -> m.ProgressResponse:
        job = ctx.jobs.current()
        if job is None:
            return m.ProgressResponse(progress=0.0, eta_relative=0.0, state=m.ProgressState(), textinfo=None)
        current = None
        if not skip_current_image and job.current_image is not None:
            current = encode_png_base64(job.current_image)
        state = m.ProgressState(
            skipped=job.skipped,
            interrupted=job.interrupted,
            job=job.id,
            job_count=job.job_count,
            job_no=job.job_no,
            sampling_step=job.sampling_step,
            sampling_steps=job.sampling_steps,
        )
        return m.ProgressResponse(progress=job.progress, eta_relative=job.eta, state=state,
                                  current_image=current, textinfo=job.textinfo)

    @r.post("/interrupt")
    def interrupt(request: Request) -> dict:
        ctx.jobs.interrupt(owner=owner_of(request))
        return {}

    @r.post("/skip")
    def skip(request: Request) -> dict:
        ctx.jobs.skip(owner=owner_of(request))
        return {}


def _image_routes(r: APIRouter, ctx: AppContext, fetch: Fetcher | None) -> None:
    """Work on a given image: PNG Info and Extras (single and batch)."""
    @r.post("/png-info", response_model=m.PngInfoResponse)
    def png_info(body: m.PngInfoRequest) -> m.PngInfoResponse:
        image = decode_base64_image(body.image, "image", fetch)
        text, items = read_image_info(image)
        # A1111 returns parse_generation_parameters, which applies backcompat
        parameters = backcompat(parse_infotext(text), auto_backcompat(ctx)) if text else {}
        return m.PngInfoResponse(info=text or "", items=items, parameters=parameters)

    def _extras_req(body: m.ExtrasBase) -> ExtrasRequest:
        return ExtrasRequest(**{k: v for k, v in body.model_dump().items() if k in EXTRAS_FIELDS})

    def _extras_one(image, req: ExtrasRequest) -> tuple[str, str]:
        text, _ = read_image_info(image)
        out, info = ctx.extras(image, req)
        post = postprocessing_text(info)
        buf = png_bytes(out, text, {"postprocessing": post} if post else None)
        return base64.b64encode(buf).decode("ascii"), post

    @r.post("/extra-single-image", response_model=m.ExtrasSingleImageResponse)
    def extra_single_image(body: m.ExtrasSingleImageRequest) -> m.ExtrasSingleImageResponse:
        image = decode_base64_image(body.image, "image", fetch)
        data, post = _extras_one(image, _extras_req(body))
        return m.ExtrasSingleImageResponse(image=data, html_info=f"<p>{html.escape(post)}</p>")

    @r.post("/extra-batch-images", response_model=m.ExtrasBatchImagesResponse)
    def extra_batch_images(body: m.ExtrasBatchImagesRequest) -> m.ExtrasBatchImagesResponse:
        req = _extras_req(body)
        images = [decode_base64_image(item.data, f"imageList[{i}].data", fetch)
                  for i, item in enumerate(body.imageList)]
        results = [_extras_one(image, req) for image in images]
        post = results[0][1] if results else ""
        return m.ExtrasBatchImagesResponse(images=[d for d, _ in results], html_info=f"<p>{html.escape(post)}</p>")


def _choice_routes(r: APIRouter, ctx: AppContext) -> None:
    """The names a request may use: face restorers, upscalers, latent upscale modes, samplers, schedulers."""
    @r.get("/face-restorers", response_model=list[m.FaceRestorerItem])
    def face_restorers() -> list[m.FaceRestorerItem]:
        return [m.FaceRestorerItem(name=f.name, cmd_dir=f.model_path) for f in ctx.face_restorers.all()]

    @r.get("/realesrgan-models", response_model=list[m.RealesrganItem])
    def realesrgan_models() -> list[m.RealesrganItem]:
        """Upscalers whose model file lies in models/RealESRGAN or is named like a Real-ESRGAN model."""
        def is_realesrgan(path: str) -> bool:
            p = Path(path)
            return p.parent.name.lower() == "realesrgan" or p.name.lower().startswith("realesr")

        return [m.RealesrganItem(name=u.name, path=u.model_path, scale=u.scale) for u in ctx.upscalers.all()
                if u.model_path is not None and is_realesrgan(u.model_path)]

    @r.get("/upscalers", response_model=list[m.UpscalerItem])
    def upscalers() -> list[m.UpscalerItem]:
        return [m.UpscalerItem(name=u.name, model_name=u.model_name, model_path=u.model_path,
                               model_url=u.model_url, scale=u.scale) for u in ctx.upscalers.all()]

    @r.get("/latent-upscale-modes", response_model=list[m.LatentUpscaleModeItem])
    def latent_upscale_modes() -> list[m.LatentUpscaleModeItem]:
        return [m.LatentUpscaleModeItem(name=name) for name in LATENT_UPSCALE_MODES]

    @r.get("/samplers", response_model=list[m.SamplerItem])
    def samplers() -> list[m.SamplerItem]:
        return [m.SamplerItem(name=s.name, aliases=list(s.aliases), options=s.public_options())
                for s in ctx.samplers.samplers.values()]

    @r.get("/schedulers", response_model=list[m.SchedulerItem])
    def schedulers() -> list[m.SchedulerItem]:
        items = [m.SchedulerItem(name="automatic", label="Automatic", aliases=None, default_rho=-1,
                                 need_inner_model=False)]
        items += [m.SchedulerItem(name=s.name, label=s.label, aliases=list(s.aliases) or None,
                                  default_rho=s.default_rho, need_inner_model=s.need_inner_model)
                  for s in ctx.samplers.schedules.values()]
        return items


def _model_and_option_routes(r: APIRouter, ctx: AppContext) -> None:
    """Checkpoints (list, refresh, unload, reload), memory, options and the server's flags."""
    @r.get("/sd-models", response_model=list[m.SDModelItem])
    def sd_models() -> list[m.SDModelItem]:
        out = []
        for info in ctx.models.checkpoints():
            digest = ctx.models.hashes.cached(info.path)
            out.append(m.SDModelItem(title=info.title(digest[:10] if digest else None), model_name=info.model_name,
                                     hash=digest[:10] if digest else None, sha256=digest,
                                     filename=str(info.path), config=None, family=ctx.models.family(info)))
        return out

    @r.get("/sd-modules", response_model=list[m.SDModuleItem])
    def sd_modules() -> list[m.SDModuleItem]:
        """Forge's route: the VAE files, then the text-encoder files (``models/text_encoder``)."""
        from webui.models.modules import list_modules

        files = list_modules(ctx.settings.vae_dirs(), [ctx.settings.model_dir("text_encoder")])
        return [m.SDModuleItem(model_name=f.model_name, filename=str(f.path)) for f in files]

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints() -> dict:
        ctx.refresh_models()
        return {}

    @r.get("/memory")
    def memory() -> dict[str, Any]:
        return memory_report(ctx)

    @r.post("/unload-checkpoint")
    def unload_checkpoint() -> dict:
        """Free the model's memory; the next job (or reload-checkpoint) loads it again. With generation
        workers: theirs (a worker running a job keeps its model)."""
        if ctx.executor is not None:
            ctx.executor.manage("unload")
            return {}
        ctx.models.unload()  # frees the memory too
        return {}

    @r.post("/reload-checkpoint")
    def reload_checkpoint() -> dict:
        """Load the selected checkpoint again (after unload-checkpoint, or to re-read a changed file). With
        generation workers: each reads its current checkpoint again (after an unload, the next job loads it)."""
        if ctx.executor is not None:
            ctx.executor.manage("reload")
            return {}
        name = str(ctx.options.current.get("sd_model_checkpoint") or "") or None
        current = ctx.models.current
        if current is not None and (name is None or ctx.models.find(name).path == current.info.path):
            ctx.models.load(current.info, force=True)
        else:
            ctx.models.ensure_loaded(name)
        return {}

    @r.get("/options")
    def get_options() -> dict[str, Any]:
        opts = ctx.options.current.as_dict()
        current = ctx.models.current
        if current is not None:
            opts["sd_model_checkpoint"] = current.title
        return opts

    @r.post("/options")
    def set_options(body: dict[str, Any] = Body(...)) -> dict:
        clean = ctx.options.validate(body)
        if "sd_model_checkpoint" in clean and clean["sd_model_checkpoint"]:
            clean["sd_model_checkpoint"] = ctx.select_checkpoint(clean["sd_model_checkpoint"])
        ctx.options.update(clean)
        return {}

    @r.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        s = ctx.settings
        # Secrets (auth strings) are never echoed.
        return {
            "listen": s.listen, "port": s.port, "ckpt": str(s.ckpt) if s.ckpt else None,
            "ckpt_dir": str(s.ckpt_dir) if s.ckpt_dir else None, "data_dir": str(s.data_dir),
            "models_dir": str(s.models_root), "api": s.api, "nowebui": s.nowebui, "use_cpu": s.use_cpu,
            "no_half": s.no_half, "device_id": s.device_id, "api_auth": bool(s.api_auth),
            "gradio_auth": bool(s.gradio_auth),
        }


def _network_and_style_routes(r: APIRouter, ctx: AppContext) -> None:
    """Prompt styles, textual-inversion embeddings and LoRAs (list and refresh)."""
    @r.get("/prompt-styles", response_model=list[m.PromptStyleItem])
    def prompt_styles() -> list[m.PromptStyleItem]:
        return [m.PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt)
                for s in ctx.styles.all()]

    @r.get("/embeddings")
    def embeddings() -> dict[str, Any]:
        model = ctx.models.current
        usable, skipped = (ctx.embeddings.compatible(model.components) if model is not None
                           else (ctx.embeddings.loaded, {}))

        def describe(e) -> dict[str, Any]:
            vec = next(iter(e.vectors.values()))
            return {"step": e.step, "sd_checkpoint": e.sd_checkpoint, "sd_checkpoint_name": e.sd_checkpoint_name,
                    "shape": int(vec.shape[1]), "vectors": e.num_vectors}

        return {"loaded": {n: describe(e) for n, e in usable.items()},
                "skipped": {n: describe(e) for n, e in skipped.items()}}

    @r.post("/refresh-embeddings")
    def refresh_embeddings() -> dict:
        ctx.embeddings.refresh()
        return {}

    @r.get("/loras")
    def loras() -> list[dict[str, Any]]:
        out = []
        for name, path in sorted(ctx.loras.paths().items()):
            out.append({"name": name, "alias": name, "path": str(path), "metadata": {}})
        return out

    @r.post("/refresh-loras")
    def refresh_loras() -> dict:
        ctx.loras.refresh()
        return {}
