"""Tiled VAE: when it switches on, that it really tiles, that it restores the VAE, and the OOM retry."""

from __future__ import annotations

import logging

import pytest
import torch

import webui.pipeline.vae as vae_mod
from webui.pipeline.request import GenerationRequest
from webui.pipeline.vae import decode_to_pixels, encode_pixels, tiling_wanted, vae_tiles


def test_threshold_and_setting():
    assert not tiling_wanted({"vae_tiling_threshold": 1536}, 1536, 1024)
    assert tiling_wanted({"vae_tiling_threshold": 1536}, 1544, 512)
    assert not tiling_wanted({"vae_tiling_threshold": 0}, 4096, 4096)  # 0: never by size
    assert tiling_wanted({"vae_tiling_enabled": True, "vae_tiling_threshold": 0}, 64, 64)
    assert not tiling_wanted(None, 4096, 4096)


def _spy(monkeypatch, vae, name):
    calls = []
    real = getattr(vae, name)

    def spy(*a, **kw):
        calls.append(a[0].shape)
        return real(*a, **kw)

    monkeypatch.setattr(vae, name, spy)
    return calls


def test_tiled_decode_and_encode_run_in_tiles_and_restore_the_vae(ctx, monkeypatch):
    model = ctx.models.current
    vae = model.components.vae
    monkeypatch.setattr(vae_mod, "TILE_PIXELS", 32)
    dec = _spy(monkeypatch, vae, "tiled_decode")
    enc = _spy(monkeypatch, vae, "_tiled_encode")
    before = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    z = torch.randn(1, 4, 12, 10)
    pixels = decode_to_pixels(model, z, tiled=True)
    assert pixels.shape == (1, 3, 96, 80) and dec
    latent = encode_pixels(model, pixels * 2 - 1, tiled=True)
    assert latent.shape == (1, 4, 12, 10) and enc
    assert (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size) == before
    with pytest.raises(RuntimeError):
        with vae_tiles(vae, True):
            raise RuntimeError("boom")
    assert vae.use_tiling == before[0]


def test_out_of_memory_is_retried_tiled(ctx, monkeypatch, caplog):
    model = ctx.models.current
    vae = model.components.vae
    real = vae.decode

    def flaky(z, *a, **kw):
        if not vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(z, *a, **kw)

    monkeypatch.setattr(vae, "decode", flaky)
    with caplog.at_level(logging.WARNING):
        pixels = decode_to_pixels(model, torch.randn(1, 4, 8, 8))
    assert pixels.shape == (1, 3, 64, 64)
    assert "retrying with tiled VAE" in caplog.text


def test_the_setting_reaches_the_pipeline(ctx, monkeypatch):
    vae = ctx.models.current.components.vae
    monkeypatch.setattr(vae_mod, "TILE_PIXELS", 32)
    dec = _spy(monkeypatch, vae, "tiled_decode")
    req = dict(prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler", save_images=False)
    plain = ctx.generate(GenerationRequest(**req))
    assert not dec
    tiled = ctx.generate(GenerationRequest(**req, override_settings={"vae_tiling_enabled": True}))
    assert dec and tiled.images[0].size == plain.images[0].size == (64, 64)


@pytest.fixture(scope="module")
def pointwise_vae():
    """A tiny VAE with tamed activations: every 3x3 kernel keeps only its centre tap and the attention blocks add
    nothing, so each output pixel depends on one latent pixel (and each latent on one pixel per 8x8 block) and
    tiles see no neighbours. Its GroupNorms still normalise per tile, so the inputs repeat every 2 latents
    (16 pixels): every tile (8 latents, starting every 6) then has the statistics of the whole image."""
    from types import SimpleNamespace

    from webui.models.tiny import build_tiny_components

    comps = build_tiny_components("sd1", seed=0)
    with torch.no_grad():
        for name, module in comps.vae.named_modules():
            if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
                centre = module.weight[:, :, 1:2, 1:2].clone()
                module.weight.zero_()
                module.weight[:, :, 1:2, 1:2] = centre
            elif name.endswith("to_out.0"):
                module.weight.zero_()
                module.bias.zero_()
    return SimpleNamespace(components=comps, device=torch.device("cpu"))


def test_tiled_equals_untiled_on_a_vae_without_seams(pointwise_vae, monkeypatch):
    """Tolerance 1e-4 (float32 summation order): on this VAE a tile decoded alone is exactly that part of the
    whole decode, so any misplaced, mis-sized or mis-blended tile shows."""
    monkeypatch.setattr(vae_mod, "TILE_PIXELS", 64)  # 192 px: 4 x 4 overlapping tiles of 64 px
    z = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0)).repeat(1, 1, 12, 12)
    whole = decode_to_pixels(pointwise_vae, z)
    tiled = decode_to_pixels(pointwise_vae, z, tiled=True)
    assert whole.shape == (1, 3, 192, 192) and float(whole.std()) > 0.03  # not a flat picture
    assert float((whole - tiled).abs().max()) < 1e-4
    pixels = whole * 2 - 1
    latent = encode_pixels(pointwise_vae, pixels)
    assert float(latent.std()) > 0.01
    assert float((encode_pixels(pointwise_vae, pixels, tiled=True) - latent).abs().max()) < 1e-4
