"""Added time per sampling step of one and of two ControlNet units, relative to no ControlNet.

Runs the product's own pipeline (txt2img through the app context) on the tiny random-weight test
models, with ControlNets made from the tiny U-Net (``ControlNetModel.from_unet``, as real ControlNets
mirror their U-Net's encoder). Prints milliseconds per step and the ratio to no ControlNet.

    python benchmarks/controlnet_overhead.py --steps 20 --size 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import ControlNetModel  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from webui.context import build_context  # noqa: E402
from webui.controlnet.models import controlnet_to_original  # noqa: E402
from webui.models.original_layout import save_single_file  # noqa: E402
from webui.models.tiny import build_tiny_components  # noqa: E402
from webui.pipeline.request import GenerationRequest  # noqa: E402
from webui.settings import Settings  # noqa: E402


def build(root: Path) -> None:
    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "ControlNet").mkdir()
    comps = build_tiny_components("sd1", seed=1)
    save_single_file(comps, root / "Stable-diffusion" / "bench.safetensors")
    for name in ("cn_a", "cn_b"):
        cn = ControlNetModel.from_unet(comps.unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        save_file(controlnet_to_original(cn), root / "ControlNet" / f"{name}.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        build(root)
        size = args.size
        settings = Settings(data_dir=Path(tmp) / "data", models_dir=root, disable_extensions=True,
                            use_cpu=args.cpu or not torch.cuda.is_available())
        ctx = build_context(settings, load_model=True)
        image = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8))
        unit = {"module": "canny", "image": image}
        cases = {"none": [], "1 unit": [{**unit, "model": "cn_a"}],
                 "2 units": [{**unit, "model": "cn_a"}, {**unit, "model": "cn_b"}]}
        base = dict(prompt="a photo", steps=args.steps, width=size, height=size, seed=1, sampler_name="Euler",
                    save_images=False, cfg_scale=7.0)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats + 1):  # the first round warms up (and fills the preprocessor cache)
            for name, units in cases.items():
                req = GenerationRequest(**base, alwayson_scripts={"controlnet": {"args": units}} if units else {})
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                ctx.generate(req)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - t0) / args.steps)
        print(f"device: {ctx.device.description}; tiny models, {size}x{size}, {args.steps} steps, Euler, CFG 7")
        ref = statistics.median(times["none"][1:])
        for name, values in times.items():
            per_step = statistics.median(values[1:])
            added = (per_step - ref) * 1000
            print(f"{name:8s} {per_step * 1000:8.2f} ms/step  x{per_step / ref:.2f}  (+{added:.2f} ms)")


if __name__ == "__main__":
    main()
