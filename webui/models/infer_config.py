"""Infer diffusers/transformers configs from original-layout tensor shapes.

Nothing here reads a reference config: block widths, depths, attention
placement and text-encoder sizes all come from tensor shapes and key counts,
so real checkpoints and tiny test models go through the same code.  Values a
checkpoint cannot tell (attention head counts, image size, upcasting) follow
the family's published configs.

Functions raise :class:`ModelError` with the placeholder path ``<state dict>``;
the loader re-raises with the real file name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import CLIPTextConfig

from webui.errors import ModelError
from webui.models.spec import UNET_PREFIX, ModelSpec

VAE_PREFIXES = ("first_stage_model.", "vae.")
STATE_DICT = Path("<state dict>")
CLIP_VOCAB = 49408
CLIP_BOS, CLIP_EOS = 49406, 49407
SDXL_TIME_IDS = 6  # original size (2) + crop top-left (2) + target size (2)
VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "sd3": 1.5305, "flux": 0.3611}
#: The 16-channel VAEs of SD 3.x and FLUX.1 also shift the latents: ``(z - shift) * scale``.
VAE_SHIFT = {"sd3": 0.0609, "flux": 0.1159}


def _strip(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Sub-dict of the keys under the first prefix present, with it removed."""
    for prefix in prefixes:
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if sub:
            return sub
    return {}


