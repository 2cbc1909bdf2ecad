"""webui.pipeline.noise: seeds and noise as A1111's processing.py / rng.py make them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.pipeline.noise import ImageRNG, paste_centered, resolve_seed
from webui.pipeline.request import MAX_SEED


@pytest.mark.parametrize("seed", [None, -1])
def test_random_seed_for_none_and_minus_one(seed):
    drawn = {resolve_seed(seed) for _ in range(20)}
    assert all(0 <= s < MAX_SEED for s in drawn) and len(drawn) > 1


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1])
def test_given_seed_is_kept(seed):
    assert resolve_seed(seed) == seed


@pytest.mark.parametrize("resize_from", [(0, 0), (0, 512), (512, 0)])
def test_seed_resize_needs_both_sides(resize_from):
    # A1111 rng.ImageRNG: the noise is drawn at the "resize from" size only when both sides are > 0
    plain = ImageRNG((4, 8, 8), [5], device=torch.device("cpu")).first()
    resized = ImageRNG((4, 8, 8), [5], device=torch.device("cpu"), seed_resize_from=resize_from).first()
    assert torch.equal(plain, resized)


def test_paste_centered_pads_and_crops_like_a1111():
    # A1111 rng.py: the noise drawn at the old size is pasted centred into fresh noise of the new size, cropped
    # where the old size is larger: dx = (new - old) // 2 per axis
    big = torch.zeros(1, 6, 6)
    small = torch.arange(16.0).view(1, 4, 4) + 1
    out = paste_centered(small, big)
    assert torch.equal(out[0, 1:5, 1:5], small[0]) and out.sum() == small.sum()
    cropped = paste_centered(torch.arange(36.0).view(1, 6, 6), torch.zeros(1, 4, 4))
    assert torch.equal(cropped[0], torch.arange(36.0).view(6, 6)[1:5, 1:5])
    same = paste_centered(small, torch.zeros(1, 4, 4))
    assert torch.equal(same, small)


def _slerp_reference(t: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Spherical interpolation as A1111's processing.slerp computes it, in float64: unit vectors along axis 1,
    cos(omega) their dot product there; nearly parallel (mean cos > 0.9995) falls back to low * t + high * (1 - t);
    otherwise sin((1 - t) omega) / sin(omega) * low + sin(t omega) / sin(omega) * high."""
    a = low / np.linalg.norm(low, axis=1, keepdims=True)
    b = high / np.linalg.norm(high, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    if cos.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = np.arccos(cos)
    w_low, w_high = np.sin((1 - t) * omega) / np.sin(omega), np.sin(t * omega) / np.sin(omega)
    return w_low[:, None] * low + w_high[:, None] * high


@pytest.mark.parametrize("strength", [0.3, 0.9])
def test_variation_seed_slerps_like_a1111(strength):
    # A1111: noise from the seed, subnoise from the variation seed, each from its own generator, then
    # slerp(subseed_strength, noise, subnoise)
    shape = (4, 8, 8)
    ours = ImageRNG(shape, [5], device=torch.device("cpu"), subseeds=[9], subseed_strength=strength).first()[0]
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(5)).double().numpy()
    subnoise = torch.randn(shape, generator=torch.Generator().manual_seed(9)).double().numpy()
    np.testing.assert_allclose(ours.double().numpy(), _slerp_reference(strength, noise, subnoise), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("mix", "falls_back"), [(0.2, False), (0.02, True), (0.005, True)])
def test_slerp_of_correlated_noises_like_a1111(mix, falls_back):
    """Noises that share most of their direction (mean cosine 0.973, 0.9997, 0.99998 here) take the slerp or the
    linear mix exactly where A1111's threshold of 0.9995 on the mean cosine puts them."""
    from webui.pipeline.noise import slerp

    g = torch.Generator().manual_seed(3)
    low = torch.randn(4, 8, 8, generator=g, dtype=torch.float64)
    high = low + mix * torch.randn(4, 8, 8, generator=g, dtype=torch.float64)
    expected = _slerp_reference(0.4, low.numpy(), high.numpy())
    np.testing.assert_allclose(slerp(0.4, low, high).numpy(), expected, rtol=1e-9, atol=1e-12)
    assert np.allclose(expected, (low * 0.4 + high * 0.6).numpy(), rtol=1e-9, atol=1e-12) == falls_back


@pytest.mark.parametrize("kwargs", [{"subseeds": [9]}, {"subseeds": None, "subseed_strength": 0.5}])
def test_no_variation_without_both_seed_and_strength(kwargs):
    # A1111 rng.ImageRNG: subnoise only when subseeds are given and subseed_strength != 0 (default 0)
    plain = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(ImageRNG((4, 8, 8), [5], device=torch.device("cpu"), **kwargs).first()[0], plain)


