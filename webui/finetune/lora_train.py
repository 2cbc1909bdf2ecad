"""LoRA training on a user's pictures, saved in kohya's format (loadable here, in A1111, Forge and ComfyUI).

The layers and key names are :mod:`webui.finetune.lora_layers`'. The loop is the textual-inversion one
(:mod:`webui.finetune.textual_inversion`): same dataset, prompts from the captions, noise-prediction loss,
per-step seeded randomness (a step's batch, timesteps and noise depend only on the seed and the step).

A run lives in its **run folder** ``<log_root>/<output_name>/``: ``train.json`` (the parameters, steps done,
loss history), ``state.safetensors`` (the LoRA pairs, the optimizer state and the step, written atomically
every ``save_every_n_steps`` and at the end or interrupt), ``latents/`` (the VAE posteriors, see
:func:`~webui.finetune.loss.posterior_latents`) and ``samples/`` (previews every ``sample_every_n_steps``,
``sample_prompt`` with ``sample_seed``). ``resume`` continues from ``state.safetensors`` bit-exactly. The
LoRA itself is written (atomically) to ``models/Lora/<output_name>.safetensors`` at every save.

**Pivotal tuning** (``bundle_embedding``, as OneTrainer's "additional embeddings" and diffusers' advanced
LoRA script): a new word is trained as a textual-inversion embedding together with the LoRA and bundled in
the LoRA file under A1111's ``bundle_emb.<word>.`` keys, so ``<lora:name:1>`` brings its own word (A1111
1.7+, Forge and this product load it). It helps where the base model has no usable token for the concept.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from webui.errors import RequestError
from webui.finetune.dataset import Dataset, load_folder
from webui.finetune.lora_layers import FusedLoraLayer, LoraLayer, flow_lora_targets, kohya_tensors, lora_targets
from webui.finetune.loss import check_min_snr, denoising_loss, flow_loss, posterior_latents, seeded_generator
from webui.finetune.optimizers import OPTIMIZERS, describe, load_state, make_optimizer, state_tensors
from webui.finetune.textual_inversion import init_vectors
from webui.networks.embeddings import Embedding, build_lookup
from webui.networks.lora import BUNDLE_PREFIX

SCHEDULERS = ("constant", "cosine", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "sd3": "sd3", "flux": "flux1"}
#: kohya's network module per family (what ``ss_network_module`` says)
NETWORK_MODULE = {"sd3": "networks.lora_sd3", "flux": "networks.lora_flux"}
#: parameters a resumed run may change (the rest must match the saved run's)
_RESUMABLE = frozenset({"max_train_steps", "max_train_epochs", "save_every_n_steps", "sample_every_n_steps",
                        "sample_prompt", "sample_seed", "resume", "overwrite", "gradient_checkpointing", "extra"})

#: (prompt, seed, {word: Embedding} of the bundled embedding as it is now) -> PIL image, generated with the
#: LoRA as it is now
Preview = Callable[[str, int, dict], Any]


@dataclass
class LoraTrainParams:
    """Training parameters with kohya's names where it has them."""

    output_name: str
    train_data_dir: str
    network_dim: int = 8
    network_alpha: float = 4.0
    conv_dim: int = 0  # > 0: LoCon, the 3x3 convolutions of the ResNet blocks at this rank
    conv_alpha: float = 1.0
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None  # None: the U-Net only (kohya's --network_train_unet_only)
    optimizer_type: str = "AdamW"  # AdamW, AdamW8bit (bitsandbytes, CUDA), Prodigy (prodigyopt)
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 500
    max_train_epochs: int = 0  # > 0: steps = epochs x ceil(images / batch size), in place of max_train_steps
    train_batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    caption_template: str = "[filewords]"  # "[name]" is output_name
    flip_aug: bool = False
    shuffle_caption: bool = False
    caption_dropout_rate: float = 0.0
    min_snr_gamma: float = 0.0  # > 0: kohya's --min_snr_gamma loss weighting (5 is the paper's value)
    noise_offset: float = 0.0  # kohya's --noise_offset (e.g. 0.05-0.1)
    mixed_precision: str = "no"  # "fp16" / "bf16": autocast (fp16 only on a GPU)
    gradient_checkpointing: bool = False  # less memory for the U-Net's activations, more compute
    save_every_n_steps: int = 0  # 0: only at the end (and on interrupt)
    sample_every_n_steps: int = 0  # 0: no previews
    sample_prompt: str = ""  # "" : the first picture's caption with the template
    sample_seed: int = 0
    resume: bool = False  # continue the run in the run folder
    overwrite: bool = False
    # pivotal tuning: a new word trained as an embedding with the LoRA and bundled in its file ("" : none)
    bundle_embedding: str = ""
    bundle_embedding_init: str = "*"  # the starting vectors: this text's token vectors (A1111's init text)
    bundle_embedding_vectors: int = 1
    embedding_lr: float = 5e-3
    # the first steps train only the bundled word (textual inversion), then the LoRA joins: the word takes the
    # concept in a context-free way before the layers can fit it to the pictures' backgrounds (the two stages
    # of pivotal tuning)
    embedding_only_steps: int = 0
    # kohya's regularization images (DreamBooth's prior preservation): pictures of the class without the new
    # concept, trained alongside with their loss weighted by ``prior_loss_weight``, so the LoRA learns what the
    # concept changes and leaves the rest of the model's pictures alone
    reg_data_dir: str = ""
    prior_loss_weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_request(cls, body: dict[str, Any]) -> LoraTrainParams:
        known = {k: f for k, f in cls.__dataclass_fields__.items() if k != "extra"}
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key not in known or value is None:
                continue
            kind = {"int": int, "float": float, "str": str, "bool": bool}.get(
                str(known[key].type).split(" | ")[0], str)
            try:
                values[key] = (value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")) \
                    if kind is bool else kind(value)
            except (TypeError, ValueError):
                raise RequestError(key, f"expected a {kind.__name__}, got {value!r}") from None
        for required in ("output_name", "train_data_dir"):
            if required not in values:
                raise RequestError(required, "required")
        return cls(**values)


def _rank(params: LoraTrainParams, module: torch.nn.Module) -> tuple[int, float]:
    """(rank, alpha) of a layer: ``conv_dim`` / ``conv_alpha`` for 3x3 convolutions (LoCon), else the network's."""
    if isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) != (1, 1):
        return params.conv_dim, params.conv_alpha
    return params.network_dim, params.network_alpha


