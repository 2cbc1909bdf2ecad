"""The Train tab: Create embedding / Train embedding / Train LoRA (A1111's Train tab, plus LoRA), with a
dataset preview (pictures and their captions), a live loss plot and the latest preview image."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from webui.context import AppContext
from webui.finetune.dataset import list_templates, load_folder
from webui.finetune.lora_train import MIXED_PRECISION, SCHEDULERS, LoraTrainParams
from webui.finetune.optimizers import OPTIMIZERS
from webui.finetune.textual_inversion import CLIP_GRAD_MODES, LATENT_SAMPLING, TrainEmbeddingParams
from webui.jobs import Job
from webui.sections import icon_button
from webui.train_jobs import create_embedding, train_embedding, train_lora
from webui.ui.progress import USER_ERRORS, named_handler, user_error

POLL_SECONDS = 0.5


def _embedding_names(ctx: AppContext) -> list[str]:
    ctx.embeddings.refresh()
    return sorted(ctx.embeddings.loaded)


def _templates(ctx: AppContext) -> list[str]:
    return sorted(list_templates((ctx.settings.data_dir / "textual_inversion_templates",)))


def _loss_frame(losses: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"step": list(range(1, len(losses) + 1)), "loss": losses})


def dataset_preview(folder: str, size: int = 512) -> tuple[list[tuple[str, str]], str]:
    """The gallery (image path, caption) of a dataset folder and a line about what was found or skipped."""
    data = load_folder(folder, size, size)
    gallery = [(str(item.path), f"{item.caption} [{item.bucket[0]}x{item.bucket[1]}]") for item in data.items]
    text = f"{len(data.items)} images"
    if data.skipped:
        text += "; skipped: " + ", ".join(f"{name} ({why})" for name, why in data.skipped.items())
    return gallery, text


def _live(run, job: Job, done_text):
    """Run ``run(on_step)`` in a thread; yield (status text, loss frame, preview) while it works, and at the
    end ``done_text(result)``."""
    losses: list[float] = []
    state: dict[str, Any] = {"preview": None, "result": None, "error": None}

    def on_step(_step: int, loss: float, image: Any = None) -> None:
        losses.append(loss)
        if image is not None:
            state["preview"] = str(image)

    def work() -> None:
        try:
            state["result"] = run(on_step)
        except BaseException as exc:  # noqa: BLE001 - shown to the user below
            state["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        yield job.textinfo or "Waiting for the queue…", _loss_frame(losses), state["preview"]
    if state["error"] is not None:
        exc = state["error"]
        raise user_error(exc) if isinstance(exc, USER_ERRORS) else gr.Error(f"Training failed: {exc}")
    yield done_text(state["result"]), _loss_frame(losses), state["preview"]


def build_train_tab(ctx: AppContext) -> dict[str, Any]:
    f: dict[str, Any] = {}
    with gr.Tabs(elem_id="train_tabs"):
        with gr.Tab("Create embedding", id="train_create_embedding"):
            c: dict[str, Any] = {}
            c["name"] = gr.Textbox(label="Name", elem_id="train_new_embedding_name")
            c["init_text"] = gr.Textbox("*", label="Initialization text", elem_id="train_initialization_text")
            c["num_vectors_per_token"] = gr.Slider(1, 75, value=1, step=1, label="Number of vectors per token",
                                                   elem_id="train_nvpt")
            c["overwrite_old"] = gr.Checkbox(False, label="Overwrite Old Embedding", elem_id="train_overwrite_old")
            create = gr.Button("Create embedding", variant="primary", elem_id="train_create_embedding_button")
            created = gr.Textbox(label="Result", interactive=False, elem_id="train_create_result")
        with gr.Tab("Train embedding", id="train_embedding"):
            t: dict[str, Any] = {}
            with gr.Row():
                t["embedding_name"] = gr.Dropdown(_embedding_names(ctx), label="Embedding",
                                                  elem_id="train_embedding", allow_custom_value=True)
                refresh = gr.Button(**icon_button("refresh"), elem_id="train_refresh_embeddings", scale=0)
            t["data_root"] = gr.Textbox(label="Dataset directory", placeholder="folder of images with .txt captions",
                                        elem_id="train_dataset_directory")
            with gr.Row():
                t["learn_rate"] = gr.Textbox("0.005", label="Embedding Learning rate", elem_id="train_embedding_lr")
                t["batch_size"] = gr.Number(1, label="Batch size", precision=0, elem_id="train_batch_size")
                t["gradient_step"] = gr.Number(1, label="Gradient accumulation steps", precision=0,
                                               elem_id="train_gradient_step")
            with gr.Row():
                t["training_width"] = gr.Slider(64, 2048, value=512, step=64, label="Width",
                                                elem_id="train_training_width")
                t["training_height"] = gr.Slider(64, 2048, value=512, step=64, label="Height",
                                                 elem_id="train_training_height")
                t["steps"] = gr.Number(100000, label="Max steps", precision=0, elem_id="train_steps")
            with gr.Row():
                t["template_filename"] = gr.Dropdown(_templates(ctx), value="style_filewords",
                                                     label="Prompt template", elem_id="train_template_file")
                t["latent_sampling_method"] = gr.Radio(list(LATENT_SAMPLING), value="once",
                                                       label="Choose latent sampling method",
                                                       elem_id="train_latent_sampling_method")
            with gr.Row():
                t["save_embedding_every"] = gr.Number(500, label="Save a copy of embedding to log directory every "
                                                      "N steps, 0 to disable", precision=0,
                                                      elem_id="train_save_embedding_every")
                t["create_image_every"] = gr.Number(500, label="Save an image to log directory every N steps, "
                                                    "0 to disable", precision=0, elem_id="train_create_image_every")
            with gr.Row():
                t["clip_grad_mode"] = gr.Dropdown(list(CLIP_GRAD_MODES), value="disabled", label="Gradient Clipping",
                                                  elem_id="train_clip_grad_mode")
                t["clip_grad_value"] = gr.Textbox("0.1", label="Clip value", elem_id="train_clip_grad_value")
                t["shuffle_tags"] = gr.Checkbox(False, label="Shuffle tags by ',' when creating prompts.",
                                                elem_id="train_shuffle_tags")
                t["tag_drop_out"] = gr.Slider(0, 1, value=0, step=0.1, label="Drop out tags when creating prompts.",
                                              elem_id="train_tag_drop_out")
                t["min_snr_gamma"] = gr.Number(0.0, label="Min-SNR gamma (0: off)", elem_id="train_min_snr",
                                               info="weighs the nearly clean steps down (1 helped teach a new colour)")
            with gr.Row():
                train_emb = gr.Button("Train Embedding", variant="primary", elem_id="train_train_embedding")
                stop_emb = gr.Button("Interrupt", elem_id="train_interrupt_training")
        with gr.Tab("Train LoRA", id="train_lora"):
            lo: dict[str, Any] = {}
            lo["output_name"] = gr.Textbox(label="LoRA name (file in models/Lora)", elem_id="train_lora_name")
            lo["train_data_dir"] = gr.Textbox(label="Dataset directory", elem_id="train_lora_dataset_directory",
                                              placeholder="folder of images with .txt captions")
            with gr.Row():
                lo["network_dim"] = gr.Slider(1, 128, value=8, step=1, label="Network rank (dim)",
                                              elem_id="train_lora_dim")
                lo["network_alpha"] = gr.Number(4.0, label="Network alpha", elem_id="train_lora_alpha")
                lo["resolution"] = gr.Slider(64, 2048, value=512, step=64, label="Resolution",
                                             elem_id="train_lora_resolution")
            with gr.Row():
                lo["learning_rate"] = gr.Number(1e-4, label="U-Net learning rate", elem_id="train_lora_lr")
                lo["text_encoder_lr"] = gr.Number(0, label="Text encoder learning rate (0: U-Net only)",
                                                  elem_id="train_lora_te_lr")
                lo["lr_scheduler"] = gr.Dropdown(list(SCHEDULERS), value="constant", label="LR scheduler",
                                                 elem_id="train_lora_scheduler")
                lo["lr_warmup_steps"] = gr.Number(0, label="Warmup steps", precision=0, elem_id="train_lora_warmup")
            with gr.Row():
                lo["max_train_steps"] = gr.Number(500, label="Steps", precision=0, elem_id="train_lora_steps")
                lo["train_batch_size"] = gr.Number(1, label="Batch size", precision=0, elem_id="train_lora_batch")
                lo["seed"] = gr.Number(0, label="Seed", precision=0, elem_id="train_lora_seed")
                lo["flip_aug"] = gr.Checkbox(False, label="Flip augmentation", elem_id="train_lora_flip")
                lo["shuffle_caption"] = gr.Checkbox(False, label="Shuffle caption tags", elem_id="train_lora_shuffle")
                lo["overwrite"] = gr.Checkbox(False, label="Overwrite", elem_id="train_lora_overwrite")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    lo["optimizer_type"] = gr.Dropdown(list(OPTIMIZERS), value="AdamW", label="Optimizer",
                                                       elem_id="train_lora_optimizer",
                                                       info="Prodigy: set the learning rates to 1; AdamW8bit: CUDA")
                    lo["conv_dim"] = gr.Number(0, label="Conv rank (LoCon; 0: off)", precision=0,
                                               elem_id="train_lora_conv_dim")
                    lo["conv_alpha"] = gr.Number(1.0, label="Conv alpha", elem_id="train_lora_conv_alpha")
                    lo["max_train_epochs"] = gr.Number(0, label="Epochs (0: use Steps)", precision=0,
                                                       elem_id="train_lora_epochs")
                with gr.Row():
                    lo["min_snr_gamma"] = gr.Number(0.0, label="Min-SNR gamma (0: off; 5 is usual)",
                                                    elem_id="train_lora_min_snr")
                    lo["noise_offset"] = gr.Number(0.0, label="Noise offset", elem_id="train_lora_noise_offset")
                    lo["mixed_precision"] = gr.Dropdown(list(MIXED_PRECISION), value="no", label="Mixed precision",
                                                        elem_id="train_lora_mixed_precision")
                    lo["gradient_checkpointing"] = gr.Checkbox(False, label="Gradient checkpointing",
                                                               elem_id="train_lora_gradient_checkpointing")
                with gr.Row():
                    lo["save_every_n_steps"] = gr.Number(0, label="Save every N steps (0: at the end)", precision=0,
                                                         elem_id="train_lora_save_every")
                    lo["sample_every_n_steps"] = gr.Number(0, label="Preview every N steps (0: none)", precision=0,
                                                           elem_id="train_lora_sample_every")
                    lo["sample_prompt"] = gr.Textbox(label="Preview prompt (empty: the first caption)",
                                                     elem_id="train_lora_sample_prompt")
                    lo["sample_seed"] = gr.Number(0, label="Preview seed", precision=0,
                                                  elem_id="train_lora_sample_seed")
                    lo["resume"] = gr.Checkbox(False, label="Resume the run", elem_id="train_lora_resume")
                with gr.Row():
                    lo["reg_data_dir"] = gr.Textbox(label="Regularization pictures directory (optional)",
                                                    elem_id="train_lora_reg_dir",
                                                    info="Pictures of the class without the new concept, with "
                                                         "captions: they keep the rest of the model as it was")
                    lo["prior_loss_weight"] = gr.Number(1.0, label="Regularization loss weight",
                                                        elem_id="train_lora_prior_loss_weight")
                with gr.Row():
                    lo["caption_template"] = gr.Textbox(
                        "[filewords]", label="Caption template", elem_id="train_lora_caption_template",
                        info="[filewords]: the picture's caption; [name]: the LoRA name")
                    lo["bundle_embedding"] = gr.Textbox(label="New word trained with the LoRA (pivotal tuning)",
                                                        elem_id="train_lora_bundle_embedding",
                                                        info="Saved inside the LoRA file; it must occur in the "
                                                             "captions or the caption template")
                    lo["bundle_embedding_init"] = gr.Textbox("*", label="Initialization text",
                                                             elem_id="train_lora_bundle_init")
                    lo["bundle_embedding_vectors"] = gr.Number(1, label="Vectors per token", precision=0,
                                                               elem_id="train_lora_bundle_vectors")
                    lo["embedding_lr"] = gr.Number(5e-3, label="Embedding learning rate",
                                                   elem_id="train_lora_embedding_lr")
                    lo["embedding_only_steps"] = gr.Number(0, label="Steps training only the word first",
                                                           precision=0, elem_id="train_lora_embedding_only_steps")
            with gr.Row():
                train_lo = gr.Button("Train LoRA", variant="primary", elem_id="train_train_lora")
                stop_lo = gr.Button("Interrupt", elem_id="train_interrupt_lora")
    with gr.Row():
        with gr.Column():
            status = gr.Textbox(label="Status", interactive=False, elem_id="train_status")
            loss = gr.LinePlot(_loss_frame([]), x="step", y="loss", title="Loss", elem_id="train_loss_plot")
        with gr.Column():
            preview = gr.Image(label="Latest preview", interactive=False, elem_id="train_preview", type="filepath")
            with gr.Accordion("Dataset preview", open=False):
                check = gr.Button("Show the dataset", elem_id="train_show_dataset")
                dataset_info = gr.Markdown(elem_id="train_dataset_info")
                gallery = gr.Gallery(label="Images and captions", columns=6, elem_id="train_dataset_gallery")
    jobs: dict[str, Job] = {}

    def on_create(v: dict[str, Any], request: gr.Request, progress: gr.Progress):
        try:
            path = create_embedding(ctx, v.get("name") or "", int(v.get("num_vectors_per_token") or 1),
                                    v.get("init_text") or "", bool(v.get("overwrite_old")))
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        return f"Created {path}", gr.update(choices=_embedding_names(ctx), value=Path(path).stem)

    create_handler = named_handler(list(c), on_create)
    create_handler.__name__ = "create_embedding"
    create.click(create_handler, inputs=[c[n] for n in c], outputs=[created, t["embedding_name"]],
                 api_name="create_embedding")
    refresh.click(lambda: gr.update(choices=_embedding_names(ctx)), inputs=None, outputs=t["embedding_name"],
                  api_name=False)

    def wire_run(kind: str, fields: dict[str, Any], parse, start, done_text, button, stop) -> None:
        """A training button (API name ``train_<kind>``) streaming status, loss plot and preview, and its
        Interrupt button."""
        def run(v: dict[str, Any], request: gr.Request, progress: gr.Progress):
            try:
                params = parse({k: val for k, val in v.items() if val not in (None, "")})
            except USER_ERRORS as exc:
                raise user_error(exc) from None
            job = jobs[kind] = Job(kind=f"train_{kind}")
            record = ctx.training_runs.start(kind, job, source="ui")  # also visible in GET /webui/v1/train

            def started(on_step):
                def follow(step, loss, image=None):
                    record.follow(step, loss, image)
                    on_step(step, loss, image)

                try:
                    result = start(params, job, follow)
                except BaseException as exc:
                    record.fail(f"{type(exc).__name__}: {exc}")
                    raise
                record.finish(result)
                return result

            yield from _live(started, job, lambda result: f"{done_text(params, result)} [run {record.id}]")

        handler = named_handler(list(fields), run)
        handler.__name__ = f"train_{kind}"
        button.click(handler, inputs=[fields[n] for n in fields], outputs=[status, loss, preview],
                     api_name=f"train_{kind}", concurrency_id="gpu")
        stop.click(lambda: jobs[kind].interrupt() if kind in jobs else None, inputs=None, outputs=None,
                   api_name=False, queue=False)

    def lora_params(body: dict[str, Any]) -> LoraTrainParams:
        if not body.get("text_encoder_lr"):  # 0 in the form: the U-Net only
            body.pop("text_encoder_lr", None)
        return LoraTrainParams.from_request(body)

    wire_run("embedding", t, TrainEmbeddingParams.from_request,
             lambda params, job, on_step: train_embedding(ctx, params, job, on_step=on_step),
             lambda params, r: f"Embedding saved: {r.path} (step {r.step}{', interrupted' if r.interrupted else ''})",
             train_emb, stop_emb)
    wire_run("lora", lo, lora_params, lambda params, job, on_step: train_lora(ctx, params, job, on_step=on_step),
             lambda params, r: f"LoRA saved: {r['path']} ({r['steps']} steps"
                               f"{', interrupted' if r['interrupted'] else ''}); use <lora:{params.output_name}:1>",
             train_lo, stop_lo)

    def on_check(folder: str):
        try:
            images, text = dataset_preview(folder or "")
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        return text, images

    check.click(on_check, inputs=t["data_root"], outputs=[dataset_info, gallery], api_name="train_dataset_preview")
    f.update(create=c, embedding=t, lora=lo, status=status, loss=loss, preview=preview)
    return f
