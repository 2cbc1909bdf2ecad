"""SDXL's added conditioning (``time_ids``) as A1111 and diffusers build it.

A1111 (modules/sd_models_xl.py ``get_learned_conditioning``): original size = target size = the pass's
height/width, crop coordinates = options (``sdxl_crop_top``, ``sdxl_crop_left``). The expected tensor is
made by diffusers' own ``StableDiffusionXLPipeline._get_add_time_ids`` (an independent reference).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from webui.jobs import Job
from webui.models.manager import CheckpointInfo, LoadedModel
from webui.models.tiny import build_tiny_components
from webui.pipeline.generate import generate
from webui.pipeline.request import GenerationRequest


@pytest.fixture(scope="module")
def xl():
    comps = build_tiny_components("sdxl", seed=3)
    model = LoadedModel(CheckpointInfo(Path("tiny-xl.safetensors"), "tiny-xl.safetensors"), "0" * 64, comps,
                        torch.device("cpu"), torch.float32, 0.0)
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone())

    handle = comps.unet.register_forward_pre_hook(record, with_kwargs=True)
    yield model, seen
    handle.remove()


def _reference(comps, height: int, width: int, top: int, left: int) -> torch.Tensor:
    pipe = comps.diffusers_pipeline()
    proj = comps.text_encoders[1].config.projection_dim
    return pipe._get_add_time_ids((height, width), (top, left), (height, width), dtype=torch.float32,
                                  text_encoder_projection_dim=proj)


@pytest.mark.parametrize("top, left", [(0, 0), (32, 8)])
def test_time_ids_follow_the_size_and_the_crop_options(ctx, xl, top, left):
    model, seen = xl
    seen.clear()
    opts = ctx.options.current.replaced({"sdxl_crop_top": top, "sdxl_crop_left": left})
    req = GenerationRequest(prompt="a cube", steps=2, width=64, height=96, seed=1, sampler_name="Euler",
                            save_images=False)
    generate(ctx.pipeline_env(), model, req, Job(kind="txt2img"), opts)
    expected = _reference(model.components, 96, 64, top, left)
    assert seen and all(torch.equal(t, expected.expand_as(t)) for t in seen)
    assert seen[0].shape[0] == 2  # cond and uncond rows


def test_hires_pass_conditions_on_its_own_size(ctx, xl):
    model, seen = xl
    seen.clear()
    opts = ctx.options.current.replaced({"sdxl_crop_top": 0, "sdxl_crop_left": 0})
    req = GenerationRequest(prompt="a cube", steps=2, width=64, height=64, seed=1, sampler_name="Euler",
                            enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_upscaler="Latent",
                            save_images=False)
    generate(ctx.pipeline_env(), model, req, Job(kind="txt2img"), opts)
    sizes = {tuple(t[0, :2].tolist()) for t in seen}
    assert sizes == {(64.0, 64.0), (96.0, 96.0)}
