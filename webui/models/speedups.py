"""Opt-in speed-ups of a loaded model that leave the picture as it is (within rounding):

- ``--opt-channelslast`` (A1111's flag): the U-Net's and the VAE's weights in channels-last memory layout, which
  cuDNN's tensor-core convolutions prefer (on the CPU oneDNN picks its own layout; no gain expected there).
- ``--compile``: the U-Net's ``forward`` compiled with ``torch.compile`` (``Module.compile``: the module, its
  parameter names and so LoRA / ControlNet patches stay as they are). Compiling happens at the first generation of
  each new size and takes a while; it is logged with its duration, never silent. Inductor's caches live in the
  data folder's ``cache/torch_compile`` (set by :func:`compile_cache_env`), so a restart compiles from the cache
  (seconds instead of a minute). Not combined with ``--medvram`` / ``--lowvram`` (their hooks move weights
  during the call) or fp8 / float16 storage (parametrized weights).

``benchmarks/gpu.py`` measures both on a GPU; ``tests/test_speedups.py`` checks on the CPU that the pictures stay
the same and that LoRA still applies to a compiled U-Net.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def compile_cache_env(cache_dir: Path) -> Path:
    """Point torch's Inductor caches at ``cache_dir/torch_compile`` unless the user set them; returns the folder."""
    folder = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_dir / "torch_compile")
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return folder


def apply_speedups(components, *, channels_last: bool, compile_backend: str | None, reason_not: str = "") -> list[str]:
    """Apply the chosen speed-ups to freshly loaded ``components``; returns what was applied (for the log).
    ``reason_not``: why compiling must be skipped for this model (memory mode, weight storage), if it must."""
    applied = []
    if channels_last:
        for module in (components.unet, components.vae):
            module.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    if compile_backend:
        if reason_not:
            log.warning("--compile is skipped for this model: %s", reason_not)
        else:
            _compile(components.unet, compile_backend)
            applied.append(f"torch.compile ({compile_backend})")
    return applied


def _compile(unet: torch.nn.Module, backend: str) -> None:
    unet.compile(backend=backend)
    state = {"calls": 0}

    @torch.compiler.disable  # the timing runs outside the compiled graph
    def before(module, args, kwargs):
        state["start"] = time.perf_counter()

    @torch.compiler.disable
    def after(module, args, kwargs, output):
        state["calls"] += 1
        seconds = time.perf_counter() - state.pop("start", time.perf_counter())
        if state["calls"] == 1 or seconds > 5.0:  # the first call compiles; a slow later one compiled a new size
            log.info("torch.compile: a U-Net call took %.1f s (compiling for this size; cached in %s)", seconds,
                     os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default cache folder"))

    unet.register_forward_pre_hook(before, with_kwargs=True)
    unet.register_forward_hook(after, with_kwargs=True)
    log.info("U-Net compiled with torch.compile (backend %s): the first generation at each new size compiles first",
             backend)
