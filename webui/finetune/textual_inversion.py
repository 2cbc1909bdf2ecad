"""Textual inversion for users (A1111's Train tab): create an embedding, train it on a folder of pictures.

Creating (A1111's ``create_embedding``): ``num_vectors_per_token`` vectors per text encoder, vector ``i`` is
the token embedding of the init text's token ``i * n_tokens // num_vectors`` (zeros without tokens). Saved as
``models/embeddings/<name>.safetensors`` in A1111's format (``emb_params``; SDXL ``clip_l`` / ``clip_g``)
with ``step``, ``sd_checkpoint``, ``sd_checkpoint_name`` metadata, written atomically.

Training (A1111's ``train_embedding`` loop): a prompt per image from the template (``[name]`` = the
embedding's name, so the prompt encoder substitutes the trained vectors), the image's latent (latent
sampling ``once`` / ``deterministic`` / ``random``), a uniform random timestep and noise, the U-Net's noise (or
v) prediction against its target, mean squared error divided by the gradient-accumulation steps; AdamW
(weight decay 0) on the vectors only, the learning-rate schedule syntax of :mod:`lr_schedule`, optional
gradient clipping by value or norm (its own schedule). Everything random in step ``s`` comes from generators
seeded with ``(seed, s)``, and the optimizer state is kept beside the embedding, so a run resumed from a
saved embedding continues bit-exactly.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from webui.errors import RequestError
from webui.finetune.dataset import list_templates, load_folder, prompt_for, read_template
from webui.finetune.loss import check_min_snr, denoising_loss, flow_loss, posterior_latents, seeded_generator
from webui.finetune.lr_schedule import LearnRateSchedule
from webui.networks.embeddings import Embedding, build_lookup, read_embedding

log = logging.getLogger(__name__)
LATENT_SAMPLING = ("once", "deterministic", "random")
CLIP_GRAD_MODES = ("disabled", "value", "norm")


def _refuse_flux(components, field: str) -> None:
    """FLUX.1 reads no per-token CLIP embeddings (its CLIP-L gives only the pooled vector): no embedding steers
    it. SD 3.x trains SDXL-style ``clip_l`` / ``clip_g`` vectors with the rectified-flow loss."""
    if components.spec.family == "flux":
        raise RequestError(field, f"textual inversion cannot steer {components.spec.label}: its text conditioning "
                                  "comes from T5 and CLIP-L's pooled vector, not from CLIP token embeddings")


def _encoder_keys(components) -> list[str]:
    return ["clip_l", "clip_g"] if len(components.text_encoders) == 2 else ["emb_params"]


def _token_embedding(encoder) -> torch.nn.Embedding:
    model = getattr(encoder, "text_model", encoder)
    return model.embeddings.token_embedding


def init_vectors(components, init_text: str, num_vectors: int) -> dict[str, torch.Tensor]:
    """The starting vectors of a new embedding, per text encoder (A1111's rule)."""
    out = {}
    for key, encoder, tokenizer in zip(_encoder_keys(components), components.text_encoders, components.tokenizers):
        table = _token_embedding(encoder).weight.detach().float().cpu()
        ids = tokenizer(init_text or "", add_special_tokens=False)["input_ids"] if init_text else []
        vec = torch.zeros(num_vectors, table.shape[1])
        if ids:
            embedded = table[torch.tensor(ids)]
            for i in range(num_vectors):
                vec[i] = embedded[i * len(ids) // num_vectors]
        out[key] = vec
    return out


def save_embedding_file(path: Path, vectors: dict[str, torch.Tensor], *, step: int, checkpoint_hash: str,
                        checkpoint_name: str, optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write the embedding (and its optimizer state, ``<file>.optim``) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"step": str(step), "sd_checkpoint": checkpoint_hash, "sd_checkpoint_name": checkpoint_name}
    _atomic_save({k: v.detach().float().cpu().contiguous() for k, v in vectors.items()}, path, meta)
    if optimizer is not None:
        tensors, info = {}, {}
        for i, state in enumerate(optimizer.state.values()):
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{i}.{name}"] = value.detach().cpu().contiguous()
                else:
                    info[f"{i}.{name}"] = value
        _atomic_save(tensors or {"empty": torch.zeros(1)}, _optim_path(path), {"scalars": json.dumps(info)})
    return path


def _optim_path(path: Path) -> Path:
    return path.with_name(path.name + ".optim")  # A1111's name; safetensors inside, never scanned as an embedding


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def create_embedding(components, folder: Path, name: str, *, num_vectors_per_token: int = 1, init_text: str = "*",
                     overwrite_old: bool = False, checkpoint_hash: str = "", checkpoint_name: str = "") -> Path:
    """A new embedding file (A1111's ``create_embedding``); RequestError for a bad name or an existing file."""
    _refuse_flux(components, "name")
    name = str(name).strip()
    if not name or any(ch in name for ch in '/\\:*?"<>|') or name.startswith("."):
        raise RequestError("name", f"{name!r} is not a usable embedding name (no path characters)")
    if not 1 <= int(num_vectors_per_token) <= 75:
        raise RequestError("num_vectors_per_token", f"must be between 1 and 75, got {num_vectors_per_token}")
    path = Path(folder) / f"{name}.safetensors"
    existing = [p for p in Path(folder).glob(f"{name}.*") if p.suffix in (".pt", ".safetensors", ".bin")]
    if existing and not overwrite_old:
        raise RequestError("name", f"file {existing[0]} already exists (set overwrite_old to replace it)")
    vectors = init_vectors(components, init_text, int(num_vectors_per_token))
    _optim_path(path).unlink(missing_ok=True)
    return save_embedding_file(path, vectors, step=0, checkpoint_hash=checkpoint_hash, checkpoint_name=checkpoint_name)


@dataclass
class TrainEmbeddingParams:
    """A1111's ``train_embedding`` parameters (its names); the preview ones are used when ``preview_from_txt2img``."""

    embedding_name: str
    learn_rate: str = "0.005"
    batch_size: int = 1
    gradient_step: int = 1
    data_root: str = ""
    log_directory: str = "textual_inversion"
    training_width: int = 512
    training_height: int = 512
    varsize: bool = False
    steps: int = 100000
    clip_grad_mode: str = "disabled"
    clip_grad_value: str = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    use_weight: bool = False
    create_image_every: int = 500
    save_embedding_every: int = 500
    template_filename: str = "style_filewords.txt"
    save_image_with_stored_embedding: bool = True
    preview_from_txt2img: bool = False
    preview_prompt: str = ""
    preview_negative_prompt: str = ""
    preview_steps: int = 20
    preview_sampler_name: str = "Euler a"
    preview_cfg_scale: float = 7.0
    preview_seed: int = -1
    preview_width: int = 512
    preview_height: int = 512
    seed: int = 0  # ours: the run's randomness (A1111 draws from the global generators)
    flip: bool = False  # ours: random horizontal flips
    min_snr_gamma: float = 0.0  # ours, kohya's LoRA option: > 0 weighs each sample by min(SNR, gamma) / SNR

    @classmethod
    def from_request(cls, body: dict[str, Any]) -> TrainEmbeddingParams:
        """From an A1111 ``/train/embedding`` body (unknown keys such as ``id_task`` are ignored); a value of the
        wrong type is a RequestError naming the field."""
        known = cls.__dataclass_fields__
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key not in known or value is None:
                continue
            default = known[key].default
            try:
                if isinstance(default, bool):
                    values[key] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    values[key] = int(value)
                elif isinstance(default, float):
                    values[key] = float(value)
                else:
                    values[key] = str(value)
            except (TypeError, ValueError):
                raise RequestError(key, f"expected a {type(default).__name__}, got {value!r}") from None
        if "embedding_name" not in values:
            raise RequestError("embedding_name", "required")
        return cls(**values)


@dataclass
class TrainResult:
    path: Path
    step: int
    losses: list[float]
    skipped: dict[str, str]
    interrupted: bool = False
    seconds: float = 0.0
    previews: list[Path] | None = None


def _check(params: TrainEmbeddingParams) -> None:
    for name in ("batch_size", "gradient_step", "steps"):
        if getattr(params, name) < 1:
            raise RequestError(name, f"must be at least 1, got {getattr(params, name)}")
    for name in ("training_width", "training_height"):
        value = getattr(params, name)
        if value < 64 or value > 2048 or value % 8:
            raise RequestError(name, f"must be a multiple of 8 between 64 and 2048, got {value}")
    if params.latent_sampling_method not in LATENT_SAMPLING:
        raise RequestError("latent_sampling_method", f"must be one of {', '.join(LATENT_SAMPLING)}")
    if params.clip_grad_mode not in CLIP_GRAD_MODES:
        raise RequestError("clip_grad_mode", f"must be one of {', '.join(CLIP_GRAD_MODES)}")
    if not 0 <= params.tag_drop_out < 1:
        raise RequestError("tag_drop_out", f"must be in [0, 1), got {params.tag_drop_out}")
    if params.save_embedding_every < 0 or params.create_image_every < 0:
        raise RequestError("save_embedding_every", "must be 0 or positive")
    if params.min_snr_gamma < 0:
        raise RequestError("min_snr_gamma", f"must be 0 (off) or positive, got {params.min_snr_gamma}")


def train_embedding(model, embeddings_dir: Path, params: TrainEmbeddingParams, job, *,
                    templates_dirs: tuple[Path, ...] = (), preview: Callable[[str, int], Any] | None = None,
                    log_root: Path | None = None, on_step: Callable[[int, float, Any], None] | None = None,
                    ) -> TrainResult:
    """Train ``params.embedding_name`` (a file in ``embeddings_dir``) on ``model``; see the module docstring.
    ``job`` carries progress and interrupt; ``preview(prompt, seed)`` makes a preview image; ``on_step(step,
    loss, preview image or None)`` follows the run (the UI's loss plot)."""
    _check(params)
    c = model.components
    _refuse_flux(c, "embedding_name")
    check_min_snr(c, params.min_snr_gamma)
    path = Path(embeddings_dir) / f"{params.embedding_name}.safetensors"
    if not path.is_file():
        raise RequestError("embedding_name", f"no embedding {params.embedding_name!r} in {embeddings_dir}: create it "
                                             "first (POST /sdapi/v1/create/embedding)")
    embedding = read_embedding(path)
    keys = _encoder_keys(c)
    if set(_vector_keys(embedding)) != set(keys):
        raise RequestError("embedding_name", f"{params.embedding_name} was made for another model family "
                                             f"(it has {sorted(embedding.vectors)}; this model needs {keys})")
    templates = list_templates(templates_dirs)
    template = templates.get(Path(params.template_filename).stem)
    if template is None:
        raise RequestError("template_filename", f"unknown template {params.template_filename!r}; choose one of "
                                                f"{', '.join(sorted(templates))}")
    lines = read_template(template)
    start = int(embedding.step or 0)
    try:
        schedule = LearnRateSchedule.parse(params.learn_rate, params.steps, start)
    except ValueError as exc:
        raise RequestError("learn_rate", str(exc)) from None
    try:
        clip_schedule = LearnRateSchedule.parse(params.clip_grad_value, params.steps, start) \
            if params.clip_grad_mode != "disabled" else None
    except ValueError as exc:
        raise RequestError("clip_grad_value", str(exc)) from None
    dataset = load_folder(params.data_root, params.training_width, params.training_height)
    if dataset.skipped:
        log.warning("Training data: skipped %s", ", ".join(f"{k} ({v})" for k, v in dataset.skipped.items()))
    vectors = {k: torch.nn.Parameter(embedding.vectors[_vector_name(k)].clone().to(model.device, torch.float32))
               for k in keys}
    trained = Embedding(params.embedding_name, path, {_vector_name(k): v for k, v in vectors.items()}, start)
    optimizer = torch.optim.AdamW(list(vectors.values()), lr=schedule.rate_at(start) or 0.0, weight_decay=0.0)
    _load_optimizer(optimizer, path, list(vectors.values()))
    latents = posterior_latents(model, dataset, params.latent_sampling_method, params.seed)
    log_dir = (log_root or Path(params.log_directory)) / datetime.date.today().isoformat() / params.embedding_name
    losses: list[float] = []
    previews: list[Path] = []
    frozen = [(p, p.requires_grad) for m in (c.unet, *c.text_encoders) for p in m.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    started = time.monotonic()
    step = start
    job.set_stage(0, max(params.steps - start, 1), f"Training embedding {params.embedding_name}")
    try:
        while step < params.steps and not job.interrupted:
            rate = schedule.rate_at(step)
            if rate is None:
                break
            for group in optimizer.param_groups:
                group["lr"] = rate
            total = 0.0
            for micro in range(params.gradient_step):
                loss = _loss(model, trained, dataset, latents, lines, params, step, micro) / params.gradient_step
                loss.backward()
                total += float(loss.detach())
            if clip_schedule is not None:
                value = clip_schedule.rate_at(step) or clip_schedule.pairs[-1][0]
                clip = torch.nn.utils.clip_grad_value_ if params.clip_grad_mode == "value" \
                    else torch.nn.utils.clip_grad_norm_
                clip(list(vectors.values()), value)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(total)
            job.step(step - start)
            job.textinfo = f"Training embedding {params.embedding_name}: step {step}/{params.steps}, loss {total:.5f}"
            if params.save_embedding_every and step % params.save_embedding_every == 0:
                save_embedding_file(log_dir / "embeddings" / f"{params.embedding_name}-{step}.safetensors",
                                    vectors, step=step, checkpoint_hash=model.short_hash,
                                    checkpoint_name=model.info.model_name)
            image = None
            if preview is not None and params.create_image_every and step % params.create_image_every == 0:
                previews.append(_preview(preview, params, trained, model, log_dir, step, dataset, lines))
                image = previews[-1]
            if on_step is not None:
                on_step(step, total, image)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    save_embedding_file(path, vectors, step=step, checkpoint_hash=model.short_hash,
                        checkpoint_name=model.info.model_name, optimizer=optimizer)
    (log_dir).mkdir(parents=True, exist_ok=True)
    (log_dir / "train.json").write_text(json.dumps({**asdict(params), "final_step": step}, indent=1), "utf-8")
    return TrainResult(path, step, losses, dataset.skipped, job.interrupted, time.monotonic() - started, previews)


def _vector_name(key: str) -> str:
    return "default" if key == "emb_params" else key


def _vector_keys(embedding: Embedding) -> list[str]:
    return ["emb_params" if k == "default" else k for k in embedding.vectors]


def _loss(model, embedding: Embedding, dataset, latents, lines, params: TrainEmbeddingParams, step: int,
          micro: int) -> torch.Tensor:
    c = model.components
    rng = random.Random(hash((params.seed, step, micro)))
    batch = dataset.sample_batch(params.batch_size, rng)
    gen = seeded_generator(params.seed, step, micro)
    x0 = []
    for i in batch:
        mean, std = latents[i]
        sample = mean + std * torch.randn(mean.shape, generator=gen).to(mean.device)
        if params.flip and rng.random() < 0.5:
            sample = sample.flip(-1)
        x0.append(sample)
    x0 = torch.stack(x0)
    prompts = [prompt_for(lines, params.embedding_name, dataset.items[i].caption, rng,
                          shuffle_tags=params.shuffle_tags, tag_drop_out=params.tag_drop_out) for i in batch]
    lookup = build_lookup(c, {embedding.name: embedding})
    if c.spec.is_flow:  # SD 3.x
        return flow_loss(model, x0, prompts, gen, embeddings=lookup)
    return denoising_loss(model, x0, prompts, gen, lookup, min_snr_gamma=params.min_snr_gamma)


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path, params: list[torch.nn.Parameter]) -> None:
    """Restore the optimizer state saved beside the embedding (a resumed run continues exactly)."""
    optim = _optim_path(path)
    if not optim.is_file():
        return
    from safetensors import safe_open

    with safe_open(str(optim), "pt") as handle:
        scalars = json.loads((handle.metadata() or {}).get("scalars", "{}"))
    tensors = load_file(str(optim))
    for i, param in enumerate(params):
        state = {name.split(".", 1)[1]: value.to(param.device) for name, value in tensors.items()
                 if name.split(".", 1)[0] == str(i)}
        state.update({name.split(".", 1)[1]: value for name, value in scalars.items()
                      if name.split(".", 1)[0] == str(i)})
        if state:
            if "step" in state and not isinstance(state["step"], torch.Tensor):
                state["step"] = torch.tensor(float(state["step"]))
            optimizer.state[param] = state


def _preview(preview, params: TrainEmbeddingParams, embedding: Embedding, model, log_dir: Path, step: int,
             dataset, lines) -> Path:
    """A preview image with the vectors as they are now (saved to a temporary file the generation reads)."""
    prompt = params.preview_prompt if params.preview_from_txt2img else prompt_for(
        lines, params.embedding_name, dataset.items[0].caption, random.Random(step))
    image = preview(prompt, params.preview_seed if params.preview_from_txt2img else step, embedding)
    out = log_dir / "images" / f"{params.embedding_name}-{step}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
