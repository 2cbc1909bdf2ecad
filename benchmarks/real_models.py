"""Real-size SD 1.5 and SDXL checkpoints with random weights, written exactly as users download them.

One fp16 ``.safetensors`` file in the original (CompVis / SGM) layout: ``model.diffusion_model.*``,
``first_stage_model.*`` and the text encoder(s) under their original keys. The architectures are the published
ones (SD 1.5: U-Net 860 M, CLIP ViT-L/14; SDXL: U-Net 2.6 B, CLIP ViT-L/14 + OpenCLIP ViT-bigG/14); only the
values are random, which does not change the speed or memory of loading and running them.

The modules are built on the meta device (no memory), their weights are renamed to the original layout by the
product's own writer (:func:`webui.models.original_layout.to_original_state_dict`, whose inverse the loader and
diffusers' ``from_single_file`` both accept: ``tests/test_models_loading.py``), and each tensor is generated and
written one at a time, so building the 6.9 GB SDXL file needs a few hundred MB of RAM.

Values (stated because the GPU checks depend on them staying finite in fp16): every weight of 2 or more
dimensions is normal with standard deviation ``gain / sqrt(fan_in)`` (``fan_in`` = product of the trailing
dimensions), with ``gain`` 1, except the layers that write into a residual stream (a resnet's second conv, an
attention's output projection, a feed-forward's output, a transformer block's ``proj_out``), whose gain is
``RESIDUAL_GAIN`` = 0.25 so activations do not grow with depth; 1-D ``weight`` tensors (norm scales) are 1, 1-D
biases are normal with standard deviation 0.01. Each tensor's values come from its own generator seeded with the
file's seed and the tensor's name, so a file is the same on every machine.

    .venv/bin/python benchmarks/real_models.py sd15 /path/to/sd15-random.safetensors [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from pathlib import Path

import torch

RESIDUAL_GAIN = 0.25
_RESIDUAL_SUFFIXES = ("out_layers.3.weight", "attn1.to_out.0.weight", "attn2.to_out.0.weight", "ff.net.2.weight",
                      "proj_out.weight", "mlp.fc2.weight", "mlp.c_proj.weight", "self_attn.out_proj.weight",
                      "attn.out_proj.weight", "conv2.weight")
_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.int64: "I64", torch.bfloat16: "BF16"}

SD15_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, attention_head_dim=8,
                 cross_attention_dim=768, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, use_linear_projection=False,
                 sample_size=64)
SDXL_UNET = dict(block_out_channels=[320, 640, 1280], layers_per_block=2, attention_head_dim=[5, 10, 20],
                 cross_attention_dim=2048, down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2,
                 up_block_types=["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"], use_linear_projection=True,
                 transformer_layers_per_block=[1, 2, 10], addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128)
VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
# (width, layers, feed-forward width, heads, activation, projection) of CLIP ViT-L/14 and OpenCLIP ViT-bigG/14
TEXT = {"L": (768, 12, 3072, 12, "quick_gelu", 768), "G": (1280, 32, 5120, 20, "gelu", 1280)}
FAMILIES = {"sd15": "sd1", "sdxl": "sdxl"}


def meta_components(kind: str):
    """The real architecture of ``kind`` ("sd15" or "sdxl") as weightless modules."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from webui.models.components import SDComponents
    from webui.models.spec import ModelSpec

    def text(name, cls):
        width, layers, inner, heads, act, proj = TEXT[name]
        return cls(CLIPTextConfig(hidden_size=width, num_hidden_layers=layers, intermediate_size=inner,
                                  num_attention_heads=heads, hidden_act=act, projection_dim=proj,
                                  vocab_size=49408, max_position_embeddings=77))

    with init_empty_weights():
        if kind == "sd15":
            unet, encoders = UNet2DConditionModel(**SD15_UNET), [text("L", CLIPTextModel)]
        elif kind == "sdxl":
            unet = UNet2DConditionModel(**SDXL_UNET)
            encoders = [text("L", CLIPTextModel), text("G", CLIPTextModelWithProjection)]
        else:
            raise ValueError(f"kind must be one of {sorted(FAMILIES)}, not {kind!r}")
        vae = AutoencoderKL(**VAE)
    return SDComponents(ModelSpec(FAMILIES[kind]), unet, vae, encoders, [], torch.zeros(1000), 0.0)


def random_value(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The tensor ``name`` of a random real-size file (see the module docstring for the distribution)."""
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if len(shape) == 0:
        return torch.ones((), dtype=dtype)
    if len(shape) == 1:
        if name.endswith("weight"):
            return torch.ones(shape, dtype=dtype)
        return (torch.randn(shape, generator=generator) * 0.01).to(dtype)
    fan_in = math.prod(shape[1:])
    gain = RESIDUAL_GAIN if name.endswith(_RESIDUAL_SUFFIXES) else 1.0
    return (torch.randn(shape, generator=generator) * (gain / math.sqrt(fan_in))).to(dtype)


def write_random_file(kind: str, path: Path, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Write the random real-size ``kind`` checkpoint to ``path`` (a ``.safetensors``), one tensor at a time."""
    from webui.models.original_layout import to_original_state_dict

    shapes = {k: (tuple(v.shape), torch.int64 if k.endswith("position_ids") else dtype)
              for k, v in to_original_state_dict(meta_components(kind)).items()}
    header, offset = {}, 0
    for name in sorted(shapes):
        shape, kind_dtype = shapes[name]
        size = math.prod(shape) * kind_dtype.itemsize
        header[name] = {"dtype": _DTYPES[kind_dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "modelspec.title": f"random real-size {kind} (benchmark)",
                              "random_seed": str(seed)}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little"))
        handle.write(blob)
        for name in sorted(shapes):
            shape, kind_dtype = shapes[name]
            value = random_value(name, shape, kind_dtype, seed)
            handle.write(value.contiguous().view(torch.uint8).numpy().tobytes())
    partial.replace(path)
    return path


def write_diffusers_config(kind: str, folder: Path) -> Path:
    """A diffusers folder with configs, tokenizers and scheduler but no weights: what ``from_single_file(...,
    config=folder, local_files_only=True)`` needs to read the single file offline."""
    import shutil

    from webui.models.components import shipped_tokenizers

    folder = Path(folder)
    components = meta_components(kind)
    sdxl = kind == "sdxl"
    components.unet.save_config(folder / "unet")
    vae_config = dict(components.vae.config)
    vae_config.update(scaling_factor=0.13025 if sdxl else 0.18215, sample_size=1024 if sdxl else 512)
    (folder / "vae").mkdir(parents=True, exist_ok=True)
    (folder / "vae" / "config.json").write_text(json.dumps(vae_config, indent=1))
    names = ["text_encoder", "text_encoder_2"][: len(components.text_encoders)]
    for name, encoder, tokenizer in zip(names, components.text_encoders, shipped_tokenizers(FAMILIES[kind]),
                                        strict=False):
        encoder.config.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name.replace("text_encoder", "tokenizer"))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
        "timestep_spacing": "leading", "steps_offset": 1}))
    index = {"_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
             "_diffusers_version": "0.36.0", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    shutil.rmtree(folder / "unet" / "__pycache__", ignore_errors=True)
    return folder


def main() -> None:
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(FAMILIES))
    parser.add_argument("path", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    write_random_file(args.kind, args.path, seed=args.seed)
    print(f"wrote {args.path} ({args.path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