def _need(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    """Fetch a tensor or raise a ModelError naming the missing key."""
    if key not in sd:
        raise ModelError(STATE_DICT, f"the {what} is incomplete: key '{key}' is missing. "
                                     "The file is damaged or not a full Stable Diffusion checkpoint.")
    return sd[key]


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) in keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def unet_config_from_ldm(sd: Mapping[str, torch.Tensor], spec: ModelSpec, *, decoder: bool = True) -> dict[str, Any]:
    """Build a ``UNet2DConditionModel`` config from ``model.diffusion_model.*`` shapes.

    ``sd`` may be the whole checkpoint or the UNet keys with the prefix
    already removed.  For SDXL the ``text_time`` embedding size is derived from
    ``label_emb.0.0.weight`` and, when present, the second text encoder's
    projection width (``conditioner.embedders.1.model.text_projection``).
    ``decoder=False`` reads an encoder-only UNet (a ControlNet): no output blocks.
    """
    unet = _strip(sd, (UNET_PREFIX,)) or dict(sd)
    conv_in = _need(unet, "input_blocks.0.0.weight", "UNet")
    num_inputs = len(_indices(unet, r"input_blocks\.(\d+)\."))
    downs = [i for i in _indices(unet, r"input_blocks\.(\d+)\.0\.op\.weight")]
    levels = len(downs) + 1
    layers = (num_inputs - 1 - len(downs)) // levels
    if layers < 1 or 1 + levels * layers + len(downs) != num_inputs:
        raise ModelError(STATE_DICT, "the UNet block structure is not a Stable Diffusion UNet "
                                     f"({num_inputs} input blocks, {len(downs)} downsamplers).")
    channels, attention, depths = [], [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        channels.append(int(_need(unet, f"input_blocks.{first}.0.out_layers.3.weight", "UNet").shape[0]))
        depth = len(_indices(unet, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\."))
        attention.append(depth > 0)
        depths.append(depth)
    up_depths = [len(_indices(unet, rf"output_blocks\.{u * (layers + 1)}\.1\.transformer_blocks\.(\d+)\."))
                 for u in range(levels)]
    if decoder and up_depths != depths[::-1]:
        raise ModelError(STATE_DICT, f"the UNet has asymmetric attention depths (down {depths}, up "
                                     f"{up_depths[::-1]}), which is not supported.")
    to_k = [v for k, v in unet.items() if k.endswith("attn2.to_k.weight")]
    proj_in = [v for k, v in unet.items() if k.endswith(".proj_in.weight")]
    if not to_k or not proj_in:
        raise ModelError(STATE_DICT, "the UNet has no cross-attention layers; it is not a text-to-image "
                                     "Stable Diffusion UNet.")
    config: dict[str, Any] = {
        "sample_size": {"sd1": 64, "sd2": 96 if spec.prediction_type == "v_prediction" else 64,
                        "sdxl": 128}[spec.family],
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_need(unet, "out.2.weight", "UNet").shape[0]) if decoder else 4,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": int(to_k[0].shape[1]),
        "use_linear_projection": proj_in[0].ndim == 2,
        "norm_num_groups": 32,
        "upcast_attention": spec.family == "sd2",
    }
    if spec.family == "sd1":
        config["attention_head_dim"] = 8  # diffusers' legacy name: 8 heads at every level
    else:
        config["attention_head_dim"] = [max(1, c // 64) for c in channels]  # heads of width 64
    time_dim = int(_need(unet, "time_embed.0.weight", "UNet").shape[0])
    if time_dim != 4 * channels[0]:
        config["time_embedding_dim"] = time_dim
    if spec.family == "sdxl":
        config["transformer_layers_per_block"] = [max(1, d) for d in depths]
        adm_in = int(_need(unet, "label_emb.0.0.weight", "SDXL UNet").shape[1])
        projection = sd.get("conditioner.embedders.1.model.text_projection")
        text_dim = int(projection.shape[1]) if projection is not None else 1280
        time_embed, rest = divmod(adm_in - text_dim, SDXL_TIME_IDS)
        if rest or time_embed <= 0:
            raise ModelError(STATE_DICT, f"the SDXL UNet's extra embedding width {adm_in} does not fit a "
                                         f"{text_dim}-wide pooled text embedding plus {SDXL_TIME_IDS} time ids "
                                         "(SDXL refiner or unsupported variant).")
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_embed,
                      projection_class_embeddings_input_dim=adm_in)
    else:
        config["transformer_layers_per_block"] = max([1] + depths)
    return config


def vae_config_from_ldm(sd: Mapping[str, torch.Tensor], spec: ModelSpec) -> dict[str, Any]:
    """Build an ``AutoencoderKL`` config from ``first_stage_model.*`` shapes."""
    vae = _strip(sd, VAE_PREFIXES) or dict(sd)
    conv_in = _need(vae, "encoder.conv_in.weight", "VAE")
    levels = _indices(vae, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ModelError(STATE_DICT, "the VAE encoder has no down blocks; the file is not a full checkpoint.")
    channels = [int(_need(vae, f"encoder.down.{i}.block.0.conv2.weight", "VAE").shape[0]) for i in levels]
    return {
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_need(vae, "decoder.conv_out.weight", "VAE").shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\.")),
        "latent_channels": int(_need(vae, "decoder.conv_in.weight", "VAE").shape[1]),
        "norm_num_groups": 32,
        "sample_size": {"sd1": 512, "sd2": 768 if spec.prediction_type == "v_prediction" else 512,
                        "sdxl": 1024}.get(spec.family, 1024),
        "scaling_factor": VAE_SCALING[spec.family],
        "shift_factor": VAE_SHIFT.get(spec.family),
        "use_quant_conv": "quant_conv.weight" in vae,
        "use_post_quant_conv": "post_quant_conv.weight" in vae,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in vae,
    }


def clip_config_from_ldm(sd: Mapping[str, torch.Tensor], prefix: str,
                         kind: Literal["clip", "openclip"]) -> CLIPTextConfig:
    """Build a ``CLIPTextConfig`` for the text encoder stored under ``prefix``.

    ``kind="clip"``: transformers layout (``{prefix}text_model.*``), OpenAI
    CLIP-L style, ``quick_gelu``, pads with ``<|endoftext|>``.
    ``kind="openclip"``: OpenCLIP layout (``{prefix}transformer.resblocks.*``),
    ``gelu``, pads with ``!`` (id 0).  Every layer is kept (SD2 users pick the
    penultimate hidden state at run time).  ``eos_token_id`` is 49407 so the
    pooled output is taken at the first end-of-text token, as in the original.
    """
    if kind == "clip":
        base = prefix + "text_model."
        token = _need(sd, base + "embeddings.token_embedding.weight", "text encoder")
        positions = _need(sd, base + "embeddings.position_embedding.weight", "text encoder")
        layers = len(_indices(sd, re.escape(base) + r"encoder\.layers\.(\d+)\."))
        inner = _need(sd, base + "encoder.layers.0.mlp.fc1.weight", "text encoder")
        proj = sd.get(prefix + "text_projection.weight")
        projection_dim = int(proj.shape[0]) if proj is not None else int(token.shape[1])
        act, pad = "quick_gelu", CLIP_EOS
    elif kind == "openclip":
        token = _need(sd, prefix + "token_embedding.weight", "OpenCLIP text encoder")
        positions = _need(sd, prefix + "positional_embedding", "OpenCLIP text encoder")
        layers = len(_indices(sd, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\."))
        inner = _need(sd, prefix + "transformer.resblocks.0.mlp.c_fc.weight", "OpenCLIP text encoder")
        proj = sd.get(prefix + "text_projection")
        projection_dim = int(proj.shape[1]) if proj is not None else int(token.shape[1])
        act, pad = "gelu", 0
    else:
        raise ValueError(f"kind must be 'clip' or 'openclip', not {kind!r}")
    hidden = int(token.shape[1])
    return CLIPTextConfig(
        vocab_size=int(token.shape[0]),
        hidden_size=hidden,
        intermediate_size=int(inner.shape[0]),
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=int(positions.shape[0]),
        projection_dim=projection_dim,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
        pad_token_id=pad,
    )