def _lr_at(params: LoraTrainParams, base: float, step: int, total: int) -> float:
    if params.lr_warmup_steps and step < params.lr_warmup_steps:
        return base * (step + 1) / params.lr_warmup_steps
    if params.lr_scheduler == "cosine":
        span = max(total - params.lr_warmup_steps, 1)
        done = min(max(step - params.lr_warmup_steps, 0) / span, 1.0)
        return base * 0.5 * (1 + math.cos(math.pi * done))
    return base


def _check(params: LoraTrainParams) -> None:
    if not 1 <= params.network_dim <= 1024:
        raise RequestError("network_dim", f"must be between 1 and 1024, got {params.network_dim}")
    if params.network_alpha <= 0:
        raise RequestError("network_alpha", f"must be positive, got {params.network_alpha}")
    if not 0 <= params.conv_dim <= 1024:
        raise RequestError("conv_dim", f"must be between 0 (no LoCon) and 1024, got {params.conv_dim}")
    if params.conv_dim and params.conv_alpha <= 0:
        raise RequestError("conv_alpha", f"must be positive, got {params.conv_alpha}")
    if params.max_train_steps < 1 or params.train_batch_size < 1:
        raise RequestError("max_train_steps", "max_train_steps and train_batch_size must be at least 1")
    if params.max_train_epochs < 0:
        raise RequestError("max_train_epochs", f"must be 0 (use max_train_steps) or more, "
                                               f"got {params.max_train_epochs}")
    if params.lr_scheduler not in SCHEDULERS:
        raise RequestError("lr_scheduler", f"must be one of {', '.join(SCHEDULERS)}")
    if params.optimizer_type.lower() not in {o.lower() for o in OPTIMIZERS}:
        raise RequestError("optimizer_type", f"must be one of {', '.join(OPTIMIZERS)}")
    if params.mixed_precision not in MIXED_PRECISION:
        raise RequestError("mixed_precision", f"must be one of {', '.join(MIXED_PRECISION)}")
    if params.resolution < 64 or params.resolution % 64:
        raise RequestError("resolution", f"must be a multiple of 64, at least 64, got {params.resolution}")
    for name in ("save_every_n_steps", "sample_every_n_steps", "lr_warmup_steps"):
        if getattr(params, name) < 0:
            raise RequestError(name, f"must be 0 or more, got {getattr(params, name)}")
    if params.bundle_embedding and (not params.bundle_embedding.strip() or any(
            ch in params.bundle_embedding for ch in '<>:,()[]{}')):
        raise RequestError("bundle_embedding", f"{params.bundle_embedding!r} is not a usable word for a prompt")
    if params.bundle_embedding and not 1 <= params.bundle_embedding_vectors <= 75:
        raise RequestError("bundle_embedding_vectors", f"must be between 1 and 75, got "
                                                       f"{params.bundle_embedding_vectors}")
    if params.embedding_only_steps < 0 or (params.embedding_only_steps and not params.bundle_embedding):
        raise RequestError("embedding_only_steps", "must be 0, or more with a bundle_embedding to train, got "
                                                   f"{params.embedding_only_steps}")
    if params.min_snr_gamma < 0:
        raise RequestError("min_snr_gamma", f"must be 0 (off) or positive, got {params.min_snr_gamma}")
    if params.prior_loss_weight < 0:
        raise RequestError("prior_loss_weight", f"must be 0 or more, got {params.prior_loss_weight}")
    if params.bundle_embedding and params.embedding_lr <= 0:
        raise RequestError("embedding_lr", f"must be positive, got {params.embedding_lr}")
    name = params.output_name.strip()
    if not name or any(ch in name for ch in '/\\:*?"<>|') or name.startswith("."):
        raise RequestError("output_name", f"{name!r} is not a usable file name")


