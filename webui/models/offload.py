"""Memory modes (A1111's ``--medvram`` / ``--lowvram``) on our components, with accelerate's hooks.

- ``medvram``: model CPU offload. Every component lives in RAM and moves to the GPU when called;
  calling the next one in the chain (text encoders -> U-Net -> VAE) sends the previous one back.
  About the U-Net's size in VRAM instead of the whole model's, for a few hundred ms per job.
- ``lowvram``: block-wise offload, as A1111 does it: the U-Net's down blocks, mid block and up blocks
  are chained one by one (its small stem/embedding/head layers stay on the GPU), so about one U-Net
  block is in VRAM at a time, besides the text encoder or VAE in use. The slowest mode.

SD 3.x / FLUX.1: the transformer takes the U-Net's place (lowvram: its joint and single blocks one by one),
and T5-XXL joins the text encoders in the chain. ``alphas_cumprod`` and every input stay on the execution
device.

On the CPU there is nothing to offload to; there the modes save RAM instead (:func:`store_half_on_cpu`): the
checkpoint is read in float16 (an fp16 file without any copy) and the big weights stay in float16, each upcast
to float32 when its layer runs. ``medvram``: the U-Net (transformer) and T5-XXL; ``lowvram``: the text encoders
too. About half the RAM of float32 weights (an SDXL file: ~7 GB instead of ~14 GB) for a small cost per step;
images from fp16 files are the same as without the mode (the upcast is exact).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
MODES = ("none", "medvram", "lowvram")
_UNET_BLOCKS = ("down_blocks", "mid_block", "up_blocks")
_TRANSFORMER_BLOCKS = ("transformer_blocks", "single_transformer_blocks")


def _chain(modules: list[torch.nn.Module], device: torch.device) -> list:
    from accelerate import cpu_offload_with_hook

    hooks, previous = [], None
    for module in modules:
        _, previous = cpu_offload_with_hook(module, execution_device=device, prev_module_hook=previous)
        hooks.append(previous)
    return hooks


def _unet_blocks(unet: torch.nn.Module, device: torch.device) -> list[torch.nn.Module]:
    """The U-Net's (or an SD 3.x / FLUX.1 transformer's) big blocks in call order; its other children are
    moved to ``device`` for good."""
    transformer = hasattr(unet, "transformer_blocks")
    blocks = _TRANSFORMER_BLOCKS if transformer else _UNET_BLOCKS
    for name, child in unet.named_children():
        if name not in blocks:
            child.to(device)
    if transformer:
        return [*unet.transformer_blocks, *getattr(unet, "single_transformer_blocks", [])]
    return [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]


def apply_memory_mode(components, mode: str, device: torch.device, *, force: bool = False,
                      t5_on_cpu: bool = False) -> list:
    """Install the offload hooks for ``mode``; returns the hooks (empty for "none" or on the CPU).

    ``force`` installs them even when ``device`` is the CPU (tests: the hooks must not change results);
    ``t5_on_cpu``: T5-XXL stays on the CPU, outside the chain."""
    if mode not in MODES:
        raise ValueError(f"memory mode must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return []
    if device.type == "cpu" and not force:
        return []  # nothing to offload to; see store_half_on_cpu
    encoders, unet, vae = list(components.text_encoders), components.unet, components.vae
    t5 = getattr(components, "t5", None)
    if t5 is not None and not t5_on_cpu:
        encoders.append(t5)
    for module in (*encoders, unet, vae):
        module.to("cpu")
    if mode == "lowvram":
        hooks = _chain([*encoders, *_unet_blocks(unet, device), vae], device)
        log.info("Memory mode lowvram: block-wise CPU offload (%d parts) to %s", len(hooks), device)
        return hooks
    hooks = _chain([*encoders, unet, vae], device)
    log.info("Memory mode medvram: model CPU offload (text encoders -> U-Net -> VAE) to %s", device)
    return hooks


def store_half_on_cpu(components, mode: str, compute_dtype: torch.dtype = torch.float32) -> int:
    """The CPU's ``medvram`` / ``lowvram``: keep the Linear / Conv / Embedding weights of the U-Net (transformer)
    and T5-XXL in float16, and with ``lowvram`` the text encoders' too, each read back in ``compute_dtype`` when
    used; the VAE and every other tensor are converted to ``compute_dtype``. Returns how many weights are stored."""
    from webui.models.fp8 import store_weights

    stored = [components.unet, *([components.t5] if getattr(components, "t5", None) is not None else [])]
    if mode == "lowvram":
        stored += list(components.text_encoders)
    layers = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)  # CLIP's / T5's token tables are big too
    count = sum(store_weights(module, torch.float16, compute_dtype, layers) for module in stored)
    for module in components.modules():
        if all(module is not other for other in stored):
            module.to(dtype=compute_dtype)
    gb = sum(t.numel() * t.element_size() for m in components.modules() for t in m.parameters()) / 1e9
    log.info("Memory mode %s on the CPU: %d weights kept in float16, computed in %s (%.1f GB of weights in RAM)",
             mode, count, str(compute_dtype).removeprefix("torch."), gb)
    return count
