"""Brownian-tree noise for the SDE samplers, seeded per image (as A1111 does for DPM++ SDE).

A Brownian motion W over sigma in [sigma_min, sigma_max] is sampled lazily with
``torchsde.BrownianTree``, one tree per image seeded with that image's seed, so an image's
noise does not depend on the rest of its batch. A call for the interval between ``sigma`` and
``sigma_next`` returns the normalised increment ``(W(a) - W(b)) / sqrt(|a - b|)`` ~ N(0, 1),
signed by the direction of travel.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torchsde

# torchsde warns when a query touches the interval ends by float rounding; harmless here.
warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)


class BrownianTreeNoise:
    """``noise_sampler(sigma, sigma_next)`` backed by per-image Brownian trees."""

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seeds: Sequence[int]):
        if len(seeds) != x.shape[0]:
            raise ValueError("one seed per image is needed")
        lo, hi = float(sigma_min), float(sigma_max)
        self._sign = 1.0 if lo <= hi else -1.0
        lo, hi = min(lo, hi), max(lo, hi)
        w0 = torch.zeros_like(x[0])
        self._trees = [torchsde.BrownianTree(lo, w0, hi, entropy=int(s)) for s in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        sign = 1.0 if a <= b else -1.0
        lo, hi = min(a, b), max(a, b)
        w = torch.stack([tree(lo, hi) for tree in self._trees]) * (self._sign * sign)
        return w / abs(b - a) ** 0.5