def with_regularization(dataset: Dataset, params: LoraTrainParams) -> Dataset:
    """``dataset`` followed by the pictures of ``reg_data_dir`` with their ``prior_loss_weight``, as kohya pairs
    them (``train_util.DreamBoothDataset``): regularization pictures are taken in order, cycling, until there are
    as many as training pictures (extra ones are not used), so an epoch sees both kinds equally often."""
    if not params.reg_data_dir.strip():
        return dataset
    reg = load_folder(params.reg_data_dir, params.resolution, params.resolution, field_name="reg_data_dir")
    n = len(dataset.items)
    extra = [replace(reg.items[i % len(reg.items)], weight=params.prior_loss_weight, regularization=True)
             for i in range(n)]
    skipped = {**dataset.skipped, **{f"reg:{k}": v for k, v in reg.skipped.items()}}
    return Dataset(dataset.items + extra, skipped)


def run_folder(log_root: Path | None, params: LoraTrainParams) -> Path:
    return Path(log_root or "lora_runs") / params.output_name.strip()


def train_lora(model, lora_dir: Path, params: LoraTrainParams, job, *, log_root: Path | None = None,
               on_step: Callable[..., None] | None = None, preview: Preview | None = None) -> dict[str, Any]:
    """Train and save ``<lora_dir>/<output_name>.safetensors``; returns a summary (path, losses, seconds,
    previews). ``on_step(step, loss, preview_path_or_None)`` follows the run (loss history of the run API and
    the UI's plot); ``preview(prompt, seed)`` draws a sample with the LoRA as it is at that step."""
    _check(params)
    c = model.components
    if c.spec.family == "flux" and params.bundle_embedding:
        raise RequestError("bundle_embedding", "FLUX.1 takes no CLIP token embeddings (its CLIP-L gives only the "
                                               "pooled vector): train the LoRA without bundle_embedding")
    if c.spec.is_flow and params.conv_dim:
        raise RequestError("conv_dim", f"{c.spec.label} models have no convolution blocks; use conv_dim 0")
    check_min_snr(c, params.min_snr_gamma)
    if params.mixed_precision == "fp16" and model.device.type != "cuda":
        raise RequestError("mixed_precision", "fp16 training needs a CUDA GPU; use bf16 or no here")
    out_path = Path(lora_dir) / f"{params.output_name}.safetensors"
    folder = run_folder(log_root, params)
    state_path = folder / "state.safetensors"
    if params.resume and not state_path.is_file():
        raise RequestError("resume", f"no saved state to resume in {folder}; start the run without resume")
    if out_path.exists() and not (params.overwrite or params.resume):
        raise RequestError("output_name", f"{out_path} already exists (set overwrite to replace it)")
    dataset = load_folder(params.train_data_dir, params.resolution, params.resolution, field_name="train_data_dir")
    dataset = with_regularization(dataset, params)
    if params.bundle_embedding and not any(
            params.bundle_embedding.strip() in params.caption_template.replace("[name]", params.output_name)
            .replace("[filewords]", item.caption) for item in dataset.items if not item.regularization):
        raise RequestError("bundle_embedding", f"the word {params.bundle_embedding.strip()!r} occurs in no caption: "
                                               "put it in the captions or in caption_template (for example "
                                               f"'{params.bundle_embedding.strip()}, [filewords]')")
    total = params.max_train_steps
    if params.max_train_epochs:
        total = params.max_train_epochs * math.ceil(len(dataset.items) / params.train_batch_size)
    unet_lr = params.unet_lr if params.unet_lr is not None else params.learning_rate
    te_lr = params.text_encoder_lr
    gen = torch.Generator().manual_seed(params.seed)
    if c.spec.is_flow:  # the original layouts' fused layers: one LoRA over their diffusers parts
        layers: dict[str, Any] = {
            key: FusedLoraLayer(parts, params.network_dim, params.network_alpha, gen).to(model.device)
            for key, parts in flow_lora_targets(c, train_text_encoder=bool(te_lr)).items()}
    else:
        targets = lora_targets(c, train_text_encoder=bool(te_lr), conv=params.conv_dim > 0)
        layers = {key: LoraLayer(module, *_rank(params, module), gen).to(model.device)
                  for key, module in targets.items()}
    groups = [{"params": [p for k, layer in layers.items() if k.startswith("lora_unet_") for p in layer.parameters()],
               "lr": unet_lr, "base": unet_lr}]
    if te_lr:
        groups.append({"params": [p for k, layer in layers.items() if not k.startswith("lora_unet_")
                                  for p in layer.parameters()], "lr": te_lr, "base": te_lr})
    bundle = _bundle_embedding(c, params, out_path, model.device)
    if bundle is not None:
        groups.append({"params": list(bundle.vectors.values()), "lr": params.embedding_lr,
                       "base": params.embedding_lr, "weight_decay": 0.0})
    optimizer = make_optimizer(params.optimizer_type, groups, model.device)
    step, losses = 0, []
    if params.resume:
        step, losses = _load_run(state_path, folder, layers, optimizer, params, bundle)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "train.json", {**asdict(params), "total_steps": total, "steps_done": step, "losses": losses})
    frozen = [(p, p.requires_grad) for m in (c.unet, *c.text_encoders, *([c.t5] if c.t5 is not None else []))
              for p in m.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    checkpointing = params.gradient_checkpointing and hasattr(c.unet, "enable_gradient_checkpointing")
    if checkpointing:
        c.unet.enable_gradient_checkpointing()
    latents = posterior_latents(model, dataset, "deterministic", params.seed, cache_dir=folder / "latents")
    autocast = torch.autocast(model.device.type, dtype=torch.float16 if params.mixed_precision == "fp16"
                              else torch.bfloat16) if params.mixed_precision != "no" else nullcontext()
    started = time.monotonic()
    previews: list[Path] = []
    job.set_stage(0, total, f"Training LoRA {params.output_name}")
    if step:
        job.step(step)

    def save() -> None:
        _save_run(state_path, layers, optimizer, step, bundle)
        _save_lora(out_path, {**kohya_tensors(layers), **_bundle_tensors(bundle)},
                   _metadata(params, model, dataset, step, started, unet_lr, te_lr, optimizer))
        _write_json(folder / "train.json", {**asdict(params), "total_steps": total, "steps_done": step,
                                            "losses": losses})

    try:
        while step < total and not job.interrupted:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(params, group["base"], step, total)
            lora_on = step >= params.embedding_only_steps
            for layer in layers.values():
                for p in layer.parameters():
                    p.requires_grad_(lora_on)  # no gradient, no optimizer update while only the word trains
            with autocast:
                loss = _loss(model, dataset, latents, params, step, bundle)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.detach()))
            job.step(step)
            image = None
            if preview is not None and params.sample_every_n_steps and step % params.sample_every_n_steps == 0:
                image = _sample(preview, params, dataset, folder, step, bundle)
                previews.append(image)
            if params.save_every_n_steps and step % params.save_every_n_steps == 0 and step < total:
                save()
            if on_step is not None:
                on_step(step, losses[-1], image)
            job.textinfo = f"Training LoRA {params.output_name}: step {step}/{total}, loss {losses[-1]:.5f}"
        save()
    finally:
        for layer in layers.values():
            layer.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
        if checkpointing:
            c.unet.disable_gradient_checkpointing()
    return {"path": out_path, "steps": step, "losses": losses, "seconds": time.monotonic() - started,
            "interrupted": job.interrupted, "skipped": dataset.skipped, "run_folder": folder, "previews": previews}


