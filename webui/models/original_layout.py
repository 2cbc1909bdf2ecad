"""Write models back in the original (CompVis/LDM/SGM) single-file layout.

This is the inverse of diffusers' ``convert_ldm_*`` helpers used by the
loader: ``load_components(save_single_file(c, p))`` reproduces ``c``
bit-for-bit.  It is used to save test models and the built-in default model
the way users download real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from webui.models.components import SDComponents

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
_RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def to_original_state_dict(components: SDComponents) -> dict[str, torch.Tensor]:
    """All weights of ``components`` under their original checkpoint keys.

    UNet -> ``model.diffusion_model.*``; VAE -> ``first_stage_model.*`` (mid
    attention as 1x1 conv weights); SD1 text encoder ->
    ``cond_stage_model.transformer.text_model.*``; SD2 ->
    ``cond_stage_model.model.*`` (OpenCLIP); SDXL ->
    ``conditioner.embedders.0.transformer.text_model.*`` and
    ``conditioner.embedders.1.model.*``.
    """
    sd: dict[str, torch.Tensor] = {}
    sd.update(_prefixed(UNET_PREFIX, unet_to_original(components.unet)))
    sd.update(_prefixed(VAE_PREFIX, vae_to_original(components.vae)))
    family, encoders = components.spec.family, components.text_encoders
    if family == "sd1":
        sd.update(_prefixed("cond_stage_model.transformer.", clip_to_original(encoders[0])))
    elif family == "sd2":
        sd.update(_prefixed("cond_stage_model.model.", openclip_to_original(encoders[0])))
    else:
        sd.update(_prefixed("conditioner.embedders.0.transformer.", clip_to_original(encoders[0])))
        sd.update(_prefixed("conditioner.embedders.1.model.", openclip_to_original(encoders[1])))
    return sd


def _prefixed(prefix: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Prepend ``prefix`` to every key."""
    return {prefix + k: v for k, v in weights.items()}


def _rename(key: str, table: dict[str, str]) -> str:
    """Map a key through the longest matching module-prefix of ``table``."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in table:
            return ".".join([table[head], *parts[cut:]])
    raise KeyError(key)


def _unet_table(unet: UNet2DConditionModel) -> dict[str, str]:
    """diffusers module path -> LDM module path, for a UNet2DConditionModel."""
    cfg = unet.config
    per = int(cfg.layers_per_block) + 1  # LDM slots per level: resnets (+ downsampler) / up: resnets
    table = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2"}
    for i, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            table[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{1 + i * per + j}.0"
            if getattr(block, "attentions", None):
                table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{1 + i * per + j}.1"
        if block.downsamplers:
            table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{1 + i * per + per - 1}.0.op"
    for i, block in enumerate(unet.up_blocks):
        has_attention = bool(getattr(block, "attentions", None))
        for j in range(len(block.resnets)):
            table[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * per + j}.0"
            if has_attention:
                table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * per + j}.1"
        if block.upsamplers:
            slot = 2 if has_attention else 1
            table[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{i * per + per - 1}.{slot}.conv"
    return table


def unet_module_table(unet: UNet2DConditionModel) -> dict[str, str]:
    """diffusers module path -> LDM module path, including the renamed ResnetBlock2D internals."""
    table = _unet_table(unet)
    for diffusers_path, ldm_path in list(table.items()):
        if ".resnets." in diffusers_path:  # ResnetBlock2D internals are renamed too
            for inner, ldm_inner in _RESNET_UNET.items():
                table[f"{diffusers_path}.{inner}"] = f"{ldm_path}.{ldm_inner}"
    return table


def ldm_module_name(name: str, table: dict[str, str]) -> str | None:
    """The LDM path of a diffusers UNet module path (None if it has no LDM twin)."""
    try:
        return _rename(name + ".weight", table)[: -len(".weight")]
    except KeyError:
        return None


def unet_to_original(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights under LDM ``UNetModel`` keys (no prefix)."""
    table = unet_module_table(unet)
    return {_rename(key, table): value for key, value in unet.state_dict().items()}


