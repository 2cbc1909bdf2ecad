"""Textual-inversion embeddings from ``models/embeddings``, used in prompts by file name.

Formats read (always through the safe loader): A1111 ``.pt`` (``string_to_param: {"*": [n, dim]}``,
with ``step`` / ``sd_checkpoint`` / ``sd_checkpoint_name``), single-tensor files (``emb_params``),
diffusers ``{"<token>": [dim]}`` files, and SDXL pairs (``clip_l`` / ``clip_g``). An embedding is
usable when its width matches the text encoder's; others are listed as skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.errors import ModelError
from webui.models.safeload import read_state_dict

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")


@dataclass
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # "default" (SD 1.x/2.x) or "clip_l" + "clip_g" (SDXL)
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def for_encoder(self, index: int, n_encoders: int) -> torch.Tensor | None:
        if n_encoders == 2:
            return self.vectors.get("clip_l" if index == 0 else "clip_g")
        return self.vectors.get("default")


def read_embedding(path: Path) -> Embedding:
    """Read an embedding file; ModelError names the file when the layout is unknown."""
    data, meta = read_state_dict(path)
    return embedding_from_tensors(path.stem, path, data, meta)


def embedding_from_tensors(name: str, path: Path, data: dict, meta: dict | None = None) -> Embedding:
    """An embedding from a file's tensors (also those a LoRA file bundles under ``bundle_emb.<name>.``);
    ModelError names ``path`` when the layout is unknown."""
    meta = meta or {}
    vectors: dict[str, torch.Tensor] = {}
    if "clip_l" in data or "clip_g" in data:
        vectors = {k: data[k].float() for k in ("clip_l", "clip_g") if k in data}
    elif "string_to_param.*" in data:
        vectors["default"] = data["string_to_param.*"].float()
    elif "emb_params" in data:
        vectors["default"] = data["emb_params"].float()
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor) and v.ndim in (1, 2)]
        if len(tensors) == 1:
            vectors["default"] = tensors[0].float()
    if not vectors:
        raise ModelError(path, "not a textual-inversion embedding (no string_to_param, emb_params, clip_l/clip_g)")
    vectors = {k: v.reshape(1, -1) if v.ndim == 1 else v for k, v in vectors.items()}

    step = meta.get("step")
    return Embedding(name, path, vectors, int(step) if step and step.isdigit() else None,
                     meta.get("sd_checkpoint"), meta.get("sd_checkpoint_name"))


def fits(embedding: Embedding, components) -> bool:
    """Whether the embedding's vectors have the width of every text encoder of the model."""
    n = len(components.text_encoders)
    for i, encoder in enumerate(components.text_encoders):
        vec = embedding.for_encoder(i, n)
        if vec is None or vec.shape[1] != encoder.config.hidden_size:
            return False
    return True


@dataclass
class EmbeddingLookup:
    """Embeddings compatible with one model, indexed by the first token of their name."""

    by_first_token: dict[int, list[tuple[list[int], Embedding]]] = field(default_factory=dict)
    used: dict[str, Embedding] = field(default_factory=dict)

    def match(self, ids: list[int], pos: int) -> tuple[Embedding, int] | None:
        for name_ids, emb in self.by_first_token.get(ids[pos], ()):
            if ids[pos : pos + len(name_ids)] == name_ids:
                self.used[emb.name] = emb
                return emb, len(name_ids)
        return None


class EmbeddingDB:
    """Embedding files in the embeddings folders; :meth:`lookup` filters them for a model."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs
        self.loaded: dict[str, Embedding] = {}
        self.errors: dict[str, str] = {}
        self.refresh()

    def refresh(self) -> None:
        loaded, errors = {}, {}
        for root in self.dirs:
            if not root.is_dir():
                continue
            for p in sorted(root.rglob("*")):
                if p.suffix.lower() not in EMBEDDING_SUFFIXES or not p.is_file() or p.stem in loaded:
                    continue
                try:
                    loaded[p.stem] = read_embedding(p)
                except ModelError as exc:
                    errors[p.stem] = str(exc)
                    log.warning("Skipping embedding: %s", exc)
        self.loaded, self.errors = loaded, errors

    def compatible(self, components) -> tuple[dict[str, Embedding], dict[str, Embedding]]:
        """(usable, skipped) for a model: vector widths must match every text encoder."""
        ok, skipped = {}, {}
        for name, emb in self.loaded.items():
            (ok if fits(emb, components) else skipped)[name] = emb
        return ok, skipped

    def lookup(self, components, bundled: dict[str, Embedding] | None = None) -> EmbeddingLookup:
        """The prompt lookup for a model. ``bundled``: embeddings the prompt's LoRAs carry (A1111's rule: a
        file of the same name in the embeddings folders wins, the bundled one is skipped with a warning)."""
        usable, _ = self.compatible(components)
        for name, emb in (bundled or {}).items():
            if name in self.loaded:
                log.warning("Skipping the embedding %r bundled in %s: an embedding of that name is already loaded "
                            "from %s", name, emb.path.parent, self.loaded[name].path)
            elif fits(emb, components):
                usable[name] = emb
        return build_lookup(components, usable)


def build_lookup(components, embeddings: dict[str, Embedding]) -> EmbeddingLookup:
    """The prompt lookup of ``embeddings`` (name -> embedding, all usable with the model)."""
    tokenizer = components.tokenizers[0]
    index: dict[int, list[tuple[list[int], Embedding]]] = {}
    for name, emb in embeddings.items():
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        if ids:
            index.setdefault(ids[0], []).append((ids, emb))
    for entries in index.values():
        entries.sort(key=lambda e: -len(e[0]))
    return EmbeddingLookup(index)
