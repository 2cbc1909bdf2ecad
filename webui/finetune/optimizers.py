"""Optimizers of a LoRA run (kohya's ``optimizer_type`` names) and their state on disk.

- ``AdamW`` (torch, weight decay 0.01 as kohya's default);
- ``AdamW8bit`` (bitsandbytes' 8-bit AdamW, where bitsandbytes is installed and runs: CUDA);
- ``Prodigy`` (the ``prodigyopt`` package: learning-rate free; use learning rate 1.0 as its authors advise).

The state is saved as safetensors (tensors per parameter index, scalars and param groups as JSON metadata),
never pickled, so a resumed run loads exactly what it saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from webui.errors import RequestError

OPTIMIZERS = ("AdamW", "AdamW8bit", "Prodigy")


def make_optimizer(name: str, groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Optimizer:
    """The optimizer ``name`` over parameter ``groups`` (each with ``params`` and ``lr``); RequestError on
    ``optimizer_type`` when it is unknown or cannot run here, saying what to do."""
    key = {n.lower(): n for n in OPTIMIZERS}.get(str(name).strip().lower())
    if key is None:
        raise RequestError("optimizer_type", f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if key == "AdamW":
        return torch.optim.AdamW(groups, weight_decay=1e-2)
    if key == "Prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise RequestError("optimizer_type", "Prodigy needs the prodigyopt package: pip install prodigyopt") \
                from None
        return Prodigy(groups, weight_decay=1e-2)
    if device.type != "cuda":
        raise RequestError("optimizer_type", "AdamW8bit (bitsandbytes) runs on CUDA GPUs only; use AdamW here")
    try:
        import bitsandbytes
    except ImportError:
        raise RequestError("optimizer_type", "AdamW8bit needs bitsandbytes: pip install bitsandbytes") from None
    return bitsandbytes.optim.AdamW8bit(groups, weight_decay=1e-2)


def describe(optimizer: torch.optim.Optimizer) -> str:
    """kohya's ``ss_optimizer`` text: the class path and its arguments."""
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__name__}(weight_decay=0.01)"


def state_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The optimizer's state as safetensors tensors (``optim.<index>.<name>``) and metadata (JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"optim_scalars": json.dumps(scalars), "optim_groups": json.dumps(groups)}


def load_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
               path: Path) -> None:
    """Restore what :func:`state_tensors` saved (a ModelError-free RequestError naming ``path`` when the saved
    state belongs to another optimizer or other layers)."""
    try:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in json.loads(metadata.get("optim_scalars", "{}")).items():
            state.setdefault(int(index), {}).update(values)
        groups = json.loads(metadata["optim_groups"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, ValueError, RuntimeError) as exc:
        raise RequestError("resume", f"the saved state in {path} does not fit this run ({exc}); start without "
                                     "resume or with the same settings") from None