def _bundle_embedding(c, params: LoraTrainParams, out_path: Path, device) -> Embedding | None:
    """The trained word of pivotal tuning: vectors per text encoder (A1111's init-text rule), as parameters."""
    if not params.bundle_embedding:
        return None
    start = init_vectors(c, params.bundle_embedding_init, params.bundle_embedding_vectors)
    vectors = {("default" if k == "emb_params" else k): torch.nn.Parameter(v.to(device, torch.float32))
               for k, v in start.items()}
    return Embedding(params.bundle_embedding.strip(), out_path, vectors)


def _bundle_tensors(bundle: Embedding | None) -> dict[str, torch.Tensor]:
    """A1111's keys of an embedding bundled in a LoRA file (``string_to_param.*`` as in its own embedding files,
    ``clip_l`` / ``clip_g`` for two-encoder models)."""
    if bundle is None:
        return {}
    return {f"{BUNDLE_PREFIX}{bundle.name}.{'string_to_param.*' if k == 'default' else k}": v.detach().float().cpu()
            for k, v in bundle.vectors.items()}


def _sample(preview: Preview, params: LoraTrainParams, dataset, folder: Path, step: int,
            bundle: Embedding | None) -> Path:
    prompt = params.sample_prompt or params.caption_template.replace("[name]", params.output_name).replace(
        "[filewords]", dataset.items[0].caption)
    with torch.no_grad():
        image = preview(prompt, params.sample_seed, {bundle.name: bundle} if bundle is not None else {})
    out = folder / "samples" / f"{params.output_name}-{step:06d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str), "utf-8"))


