"""Building modules from weights: strict loading into empty modules, and small diffusers-folder helpers
(shared by the SD loader and the SD 3.x / FLUX.1 loader)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from transformers import CLIPTokenizer

from webui.errors import ModelError
from webui.models.infer_config import STATE_DICT

_SHOWN_KEYS = 5
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def _fit_text_keys(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``text_model.`` prefix for transformers versions whose CLIPTextModel is flat."""
    if hasattr(model, "text_model"):
        return weights
    return {k.removeprefix("text_model."): v for k, v in weights.items()}


def _load_strict(model: ModuleT, weights: Mapping[str, torch.Tensor], dtype: torch.dtype, what: str) -> ModuleT:
    """Assign ``weights`` to an empty ``model``: exact key/shape match or ModelError."""
    weights = {k: v for k, v in weights.items() if v is not None}
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
                parts.append(f"{label}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
        raise ModelError(STATE_DICT, f"the {what} weights do not match the architecture inferred from the file "
                                     f"({'; '.join(parts)}). The file is damaged, merged incorrectly, or an "
                                     "unsupported variant.")
    cast = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    if any(p.is_meta for p in model.parameters()):
        raise ModelError(STATE_DICT, f"the {what} has parameters without weights. The file is incomplete.")
    return model.eval()


def _variant(subfolder: Path) -> str | None:
    """``"fp16"`` when a component folder only ships ``*.fp16.*`` weight files, else None."""
    names = [p.name for p in subfolder.glob("*") if p.suffix in (".safetensors", ".bin", ".json")]
    weights = [n for n in names if n.endswith((".safetensors", ".bin", ".index.json")) and "model" in n]
    if weights and all(".fp16." in n for n in weights):
        return "fp16"
    return None


def _folder_tokenizer(folder: Path) -> CLIPTokenizer | None:
    """The folder's own tokenizer when it ships vocab.json + merges.txt, else None."""
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return None
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(folder, f"its tokenizer files are unreadable ({exc}). Delete them to use the "
                                 "built-in CLIP tokenizer, or download the folder again.") from exc
