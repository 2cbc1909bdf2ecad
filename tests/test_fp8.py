"""fp8 checkpoints (plain and "scaled", ComfyUI's ``scaled_fp8`` layout) and fp8 storage (A1111's option
``fp8_storage``).

Tolerance: a float8_e4m3fn weight has a 3-bit mantissa (relative rounding error up to 2**-4 = 6.25 %); on the tiny
models the final images of the full-precision, the plain-fp8 and the scaled-fp8 files differ by ~1 of 255 levels on
average (measured 0.9-1.2) while two different seeds differ by ~47: the bound of 4 says "the same picture".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import make_settings
from webui.context import build_context
from webui.models.fp8 import dequantize_scaled, is_fp8
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components
from webui.pipeline.request import GenerationRequest

BASE = dict(prompt="a red circle", steps=4, width=64, height=64, seed=3, sampler_name="Euler", save_images=False)
FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def _quantized(state, scaled: bool) -> dict[str, torch.Tensor]:
    """The U-Net's 2-D+ float weights in fp8, as fp8 checkpoints store them (scaled: weight / scale, with
    ``scale_weight`` = max|w| / 448 beside it and the ``scaled_fp8`` marker)."""
    out = {}
    for key, value in state.items():
        if key.startswith("model.diffusion_model.") and key.endswith(".weight") and value.ndim >= 2:
            if scaled:
                scale = value.abs().max().float() / E4M3_MAX
                out[key] = (value / scale).to(FP8)
                out[key[: -len(".weight")] + ".scale_weight"] = scale.reshape(())
            else:
                out[key] = value.to(FP8)
        else:
            out[key] = value
    if scaled:
        out["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=FP8)
    return out


@pytest.fixture(scope="module")
def fp8_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    folder = root / "Stable-diffusion"
    full = save_single_file(build_tiny_components("sd1", seed=8), folder / "full.safetensors")
    state = load_file(full)
    save_file(_quantized(state, scaled=False), folder / "plain-fp8.safetensors")
    save_file(_quantized(state, scaled=True), folder / "scaled-fp8.safetensors")
    return root


@pytest.fixture(scope="module")
def fp8_ctx(fp8_root, tmp_path_factory):
    return build_context(make_settings(tmp_path_factory.mktemp("fp8-data"), fp8_root), load_model=False)


def _image(ctx, name, **kw):
    ctx.models.ensure_loaded(name)
    return np.asarray(ctx.generate(GenerationRequest(**{**BASE, **kw})).images[0], dtype=np.float64)


def test_dequantize_scaled_multiplies_and_drops_the_format_tensors():
    w = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    scale = torch.tensor(0.01)
    state = {"a.weight": (w / scale).to(FP8), "a.scale_weight": scale, "a.scale_input": torch.tensor(1.0),
             "a.bias": torch.ones(2), "b.weight": w, "scaled_fp8": torch.empty(0, dtype=FP8)}
    out = dequantize_scaled(state)
    assert set(out) == {"a.weight", "a.bias", "b.weight"}
    assert out["a.weight"].dtype == torch.float32 and torch.allclose(out["a.weight"], w, rtol=0.07)
    assert out["b.weight"] is w


def test_plain_and_scaled_fp8_files_draw_the_full_precision_picture(fp8_ctx):
    full = _image(fp8_ctx, "full")
    plain = _image(fp8_ctx, "plain-fp8")
    scaled = _image(fp8_ctx, "scaled-fp8")
    other_seed = _image(fp8_ctx, "full", seed=4)
    assert np.abs(scaled - plain).mean() < 4
    assert np.abs(scaled - full).mean() < 4 and np.abs(plain - full).mean() < 4
    assert np.abs(other_seed - full).mean() > 2 * np.abs(scaled - full).mean()


def test_fp8_storage_keeps_unet_weights_in_fp8_and_reloads_on_change(fp8_ctx):
    full = _image(fp8_ctx, "full")
    fp8_ctx.options.update({"fp8_storage": "Enable"})
    try:
        stored = _image(fp8_ctx, "full")
        model = fp8_ctx.models.current
        assert model.fp8
        linear = next(m for m in model.components.unet.modules() if isinstance(m, torch.nn.Linear))
        assert is_fp8(linear.parametrizations.weight.original) and linear.weight.dtype == torch.float32
        assert np.abs(stored - full).mean() < 4
        fp8_ctx.options.update({"fp8_storage": "Enable for SDXL"})  # an SD 1.x model: full precision again
        again = _image(fp8_ctx, "full")
        assert not fp8_ctx.models.current.fp8 and np.array_equal(again, full)
    finally:
        fp8_ctx.options.update({"fp8_storage": "Disable"})
