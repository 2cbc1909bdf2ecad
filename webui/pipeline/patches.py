"""U-Net patches: extra residuals added to the U-Net's skip connections during sampling.

A ControlNet is one; plugins return :class:`UNetPatch` objects from the ``unet_patches`` hook. The
guided denoiser calls :meth:`UNetPatch.residuals` before every U-Net evaluation with a
:class:`UNetCall` describing it, and adds what the patches return to the U-Net's down-block and
mid-block outputs (diffusers' ``down_block_additional_residuals`` / ``mid_block_additional_residual``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class UNetCall:
    """One U-Net evaluation of a batch.

    ``x`` is the scaled latent input (``groups * batch`` rows: each prompt part, then the
    unconditional part when ``has_uncond``), ``t`` the timesteps, ``context`` the text embeddings,
    ``added`` SDXL's extra conditioning (or None). ``step``/``steps`` locate the sampling step in the
    current pass (``hires`` tells the hires-fix second pass); ``width``/``height`` the image size.
    """

    x: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    added: dict[str, torch.Tensor] | None
    batch: int
    groups: int
    has_uncond: bool
    step: int
    steps: int
    width: int
    height: int
    hires: bool = False


Residuals = tuple[list[torch.Tensor], torch.Tensor]


class UNetPatch(Protocol):
    def residuals(self, call: UNetCall) -> Residuals | None:
        """Down-block residuals and the mid-block residual for this call (None: nothing this step)."""

    def prepare(self, width: int, height: int, hires: bool = False) -> None:
        """Called before each sampling pass with its image size (e.g. to resize control images). A patch may
        also have ``extra_images``, a list of ``(image, label)`` the job's result shows after its images
        (ControlNet's detected maps)."""


def sum_residuals(patches: list[Any], call: UNetCall) -> Residuals | None:
    total: Residuals | None = None
    for patch in patches:
        res = patch.residuals(call)
        if res is None:
            continue
        if total is None:
            total = (list(res[0]), res[1])
        else:
            total = ([a + b for a, b in zip(total[0], res[0])], total[1] + res[1])
    return total
