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
