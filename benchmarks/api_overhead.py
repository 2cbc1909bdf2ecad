"""API overhead: txt2img through the HTTP API vs a bare diffusers pipeline call, same tiny model.

    .venv/bin/python benchmarks/api_overhead.py [--repeats 15] [--steps 20] [--sizes 64,256]

Both run the same UNet/VAE/text encoder weights with the Euler sampler, CFG 7, batch 1.
The HTTP path includes request parsing, validation, the job queue, prompt encoding, sampling,
decoding, PNG encoding with infotext and base64 (save_images off, as A1111's API default).
Prints JSON with medians, spreads and the ratio; start-up time is measured separately by
benchmarks/startup.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import torch  # noqa: E402


def _timeit(fn, repeats: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sizes", default="64,256")
    args = ap.parse_args()

    from diffusers import EulerDiscreteScheduler

    from tests.live_server import LiveServer
    from webui.context import build_context
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components
    from webui.server import create_app
    from webui.settings import Settings

    tmp = Path(tempfile.mkdtemp())
    (tmp / "models" / "Stable-diffusion").mkdir(parents=True)
    save_single_file(build_tiny_components("sd1", seed=1), tmp / "models" / "Stable-diffusion" / "tiny.safetensors")
    ctx = build_context(Settings(data_dir=tmp, disable_extensions=True), load_model=True)
    comps = ctx.models.current.components
    pipe = comps.diffusers_pipeline()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    results = {"torch_threads": torch.get_num_threads(), "steps": args.steps, "runs": []}
    with LiveServer(create_app(ctx)) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
        for size in (int(s) for s in args.sizes.split(",")):
            payload = {"prompt": "a red circle on the left, blue background", "negative_prompt": "",
                       "steps": args.steps, "width": size, "height": size, "seed": 1, "sampler_name": "Euler",
                       "cfg_scale": 7}

            def api_call() -> None:
                r = client.post("/sdapi/v1/txt2img", json=payload)
                r.raise_for_status()

            def bare_call() -> None:
                g = torch.Generator("cpu").manual_seed(1)
                pipe(payload["prompt"], num_inference_steps=args.steps, width=size, height=size,
                     guidance_scale=7.0, generator=g, output_type="pil")

            # interleave to share machine noise
            api = _timeit(api_call, args.repeats)
            bare = _timeit(bare_call, args.repeats)
            results["runs"].append({
                "size": f"{size}x{size}", "api": api, "bare_diffusers": bare,
                "api_over_bare": api["median_s"] / bare["median_s"],
                "overhead_pct": 100 * (api["median_s"] / bare["median_s"] - 1),
            })
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
