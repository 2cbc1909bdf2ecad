"""LoRA training on a user's pictures, saved in kohya's format (loadable here, in A1111, Forge and ComfyUI).

Layers (kohya's sd-scripts defaults for ``networks.lora``): in the U-Net every Linear (and 1x1 Conv) of the
Transformer2D blocks — attention q/k/v/out, feed-forward, proj_in/proj_out; in the text encoder(s) the
attention and MLP Linears. Each gets ``down`` (rank x in, Kaiming-uniform) and ``up`` (out x rank, zeros)
added as ``layer(x) + up(down(x)) * alpha / rank``; the base weights stay frozen.

Keys as kohya writes them: ``lora_unet_<module>`` with diffusers' module names for SD 1.x / 2.x and the
original (LDM) names for SDXL (sd-scripts builds its own SDXL U-Net), ``lora_te_`` (one text encoder) or
``lora_te1_`` / ``lora_te2_`` + ``text_model_...``; ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``;
``ss_*`` training metadata.

The loop is the textual-inversion one (:mod:`webui.finetune.textual_inversion`): same dataset, prompts from
the captions, noise-prediction loss, per-step seeded randomness; AdamW with a constant or cosine schedule and
linear warmup.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from webui.errors import RequestError
from webui.finetune.dataset import load_folder
from webui.finetune.loss import denoising_loss, posterior_latents, seeded_generator
from webui.models.original_layout import ldm_module_name, unet_module_table

_UNET_ATTN_PARENTS = ("Transformer2DModel",)
_TE_PARENTS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
SCHEDULERS = ("constant", "cosine", "constant_with_warmup")
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


@dataclass
class LoraTrainParams:
    """Training parameters with kohya's names where it has them."""

    output_name: str
    train_data_dir: str
    network_dim: int = 8
    network_alpha: float = 4.0
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None  # None: the U-Net only (kohya's --network_train_unet_only)
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 500
    train_batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    caption_template: str = "[filewords]"  # "[name]" is output_name
    flip_aug: bool = False
    shuffle_caption: bool = False
    caption_dropout_rate: float = 0.0
    overwrite: bool = False
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


class LoraLayer(torch.nn.Module):
    def __init__(self, base: torch.nn.Module, rank: int, alpha: float, gen: torch.Generator):
        super().__init__()
        conv = isinstance(base, torch.nn.Conv2d)
        in_dim = base.in_channels if conv else base.in_features
        out_dim = base.out_channels if conv else base.out_features
        self.conv = conv
        self.down = torch.nn.Parameter(torch.empty(rank, in_dim))
        bound = 1 / math.sqrt(in_dim)  # Kaiming-uniform with a = sqrt(5), as torch's Linear and kohya init
        with torch.no_grad():
            self.down.uniform_(-bound, bound, generator=gen)
        self.up = torch.nn.Parameter(torch.zeros(out_dim, rank))
        self.scale = alpha / rank
        self.handle = base.register_forward_hook(self._add)

    def _add(self, module, inputs, output):
        x = inputs[0]
        if self.conv:  # 1x1 conv: the same product over the channel axis
            lora = torch.einsum("bchw,rc->brhw", x, self.down.to(x.dtype))
            lora = torch.einsum("brhw,or->bohw", lora, self.up.to(x.dtype))
        else:
            lora = (x @ self.down.to(x.dtype).t()) @ self.up.to(x.dtype).t()
        return output + lora * self.scale

    def remove(self) -> None:
        self.handle.remove()


