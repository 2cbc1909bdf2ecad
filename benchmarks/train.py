"""LoRA training speed and memory: ours vs a plain diffusers + peft loop on the same model and pictures.

    .venv/bin/pip install peft            # the reference loop only; the product does not need it
    .venv/bin/python benchmarks/train.py [--steps 60] [--size 64] [--batch 4] [--memory-size 256]

Model: the built-in default model (SD 1.x layout). Both loops train a rank-8 LoRA on the U-Net's attention and
feed-forward layers (proj_in/out, to_q/k/v/out, ff) with AdamW, from the same cached latents, with the text
encoder frozen, batch ``--batch``, noise-prediction MSE at uniform timesteps; the reference follows diffusers'
``train_text_to_image_lora.py`` (``unet.add_adapter(LoraConfig)``, prompts encoded every step). Each
measurement runs in its own process; steps/s after two warm-up steps.

Memory: peak resident memory of the process (``ru_maxrss``; on a GPU also ``max_memory_allocated``) while
training at ``--memory-size`` with and without gradient checkpointing. Prints one JSON object.
Target (issue 22): ours >= 1.0x the reference's steps/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
TARGETS = ["proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def _pictures(folder: Path, count: int, size: int) -> None:
    import random

    from webui.training import shapes

    rng = random.Random(0)
    for i in range(count):
        scene = shapes.Scene(rng.choice(shapes.SHAPES), rng.choice(list(shapes.COLOURS)), "white",
                             rng.choice(list(shapes.POSITIONS)), rng.choice(list(shapes.SIZES)))
        shapes.render(scene, rng).resize((size, size)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(shapes.caption(scene, rng))


def _setup(size: int):
    """A temporary folder with 8 pictures and an application context on the built-in model."""
    from conftest import make_settings

    from webui.context import build_context

    tmp = Path(tempfile.mkdtemp())
    data = tmp / "pictures"
    data.mkdir()
    _pictures(data, 8, size)
    models = tmp / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    return tmp, data, build_context(make_settings(tmp / "data", models), load_model=True)


def _peak() -> dict:
    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_ours(args) -> dict:
    from webui.finetune.lora_train import LoraTrainParams, train_lora
    from webui.jobs import Job

    tmp, data, ctx = _setup(args.size)
    times: list[float] = []

    def on_step(step, loss, image=None):
        times.append(time.perf_counter())

    params = LoraTrainParams(output_name="bench", train_data_dir=str(data), network_dim=8, network_alpha=8,
                             learning_rate=1e-4, max_train_steps=args.steps, train_batch_size=args.batch,
                             resolution=args.size, gradient_checkpointing=args.checkpointing)
    train_lora(ctx.models.current, tmp / "Lora", params, Job(kind="bench"), log_root=tmp / "runs", on_step=on_step)
    return {"steps_per_s": round((len(times) - 3) / (times[-1] - times[2]), 3), **_peak()}


def run_peft(args) -> dict:
    import numpy as np
    import torch
    from peft import LoraConfig

    from webui.finetune.dataset import load_folder

    _, data, ctx = _setup(args.size)
    c = ctx.models.current.components
    unet, vae, text_encoder, tokenizer = c.unet, c.vae, c.text_encoders[0], c.tokenizers[0]
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=TARGETS))
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-2)
    dataset = load_folder(str(data), args.size, args.size)
    with torch.no_grad():
        latents = [vae.encode(torch.from_numpy(item.pixels.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None])
                   .latent_dist.mean[0] * c.vae_scaling_factor for item in dataset.items]
    alphas = c.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.steps):
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen).tolist()
        x0 = torch.stack([latents[i] for i in idx])
        ids = tokenizer([dataset.items[i].caption for i in idx], padding="max_length", max_length=77,
                        truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            context = text_encoder(ids)[0]
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return {"steps_per_s": round((len(times) - 3) / (times[-1] - times[2]), 3), **_peak()}


def _child(mode: str, args, size: int, checkpointing: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--batch", str(args.batch),
           "--size", str(size)] + (["--checkpointing"] if checkpointing else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--memory-size", type=int, default=256)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--child", choices=["ours", "peft"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps((run_ours if args.child == "ours" else run_peft)(args)))
        return
    speed = {mode: _child(mode, args, args.size, False) for mode in ("ours", "peft")}
    memory_args = argparse.Namespace(**{**vars(args), "steps": max(8, args.steps // 6)})
    memory = {f"{mode}{'_checkpointing' if ckpt else ''}": _child(mode, memory_args, args.memory_size, ckpt)
              for mode in ("ours", "peft") for ckpt in (False, True)}
    print(json.dumps({"size": args.size, "batch": args.batch, "steps": args.steps, "speed": speed,
                      "ours_over_peft": round(speed["ours"]["steps_per_s"] / speed["peft"]["steps_per_s"], 3),
                      "memory_size": args.memory_size, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
