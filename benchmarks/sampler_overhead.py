"""Per-step overhead of our samplers vs the k-diffusion package on the same cheap denoiser.

    .venv/bin/python benchmarks/sampler_overhead.py [--steps 200] [--repeats 5]

The denoiser is the exact denoiser of a Gaussian (a few elementwise ops), so the time measured
is the samplers' own bookkeeping and update arithmetic. Prints JSON: median seconds per step
for both and the ratio ours / k-diffusion (target <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from tests.kdiffusion_oracle import TorchWithNoise, load  # noqa: E402
from tests.sampler_parity import KD_FUNCTIONS  # noqa: E402
from webui.models.components import scaled_linear_alphas_cumprod  # noqa: E402
from webui.pipeline.noise import ImageRNG  # noqa: E402
from webui.pipeline.sample import sample, sigmas_for  # noqa: E402
from webui.plugins import make_plugin_manager  # noqa: E402
from webui.sampling.denoiser import DiscreteSchedule  # noqa: E402
from webui.sampling.registry import SamplerRegistry  # noqa: E402

MU, S2 = 0.5, 0.09


def gaussian_denoiser(x, sigma):
    s = sigma.to(x.device).view(-1, 1, 1, 1)
    return (S2 * x + s**2 * MU) / (S2 + s**2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samplers", default="Euler,Euler a,Heun,DPM++ 2M,DPM++ 2M SDE,LMS,DPM2 a")
    args = ap.parse_args()
    ks, _ = load()
    hooks = make_plugin_manager(disable_extensions=True).hooks
    reg = SamplerRegistry(hooks.register_samplers(), hooks.register_schedules())
    ds = DiscreteSchedule(scaled_linear_alphas_cumprod())
    shape, seeds = (4, 64, 64), [1, 2]
    out = {"steps": args.steps, "latent": [2, *shape], "samplers": {}}
    for name in args.samplers.split(","):
        sampler, sched = reg.resolve(name, "Automatic")
        sigmas = sigmas_for(sampler, sched, args.steps, ds)
        fn = getattr(ks, KD_FUNCTIONS[name])
        params = {"eta": 1.0, "s_noise": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": float("inf")}

        def ours():
            rng = ImageRNG(shape, seeds, device=torch.device("cpu"))
            sample(sampler, gaussian_denoiser, ds, sigmas, rng, seeds, params=params, callback=lambda *a: None)

        def theirs():
            rng = ImageRNG(shape, seeds, device=torch.device("cpu"))
            x = rng.first() * sigmas[0]
            kw = dict(sampler.options)
            if sampler.brownian_noise:
                kw["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(),
                                                                 seed=seeds)
            elif sampler.uses_ensd:
                kw["noise_sampler"] = lambda s, sn: rng.next()
            orig = ks.torch
            ks.torch = TorchWithNoise(rng.next)
            try:
                fn(gaussian_denoiser, x, sigmas, disable=True, **kw)
            finally:
                ks.torch = orig

        times = {"ours": [], "k-diffusion": []}
        ours(), theirs()
        for _ in range(args.repeats):
            for label, f in (("ours", ours), ("k-diffusion", theirs)):
                t0 = time.perf_counter()
                f()
                times[label].append((time.perf_counter() - t0) / args.steps)
        o, k = statistics.median(times["ours"]), statistics.median(times["k-diffusion"])
        out["samplers"][name] = {"ours_ms_per_step": o * 1e3, "kdiffusion_ms_per_step": k * 1e3, "ratio": o / k}
    out["worst_ratio"] = max(v["ratio"] for v in out["samplers"].values())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
