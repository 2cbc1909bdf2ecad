"""Training runs of the application: A1111's Create / Train embedding and LoRA runs, each one job of the
shared queue (the API's training routes and the UI's Train tab both call these)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from webui.context import AppContext
from webui.finetune.textual_inversion import TrainEmbeddingParams, TrainResult
from webui.finetune.textual_inversion import create_embedding as create_embedding_file
from webui.finetune.textual_inversion import train_embedding as train_embedding_run
from webui.jobs import Job
from webui.networks.embeddings import EmbeddingDB
from webui.pipeline.generate import generate
from webui.pipeline.request import GenerationRequest


def create_embedding(ctx: AppContext, name: str, num_vectors_per_token: int = 1, init_text: str = "*",
                     overwrite_old: bool = False) -> Path:
    """A1111's Create embedding, on the current model's text encoders (in the queue: it needs the model); the
    embedding is usable by name at once."""
    with ctx.jobs.slot(Job(kind="create_embedding")):
        model = ctx.model_for(ctx.options.current)
        path = create_embedding_file(model.components, ctx.settings.model_dir("embeddings"), name,
                                     num_vectors_per_token=num_vectors_per_token, init_text=init_text,
                                     overwrite_old=overwrite_old, checkpoint_hash=model.short_hash,
                                     checkpoint_name=model.info.model_name)
    ctx.embeddings.refresh()
    return path


def _env_with_embeddings(ctx: AppContext, trained: dict):
    """The pipeline environment of a training preview: the embeddings folder's files plus ``trained`` (name ->
    Embedding as it is at this step; it wins over a file of the same name, which is the one being trained)."""
    env = ctx.pipeline_env()
    if not trained:
        return env
    db = EmbeddingDB([])
    db.loaded = {**ctx.embeddings.loaded, **trained}
    return dataclasses.replace(env, embeddings=db)


def train_embedding(ctx: AppContext, params: TrainEmbeddingParams, job: Job | None = None,
                    on_step=None) -> TrainResult:
    """A1111's Train embedding as one job of the shared queue (generations wait for it); previews use the
    vectors as they are at that step."""
    job = job or Job(kind="train_embedding")
    with ctx.jobs.slot(job):
        model = ctx.model_for(ctx.options.current)

        def preview(prompt: str, seed: int, embedding):
            env = _env_with_embeddings(ctx, {embedding.name: embedding})
            own = params.preview_from_txt2img
            req = GenerationRequest(prompt=prompt, negative_prompt=params.preview_negative_prompt if own else "",
                                    steps=params.preview_steps if own else 20,
                                    sampler_name=params.preview_sampler_name if own else "Euler a",
                                    cfg_scale=params.preview_cfg_scale if own else 7.0, seed=seed,
                                    width=params.preview_width if own else params.training_width,
                                    height=params.preview_height if own else params.training_height,
                                    save_images=False)
            with torch.no_grad():
                return generate(env, model, req, Job(kind="txt2img"), ctx.options.current).images[0]

        result = train_embedding_run(model, ctx.settings.model_dir("embeddings"), params, job,
                                     templates_dirs=(ctx.settings.data_dir / "textual_inversion_templates",),
                                     preview=preview, log_root=ctx.settings.data_dir / params.log_directory,
                                     on_step=on_step)
    ctx.embeddings.refresh()
    return result




def train_lora(ctx: AppContext, params, job: Job, on_step=None) -> dict:
    """A LoRA run as one job of the shared queue; the new file is listed at once. Previews
    (``sample_every_n_steps``) are txt2img at the training size, Euler a, 20 steps, CFG 7, drawn with the LoRA
    as it is at that step (its layers are hooked into the model while the run holds the queue)."""
    from webui.finetune.lora_train import train_lora as train_lora_run

    with ctx.jobs.slot(job):
        model = ctx.model_for(ctx.options.current)

        def preview(prompt: str, seed: int, bundled: dict):
            env = _env_with_embeddings(ctx, bundled)  # the word trained with the LoRA (pivotal tuning), if any
            req = GenerationRequest(prompt=prompt, steps=20, sampler_name="Euler a", cfg_scale=7.0, seed=seed,
                                    width=params.resolution, height=params.resolution, save_images=False)
            return generate(env, model, req, Job(kind="txt2img"), ctx.options.current).images[0]

        result = train_lora_run(model, ctx.settings.model_dir("Lora"), params, job,
                                log_root=ctx.settings.data_dir / "lora_runs", on_step=on_step, preview=preview)
    ctx.loras.refresh()
    return result
