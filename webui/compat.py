"""Compatibility shims for third-party packages, kept in this one place.

basicsr 1.4.2, realesrgan 0.3.0 and gfpgan 1.3.8 import
``torchvision.transforms.functional_tensor``, a module torchvision removed in
0.17.  Every function they use from it (``rgb_to_grayscale``) lives in
``torchvision.transforms.functional`` now, so registering that module under
the old name before their first import makes them work unchanged.
"""

from __future__ import annotations

import importlib
import sys


def patch_torchvision_functional_tensor() -> None:
    """Alias ``torchvision.transforms.functional_tensor`` to ``torchvision.transforms.functional``."""
    name = "torchvision.transforms.functional_tensor"
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        sys.modules[name] = importlib.import_module("torchvision.transforms.functional")
