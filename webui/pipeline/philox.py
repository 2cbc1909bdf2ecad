"""The "NV" random source: NVIDIA-style normal numbers computed on the CPU.

A1111's "NV" option reproduces the noise that ``torch.randn`` gives on an NVIDIA GPU, on any
device: a Philox4x32-10 counter-based generator (Salmon et al. 2011) keyed by the seed, with
the element index as counter, turned into normals by cuRAND's Box-Muller transform. Each
``randn`` call advances an offset, like successive draws from a CUDA generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
# cuRAND's constants, as float32 values
_INV_2POW32 = float(np.float32(2.3283064e-10))
_INV_2POW32_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def _mulhilo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    prod = a.astype(np.uint64) * np.uint64(m)
    return (prod >> np.uint64(32)).astype(np.uint32), (prod & _MASK).astype(np.uint32)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox4x32: ``counter`` uint32 ``[4, n]``, ``key`` uint32 ``[2, n]`` -> uint32 ``[4, n]``."""
    c = counter.astype(np.uint32).copy()
    k = key.astype(np.uint32).copy()
    for r in range(rounds):
        hi0, lo0 = _mulhilo(c[0], PHILOX_M[0])
        hi1, lo1 = _mulhilo(c[2], PHILOX_M[1])
        c = np.stack([hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0])
        if r < rounds - 1:
            k = np.stack([(k[0].astype(np.uint64) + PHILOX_W[0]) & _MASK,
                          (k[1].astype(np.uint64) + PHILOX_W[1]) & _MASK]).astype(np.uint32)
    return c


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """cuRAND's first Box-Muller output for uint32 pairs, as float32."""
    u = x * _INV_2POW32 + _INV_2POW32 / 2
    v = y * _INV_2POW32_2PI + _INV_2POW32_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """A seeded NV-style generator; each :meth:`randn` call uses the next offset."""

    def __init__(self, seed: int):
        self.seed = seed % (1 << 64)
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        n = int(np.prod(shape))
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        key = np.empty((2, n), dtype=np.uint32)
        key[0] = self.seed & 0xFFFFFFFF
        key[1] = self.seed >> 32
        out = philox4x32(counter, key)
        return box_muller(out[0], out[1]).reshape(tuple(shape))
