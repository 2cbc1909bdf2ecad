"""Seeds and noise with A1111's semantics.

Image *i* of a job uses ``seed + i``.  Each image has its own generator seeded
with its seed; the initial noise and every later draw (ancestral samplers) come
from it, so an image is the same whether generated alone or in a batch.
Variation seeds mix in a second noise with :func:`slerp`; ``seed_resize_from``
keeps the composition of a seed at another size by pasting the noise of that
size into the centre; ``eta_noise_seed_delta`` (ENSD) reseeds the generators
for the draws after the initial noise.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from webui.pipeline.philox import PhiloxGenerator
from webui.pipeline.request import MAX_SEED


def resolve_seed(seed: int | None) -> int:
    """-1 means random (A1111); anything else is used as is."""
    return random.randrange(MAX_SEED) if seed is None or seed == -1 else int(seed)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two noises of shape ``[C, H, W]``.

    Matching A1111 exactly (so variation seeds reproduce its images): norms and angles are taken
    along dim 1 (per channel and column), and when the noises are almost parallel it falls back to
    ``low * t + high * (1 - t)``.
    """
    low_n = low / torch.norm(low, dim=1, keepdim=True)
    high_n = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_n * high_n).sum(1)
    if dot.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


def paste_centered(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """Put ``small`` ``[C, h, w]`` into the centre of ``big`` ``[C, H, W]`` (cropping if larger)."""
    out = big.clone()
    dx = (big.shape[2] - small.shape[2]) // 2
    dy = (big.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    out[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return out


class ImageRNG:
    """Per-image generators for a batch (A1111's ``ImageRNG``).

    :param source: "GPU" draws on the model's device, "CPU" on the CPU (then moves the noise),
        "NV" uses the Philox generator of :mod:`webui.pipeline.philox` (NVIDIA's numbers on any device).
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        *,
        device: torch.device,
        source: str = "GPU",
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from: tuple[int, int] | None = None,
        ensd: int = 0,
    ):
        self.shape = tuple(shape)
        self.device = device
        self.source = source
        self.gen_device = device if source == "GPU" else torch.device("cpu")
        self.seeds = list(seeds)
        self.subseeds = list(subseeds) if subseeds is not None else None
        self.subseed_strength = subseed_strength
        self.resize_shape = None
        if seed_resize_from is not None and seed_resize_from[0] > 0 and seed_resize_from[1] > 0:
            w, h = seed_resize_from
            self.resize_shape = (self.shape[0], h // 8, w // 8)
        self.ensd = ensd
        self.generators = [self._generator(s) for s in self.seeds]

    def _generator(self, seed: int):
        if self.source == "NV":
            return PhiloxGenerator(int(seed))
        return torch.Generator(self.gen_device).manual_seed(int(seed))

    def _randn(self, shape: Sequence[int], generator) -> torch.Tensor:
        if self.source == "NV":
            return torch.from_numpy(generator.randn(shape)).to(self.device)
        return torch.randn(tuple(shape), generator=generator, device=self.gen_device).to(self.device)

    def first(self) -> torch.Tensor:
        """The initial noise, one row per image (variation seed and seed resize applied)."""
        noise_shape = self.resize_shape or self.shape
        xs = []
        for i, (seed, g) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                sub = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = self._randn(noise_shape, self._generator(sub))
            if noise_shape != self.shape:
                noise = self._randn(noise_shape, self._generator(seed))
            else:
                noise = self._randn(self.shape, g)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                noise = paste_centered(noise, self._randn(self.shape, g))
            xs.append(noise)
        if self.ensd:
            self.generators = [self._generator(s + self.ensd) for s in self.seeds]
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        """Further noise for ancestral/SDE samplers, from the same per-image generators."""
        return torch.stack([self._randn(self.shape, g) for g in self.generators])
