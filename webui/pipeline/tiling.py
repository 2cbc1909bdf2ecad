"""A1111's "Tiling" option: seamless textures through circular padding.

A1111's tiling sets ``padding_mode = "circular"`` on the convolutions of the
U-Net and the VAE, so every convolution sees the image as wrapping around at
its edges: the left edge's neighbours are the right edge's pixels, the top's
the bottom's.  The denoiser and the decoder then treat the picture as a torus,
and this is what makes the generated texture tile.  It changes no weights; only
how the convolutions pad their input, and only while the context is active.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _is_padded(conv: torch.nn.Conv2d) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding != "valid"
    return any(p != 0 for p in conv.padding)


@contextlib.contextmanager
def circular_padding(*modules: torch.nn.Module | None, enabled: bool = True) -> Iterator[None]:
    """Make every padded ``Conv2d`` in ``modules`` pad circularly while active.

    ``None`` entries are skipped; convolutions without padding are left alone.
    Each convolution's previous ``padding_mode`` is restored on exit (also on an
    exception), so nested uses unwind correctly.  ``enabled=False`` does nothing.
    """
    previous: dict[torch.nn.Conv2d, str] = {}
    if enabled:
        for module in modules:
            if module is None:
                continue
            for sub in module.modules():
                if isinstance(sub, torch.nn.Conv2d) and _is_padded(sub) and sub not in previous:
                    previous[sub] = sub.padding_mode
    try:
        for conv in previous:
            conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in previous.items():
            conv.padding_mode = mode