def lora_targets(components, train_text_encoder: bool) -> dict[str, torch.nn.Module]:
    """kohya key -> base module for the layers a LoRA trains."""
    out: dict[str, torch.nn.Module] = {}
    unet = components.unet
    table = unet_module_table(unet) if components.spec.family == "sdxl" else None
    for parent_name, parent in unet.named_modules():
        if type(parent).__name__ not in _UNET_ATTN_PARENTS:
            continue
        for child_name, child in parent.named_modules():
            is_1x1 = isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)
            if not (isinstance(child, torch.nn.Linear) or is_1x1) or not child_name:
                continue
            name = f"{parent_name}.{child_name}"
            if table is not None:
                name = ldm_module_name(name, table) or name
            out["lora_unet_" + name.replace(".", "_")] = child
    if train_text_encoder:
        prefixes = ["lora_te_"] if len(components.text_encoders) == 1 else ["lora_te1_", "lora_te2_"]
        for prefix, encoder in zip(prefixes, components.text_encoders):
            for parent_name, parent in encoder.named_modules():
                if type(parent).__name__ not in _TE_PARENTS:
                    continue
                for child_name, child in parent.named_children():
                    if isinstance(child, torch.nn.Linear):
                        path = f"{parent_name}.{child_name}"
                        path = path if path.startswith("text_model.") else "text_model." + path
                        out[prefix + path.replace(".", "_")] = child
    return out


def _lr_at(params: LoraTrainParams, base: float, step: int) -> float:
    if params.lr_warmup_steps and step < params.lr_warmup_steps:
        return base * (step + 1) / params.lr_warmup_steps
    if params.lr_scheduler == "cosine":
        span = max(params.max_train_steps - params.lr_warmup_steps, 1)
        done = min(max(step - params.lr_warmup_steps, 0) / span, 1.0)
        return base * 0.5 * (1 + math.cos(math.pi * done))
    return base


def _check(params: LoraTrainParams) -> None:
    if not 1 <= params.network_dim <= 1024:
        raise RequestError("network_dim", f"must be between 1 and 1024, got {params.network_dim}")
    if params.network_alpha <= 0:
        raise RequestError("network_alpha", f"must be positive, got {params.network_alpha}")
    if params.max_train_steps < 1 or params.train_batch_size < 1:
        raise RequestError("max_train_steps", "max_train_steps and train_batch_size must be at least 1")
    if params.lr_scheduler not in SCHEDULERS:
        raise RequestError("lr_scheduler", f"must be one of {', '.join(SCHEDULERS)}")
    if params.resolution < 64 or params.resolution % 64:
        raise RequestError("resolution", f"must be a multiple of 64, at least 64, got {params.resolution}")
    name = params.output_name.strip()
    if not name or any(ch in name for ch in '/\\:*?"<>|') or name.startswith("."):
        raise RequestError("output_name", f"{name!r} is not a usable file name")


