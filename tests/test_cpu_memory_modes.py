"""``--medvram`` / ``--lowvram`` on the CPU keep the big weights in float16 and compute in float32: half the RAM,
the same picture from a float16 file (float16 -> float32 is exact), LoRA still applied and removed exactly (it is
written into the stored weights, not into a temporary upcast copy; the same holds for fp8 storage)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import make_settings
from tests.test_lora import kohya_lora
from webui.context import build_context
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components
from webui.pipeline.request import GenerationRequest

BASE = dict(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64, seed=5,
            sampler_name="Euler", save_images=False)


@pytest.fixture(scope="module")
def half_root(tmp_path_factory):
    """A models folder whose checkpoint is stored in float16, as downloaded checkpoints are, and a LoRA."""
    root = tmp_path_factory.mktemp("half-models")
    components = build_tiny_components("sd1", seed=3).to(dtype=torch.float16)
    save_single_file(components, root / "Stable-diffusion" / "half.safetensors")
    (root / "Lora").mkdir()
    save_file(kohya_lora(components.to(dtype=torch.float32)), str(root / "Lora" / "film.safetensors"))
    return root


@pytest.fixture(scope="module")
def contexts(half_root, tmp_path_factory):
    return {mode: build_context(make_settings(tmp_path_factory.mktemp(mode), half_root, memory_mode=mode),
                                load_model=True) for mode in ("none", "medvram", "lowvram")}


def _pixels(ctx, **kw) -> np.ndarray:
    return np.asarray(ctx.generate(GenerationRequest(**{**BASE, **kw})).images[0])


def _stored(module: torch.nn.Module) -> set[torch.dtype]:
    """dtypes of the Linear/Conv weights as held in RAM."""
    from webui.models.fp8 import stored_weight

    return {stored_weight(m).dtype for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.parameters())


def test_weights_are_kept_in_float16_and_computed_in_float32(contexts):
    plain = contexts["none"].models.current.components
    med = contexts["medvram"].models.current.components
    low = contexts["lowvram"].models.current.components
    assert _stored(plain.unet) == {torch.float32} and _stored(plain.text_encoders[0]) == {torch.float32}
    assert _stored(med.unet) == {torch.float16} and _stored(med.text_encoders[0]) == {torch.float32}
    assert _stored(low.unet) == {torch.float16} and _stored(low.text_encoders[0]) == {torch.float16}
    for components in (med, low):
        assert {p.dtype for p in components.vae.parameters()} == {torch.float32}
        conv = components.unet.conv_in
        assert conv.weight.dtype == torch.float32 and conv.bias.dtype == torch.float32  # what the layer computes with
        assert torch.equal(conv.weight, plain.unet.conv_in.weight)  # the upcast is exact for a float16 file
    assert _bytes(med.unet) < 0.55 * _bytes(plain.unet)
    assert _bytes(low.text_encoders[0]) < 0.55 * _bytes(plain.text_encoders[0])


def test_same_picture_as_without_the_mode(contexts):
    plain = _pixels(contexts["none"])
    for mode in ("medvram", "lowvram"):
        assert np.array_equal(_pixels(contexts[mode]), plain), mode


def test_lora_applies_to_the_stored_weights_and_is_removed_exactly(contexts):
    plain = _pixels(contexts["none"])
    with_lora = _pixels(contexts["none"], prompt=BASE["prompt"] + " <lora:film:1>")
    assert np.abs(with_lora.astype(int) - plain).mean() > 1  # the LoRA does change this picture
    for mode in ("medvram", "lowvram"):
        ctx = contexts[mode]
        ours = _pixels(ctx, prompt=BASE["prompt"] + " <lora:film:1>")
        # the merged weight is rounded to float16 once: within a level or two of the float32 merge
        assert np.abs(ours.astype(int) - with_lora).mean() < 1.0, mode
        assert np.array_equal(_pixels(ctx), plain), mode  # removed bit for bit


def test_fp8_storage_applies_lora_too(contexts):
    ctx = contexts["none"]
    ctx.options.update({"fp8_storage": "Enable"})
    try:
        without = _pixels(ctx)
        assert ctx.models.current.fp8
        unet_only = _pixels(ctx, prompt=BASE["prompt"] + " <lora:film:0:1>")  # A1111: text-encoder 0, U-Net 1
        assert np.abs(unet_only.astype(int) - without).mean() > 1
        assert np.array_equal(_pixels(ctx), without)
    finally:
        ctx.options.update({"fp8_storage": "Disable"})