def vae_to_original(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """AutoencoderKL weights under LDM ``AutoencoderKL`` keys (no prefix)."""
    levels = len(vae.config.block_out_channels)
    table = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for part in ("encoder", "decoder"):
        table[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        table[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        table[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    for i in range(levels):
        table[f"encoder.down_blocks.{i}.resnets"] = f"encoder.down.{i}.block"
        table[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        table[f"decoder.up_blocks.{i}.resnets"] = f"decoder.up.{levels - 1 - i}.block"
        table[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{levels - 1 - i}.upsample"
    out = {}
    for key, value in vae.state_dict().items():
        try:
            new = _rename(key, table)
        except KeyError:
            new = key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
        if ".mid.attn_1." in new:
            module, _, param = new.rpartition(".")
            head, _, leaf = module.partition(".mid.attn_1.")
            new = f"{head}.mid.attn_1.{_VAE_ATTN.get(leaf, leaf)}.{param}"
            if value.ndim == 2:  # linear -> 1x1 conv, as in real checkpoints
                value = value[:, :, None, None]
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out[new] = value
    return out


def _canonical_text_keys(encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """HF CLIP weights with the ``text_model.`` prefix (also for flat CLIPTextModel), no position_ids."""
    flat = not hasattr(encoder, "text_model")
    out = {}
    for key, value in encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if flat and not key.startswith("text_projection"):
            key = "text_model." + key
        out[key] = value
    return out


def clip_to_original(encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """CLIP-L weights as stored in SD1/SDXL files (transformers layout, ``text_model.*``)."""
    return _canonical_text_keys(encoder)


def openclip_to_original(encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """HF CLIP text weights in OpenCLIP layout (``transformer.resblocks.N.*`` etc.).

    q/k/v are concatenated into ``attn.in_proj_weight/bias``; ``text_projection``
    is stored ``[width, proj]`` (transposed from HF).  A model without a
    projection (SD2's CLIPTextModel) gets an identity ``text_projection`` so the
    file has every key a real SD2 checkpoint has (SD never uses it).
    """
    weights = _canonical_text_keys(encoder)
    out: dict[str, torch.Tensor] = {}
    layers = int(encoder.config.num_hidden_layers)
    for n in range(layers):
        src, dst = f"text_model.encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [weights.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")], dim=0)
        for key in [k for k in weights if k.startswith(src)]:
            module, _, param = key[len(src):].rpartition(".")
            out[f"{dst}{_OPENCLIP_LAYER[module]}.{param}"] = weights.pop(key)
    out["token_embedding.weight"] = weights.pop("text_model.embeddings.token_embedding.weight")
    out["positional_embedding"] = weights.pop("text_model.embeddings.position_embedding.weight")
    out["ln_final.weight"] = weights.pop("text_model.final_layer_norm.weight")
    out["ln_final.bias"] = weights.pop("text_model.final_layer_norm.bias")
    projection = weights.pop("text_projection.weight", None)
    if projection is not None:
        out["text_projection"] = projection.T.contiguous()
    else:
        width = out["ln_final.weight"].shape[0]
        out["text_projection"] = torch.eye(width, dtype=out["ln_final.weight"].dtype)
    if weights:
        raise ValueError(f"unmapped OpenCLIP text-encoder weights: {sorted(weights)[:5]}")
    return out


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, cloning any that share storage (safetensors refuses shared memory)."""
    seen: dict[int, int] = {}
    for value in sd.values():
        ptr = value.untyped_storage().data_ptr()
        seen[ptr] = seen.get(ptr, 0) + 1
    out = {}
    for key, value in sd.items():
        value = value.detach()
        shared = seen[value.untyped_storage().data_ptr()] > 1
        out[key] = value.clone().contiguous() if shared else value.contiguous()
    return out


def save_single_file(components: SDComponents, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Save in the original layout: ``.safetensors`` (with ``metadata``) or ``.ckpt``/``.pt``/``.pth``.

    Torch files are written as ``{"state_dict": sd}`` like real SD checkpoints
    (``metadata`` is not stored there).  Returns ``path``.
    """
    path = Path(path)
    sd = to_original_state_dict(components)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(_unshared(sd), str(path), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    elif suffix in (".ckpt", ".pt", ".pth"):
        torch.save({"state_dict": {k: v.detach().contiguous() for k, v in sd.items()}}, path)
    else:
        raise ValueError(f"cannot save '{path.name}': use a .safetensors or .ckpt file name")
    return path


def save_diffusers_folder(components: SDComponents, folder: Path) -> Path:
    """Save as a diffusers folder (``pipeline.save_pretrained``, safetensors). Returns ``folder``."""
    folder = Path(folder)
    pipe = components.diffusers_pipeline()
    if components.spec.family == "sd2" and not components.sd2_last_layer_dropped:
        # diffusers' convention for SD2: the encoder without its last layer (see SDComponents)
        pipe.text_encoder = _without_last_layer(pipe.text_encoder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _without_last_layer(encoder: torch.nn.Module) -> torch.nn.Module:
    import copy

    trimmed = copy.deepcopy(encoder)
    stack = trimmed.encoder if hasattr(trimmed, "encoder") else trimmed.text_model.encoder
    stack.layers = stack.layers[:-1]
    trimmed.config.num_hidden_layers -= 1
    return trimmed
