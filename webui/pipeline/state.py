"""Mutable state objects handed to per-step and per-image hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from webui.jobs import Job


@dataclass
class StepState:
    """State after one sampling step; hooks may replace ``latents``."""

    job: Job
    step: int  # 0-based index of the step just finished
    total_steps: int
    sigma: float | torch.Tensor
    latents: torch.Tensor
    denoised: torch.Tensor
    model: Any = None  # the LoadedModel generating (for previews)
    opts: Any = None  # the request's options (a mapping)


@dataclass
class ImageState:
    """One decoded image before saving; hooks may replace ``image`` and add infotext pairs."""

    image: Image.Image
    seed: int
    index: int  # index within the whole job
    request: Any
    extra_infotext: dict[str, Any] = field(default_factory=dict)
