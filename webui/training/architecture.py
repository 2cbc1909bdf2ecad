"""The default model's architecture: an SD 1.x model scaled down for 64x64 images.

Same classes and on-disk layout as SD 1.5 (VAE with 8x downsampling and 4
latent channels, CLIP text encoder with the real 49408-token vocabulary and
77 positions, conditional U-Net with cross-attention), only narrow: about
8.4 M parameters, 17 MB as a float16 single file.  The configs are exactly
what :mod:`webui.models.infer_config` reads back from the saved weights.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from webui.models.components import SDComponents, scaled_linear_alphas_cumprod, shipped_tokenizers
from webui.models.infer_config import CLIP_BOS, CLIP_EOS, CLIP_VOCAB, VAE_SCALING
from webui.models.spec import ModelSpec

TEXT_WIDTH = 64


def unet_config() -> dict[str, Any]:
    """Two levels (64, 128 channels), cross-attention on both and in the middle, 8 heads."""
    return {
        "sample_size": 64,  # what the loader assumes for SD 1.x; the pipeline uses the request's size
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": [64, 128],
        "layers_per_block": 1,
        "cross_attention_dim": TEXT_WIDTH,
        "attention_head_dim": 8,
        "use_linear_projection": False,
        "transformer_layers_per_block": 1,
        "norm_num_groups": 32,
        "upcast_attention": False,
    }


def vae_config() -> dict[str, Any]:
    """Four levels (32, 32, 64, 64) -> 8x downsampling, 4 latent channels, no mid attention."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 32, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": VAE_SCALING["sd1"],
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": False,
    }


def text_config() -> CLIPTextConfig:
    """CLIP-L style text encoder (quick_gelu, pads with end-of-text), 64 wide, 2 layers, 1 head."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=1,
        max_position_embeddings=77,
        projection_dim=TEXT_WIDTH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
        pad_token_id=CLIP_EOS,
    )


def build_components(seed: int) -> SDComponents:
    """Freshly initialised default-model components; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet_config())
        vae = AutoencoderKL.from_config(vae_config())
        text = CLIPTextModel(text_config())
    return SDComponents(
        spec=ModelSpec("sd1", "epsilon", False),
        unet=unet,
        vae=vae,
        text_encoders=[text],
        tokenizers=shipped_tokenizers("sd1"),
        alphas_cumprod=scaled_linear_alphas_cumprod(),
        vae_scaling_factor=VAE_SCALING["sd1"],
    )
