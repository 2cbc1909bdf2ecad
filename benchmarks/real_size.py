"""Real-size SD 1.5 and SDXL on this CPU (issue 25, part A): loading, switching, generating, SDXL memory modes.

The checkpoints are the real architectures with random weights (``benchmarks/real_models.py``), one fp16
``.safetensors`` each in the original layout, as users download them (2.13 GB and 6.94 GB), written once to
``--cache`` (default ``~/.cache/webui-bench``; never into the repository). Every measurement runs in a process of
its own (peak RSS is the process's ``ru_maxrss``; ``baseline`` is its RSS before the model, i.e. Python, torch and
the libraries), after the file was read once so both sides find it in the page cache.

- ``load``: the product's loader vs diffusers' ``from_single_file`` (``config=`` a local folder of configs and
  tokenizers), alternating, ``--repeat`` times each: float16 (what a GPU keeps; the file's own dtype: memory-mapped,
  no copy) and float32 (what the CPU computes in); ``touch_s`` reads every weight once after the load (a
  memory-mapped load defers the reading to first use). SDXL float32 is left out by default (~14 GB each side).
- ``switch``: A -> B -> A -> ... (11 loads) between two SD 1.5 files with ``sd_checkpoint_cache`` 0 (A1111's
  default: each switch reads the file), 1 and 2 (float32): seconds and RSS after each switch.
- ``generate``: SD 1.5 at ``--size`` (512), ``--steps`` Euler steps, CFG 7 with a negative prompt, through the
  HTTP API (``POST /sdapi/v1/txt2img`` on the real app, PNG and base64 included) vs a plain diffusers
  ``StableDiffusionPipeline`` on the same file in the same process with the same sigmas and starting noise,
  alternating; ratio of the medians. Also the two images' difference, and that ours is finite and not flat.
- ``sdxl``: SDXL at 1024², 1 step, through the API, with ``--medvram``, ``--lowvram`` and no flag (float32 weights;
  run last, and only when enough memory is free): peak RSS and seconds.

    .venv/bin/python benchmarks/real_size.py [--parts load,switch,generate,sdxl] [--steps 4] [--repeat 2]

Prints one JSON object. Targets (issue 25): load time <= diffusers', peak RSS <= 1.3 x the file size (float16);
switching flat; generation ratio <= 1.05; SDXL 1024² fits in 24 GB with --medvram / --lowvram.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
GB = 1e9
PROMPT, NEGATIVE = "a photo of a red cube on a wooden table", "blurry, low quality"


def rss_gb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GB
    return 0.0


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def available_gb() -> float:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GB
    return 0.0


def warm(path: Path) -> None:
    """Read the file once so every measurement finds it in the page cache."""
    with open(path, "rb") as handle:
        while handle.read(1 << 26):
            pass


def child(args: list[str], timeout: float = 3600) -> dict:
    """Run ``real_size.py --child ...`` and return the JSON it prints last."""
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}"}
    return json.loads(lines[-1])


# --- children -----------------------------------------------------------------------------------------------
def _settings(models: Path, data: Path, **kw):
    from webui.settings import Settings

    return Settings(data_dir=data, models_dir=models, use_cpu=True, disable_extensions=True, **kw)


def _models_folder(*files: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="real-size-models-"))
    (root / "Stable-diffusion").mkdir()
    for file in files:
        (root / "Stable-diffusion" / file.name).symlink_to(file)
    return root


def child_load(impl: str, file: Path, dtype_name: str, config: Path) -> dict:
    import torch

    dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    if impl == "ours":
        from webui.models.loader import load_components

        baseline = rss_gb()
        start = time.perf_counter()
        modules = load_components(file, dtype=dtype).modules()
    else:
        import diffusers

        cls = diffusers.StableDiffusionXLPipeline if "sdxl" in file.name else diffusers.StableDiffusionPipeline
        diffusers.utils.logging.disable_progress_bar()
        baseline = rss_gb()
        start = time.perf_counter()
        pipe = cls.from_single_file(str(file), config=str(config), local_files_only=True, torch_dtype=dtype)
        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    seconds = time.perf_counter() - start
    after_load = peak_gb()
    start = time.perf_counter()
    with torch.no_grad():
        total = sum(float(p.float().sum()) for m in modules for p in m.parameters())
    return {"load_s": round(seconds, 2), "touch_s": round(time.perf_counter() - start, 2),
            "peak_gb_after_load": round(after_load, 2), "peak_gb": round(peak_gb(), 2),
            "baseline_gb": round(baseline, 2), "finite": bool(total == total)}


def child_switch(files: list[Path], cache: int) -> dict:
    from webui.context import build_context

    ctx = build_context(_settings(_models_folder(*files), Path(tempfile.mkdtemp())), load_model=False)
    ctx.options.update({"sd_checkpoint_cache": cache})
    names = [f.name for f in files]
    steps = []
    for name in [names[0], names[1]] * 5 + [names[0]]:
        start = time.perf_counter()
        ctx.models.ensure_loaded(name)
        steps.append({"to": name, "s": round(time.perf_counter() - start, 2), "rss_gb": round(rss_gb(), 2)})
    return {"cache": cache, "switches": steps, "peak_gb": round(peak_gb(), 2)}


def _api(settings):
    from fastapi.testclient import TestClient

    from webui.context import build_context
    from webui.server import create_app

    ctx = build_context(settings, load_model=True)
    return ctx, TestClient(create_app(ctx))


def _decode(b64: str):
    import base64
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def child_generate(file: Path, config: Path, size: int, steps: int, repeat: int) -> dict:
    import diffusers
    import numpy as np
    import torch

    from webui.pipeline.noise import ImageRNG
    from webui.pipeline.sample import sigmas_for
    from webui.sampling.denoiser import DiscreteSchedule

    ctx, client = _api(_settings(_models_folder(file), Path(tempfile.mkdtemp()), nowebui=True))
    payload = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps, "width": size, "height": size,
               "seed": 7, "sampler_name": "Euler", "scheduler": "Automatic", "cfg_scale": 7, "save_images": False}
    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.StableDiffusionPipeline.from_single_file(str(file), config=str(config), local_files_only=True,
                                                              torch_dtype=torch.float32)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    components = ctx.models.current.components
    sampler, schedule = ctx.samplers.resolve("Euler", "Automatic")
    sigmas = sigmas_for(sampler, schedule, steps, DiscreteSchedule(components.alphas_cumprod))
    noise = ImageRNG((4, size // 8, size // 8), [7], device=torch.device("cpu")).first()

    def ours():
        response = client.post("/sdapi/v1/txt2img", json=payload)
        response.raise_for_status()
        return _decode(response.json()["images"][0])

    def theirs():
        image = pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, guidance_scale=7.0,
                     sigmas=sigmas.tolist(), num_inference_steps=steps, latents=noise.clone(),
                     output_type="np").images[0]  # all sigmas with the final 0: `steps` U-Net calls, as ours
        return np.round(image * 255).astype(np.int16)

    times = {"ours": [], "diffusers": []}
    images = {"ours": ours(), "diffusers": theirs()}  # warm-up: first-call costs are not per image
    for _ in range(repeat):
        for name, fn in (("ours", ours), ("diffusers", theirs)):
            start = time.perf_counter()
            images[name] = fn()
            times[name].append(time.perf_counter() - start)
    a, b = images["ours"], images["diffusers"]
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"size": size, "steps": steps, "ours_s": [round(t, 2) for t in times["ours"]],
            "diffusers_s": [round(t, 2) for t in times["diffusers"]],
            "ratio": round(median["ours"] / median["diffusers"], 3),
            "ours_std": round(float(a.std()), 1), "ours_finite": bool(np.isfinite(a).all()),
            "diff_mean_levels": round(float(np.abs(a - b).mean()), 2), "diff_max_levels": int(np.abs(a - b).max()),
            "peak_gb": round(peak_gb(), 2)}


def child_sdxl(file: Path, mode: str, size: int) -> dict:
    ctx, client = _api(_settings(_models_folder(file), Path(tempfile.mkdtemp()), nowebui=True, memory_mode=mode))
    after_load, loaded_rss = peak_gb(), rss_gb()
    start = time.perf_counter()
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 1, "width": size, "height": size, "seed": 7,
        "sampler_name": "Euler", "cfg_scale": 7, "save_images": False})
    seconds = time.perf_counter() - start
    out = {"mode": mode, "status": response.status_code, "s_per_image": round(seconds, 1),
           "rss_gb_after_load": round(loaded_rss, 2), "peak_gb_load": round(after_load, 2),
           "peak_gb": round(peak_gb(), 2)}
    if response.status_code == 200:
        image = _decode(response.json()["images"][0])
        out.update(image_std=round(float(image.std()), 1), shape=list(image.shape))
    return out


# --- parent -------------------------------------------------------------------------------------------------
def ensure_files(cache: Path) -> dict[str, Path]:
    from real_models import write_diffusers_config, write_random_file

    wanted = {"sd15-a": ("sd15", 0), "sd15-b": ("sd15", 1), "sdxl": ("sdxl", 0)}
    paths = {}
    for name, (kind, seed) in wanted.items():
        path = cache / f"{name}.safetensors"
        if not path.exists():
            print(f"writing {path} ...", file=sys.stderr)
            write_random_file(kind, path, seed=seed)
        paths[name] = path
    for kind in ("sd15", "sdxl"):
        if not (cache / f"{kind}-config" / "model_index.json").exists():
            write_diffusers_config(kind, cache / f"{kind}-config")
        paths[f"{kind}-config"] = cache / f"{kind}-config"
    return paths


def part_load(paths: dict, repeat: int, sdxl_fp32: bool) -> dict:
    out = {}
    cases = [("sd15-a", "sd15", "fp16"), ("sd15-a", "sd15", "fp32"), ("sdxl", "sdxl", "fp16")]
    if sdxl_fp32:
        cases.append(("sdxl", "sdxl", "fp32"))
    for name, kind, dtype in cases:
        file = paths[name]
        runs = {"ours": [], "diffusers": []}
        for _ in range(repeat):
            for impl in runs:
                warm(file)
                runs[impl].append(child(["load", impl, str(file), dtype, str(paths[f"{kind}-config"])]))
        entry = {"file_gb": round(file.stat().st_size / GB, 2)}
        for impl, results in runs.items():
            good = [r for r in results if "error" not in r]
            if not good:
                entry[impl] = results[0]
                continue
            entry[impl] = {"load_s": min(r["load_s"] for r in good),
                           "load_plus_touch_s": round(min(r["load_s"] + r["touch_s"] for r in good), 2),
                           "peak_gb": max(r["peak_gb"] for r in good), "baseline_gb": good[0]["baseline_gb"]}
            entry[impl]["peak_over_file"] = round((entry[impl]["peak_gb"] - entry[impl]["baseline_gb"])
                                                  / entry["file_gb"], 2)
        out[f"{kind}-{dtype}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "webui-bench")
    parser.add_argument("--parts", default="load,switch,generate,sdxl")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--sdxl-size", type=int, default=1024)
    parser.add_argument("--sdxl-fp32-load", action="store_true", help="also compare float32 SDXL loads (~14 GB)")
    parser.add_argument("--sdxl-modes", default="medvram,lowvram,none")
    args = parser.parse_args()
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        if kind == "load":
            result = child_load(rest[0], Path(rest[1]), rest[2], Path(rest[3]))
        elif kind == "switch":
            result = child_switch([Path(rest[0]), Path(rest[1])], int(rest[2]))
        elif kind == "generate":
            result = child_generate(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))
        else:
            result = child_sdxl(Path(rest[0]), rest[1], int(rest[2]))
        print(json.dumps(result))
        return

    paths = ensure_files(args.cache)
    parts = set(args.parts.split(","))
    report: dict = {"cpu_threads": os.cpu_count(), "files_gb": {k: round(v.stat().st_size / GB, 2)
                                                                for k, v in paths.items() if v.is_file()}}
    if "load" in parts:
        report["load"] = part_load(paths, args.repeat, args.sdxl_fp32_load)
    if "switch" in parts:
        report["switch"] = [child(["switch", str(paths["sd15-a"]), str(paths["sd15-b"]), str(cache)])
                            for cache in (0, 1, 2)]
    if "generate" in parts:
        warm(paths["sd15-a"])
        report["generate"] = child(["generate", str(paths["sd15-a"]), str(paths["sd15-config"]), str(args.size),
                                    str(args.steps), str(args.repeat)])
    if "sdxl" in parts:
        report["sdxl"] = []
        for mode in args.sdxl_modes.split(","):
            need = 20.0 if mode == "none" else 12.0
            if available_gb() < need:
                report["sdxl"].append({"mode": mode, "skipped": f"{available_gb():.1f} GB available, {need} wanted"})
                continue
            warm(paths["sdxl"])
            report["sdxl"].append(child(["sdxl", str(paths["sdxl"]), mode, str(args.sdxl_size)]))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
