"""The ``k-diffusion`` package (A1111's sampling engine) as a test oracle.

Only ``k_diffusion.sampling`` and ``k_diffusion.external`` are needed; the package's
``__init__`` imports training-time modules with heavy dependencies, so the two modules are
imported under a bare package object instead. The package is a test-only dependency
(requirements-test-nodeps.txt); the product never imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import torch


def load() -> tuple[types.ModuleType, types.ModuleType]:
    """Return ``(k_diffusion.sampling, k_diffusion.external)``."""
    if "k_diffusion.sampling" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("k-diffusion is not installed (python launch.py --tests installs it)")
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules.setdefault("k_diffusion", pkg)
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


class TorchWithNoise:
    """Stands in for the ``torch`` module inside k_diffusion.sampling so that ``torch.randn_like``
    draws from our per-image generators -- exactly how A1111 feeds k-diffusion its seeded noise."""

    def __init__(self, noise: Callable[[], torch.Tensor]):
        self._noise = noise

    def randn_like(self, x, *args, **kwargs):
        return self._noise().to(x.device, x.dtype)

    def __getattr__(self, name):
        return getattr(torch, name)
