"""The txt2img tab."""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from webui.context import AppContext, GenerationFailed
from webui.jobs import Job, QueueFull
from webui.models.errors import ModelError
from webui.models.manager import NoCheckpoint, UnknownCheckpoint
from webui.pipeline.conditioning import count_tokens
from webui.pipeline.init_image import RESIZE_MODES
from webui.pipeline.request import GenerationRequest, RequestError
from webui.sampling.registry import UnknownName
from webui.styles import Style

USER_ERRORS = (RequestError, UnknownName, ModelError, UnknownCheckpoint, NoCheckpoint, QueueFull, GenerationFailed)


def run_with_progress(ctx: AppContext, req: GenerationRequest, owner: str | None, progress: gr.Progress):
    """Run ``req`` in a worker thread and report its progress to Gradio until it ends."""
    job = Job(kind=req.mode, owner=owner)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = ctx.txt2img(req, job)
        except BaseException as exc:  # noqa: BLE001 - handed to the UI thread
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"job-{job.id[:8]}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if job.sampling_steps:
            progress(job.progress, desc=f"{job.textinfo} - step {job.sampling_step}/{job.sampling_steps}".strip(" -"))
        else:
            progress(0.0, desc="Waiting in queue" if job.started is None else "Preparing")
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, USER_ERRORS):
            raise gr.Error(str(exc))
        raise gr.Error(f"Generation failed: {type(exc).__name__}: {exc}")
    return box["result"]


def build_txt2img_tab(ctx: AppContext) -> None:
    """Create the txt2img tab's components and events."""
    build_generation_tab(ctx, "txt2img")


def build_img2img_tab(ctx: AppContext) -> None:
    """Create the img2img tab: the txt2img controls plus an init image, denoising strength and resize mode."""
    build_generation_tab(ctx, "img2img")