def _save_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    _atomic(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata))


def _save_run(path: Path, layers: dict[str, LoraLayer], optimizer: torch.optim.Optimizer, step: int,
              bundle: Embedding | None = None) -> None:
    """The LoRA pairs (exact, in training layout), the bundled word's vectors, the optimizer state and the
    step, atomically."""
    tensors = {f"lora.{k}.{name}": p.detach().cpu().contiguous() for k, layer in layers.items()
               for name, p in (("down", layer.down), ("up", layer.up))}
    if bundle is not None:
        tensors.update({f"embedding.{k}": v.detach().cpu().contiguous() for k, v in bundle.vectors.items()})
    optim, meta = state_tensors(optimizer)
    _atomic(path, lambda tmp: save_file({**tensors, **optim}, str(tmp), metadata={**meta, "step": str(step)}))


def _load_run(path: Path, folder: Path, layers: dict[str, LoraLayer], optimizer: torch.optim.Optimizer,
              params: LoraTrainParams, bundle: Embedding | None = None) -> tuple[int, list[float]]:
    """Restore a saved run (step, loss history); RequestError on ``resume`` naming what differs."""
    try:
        saved = json.loads((folder / "train.json").read_text("utf-8"))
    except (OSError, ValueError):
        saved = {}
    changed = [k for k, v in asdict(params).items() if k not in _RESUMABLE and k in saved and saved[k] != v]
    if changed:
        raise RequestError("resume", f"the run in {folder} was started with other settings ({', '.join(changed)}); "
                                     "resume with the same settings or start a new run")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
    try:
        with torch.no_grad():
            for key, layer in layers.items():
                layer.down.copy_(tensors[f"lora.{key}.down"])
                layer.up.copy_(tensors[f"lora.{key}.up"])
            for key, vec in (bundle.vectors.items() if bundle is not None else ()):
                vec.copy_(tensors[f"embedding.{key}"])
    except (KeyError, RuntimeError) as exc:
        raise RequestError("resume", f"the saved LoRA in {path} does not fit this model ({exc})") from None
    load_state(optimizer, tensors, meta, path)
    return int(meta.get("step", 0)), [float(x) for x in saved.get("losses", [])][: int(meta.get("step", 0))]