def test_paste_centered_of_a_non_square_noise():
    # seed resize from a portrait size into a landscape one: rows and columns are centred and cropped independently
    small = torch.arange(24.0).view(1, 6, 4) + 1
    out = paste_centered(small, torch.zeros(1, 4, 8))
    assert torch.equal(out[0, :, 2:6], small[0, 1:5, :])
    assert out.sum() == small[0, 1:5, :].sum()
    wide = torch.arange(12.0).view(1, 2, 6) + 1  # fewer rows, more columns than the target
    out = paste_centered(wide, torch.zeros(1, 4, 4))
    assert torch.equal(out[0, 1:3, :], wide[0, :, 1:5]) and out[0, 0].sum() == out[0, 3].sum() == 0


# -- moved from test_pipeline.py: batch independence, variation seeds, seed resize, ENSD, slerp --------------


def test_noise_of_an_image_is_the_same_alone_or_in_a_batch():
    dev = torch.device("cpu")
    batch = ImageRNG((4, 8, 8), [5, 6, 7], device=dev)
    alone = ImageRNG((4, 8, 8), [6], device=dev)
    assert torch.equal(batch.first()[1], alone.first()[0])
    assert torch.equal(batch.next()[1], alone.next()[0])


def test_variation_seed_mixes_noise():
    dev = torch.device("cpu")
    base = ImageRNG((4, 8, 8), [5], device=dev).first()
    other = ImageRNG((4, 8, 8), [9], device=dev).first()
    zero = ImageRNG((4, 8, 8), [5], device=dev, subseeds=[9], subseed_strength=0.0).first()
    full = ImageRNG((4, 8, 8), [5], device=dev, subseeds=[9], subseed_strength=1.0).first()
    half = ImageRNG((4, 8, 8), [5], device=dev, subseeds=[9], subseed_strength=0.5).first()
    assert torch.equal(zero, base)
    assert torch.allclose(full, other, atol=1e-5)
    assert not torch.allclose(half, base) and not torch.allclose(half, other)


def test_seed_resize_pastes_the_small_noise_in_the_centre():
    dev = torch.device("cpu")
    small = ImageRNG((4, 8, 8), [5], device=dev).first()[0]
    big = ImageRNG((4, 16, 12), [5], device=dev, seed_resize_from=(64, 64)).first()[0]
    assert torch.equal(big[:, 4:12, 2:10], small)
    same = ImageRNG((4, 8, 8), [5], device=dev, seed_resize_from=(64, 64)).first()
    assert torch.equal(same[0], small)


def test_seed_resize_from_a_larger_size_crops_its_centre_as_a1111_does():
    """A1111's ``ImageRNG.first`` (modules/rng.py) restated: the noise is drawn at the "resize seed from" size, the
    picture's own-size noise of the same seed is drawn, and the centre of the first is pasted over the second --
    for a larger source, ``w = src_w + 2 * dx`` columns from ``-dx`` on (``dx = (W - src_w) // 2``), so with an odd
    difference the last column keeps the picture's own noise."""
    dev = torch.device("cpu")
    got = ImageRNG((4, 8, 8), [5], device=dev, seed_resize_from=(104, 80)).first()[0]
    source = torch.randn((4, 10, 13), generator=torch.Generator().manual_seed(5))  # 80/8 x 104/8
    own = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(5))
    dx, dy = (8 - 13) // 2, (8 - 10) // 2  # -3, -1
    w, h = 13 + 2 * dx, 10 + 2 * dy  # 7, 8
    expected = own.clone()
    expected[:, 0:h, 0:w] = source[:, -dy:-dy + h, -dx:-dx + w]
    assert torch.equal(got, expected)
    assert torch.equal(got[:, :, 7], own[:, :, 7])


def test_a_batch_longer_than_its_subseeds_uses_subseed_0():
    """A1111's ``ImageRNG.first``: image ``i`` without a subseed of its own takes subseed 0."""
    dev = torch.device("cpu")
    batch = ImageRNG((4, 8, 8), [5, 6], device=dev, subseeds=[9], subseed_strength=0.5).first()
    alone = ImageRNG((4, 8, 8), [6], device=dev, subseeds=[0], subseed_strength=0.5).first()
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch[1], ImageRNG((4, 8, 8), [6], device=dev, subseeds=[9],
                                              subseed_strength=0.5).first()[0])


def test_ensd_changes_only_the_later_draws():
    dev = torch.device("cpu")
    a, b = ImageRNG((4, 8, 8), [5], device=dev), ImageRNG((4, 8, 8), [5], device=dev, ensd=31337)
    assert torch.equal(a.first(), b.first())
    assert torch.equal(b.next()[0], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(5 + 31337)))


def test_a1111_slerp_quirks():
    from webui.pipeline.noise import slerp

    g = torch.Generator().manual_seed(0)
    low, high = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    mid = slerp(0.3, low, high)
    # angles are taken per channel and column (dim 1), as A1111 does
    col = slerp(0.3, low[:, :, :1], high[:, :, :1])
    assert torch.allclose(mid[:, :, :1], col)
    # nearly parallel noises fall back to A1111's (reversed) linear mix
    assert torch.allclose(slerp(0.3, low, low * 1.0001), low * 0.3 + low * 1.0001 * 0.7)
