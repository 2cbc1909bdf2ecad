"""SDXL's text conditioning (issue 29): the U-Net's ``text_embeds`` (pooled OpenCLIP-bigG) and
``encoder_hidden_states`` (CLIP-L and bigG penultimate layers side by side) equal what diffusers' own
``StableDiffusionXLPipeline.encode_prompt`` gives for the same prompts, row by row (conditional, then unconditional).
A non-empty negative prompt here; an empty one is zeros in both A1111 (``sd_models_xl.get_learned_conditioning``,
``force_zero_embeddings``) and diffusers (``force_zeros_for_empty_prompt``), checked end to end in
``test_pipeline_parity.py``.
``time_ids`` are checked in ``test_sdxl_conditioning.py``."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_settings
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components
from webui.pipeline.request import GenerationRequest

PROMPT, NEGATIVE = "a red cube on a table", "blurry, dark"


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    from webui.context import build_context

    models = tmp_path_factory.mktemp("xl-models")
    save_single_file(build_tiny_components("sdxl", seed=4), models / "Stable-diffusion" / "tiny-xl.safetensors")
    return build_context(make_settings(tmp_path_factory.mktemp("xl-data"), models), load_model=True)


def _first_call(ctx, **kw) -> dict:
    unet = ctx.models.current.components.unet
    seen: dict = {}

    def record(module, args, kwargs):
        if not seen:
            seen.update(kwargs)

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        ctx.generate(GenerationRequest(**{"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 1, "width": 64,
                                          "height": 128, "seed": 1, "sampler_name": "Euler", "cfg_scale": 5.0,
                                          "save_images": False, **kw}))
    finally:
        handle.remove()
    return seen


def test_text_embeds_and_context_equal_diffusers_encode_prompt(xl):
    seen = _first_call(xl)
    pipe = xl.models.current.components.diffusers_pipeline()
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPT, negative_prompt=NEGATIVE, do_classifier_free_guidance=True, device=torch.device("cpu"))
    context, text_embeds = seen["encoder_hidden_states"], seen["added_cond_kwargs"]["text_embeds"]
    # rows: the conditional one, then the unconditional one
    torch.testing.assert_close(text_embeds[0], pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_embeds[1], negative_pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(context[0], embeds[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(context[1], negative[0], atol=1e-5, rtol=1e-5)