def _metadata(params: LoraTrainParams, model, dataset, step: int, started: float, unet_lr: float,
              te_lr: float | None, optimizer: torch.optim.Optimizer) -> dict[str, str]:
    """kohya's ``ss_*`` keys (the ones A1111's and Forge's LoRA pages show)."""
    return {
        "ss_network_module": NETWORK_MODULE.get(model.spec.family, "networks.lora"),
        "ss_network_dim": str(params.network_dim),
        "ss_network_alpha": str(params.network_alpha), "ss_output_name": params.output_name,
        "ss_network_args": json.dumps({"conv_dim": str(params.conv_dim), "conv_alpha": str(params.conv_alpha)})
        if params.conv_dim else "null",
        "ss_base_model_version": BASE_MODEL_VERSION.get(model.spec.family, model.spec.family),
        "ss_sd_model_name": model.info.model_name, "ss_sd_model_hash": model.short_hash,
        "ss_learning_rate": str(params.learning_rate), "ss_unet_lr": str(unet_lr),
        "ss_text_encoder_lr": str(te_lr or 0.0), "ss_lr_scheduler": params.lr_scheduler,
        "ss_lr_warmup_steps": str(params.lr_warmup_steps), "ss_max_train_steps": str(params.max_train_steps),
        "ss_max_train_epochs": str(params.max_train_epochs or None),
        "ss_steps": str(step), "ss_batch_size_per_device": str(params.train_batch_size),
        "ss_num_train_images": str(sum(not i.regularization for i in dataset.items)),
        "ss_num_reg_images": str(sum(i.regularization for i in dataset.items)),
        "ss_prior_loss_weight": str(params.prior_loss_weight),
        "ss_resolution": f"({params.resolution}, {params.resolution})",
        "ss_seed": str(params.seed), "ss_optimizer": describe(optimizer),
        "ss_mixed_precision": params.mixed_precision, "ss_gradient_checkpointing": str(params.gradient_checkpointing),
        "ss_min_snr_gamma": str(params.min_snr_gamma or None), "ss_noise_offset": str(params.noise_offset or None),
        "ss_network_train_unet_only": str(not te_lr), "ss_training_started_at": str(int(time.time() - (time.monotonic()
                                                                                                        - started))),
        "ss_training_finished_at": str(int(time.time())), "ss_flip_aug": str(params.flip_aug),
        "ss_shuffle_caption": str(params.shuffle_caption), "ss_caption_dropout_rate": str(params.caption_dropout_rate),
        "ss_v2": str(model.spec.family == "sd2"), "ss_v_parameterization": str(model.spec.prediction_type ==
                                                                                "v_prediction"),
    }


def _loss(model, dataset, latents, params: LoraTrainParams, step: int, bundle: Embedding | None = None
          ) -> torch.Tensor:
    rng = random.Random(hash((params.seed, step)))
    batch = dataset.sample_batch(params.train_batch_size, rng)
    gen = seeded_generator(params.seed, step, 1)
    x0 = []
    for i in batch:
        sample = latents[i][0]
        if params.flip_aug and rng.random() < 0.5:
            sample = sample.flip(-1)
        x0.append(sample)
    x0 = torch.stack(x0)
    prompts = []
    for i in batch:
        tags = [t.strip() for t in dataset.items[i].caption.split(",") if t.strip()]
        if params.shuffle_caption:
            rng.shuffle(tags)
        if params.caption_dropout_rate and rng.random() < params.caption_dropout_rate:
            tags = []
        prompts.append(params.caption_template.replace("[name]", params.output_name)
                       .replace("[filewords]", ", ".join(tags)))
    lookup = build_lookup(model.components, {bundle.name: bundle}) if bundle is not None else None
    weights = None
    if any(dataset.items[i].weight != 1.0 for i in batch):
        weights = torch.tensor([dataset.items[i].weight for i in batch], dtype=torch.float32, device=x0.device)
    if model.components.spec.is_flow:
        return flow_loss(model, x0, prompts, gen, embeddings=lookup, sample_weights=weights)
    return denoising_loss(model, x0, prompts, gen, lookup, min_snr_gamma=params.min_snr_gamma,
                          noise_offset=params.noise_offset, sample_weights=weights)
