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
    samplers = list(ctx.samplers.samplers)
    schedules = ["Automatic", *(s.label for s in ctx.samplers.schedules.values())]
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt", elem_id="txt2img_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
            with gr.Row():
                styles = gr.Dropdown(ctx.styles.names(), value=[], multiselect=True, label="Styles",
                                     elem_id="txt2img_styles", scale=3)
                style_name = gr.Textbox(label="New style name", elem_id="txt2img_style_name", scale=2)
                save_style = gr.Button("Save style", elem_id="txt2img_style_save", scale=1)
            with gr.Accordion("Extra networks", open=False, elem_id="txt2img_extra_networks"):
                with gr.Row():
                    lora_pick = gr.Dropdown(ctx.loras.names(), label="LoRA", elem_id="txt2img_lora_pick", scale=3)
                    lora_add = gr.Button("Add LoRA", elem_id="txt2img_lora_add", scale=1)
                    emb_pick = gr.Dropdown(sorted(ctx.embeddings.loaded), label="Embedding",
                                           elem_id="txt2img_embedding_pick", scale=3)
                    emb_add = gr.Button("Add embedding", elem_id="txt2img_embedding_add", scale=1)
                    networks_refresh = gr.Button("🔄", elem_id="txt2img_networks_refresh", min_width=40, scale=0)
        with gr.Column(scale=1, min_width=160):
            token_counter = gr.HTML("", elem_id="txt2img_token_counter")
            neg_token_counter = gr.HTML("", elem_id="txt2img_negative_token_counter")
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                sampler = gr.Dropdown(samplers, value="Euler a" if "Euler a" in samplers else samplers[0],
                                      label="Sampling method", elem_id="txt2img_sampling")
                scheduler = gr.Dropdown(schedules, value="Automatic", label="Schedule type",
                                        elem_id="txt2img_scheduler")
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
            with gr.Row():
                width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
            with gr.Row():
                batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
            cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
            with gr.Row():
                seed = gr.Number(value=-1, label="Seed", precision=0, elem_id="txt2img_seed")
                random_seed = gr.Button("🎲", elem_id="txt2img_random_seed", min_width=40)
                reuse_seed = gr.Button("♻", elem_id="txt2img_reuse_seed", min_width=40)
                seed_extras = gr.Checkbox(False, label="Extra", elem_id="txt2img_subseed_show")
            with gr.Row(visible=False, elem_id="txt2img_seed_extras") as extras_row:
                subseed = gr.Number(value=-1, label="Variation seed", precision=0, elem_id="txt2img_subseed")
                subseed_strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                             elem_id="txt2img_subseed_strength")
                resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                     elem_id="txt2img_seed_resize_from_w")
                resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                     elem_id="txt2img_seed_resize_from_h")
        with gr.Column():
            gallery = gr.Gallery(label="Output", columns=2, height=512, elem_id="txt2img_gallery",
                                 format="png", interactive=False)
            info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id="txt2img_info")
            used_seed = gr.State(-1)

    def on_generate(p: str, n: str, st: float, smp: str, sch: str, w: float, h: float, bc: float, bs: float,
                    c: float, sd: float | None, sub: float | None, sub_strength: float, rw: float, rh: float,
                    style_names: list[str] | None, request: gr.Request, progress: gr.Progress = gr.Progress()):
        req = GenerationRequest(
            prompt=p or "", negative_prompt=n or "", steps=int(st), sampler_name=smp, scheduler=sch,
            width=int(w), height=int(h), n_iter=int(bc), batch_size=int(bs), cfg_scale=float(c),
            seed=int(sd) if sd is not None else -1, save_images=True,
            subseed=int(sub) if sub is not None else -1, subseed_strength=float(sub_strength),
            seed_resize_from_w=int(rw) if rw else -1, seed_resize_from_h=int(rh) if rh else -1,
            styles=tuple(style_names or ()),
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

    inputs = [prompt, negative, steps, sampler, scheduler, width, height, batch_count, batch_size, cfg, seed,
              subseed, subseed_strength, resize_w, resize_h, styles]
    seed_extras.change(lambda show: gr.update(visible=show), inputs=seed_extras, outputs=extras_row,
                       api_name="txt2img_seed_extras", queue=False)
    generate.click(
        on_generate,
        inputs=inputs,
        outputs=[gallery, info, used_seed],
        api_name="txt2img",
        concurrency_id="gpu",
        concurrency_limit=ctx.settings.concurrency,
    )
    prompt.submit(
        on_generate,
        inputs=inputs,
        outputs=[gallery, info, used_seed],
        api_name="txt2img_submit",
        concurrency_id="gpu",
    )

    def on_tokens(text: str) -> str:
        model = ctx.models.current
        if model is None:
            return ""
        lookup = ctx.embeddings.lookup(model.components)
        used, available = count_tokens(model.components, text or "", embeddings=lookup)
        return f"<span class='token-counter'>{used}/{available}</span>"

    prompt.change(on_tokens, inputs=prompt, outputs=token_counter, api_name="txt2img_token_count",
                  queue=False, show_progress="hidden")
    negative.change(on_tokens, inputs=negative, outputs=neg_token_counter,
                    api_name="txt2img_negative_token_count", queue=False, show_progress="hidden")

    def append_to_prompt(text: str, addition: str) -> str:
        text = (text or "").rstrip()
        return f"{text} {addition}" if text else addition

    lora_add.click(lambda p, name: append_to_prompt(p, f"<lora:{name}:1>") if name else p,
                   inputs=[prompt, lora_pick], outputs=prompt, api_name="txt2img_add_lora", queue=False)
    emb_add.click(lambda p, name: append_to_prompt(p, name) if name else p,
                  inputs=[prompt, emb_pick], outputs=prompt, api_name="txt2img_add_embedding", queue=False)

    def on_networks_refresh():
        ctx.loras.refresh()
        ctx.embeddings.refresh()
        return gr.update(choices=ctx.loras.names()), gr.update(choices=sorted(ctx.embeddings.loaded))

    networks_refresh.click(on_networks_refresh, inputs=None, outputs=[lora_pick, emb_pick],
                           api_name="txt2img_refresh_networks")

    def on_save_style(name: str, p: str, n: str):
        name = (name or "").strip()
        if not name:
            raise gr.Error("Enter a name for the style")
        ctx.styles.save(Style(name, p or "", n or ""))
        return gr.update(choices=ctx.styles.names()), ""

    save_style.click(on_save_style, inputs=[style_name, prompt, negative], outputs=[styles, style_name],
                     api_name="txt2img_save_style")

    def on_interrupt(request: gr.Request) -> None:
        ctx.jobs.interrupt(owner=getattr(request, "session_hash", None))

    interrupt.click(on_interrupt, inputs=None, outputs=None, api_name="txt2img_interrupt",
                    concurrency_limit=None, queue=False)
    random_seed.click(lambda: -1, inputs=None, outputs=seed, api_name="txt2img_random_seed", queue=False)
    reuse_seed.click(lambda s: s, inputs=used_seed, outputs=seed, api_name="txt2img_reuse_seed", queue=False)