def train_lora(model, lora_dir: Path, params: LoraTrainParams, job, *, log_root: Path | None = None,
               on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train and save ``<lora_dir>/<output_name>.safetensors``; returns a summary (path, losses, seconds).
    ``on_step(step, loss)`` follows the run (loss history of the run API and the UI's plot)."""
    _check(params)
    c = model.components
    if c.spec.is_flow:
        raise RequestError("train_data_dir", f"LoRA training is not available for {c.spec.label} models yet")
    out_path = Path(lora_dir) / f"{params.output_name}.safetensors"
    if out_path.exists() and not params.overwrite:
        raise RequestError("output_name", f"{out_path} already exists (set overwrite to replace it)")
    dataset = load_folder(params.train_data_dir, params.resolution, params.resolution, field_name="train_data_dir")
    unet_lr = params.unet_lr if params.unet_lr is not None else params.learning_rate
    te_lr = params.text_encoder_lr
    gen = torch.Generator().manual_seed(params.seed)
    targets = lora_targets(c, train_text_encoder=bool(te_lr))
    layers = {key: LoraLayer(module, params.network_dim, params.network_alpha, gen).to(model.device)
              for key, module in targets.items()}
    groups = [{"params": [p for k, layer in layers.items() if k.startswith("lora_unet_") for p in layer.parameters()],
               "lr": unet_lr, "base": unet_lr}]
    if te_lr:
        groups.append({"params": [p for k, layer in layers.items() if not k.startswith("lora_unet_")
                                  for p in layer.parameters()], "lr": te_lr, "base": te_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    frozen = [(p, p.requires_grad) for m in (c.unet, *c.text_encoders) for p in m.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    latents = posterior_latents(model, dataset, "deterministic", params.seed)
    losses: list[float] = []
    started = time.monotonic()
    step = 0
    job.set_stage(0, params.max_train_steps, f"Training LoRA {params.output_name}")
    try:
        while step < params.max_train_steps and not job.interrupted:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(params, group["base"], step)
            loss = _loss(model, dataset, latents, params, step)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.detach()))
            job.step(step)
            if on_step is not None:
                on_step(step, losses[-1])
            job.textinfo = f"Training LoRA {params.output_name}: step {step}/{params.max_train_steps}, " \
                           f"loss {losses[-1]:.5f}"
    finally:
        for layer in layers.values():
            layer.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    tensors: dict[str, torch.Tensor] = {}
    for key, layer in layers.items():
        base = targets[key]
        shape = (1, 1) if isinstance(base, torch.nn.Conv2d) else ()
        tensors[f"{key}.lora_down.weight"] = layer.down.detach().float().cpu().reshape(*layer.down.shape, *shape)
        tensors[f"{key}.lora_up.weight"] = layer.up.detach().float().cpu().reshape(*layer.up.shape, *shape)
        tensors[f"{key}.alpha"] = torch.tensor(float(params.network_alpha))
    metadata = _metadata(params, model, dataset, step, started, unet_lr, te_lr)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    log_dir = (log_root or Path("lora_runs")) / datetime.date.today().isoformat() / params.output_name
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "train.json").write_text(json.dumps({**asdict(params), "steps_done": step, "losses": losses},
                                                   indent=1), "utf-8")
    return {"path": out_path, "steps": step, "losses": losses, "seconds": time.monotonic() - started,
            "interrupted": job.interrupted, "skipped": dataset.skipped}


def _metadata(params: LoraTrainParams, model, dataset, step: int, started: float, unet_lr: float,
              te_lr: float | None) -> dict[str, str]:
    """kohya's ``ss_*`` keys (the ones A1111's and Forge's LoRA pages show)."""
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(params.network_dim),
        "ss_network_alpha": str(params.network_alpha), "ss_output_name": params.output_name,
        "ss_base_model_version": BASE_MODEL_VERSION.get(model.spec.family, model.spec.family),
        "ss_sd_model_name": model.info.model_name, "ss_sd_model_hash": model.short_hash,
        "ss_learning_rate": str(params.learning_rate), "ss_unet_lr": str(unet_lr),
        "ss_text_encoder_lr": str(te_lr or 0.0), "ss_lr_scheduler": params.lr_scheduler,
        "ss_lr_warmup_steps": str(params.lr_warmup_steps), "ss_max_train_steps": str(params.max_train_steps),
        "ss_steps": str(step), "ss_batch_size_per_device": str(params.train_batch_size),
        "ss_num_train_images": str(len(dataset.items)), "ss_resolution": f"({params.resolution}, {params.resolution})",
        "ss_seed": str(params.seed), "ss_optimizer": "torch.optim.adamw.AdamW(weight_decay=0.01)",
        "ss_network_train_unet_only": str(not te_lr), "ss_training_started_at": str(int(time.time() - (time.monotonic()
                                                                                                        - started))),
        "ss_training_finished_at": str(int(time.time())), "ss_flip_aug": str(params.flip_aug),
        "ss_shuffle_caption": str(params.shuffle_caption), "ss_caption_dropout_rate": str(params.caption_dropout_rate),
        "ss_v2": str(model.spec.family == "sd2"), "ss_v_parameterization": str(model.spec.prediction_type ==
                                                                                "v_prediction"),
    }


def _loss(model, dataset, latents, params: LoraTrainParams, step: int) -> torch.Tensor:
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
    return denoising_loss(model, x0, prompts, gen)