def build_generation_tab(ctx: AppContext, mode: str) -> None:
    """One generation tab; element ids and API names are prefixed with ``mode``."""
    samplers = list(ctx.samplers.samplers)
    schedules = ["Automatic", *(s.label for s in ctx.samplers.schedules.values())]
    init_inputs: list = []
    if mode == "img2img":
        with gr.Row():
            init_image = gr.Image(label="Image for img2img", type="pil", sources=["upload", "clipboard"],
                                  elem_id="img2img_image", height=320)
            with gr.Column():
                denoising = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                      elem_id="img2img_denoising_strength")
                resize_mode = gr.Radio(list(RESIZE_MODES.values()), value=RESIZE_MODES[0], type="index",
                                       label="Resize mode", elem_id="img2img_resize_mode")
        init_inputs = [init_image, denoising, resize_mode]
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt", elem_id=f"{mode}_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{mode}_neg_prompt")
            with gr.Row():
                styles = gr.Dropdown(ctx.styles.names(), value=[], multiselect=True, label="Styles",
                                     elem_id=f"{mode}_styles", scale=3)
                style_name = gr.Textbox(label="New style name", elem_id=f"{mode}_style_name", scale=2)
                save_style = gr.Button("Save style", elem_id=f"{mode}_style_save", scale=1)
            with gr.Accordion("Extra networks", open=False, elem_id=f"{mode}_extra_networks"):
                with gr.Row():
                    lora_pick = gr.Dropdown(ctx.loras.names(), label="LoRA", elem_id=f"{mode}_lora_pick", scale=3)
                    lora_add = gr.Button("Add LoRA", elem_id=f"{mode}_lora_add", scale=1)
                    emb_pick = gr.Dropdown(sorted(ctx.embeddings.loaded), label="Embedding",
                                           elem_id=f"{mode}_embedding_pick", scale=3)
                    emb_add = gr.Button("Add embedding", elem_id=f"{mode}_embedding_add", scale=1)
                    networks_refresh = gr.Button("🔄", elem_id=f"{mode}_networks_refresh", min_width=40, scale=0)
        with gr.Column(scale=1, min_width=160):
            token_counter = gr.HTML("", elem_id=f"{mode}_token_counter")
            neg_token_counter = gr.HTML("", elem_id=f"{mode}_negative_token_counter")
            generate = gr.Button("Generate", variant="primary", elem_id=f"{mode}_generate")
            interrupt = gr.Button("Interrupt", elem_id=f"{mode}_interrupt")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                sampler = gr.Dropdown(samplers, value="Euler a" if "Euler a" in samplers else samplers[0],
                                      label="Sampling method", elem_id=f"{mode}_sampling")
                scheduler = gr.Dropdown(schedules, value="Automatic", label="Schedule type",
                                        elem_id=f"{mode}_scheduler")
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{mode}_steps")
            with gr.Row():
                width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{mode}_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{mode}_height")
            with gr.Row():
                batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{mode}_batch_count")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{mode}_batch_size")
            cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id=f"{mode}_cfg_scale")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", precision=0, elem_id=f"{mode}_seed")
                random_seed = gr.Button("🎲", elem_id=f"{mode}_random_seed", min_width=40)
                reuse_seed = gr.Button("♻", elem_id=f"{mode}_reuse_seed", min_width=40)
                seed_extras = gr.Checkbox(False, label="Extra", elem_id=f"{mode}_subseed_show")
            with gr.Row(visible=False, elem_id=f"{mode}_seed_extras") as extras_row:
                subseed = gr.Number(value=-1, label="Variation seed", precision=0, elem_id=f"{mode}_subseed")
                subseed_strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                             elem_id=f"{mode}_subseed_strength")
                resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                     elem_id=f"{mode}_seed_resize_from_w")
                resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                     elem_id=f"{mode}_seed_resize_from_h")
        with gr.Column():
            gallery = gr.Gallery(label="Output", columns=2, height=512, elem_id=f"{mode}_gallery",
                                 format="png", interactive=False)
            info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{mode}_info")
            used_seed = gr.State(-1)

    def run(values: tuple, extra: dict[str, Any], request: gr.Request, progress: gr.Progress):
        p, n, st, smp, sch, w, h, bc, bs, c, sd, sub, sub_strength, rw, rh, style_names = values
        req = GenerationRequest(
            prompt=p or "", negative_prompt=n or "", steps=int(st), sampler_name=smp, scheduler=sch,
            width=int(w), height=int(h), n_iter=int(bc), batch_size=int(bs), cfg_scale=float(c),
            seed=int(sd) if sd is not None else -1, save_images=True,
            subseed=int(sub) if sub is not None else -1, subseed_strength=float(sub_strength),
            seed_resize_from_w=int(rw) if rw else -1, seed_resize_from_h=int(rh) if rh else -1,
            styles=tuple(style_names or ()), **extra,
        )
        owner = getattr(request, "session_hash", None)
        result = run_with_progress(ctx, req, owner, progress)
        gallery_items = [(img, f"seed {s}") for img, s in zip(result.images, result.seeds)]
        text = result.infotexts[0] if result.infotexts else ""
        if result.interrupted:
            text = "(interrupted)\n" + text
        if result.warnings:
            text += "\n" + "\n".join(result.warnings)
        return gallery_items, text, (result.seeds[0] if result.seeds else -1)

    def on_txt2img(p: str, n: str, st: float, smp: str, sch: str, w: float, h: float, bc: float, bs: float,
                   c: float, sd: float | None, sub: float | None, sub_strength: float, rw: float, rh: float,
                   style_names: list[str] | None, request: gr.Request, progress: gr.Progress = gr.Progress()):
        values = (p, n, st, smp, sch, w, h, bc, bs, c, sd, sub, sub_strength, rw, rh, style_names)
        return run(values, {}, request, progress)

    def on_img2img(p: str, n: str, st: float, smp: str, sch: str, w: float, h: float, bc: float, bs: float,
                   c: float, sd: float | None, sub: float | None, sub_strength: float, rw: float, rh: float,
                   style_names: list[str] | None, image: Any, strength: float, resize: int | None,
                   request: gr.Request, progress: gr.Progress = gr.Progress()):
        if image is None:
            raise gr.Error("Upload an image for img2img first")
        values = (p, n, st, smp, sch, w, h, bc, bs, c, sd, sub, sub_strength, rw, rh, style_names)
        extra = dict(mode="img2img", init_images=(image,), denoising_strength=float(strength),
                     resize_mode=int(resize or 0))
        return run(values, extra, request, progress)

    on_generate = on_img2img if mode == "img2img" else on_txt2img

    inputs = [prompt, negative, steps, sampler, scheduler, width, height, batch_count, batch_size, cfg, seed,
              subseed, subseed_strength, resize_w, resize_h, styles, *init_inputs]
    seed_extras.change(lambda show: gr.update(visible=show), inputs=seed_extras, outputs=extras_row,
                       api_name=f"{mode}_seed_extras", queue=False)
    generate.click(
        on_generate,
        inputs=inputs,
        outputs=[gallery, info, used_seed],
        api_name=f"{mode}",
        concurrency_id="gpu",
        concurrency_limit=ctx.settings.concurrency,
    )
    prompt.submit(
        on_generate,
        inputs=inputs,
        outputs=[gallery, info, used_seed],
        api_name=f"{mode}_submit",
        concurrency_id="gpu",
    )

    def on_tokens(text: str) -> str:
        model = ctx.models.current
        if model is None:
            return ""
        lookup = ctx.embeddings.lookup(model.components)
        used, available = count_tokens(model.components, text or "", embeddings=lookup)
        return f"<span class='token-counter'>{used}/{available}</span>"

    prompt.change(on_tokens, inputs=prompt, outputs=token_counter, api_name=f"{mode}_token_count",
                  queue=False, show_progress="hidden")
    negative.change(on_tokens, inputs=negative, outputs=neg_token_counter,
                    api_name=f"{mode}_negative_token_count", queue=False, show_progress="hidden")

    def append_to_prompt(text: str, addition: str) -> str:
        text = (text or "").rstrip()
        return f"{text} {addition}" if text else addition

    lora_add.click(lambda p, name: append_to_prompt(p, f"<lora:{name}:1>") if name else p,
                   inputs=[prompt, lora_pick], outputs=prompt, api_name=f"{mode}_add_lora", queue=False)
    emb_add.click(lambda p, name: append_to_prompt(p, name) if name else p,
                  inputs=[prompt, emb_pick], outputs=prompt, api_name=f"{mode}_add_embedding", queue=False)

    def on_networks_refresh():
        ctx.loras.refresh()
        ctx.embeddings.refresh()
        return gr.update(choices=ctx.loras.names()), gr.update(choices=sorted(ctx.embeddings.loaded))

    networks_refresh.click(on_networks_refresh, inputs=None, outputs=[lora_pick, emb_pick],
                           api_name=f"{mode}_refresh_networks")

    def on_save_style(name: str, p: str, n: str):
        name = (name or "").strip()
        if not name:
            raise gr.Error("Enter a name for the style")
        ctx.styles.save(Style(name, p or "", n or ""))
        return gr.update(choices=ctx.styles.names()), ""

    save_style.click(on_save_style, inputs=[style_name, prompt, negative], outputs=[styles, style_name],
                     api_name=f"{mode}_save_style")

    def on_interrupt(request: gr.Request) -> None:
        ctx.jobs.interrupt(owner=getattr(request, "session_hash", None))

    interrupt.click(on_interrupt, inputs=None, outputs=None, api_name=f"{mode}_interrupt",
                    concurrency_limit=None, queue=False)
    random_seed.click(lambda: -1, inputs=None, outputs=seed, api_name=f"{mode}_random_seed", queue=False)
    reuse_seed.click(lambda s: s, inputs=used_seed, outputs=seed, api_name=f"{mode}_reuse_seed", queue=False)
