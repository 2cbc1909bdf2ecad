"""Tiling (A1111's seamless textures): circular padding on the U-Net's and VAE's convolutions."""

from __future__ import annotations

import pytest
import torch

from webui.models.tiny import build_tiny_components
from webui.pipeline.tiling import circular_padding


@pytest.fixture(scope="module")
def components():
    return build_tiny_components("sd1", seed=1)


def _padded_convs(*modules: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for mod in modules for m in mod.modules()
            if isinstance(m, torch.nn.Conv2d) and any(p != 0 for p in m.padding)]


def _modes(*modules: torch.nn.Module) -> list[str]:
    return [m.padding_mode for mod in modules for m in mod.modules() if isinstance(m, torch.nn.Conv2d)]


def _decode(vae, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(z).sample


def _unet(unet, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=ctx).sample


def test_sets_and_restores_padding_mode(components):
    unet, vae = components.unet, components.vae
    padded = _padded_convs(unet, vae)
    unpadded = [m for mod in (unet, vae) for m in mod.modules()
                if isinstance(m, torch.nn.Conv2d) and m not in padded]
    assert len(padded) > 10 and unpadded  # both kinds exist (1x1 convs, the encoder's unpadded downsamplers)
    before = _modes(unet, vae)
    assert set(before) == {"zeros"}

    with circular_padding(unet, None, vae):
        assert all(m.padding_mode == "circular" for m in padded)
        assert all(m.padding_mode == "zeros" for m in unpadded)
    assert _modes(unet, vae) == before

    with pytest.raises(RuntimeError, match="boom"), circular_padding(unet, vae):
        assert all(m.padding_mode == "circular" for m in padded)
        raise RuntimeError("boom")
    assert _modes(unet, vae) == before


def test_only_given_modules_are_changed(components):
    with circular_padding(components.vae):
        assert set(_modes(components.unet)) == {"zeros"}
        assert "circular" in _modes(components.vae)


def test_vae_decoder_commutes_with_circular_shift(components):
    vae = components.vae
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    k = 3
    with circular_padding(vae):
        plain = _decode(vae, z)
        shifted = _decode(vae, torch.roll(z, k, dims=-1))
        shifted_both = _decode(vae, torch.roll(z, (k, 5), dims=(-1, -2)))
    assert plain.shape == (1, 3, 64, 64)
    scale = plain.abs().mean().item()
    assert scale > 1e-3
    torch.testing.assert_close(shifted, torch.roll(plain, 8 * k, dims=-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(shifted_both, torch.roll(plain, (8 * k, 40), dims=(-1, -2)), atol=1e-4, rtol=1e-4)

    # Without the context the zero padding breaks the symmetry at the edges.
    plain0 = _decode(vae, z)
    shifted0 = _decode(vae, torch.roll(z, k, dims=-1))
    error0 = (shifted0 - torch.roll(plain0, 8 * k, dims=-1)).abs().max().item()
    assert error0 > 100 * 1e-4 and error0 > 0.01 * scale
    assert not torch.allclose(plain0, plain, atol=1e-4)  # and the output itself differs


def test_unet_commutes_with_circular_shift(components):
    unet = components.unet
    factor = 2 ** (len(unet.config.down_block_types) - 1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen)
    assert factor > 1 and 8 % factor == 0
    shifts, dims = (factor, 8 - factor), (-1, -2)  # multiples of the downsampling factor, not the full size
    with circular_padding(unet):
        plain = _unet(unet, x, ctx)
        shifted = _unet(unet, torch.roll(x, shifts, dims=dims), ctx)
    scale = plain.abs().mean().item()
    assert scale > 1e-3
    torch.testing.assert_close(shifted, torch.roll(plain, shifts, dims=dims), atol=1e-4, rtol=1e-4)

    plain0 = _unet(unet, x, ctx)
    shifted0 = _unet(unet, torch.roll(x, shifts, dims=dims), ctx)
    error0 = (shifted0 - torch.roll(plain0, shifts, dims=dims)).abs().max().item()
    assert error0 > 100 * 1e-4 and error0 > 0.01 * scale


def test_nested_contexts_restore_previous_state(components):
    unet, vae = components.unet, components.vae
    padded_unet, padded_vae = _padded_convs(unet), _padded_convs(vae)
    with circular_padding(vae):
        with circular_padding(unet, vae):
            assert all(m.padding_mode == "circular" for m in padded_unet + padded_vae)
        # The inner exit restores the VAE to the outer context's state, not to "zeros".
        assert all(m.padding_mode == "circular" for m in padded_vae)
        assert all(m.padding_mode == "zeros" for m in padded_unet)
        with circular_padding(vae, enabled=False):
            assert all(m.padding_mode == "circular" for m in padded_vae)
    assert set(_modes(unet, vae)) == {"zeros"}

    # A conv listed twice (directly and inside its parent) is recorded once and restored.
    conv = padded_vae[0]
    with circular_padding(conv, vae):
        assert conv.padding_mode == "circular"
    assert conv.padding_mode == "zeros"

    # A non-default original mode is restored exactly.
    conv.padding_mode = "reflect"
    try:
        with circular_padding(vae):
            assert conv.padding_mode == "circular"
        assert conv.padding_mode == "reflect"
    finally:
        conv.padding_mode = "zeros"


def test_disabled_changes_nothing(components):
    unet, vae = components.unet, components.vae
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    reference = _decode(vae, z)
    with circular_padding(unet, vae, enabled=False):
        assert set(_modes(unet, vae)) == {"zeros"}
        torch.testing.assert_close(_decode(vae, z), reference, atol=0, rtol=0)
    assert set(_modes(unet, vae)) == {"zeros"}


def test_changes_no_weights(components):
    vae = components.vae
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    with circular_padding(vae):
        _decode(vae, torch.zeros(1, 4, 8, 8))
    after = vae.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
