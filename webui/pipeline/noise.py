"""Seeds and noise with A1111's semantics.

Image *i* of a job uses ``seed + i``.  Each image has its own generator seeded
with its seed; the initial noise and every later draw (ancestral samplers) come
from it, so an image is the same whether generated alone or in a batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from webui.pipeline.request import MAX_SEED


def resolve_seed(seed: int) -> int:
    """-1 means random (A1111); anything else is used as is."""
    return random.randrange(MAX_SEED) if seed is None or seed == -1 else int(seed)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per batch row (variation seeds mix two noises this way)."""
    lo = low.reshape(low.shape[0], -1)
    hi = high.reshape(high.shape[0], -1)
    dot = (lo / lo.norm(dim=1, keepdim=True) * (hi / hi.norm(dim=1, keepdim=True))).sum(1)
    if float(dot.mean()) > 0.9995:
        return low * (1 - t) + high * t
    omega = torch.acos(dot.clamp(-1, 1))
    so = torch.sin(omega)
    a = (torch.sin((1.0 - t) * omega) / so).view(-1, *([1] * (low.ndim - 1)))
    b = (torch.sin(t * omega) / so).view(-1, *([1] * (low.ndim - 1)))
    return a * low + b * high


class ImageRNG:
    """Per-image generators for a batch (A1111's ``ImageRNG``)."""

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        *,
        device: torch.device,
        source: str = "GPU",
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
    ):
        self.shape = tuple(shape)
        self.device = device
        self.gen_device = device if source == "GPU" else torch.device("cpu")
        self.seeds = list(seeds)
        self.subseeds = list(subseeds) if subseeds is not None else None
        self.subseed_strength = subseed_strength
        self.generators = [torch.Generator(self.gen_device).manual_seed(int(s)) for s in self.seeds]

    def _randn(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.shape, generator=generator, device=self.gen_device).to(self.device)

    def first(self) -> torch.Tensor:
        """The initial noise, one row per image (variation seeds applied)."""
        xs = []
        for i, g in enumerate(self.generators):
            noise = self._randn(g)
            if self.subseeds is not None and self.subseed_strength:
                sub = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = self._randn(torch.Generator(self.gen_device).manual_seed(int(sub)))
                noise = slerp(self.subseed_strength, noise[None], subnoise[None])[0]
            xs.append(noise)
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        """Further noise for ancestral/SDE samplers, from the same per-image generators."""
        return torch.stack([self._randn(g) for g in self.generators])
