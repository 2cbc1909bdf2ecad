"""The optional speed-ups (``--opt-channelslast``, ``--compile``) leave the picture as it is: the optimised path
against the plain one on the same tiny model, within one level (convolution algorithms may round differently), and
a LoRA still applies to a compiled U-Net (its weights are read at each call, not frozen into the graph).

``--compile`` uses the ``aot_eager`` backend here: the same dynamo capture and AOT graph as Inductor, without its
C++ build, which takes about a minute on this CPU (``benchmarks/gpu.py`` runs Inductor on the GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import make_settings, own_models_root
from tests.test_lora import kohya_lora
from webui.context import build_context
from webui.pipeline.request import GenerationRequest

BASE = dict(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64, seed=9,
            sampler_name="Euler", save_images=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_sd1_file):
    root = own_models_root(tmp_path_factory, tiny_sd1_file)
    (root / "Lora").mkdir()
    plain = build_context(make_settings(tmp_path_factory.mktemp("lora-src"), root), load_model=True)
    save_file(kohya_lora(plain.models.current.components), str(root / "Lora" / "film.safetensors"))
    return root


def _ctx(root, tmp_path_factory, **kw):
    return build_context(make_settings(tmp_path_factory.mktemp("speed"), root, **kw), load_model=True)


def _pixels(ctx, **kw) -> np.ndarray:
    return np.asarray(ctx.generate(GenerationRequest(**{**BASE, **kw})).images[0], dtype=np.int16)


def test_flags():
    from webui.settings import parse_args

    assert parse_args(["--opt-channelslast"]).channels_last and parse_args(["--compile"]).compile
    assert not parse_args([]).channels_last and not parse_args([]).compile


def test_channels_last_and_compile_draw_the_plain_picture(root, tmp_path_factory, caplog):
    plain = _ctx(root, tmp_path_factory)
    fast = _ctx(root, tmp_path_factory, channels_last=True, compile=True, compile_backend="aot_eager")
    unet = fast.models.current.components.unet
    conv = unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert unet._compiled_call_impl is not None  # Module.compile: the module and its names stay
    assert "conv_in.weight" in dict(unet.named_parameters())
    reference = _pixels(plain)
    with caplog.at_level("INFO", logger="webui.models.speedups"):
        ours = _pixels(fast)
    assert "torch.compile: a U-Net call took" in caplog.text  # the compile time is shown
    assert np.abs(ours - reference).max() <= 1
    lora = "a red cube <lora:film:1>"
    with_lora = _pixels(fast, prompt=lora)
    assert np.abs(with_lora - ours).mean() > 1  # the compiled U-Net sees the LoRA's weights
    assert np.abs(with_lora - _pixels(plain, prompt=lora)).max() <= 1
    assert np.abs(_pixels(fast) - reference).max() <= 1  # and the LoRA is gone again


def test_compile_is_skipped_with_a_memory_mode(root, tmp_path_factory, caplog):
    with caplog.at_level("WARNING", logger="webui.models.speedups"):
        ctx = _ctx(root, tmp_path_factory, compile=True, compile_backend="aot_eager", memory_mode="medvram")
    assert ctx.models.current.components.unet._compiled_call_impl is None
    assert "--compile is skipped for this model: --medvram" in caplog.text
