"""LoRA keys of SD 3.x and FLUX.1 files, mapped onto the diffusers modules the model is loaded as.

LoRAs for these models name modules in three ways: kohya's sd-scripts use the original layouts
(``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_unet_single_blocks_3_linear1``,
``lora_unet_joint_blocks_0_x_block_attn_qkv``), diffusers / PEFT trainers (ai-toolkit, SimpleTuner) use
diffusers' names (``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``), and ComfyUI-style files the
original names with PEFT's parts (``diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight``).

The original layouts fuse what diffusers splits (q, k and v in one ``qkv``; FLUX.1's single blocks also the
MLP input in ``linear1``), so an original name maps to several modules, each taking its rows of the fused
weight change. Text encoders: kohya's ``lora_te1_`` is CLIP-L, ``lora_te2_`` CLIP-G (SD 3.x) or T5 (FLUX.1),
``lora_te3_`` SD 3.x's T5.
"""

from __future__ import annotations

#: original module name -> [(diffusers module name, first row, end row)] (rows None: the whole weight)
Targets = list[tuple[str, int | None, int | None]]

#: PEFT / diffusers key prefixes -> kohya prefixes
PEFT_PREFIXES = (("transformer.", "lora_unet_"), ("diffusion_model.", "lora_unet_"), ("unet.", "lora_unet_"),
                 ("text_encoder.", "lora_te1_"), ("text_encoder_2.", "lora_te2_"), ("text_encoder_3.", "lora_te3_"),
                 ("lora_transformer_", "lora_unet_"))


def kohya_key(key: str) -> str:
    """A module key in kohya's form: PEFT / diffusers prefixes replaced, dots as underscores."""
    for prefix, kohya in PEFT_PREFIXES:
        if key.startswith(prefix):
            return kohya + key[len(prefix):].replace(".", "_")
    return key


def _whole(name: str) -> Targets:
    return [(name, None, None)]


def _split(names: list[str], sizes: list[int]) -> Targets:
    out, start = [], 0
    for name, size in zip(names, sizes, strict=True):
        out.append((name, start, start + size))
        start += size
    return out


def flux_table(config) -> dict[str, Targets]:
    h = int(config.num_attention_heads) * int(config.attention_head_dim)
    table = {"img_in": _whole("x_embedder"), "txt_in": _whole("context_embedder"),
             "time_in.in_layer": _whole("time_text_embed.timestep_embedder.linear_1"),
             "time_in.out_layer": _whole("time_text_embed.timestep_embedder.linear_2"),
             "vector_in.in_layer": _whole("time_text_embed.text_embedder.linear_1"),
             "vector_in.out_layer": _whole("time_text_embed.text_embedder.linear_2"),
             "guidance_in.in_layer": _whole("time_text_embed.guidance_embedder.linear_1"),
             "guidance_in.out_layer": _whole("time_text_embed.guidance_embedder.linear_2"),
             "final_layer.linear": _whole("proj_out")}
    for i in range(int(config.num_layers)):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        table[b + "img_attn.qkv"] = _split([d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"], [h] * 3)
        table[b + "txt_attn.qkv"] = _split([d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"],
                                           [h] * 3)
        for old, new in (("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"),
                         ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
                         ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
                         ("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear")):
            table[b + old] = _whole(d + new)
    for i in range(int(config.num_single_layers)):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        table[b + "linear1"] = _split([d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"],
                                      [h, h, h, 4 * h])
        table[b + "linear2"] = _whole(d + "proj_out")
        table[b + "modulation.lin"] = _whole(d + "norm.linear")
    return table


def sd3_table(config) -> dict[str, Targets]:
    h = int(config.num_attention_heads) * int(config.attention_head_dim)
    table = {"x_embedder.proj": _whole("pos_embed.proj"), "context_embedder": _whole("context_embedder"),
             "t_embedder.mlp.0": _whole("time_text_embed.timestep_embedder.linear_1"),
             "t_embedder.mlp.2": _whole("time_text_embed.timestep_embedder.linear_2"),
             "y_embedder.mlp.0": _whole("time_text_embed.text_embedder.linear_1"),
             "y_embedder.mlp.2": _whole("time_text_embed.text_embedder.linear_2"),
             "final_layer.linear": _whole("proj_out")}
    n = int(config.num_layers)
    for i in range(n):
        x, c, d = f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block.", f"transformer_blocks.{i}."
        table[x + "attn.qkv"] = _split([d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"], [h] * 3)
        table[c + "attn.qkv"] = _split([d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"], [h] * 3)
        table[x + "attn.proj"] = _whole(d + "attn.to_out.0")
        table[x + "mlp.fc1"], table[x + "mlp.fc2"] = _whole(d + "ff.net.0.proj"), _whole(d + "ff.net.2")
        table[x + "adaLN_modulation.1"] = _whole(d + "norm1.linear")
        if i in tuple(config.dual_attention_layers or ()):
            table[x + "attn2.qkv"] = _split([d + "attn2.to_q", d + "attn2.to_k", d + "attn2.to_v"], [h] * 3)
            table[x + "attn2.proj"] = _whole(d + "attn2.to_out.0")
        if i < n - 1:  # the last context block only modulates (its halves are stored swapped: not mapped)
            table[c + "attn.proj"] = _whole(d + "attn.to_add_out")
            table[c + "mlp.fc1"], table[c + "mlp.fc2"] = _whole(d + "ff_context.net.0.proj"), _whole(
                d + "ff_context.net.2")
            table[c + "adaLN_modulation.1"] = _whole(d + "norm1_context.linear")
    return table


def original_table(components) -> dict[str, Targets]:
    """Original (BFL / Stability) module name -> the diffusers modules and rows it stands for."""
    config = components.unet.config
    return flux_table(config) if components.spec.family == "flux" else sd3_table(config)


def text_encoder_prefixes(components) -> list[tuple[str, object]]:
    """``(kohya prefix, encoder)`` of a flow model's text encoders."""
    encoders = list(components.text_encoders)
    if components.spec.family == "flux":
        pairs = [("lora_te1_", encoders[0])] + ([("lora_te2_", components.t5)] if components.t5 is not None else [])
    else:
        pairs = [("lora_te1_", encoders[0]), ("lora_te2_", encoders[1])]
        if components.t5 is not None:
            pairs.append(("lora_te3_", components.t5))
    return pairs
