"""Peak memory (device and host) per memory mode, beside plain diffusers with the same offload.

For each mode (none, medvram, lowvram) the product's pipeline runs one txt2img job; the same model is
then run as a plain diffusers pipeline with the matching offload (none, ``enable_model_cpu_offload``,
``enable_sequential_cpu_offload``). Reports peak CUDA memory allocated (``torch.cuda.max_memory_allocated``)
and the process's peak resident host memory. On a machine without CUDA only host memory is reported
(and the modes do nothing). Random-weight tiny models by default; ``--checkpoint`` measures a real file.

    python benchmarks/memory_modes.py --size 64 --steps 4
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from webui.context import build_context  # noqa: E402
from webui.models.original_layout import save_single_file  # noqa: E402
from webui.models.tiny import build_tiny_components  # noqa: E402
from webui.pipeline.request import GenerationRequest  # noqa: E402
from webui.settings import Settings  # noqa: E402


def peak_host_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_device() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_device_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="a real checkpoint file (default: tiny)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        (root / "Stable-diffusion").mkdir(parents=True)
        ckpt = args.checkpoint
        if ckpt is None:
            ckpt = save_single_file(build_tiny_components("sd1", seed=1),
                                    root / "Stable-diffusion" / "tiny.safetensors")
        req = GenerationRequest(prompt="a photo", steps=args.steps, width=args.size, height=args.size, seed=1,
                                sampler_name="Euler", save_images=False)
        print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}; {ckpt.name}, {args.size}x{args.size}, "
              f"{args.steps} steps. Host peak is cumulative (ru_maxrss) over the run.")
        for mode, offload in (("none", None), ("medvram", "enable_model_cpu_offload"),
                              ("lowvram", "enable_sequential_cpu_offload")):
            settings = Settings(data_dir=Path(tmp) / f"data-{mode}", models_dir=root, ckpt=ckpt,
                                disable_extensions=True, memory_mode=mode)
            ctx = build_context(settings, load_model=True)
            reset_device()
            ctx.generate(req)
            ours = peak_device_mb()
            pipe = ctx.models.current.components.diffusers_pipeline()
            ctx.models.unload()
            if offload and torch.cuda.is_available():
                getattr(pipe, offload)()
            elif torch.cuda.is_available():
                pipe.to("cuda")
            reset_device()
            pipe(prompt="a photo", num_inference_steps=args.steps, width=args.size, height=args.size,
                 guidance_scale=7.0)
            theirs = peak_device_mb()
            print(f"{mode:8s} ours {ours:9.1f} MB   diffusers ({offload or 'no offload'}) {theirs:9.1f} MB   "
                  f"host peak so far {peak_host_mb():8.1f} MB")
            del pipe, ctx


if __name__ == "__main__":
    main()
