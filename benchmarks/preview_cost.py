"""Cost of live previews per sampling step: off vs "Approx cheap" vs "TAESD" vs "Full".

    .venv/bin/python benchmarks/preview_cost.py [--sizes 64,256] [--steps 10] [--repeats 5]

Runs txt2img on the tiny SD 1.x model on the CPU with a preview after every step (N=1); TAESD uses a
decoder with random weights in the official layout (same cost as the real one). For each size prints
the ms per step of the whole generation (best of the repeats, which run interleaved; the median too),
the ratio to previews off, the added ms per step, and the preview alone (one render of one latent, best
ms). The tiny model's U-Net and VAE are far cheaper than real ones, so the ratios here are upper bounds
for "Approx cheap"/"TAESD" and lower bounds for "Full"; the added ms per step of the first two carries
over to real models.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch  # noqa: E402

from webui.context import build_context  # noqa: E402
from webui.models.original_layout import save_single_file  # noqa: E402
from webui.models.tiny import build_tiny_components  # noqa: E402
from webui.pipeline.request import GenerationRequest  # noqa: E402
from webui.previews import PreviewRenderer  # noqa: E402
from webui.previews.taesd import build_decoder  # noqa: E402
from webui.settings import Settings  # noqa: E402

METHODS = {"off": {"show_progress_every_n_steps": 0}, "Approx cheap": {"show_progress_type": "Approx cheap"},
           "TAESD": {"show_progress_type": "TAESD"}, "Full": {"show_progress_type": "Full"}}


def _setup(root: Path):
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    save_single_file(build_tiny_components("sd1", seed=1), models / "Stable-diffusion" / "tiny.safetensors")
    (models / "VAE-approx").mkdir()
    torch.manual_seed(0)
    decoder = build_decoder()
    for p in decoder.parameters():
        torch.nn.init.normal_(p, std=0.05)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()},
              models / "VAE-approx" / "taesd_decoder.safetensors")
    settings = Settings(data_dir=root / "data", models_dir=models, disable_extensions=True, use_cpu=True)
    return build_context(settings, load_model=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"steps": args.steps, "every_n_steps": 1, "device": "cpu", "threads": args.threads, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = _setup(Path(tmp))
        model = ctx.models.current
        renderer = PreviewRenderer(ctx.settings.model_dir("VAE-approx"))
        for size in (int(s) for s in args.sizes.split(",")):
            base = dict(prompt="a red circle", steps=args.steps, width=size, height=size, seed=1,
                        sampler_name="Euler", save_images=False)
            ctx.generate(GenerationRequest(**base))  # warm-up
            row: dict = {name: {} for name in METHODS}
            times: dict[str, list[float]] = {name: [] for name in METHODS}
            for _ in range(args.repeats):  # interleaved, so load changes hit every method alike
                for name, opts in METHODS.items():
                    overrides = {"show_progress_every_n_steps": 1, **opts}
                    t = time.perf_counter()
                    ctx.generate(GenerationRequest(**base, override_settings=overrides))
                    times[name].append(time.perf_counter() - t)
            latent = torch.randn(1, 4, size // 8, size // 8)
            for name in METHODS:
                row[name]["ms_per_step"] = 1000 * min(times[name]) / args.steps
                row[name]["ms_per_step_median"] = 1000 * statistics.median(times[name]) / args.steps
                if name != "off":
                    renderer.render(name, latent, model)  # warm-up (TAESD: load)
                    one = []
                    for _ in range(max(args.repeats, 5)):
                        t = time.perf_counter()
                        renderer.render(name, latent, model)
                        one.append(time.perf_counter() - t)
                    row[name]["preview_ms"] = 1000 * min(one)
            off = row["off"]["ms_per_step"]
            for r in row.values():
                r["ratio_to_off"] = r["ms_per_step"] / off
                r["added_ms_per_step"] = r["ms_per_step"] - off
                r.update({k: round(v, 3) for k, v in r.items()})
            out["sizes"][f"{size}x{size}"] = row
            print(f"{size}x{size}: " + ", ".join(
                f"{n} {r['ms_per_step']:.1f} ms/step (x{r['ratio_to_off']:.2f}"
                + (f", preview {r['preview_ms']:.1f} ms" if "preview_ms" in r else "") + ")"
                for n, r in row.items()), file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
