"""Tiny random-weight models with the real SD1 / SD2 / SDXL architectures.

Same block types, wiring, key layout and conventions as the real families
(VAE downsamples 8x with 4 latent channels, CLIP vocabulary 49408 and 77
positions, SD2/SDXL attention heads of width 64 with linear projections,
SDXL ``text_time`` conditioning and two text encoders), only narrow and
shallow, so tests and the built-in default model run in well under a second
on a CPU.  The configs equal what :mod:`webui.models.infer_config` infers
from the saved weights, so a save/load round trip is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.models.components import (
    SDComponents,
    scaled_linear_alphas_cumprod,
    shipped_tokenizers,
)
from webui.models.infer_config import CLIP_BOS, CLIP_EOS, CLIP_VOCAB, VAE_SCALING
from webui.models.spec import ModelSpec

TEXT_WIDTH = 32
SDXL_TEXT2_WIDTH = 64  # must differ from TEXT_WIDTH: diffusers' reader tells SDXL's encoders apart by width
TEXT_LAYERS = 3
SDXL_POOLED_DIM = 16  # projection of the 2nd SDXL encoder (real: 1280); != width so transposes are tested
SDXL_TIME_EMBED = 8  # addition_time_embed_dim (real: 256)


def build_tiny_components(family: str = "sd1", *, prediction_type: str = "epsilon", inpainting: bool = False,
                          seed: int = 0) -> SDComponents:
    """Build a deterministic tiny model of ``family`` ("sd1", "sd2" or "sdxl").

    The same ``seed`` always gives bit-identical weights; the global torch RNG
    state is left untouched.
    """
    if family not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"family must be 'sd1', 'sd2' or 'sdxl', not {family!r}")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', not {prediction_type!r}")
    spec = ModelSpec(family, prediction_type, inpainting)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(tiny_unet_config(spec))
        vae = AutoencoderKL.from_config(tiny_vae_config(spec))
        if family == "sd1":
            encoders = [CLIPTextModel(_text_config("clip"))]
        elif family == "sd2":
            encoders = [CLIPTextModel(_text_config("openclip"))]
        else:
            encoders = [CLIPTextModel(_text_config("clip")),
                        CLIPTextModelWithProjection(_text_config("openclip", width=SDXL_TEXT2_WIDTH,
                                                                 projection_dim=SDXL_POOLED_DIM))]
        for encoder in encoders:  # real encoders' norms are not the identity; keeps emphasis' mean meaningful
            for module in encoder.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    torch.nn.init.normal_(module.weight, 1.0, 0.1)
                    torch.nn.init.normal_(module.bias, 0.0, 0.1)
    return SDComponents(
        spec=spec,
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoders=[e.eval() for e in encoders],
        tokenizers=shipped_tokenizers(family),
        alphas_cumprod=scaled_linear_alphas_cumprod(),
        vae_scaling_factor=VAE_SCALING[family],
    )


def tiny_unet_config(spec: ModelSpec) -> dict[str, Any]:
    """UNet config: 2 levels (32, 64) for SD1/SDXL, (64, 64) for SD2; 1 layer per level.

    SD1: attention on level 0 only (like the real last level without it), 8 heads.
    SD2: attention on level 0, heads of 64, linear projections, upcast attention.
    SDXL: no attention on level 0, 2 transformer layers on level 1, heads of 64,
    cross-attention over both encoders (32 + 64), ``text_time`` embedding.
    """
    family = spec.family
    config: dict[str, Any] = {
        "in_channels": 9 if spec.inpainting else 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "upcast_attention": family == "sd2",
        "sample_size": {"sd1": 64, "sd2": 96 if spec.prediction_type == "v_prediction" else 64,
                        "sdxl": 128}[family],
    }
    if family == "sd1":
        config.update(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                      up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=TEXT_WIDTH,
                      attention_head_dim=8, use_linear_projection=False, transformer_layers_per_block=1)
    elif family == "sd2":
        config.update(block_out_channels=[64, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                      up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=TEXT_WIDTH,
                      attention_head_dim=[1, 1], use_linear_projection=True, transformer_layers_per_block=1)
    else:
        config.update(block_out_channels=[32, 64], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                      up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                      cross_attention_dim=TEXT_WIDTH + SDXL_TEXT2_WIDTH,
                      attention_head_dim=[1, 1], use_linear_projection=True, transformer_layers_per_block=[1, 2],
                      addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED,
                      projection_class_embeddings_input_dim=SDXL_POOLED_DIM + 6 * SDXL_TIME_EMBED)
    return config


def tiny_vae_config(spec: ModelSpec) -> dict[str, Any]:
    """VAE config: 4 levels (32, 32, 64, 64) -> 8x downsampling, 4 latent channels, 1 layer per level."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 32, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": {"sd1": 512, "sd2": 768 if spec.prediction_type == "v_prediction" else 512,
                        "sdxl": 1024}[spec.family],
        "scaling_factor": VAE_SCALING[spec.family],
    }


def _text_config(kind: str, *, width: int = TEXT_WIDTH, projection_dim: int | None = None) -> CLIPTextConfig:
    """CLIP text config, 3 layers, heads of width 64 (at least one); CLIP-L style ("clip") or OpenCLIP ("openclip")."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=max(1, width // 64),
        max_position_embeddings=77,
        projection_dim=projection_dim or width,
        hidden_act="quick_gelu" if kind == "clip" else "gelu",
        layer_norm_eps=1e-5,
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
        pad_token_id=CLIP_EOS if kind == "clip" else 0,
    )
