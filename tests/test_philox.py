"""The "NV" random source: Philox4x32-10 known answers and the normal transform."""

import numpy as np
import torch

from webui.pipeline.noise import ImageRNG
from webui.pipeline.philox import PhiloxGenerator, philox4x32


def test_philox_known_answer_zero():
    # Random123's known-answer vector for philox4x32-10 with zero counter and key
    out = philox4x32(np.zeros((4, 1), np.uint32), np.zeros((2, 1), np.uint32))
    assert [hex(int(v)) for v in out[:, 0]] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]


def test_philox_known_answer_all_ones():
    ones = np.full((4, 1), 0xFFFFFFFF, np.uint32)
    out = philox4x32(ones, np.full((2, 1), 0xFFFFFFFF, np.uint32))
    assert [hex(int(v)) for v in out[:, 0]] == ["0x408f276d", "0x41c83b0e", "0xa20bc7c6", "0x6d5451fd"]


def test_generator_is_normal_deterministic_and_advances():
    a, b = PhiloxGenerator(1234), PhiloxGenerator(1234)
    x = a.randn((4, 64, 64))
    assert np.array_equal(x, b.randn((4, 64, 64)))
    assert x.dtype == np.float32 and abs(float(x.mean())) < 0.03 and abs(float(x.std()) - 1) < 0.03
    assert not np.array_equal(a.randn((4, 64, 64)), x)  # the next call uses the next offset


def test_image_rng_nv_source():
    rng = ImageRNG((4, 8, 8), [7, 8], device=torch.device("cpu"), source="NV")
    first = rng.first()
    assert torch.equal(first[1], torch.from_numpy(PhiloxGenerator(8).randn((4, 8, 8))))
