"""LoRA in the kohya / A1111 file layout, applied for one job and removed exactly afterwards.

A LoRA file holds, per target module, ``<key>.lora_down.weight`` (rank x in), ``<key>.lora_up.weight``
(out x rank) and optionally ``<key>.alpha``. Keys name modules kohya-style: ``lora_unet_`` + the
module path with ``.`` -> ``_`` (diffusers names for SD 1.x trainers, LDM names such as
``input_blocks_4_1_...`` for SDXL ones -- both are understood), ``lora_te_`` / ``lora_te1_`` /
``lora_te2_`` + the HF text-model path. Applying adds ``multiplier * alpha / rank * up @ down``
to each weight after backing it up; :meth:`AppliedLoras.restore` copies the backups back, so the
next job sees the untouched model bit for bit.

A file may also bundle textual-inversion embeddings (A1111 1.7+: ``bundle_emb.<name>.string_to_param.*``,
``.clip_l`` / ``.clip_g``); they are usable in the prompt by name while the LoRA is in it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.errors import ModelError
from webui.models.fp8 import stored_weight
from webui.models.original_layout import ldm_module_name, unet_module_table
from webui.models.safeload import read_state_dict
from webui.networks.embeddings import Embedding, embedding_from_tensors
from webui.networks.flow_lora import kohya_key, original_table, text_encoder_prefixes

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
CACHE_SIZE = 8  # LoRA files kept in RAM between jobs
BUNDLE_PREFIX = "bundle_emb."  # A1111's keys of embeddings bundled in a LoRA file
_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha", "lora_mid.weight": "mid",
          "lora_A.weight": "down", "lora_B.weight": "up",  # PEFT / diffusers
          # LyCORIS LoHa (Hadamard product of two low-rank pairs) and LoKr (Kronecker product)
          "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
          "lokr_w1": "lokr_w1", "lokr_w2": "lokr_w2", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
          "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b"}


@dataclass
class LoraModule:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    mid: torch.Tensor | None = None
    hada_w1_a: torch.Tensor | None = None
    hada_w1_b: torch.Tensor | None = None
    hada_w2_a: torch.Tensor | None = None
    hada_w2_b: torch.Tensor | None = None
    lokr_w1: torch.Tensor | None = None
    lokr_w2: torch.Tensor | None = None
    lokr_w1_a: torch.Tensor | None = None
    lokr_w1_b: torch.Tensor | None = None
    lokr_w2_a: torch.Tensor | None = None
    lokr_w2_b: torch.Tensor | None = None

    def delta(self, shape: torch.Size) -> torch.Tensor:
        """The weight change in the target weight's shape (float32).

        LoRA/LoCon: ``alpha / rank * up @ down``; LoHa: ``alpha / rank * (w1a @ w1b) * (w2a @ w2b)``;
        LoKr: ``kron(w1, w2)`` (each factor possibly low-rank), scaled by ``alpha / rank`` when factored.
        """
        if self.hada_w1_a is not None:
            return self._loha(shape)
        if self.lokr_w1 is not None or self.lokr_w1_a is not None:
            return self._lokr(shape)
        if self.up is None or self.down is None:
            raise ValueError("needs both lora_up and lora_down")
        if self.mid is not None:
            raise ValueError("LoCon 'lora_mid' (Tucker) layers are not supported yet")
        rank = self.down.shape[0]
        up = self.up.float().reshape(self.up.shape[0], rank)
        down = self.down.float().reshape(rank, -1)
        scale = (self.alpha / rank) if self.alpha else 1.0
        return (up @ down).reshape(shape) * scale

    def _loha(self, shape: torch.Size) -> torch.Tensor:
        parts = (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b)
        if any(p is None for p in parts):
            raise ValueError("LoHa needs hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b")
        w1a, w1b, w2a, w2b = (p.float() for p in parts)
        rank = w1b.shape[0]
        scale = (self.alpha / rank) if self.alpha else 1.0
        w1 = w1a @ w1b.reshape(rank, -1)
        w2 = w2a @ w2b.reshape(w2b.shape[0], -1)
        return (w1 * w2).reshape(shape) * scale

    def _lokr(self, shape: torch.Size) -> torch.Tensor:
        scale, rank = 1.0, None
        if self.lokr_w1 is not None:
            w1 = self.lokr_w1.float()
        else:
            w1 = self.lokr_w1_a.float() @ self.lokr_w1_b.float()
            rank = self.lokr_w1_b.shape[0]
        if self.lokr_w2 is not None:
            w2 = self.lokr_w2.float()
        else:
            w2 = self.lokr_w2_a.float() @ self.lokr_w2_b.float().reshape(self.lokr_w2_b.shape[0], -1)
            rank = self.lokr_w2_b.shape[0]
        if self.alpha and rank:
            scale = self.alpha / rank
        if w2.ndim == 4:  # conv: kron over the channel dims, w2 keeps the kernel
            return torch.kron(w1.reshape(*w1.shape, 1, 1), w2).reshape(shape) * scale
        return torch.kron(w1, w2).reshape(shape) * scale


@dataclass
class LoraFile:
    name: str
    path: Path
    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)
    #: textual-inversion embeddings the file bundles (A1111's ``bundle_emb.<name>.<vectors>`` keys, written by
    #: pivotal-tuning trainers); usable in the prompt while the LoRA is in it
    embeddings: dict[str, Embedding] = field(default_factory=dict)


def read_lora(path: Path) -> LoraFile:
    """Read a kohya-layout LoRA (safely); ModelError names the file on any problem."""
    tensors, metadata = read_state_dict(path)
    modules: dict[str, LoraModule] = {}
    bundled: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(BUNDLE_PREFIX):  # bundle_emb.<name>.string_to_param.* | .clip_l | .clip_g | .emb_params
            name, _, vectors = key[len(BUNDLE_PREFIX):].partition(".")
            bundled.setdefault(name, {})[vectors] = value
            continue
        for suffix, part in _PARTS.items():
            if key.endswith("." + suffix):
                mod = modules.setdefault(kohya_key(key[: -len(suffix) - 1]), LoraModule())
                setattr(mod, part, float(value) if part == "alpha" else value)
                break
    if not modules:
        raise ModelError(path, "no LoRA weights (lora_up/lora_down) found; is it a LoRA in kohya/A1111 format?")
    embeddings = {name: embedding_from_tensors(name, path, data) for name, data in bundled.items()}
    return LoraFile(path.stem, path, modules, dict(metadata), embeddings)


#: A module a LoRA layer changes: (module, "unet" | "te", rows of the layer's weight change it takes or None).
Target = tuple[torch.nn.Module, str, slice | None]


def module_index(components) -> dict[str, list[Target]]:
    """kohya key -> the modules it changes, for every weight-bearing module of the model (diffusers and
    original names; SD 3.x / FLUX.1 original names of fused layers map to several modules)."""
    index: dict[str, list[Target]] = {}
    modules = dict(components.unet.named_modules())
    flow = components.spec.is_flow
    table = None if flow else unet_module_table(components.unet)
    for name, module in modules.items():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        index["lora_unet_" + name.replace(".", "_")] = [(module, "unet", None)]
        ldm = ldm_module_name(name, table) if table is not None else None
        if ldm is not None:
            index["lora_unet_" + ldm.replace(".", "_")] = [(module, "unet", None)]
    if flow:
        for original, targets in original_table(components).items():
            if all(name in modules for name, _, _ in targets):
                index["lora_unet_" + original.replace(".", "_")] = [
                    (modules[name], "unet", None if start is None else slice(start, stop))
                    for name, start, stop in targets]
        encoders = text_encoder_prefixes(components)
    else:
        prefixes = ["lora_te_"] if len(components.text_encoders) == 1 else ["lora_te1_", "lora_te2_"]
        encoders = list(zip(prefixes, components.text_encoders))
    for prefix, encoder in encoders:
        clip = not hasattr(encoder, "shared")  # T5 keeps its own module names
        for name, module in encoder.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            path = name if not clip or name.startswith("text_model.") else "text_model." + name
            index[prefix + path.replace(".", "_")] = [(module, "te", None)]
    return index


@dataclass
class AppliedLoras:
    """Backups of the weights changed by :func:`apply_loras`; ``restore()`` undoes them exactly."""

    backups: dict[int, tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)

    @torch.no_grad()
    def restore(self) -> None:
        for module, weight in self.backups.values():
            stored_weight(module).copy_(weight)
        self.backups.clear()


@torch.no_grad()
def apply_loras(components, loras: Iterable[tuple[LoraFile, float, float]]) -> AppliedLoras:
    """Add each ``(lora, te_multiplier, unet_multiplier)`` to the model's weights in place."""
    applied = AppliedLoras()
    index = module_index(components)
    try:
        for lora, te_mult, unet_mult in loras:
            missing = 0
            for key, mod in lora.modules.items():
                targets = index.get(key)
                if targets is None:
                    missing += 1
                    continue
                mult = te_mult if targets[0][1] == "te" else unet_mult
                if mult == 0:
                    continue
                first = targets[0][0].weight
                shape = first.shape if targets[0][2] is None else torch.Size(
                    (sum(rows.stop - rows.start for _, _, rows in targets), *first.shape[1:]))
                try:
                    delta = mod.delta(shape)
                except (ValueError, RuntimeError) as exc:
                    raise ModelError(lora.path, f"layer {key} cannot be applied: {exc}") from exc
                for module, _, rows in targets:
                    weight = stored_weight(module)  # fp8 / float16 storage: the stored tensor, not a copy
                    if id(module) not in applied.backups:
                        applied.backups[id(module)] = (module, weight.detach().clone())
                    part = delta if rows is None else delta[rows]
                    weight.copy_((weight.float() + part.to(weight.device) * mult).to(weight.dtype))
            if missing:
                applied.unmatched[lora.name] = missing
                log.warning("LoRA %s: %d of %d layers match nothing in this model", lora.name, missing,
                            len(lora.modules))
    except BaseException:
        applied.restore()
        raise
    return applied


class LoraRegistry:
    """LoRA files found in the Lora folders, by name (file stem) or relative path without extension."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs
        self._files: dict[str, Path] = {}
        self._cache: OrderedDict[Path, tuple[float, LoraFile]] = OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        files: dict[str, Path] = {}
        for root in self.dirs:
            if not root.is_dir():
                continue
            for p in sorted(root.rglob("*")):
                if p.suffix.lower() in LORA_SUFFIXES and p.is_file():
                    files.setdefault(p.stem, p)
                    files.setdefault(p.relative_to(root).with_suffix("").as_posix(), p)
        self._files = files

    def names(self) -> list[str]:
        return sorted({p.stem for p in self._files.values()})

    def paths(self) -> dict[str, Path]:
        return {p.stem: p for p in self._files.values()}

    def get(self, name: str) -> LoraFile | None:
        path = self._files.get(name)
        if path is None:
            return None
        mtime = path.stat().st_mtime
        hit = self._cache.get(path)
        if hit is None or hit[0] != mtime:
            hit = (mtime, read_lora(path))
            self._cache[path] = hit
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(path)
        return hit[1]
