"""Per model family (tiny random models): seconds per image through our pipeline vs diffusers' own pipeline on
the same weights (same sigmas, Euler, CFG with a negative prompt), and single-file load time vs diffusers'
``from_single_file`` where diffusers can read the tiny file offline (SD 3: with a local config folder; FLUX.1:
diffusers' converter only takes the full 3072-wide model, so only our load time is given).

    .venv/bin/python benchmarks/families.py [--size 256] [--steps 8] [--repeat 3]

Prints one JSON object. Target (issue 21): ours <= 1.1x diffusers per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from conftest import make_settings
    from flow_models import save_flow_folder, save_flux_files, save_sd3_file, tiny_flux, tiny_sd3

    from webui.context import build_context
    from webui.jobs import Job
    from webui.models.flow_loader import ModuleChoice
    from webui.models.loader import load_components
    from webui.models.manager import CheckpointInfo, LoadedModel
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components
    from webui.pipeline.flow_model import pack_flux
    from webui.pipeline.generate import generate
    from webui.pipeline.noise import ImageRNG
    from webui.pipeline.request import GenerationRequest
    from webui.pipeline.sample import sigmas_for
    from webui.sampling.flow import flow_schedule, model_shift

    tmp = Path(tempfile.mkdtemp())
    ctx = build_context(make_settings(tmp / "data"), load_model=False)
    opts = ctx.options.current
    size, steps = args.size, args.steps
    results: dict[str, dict] = {}
    families = {"sd1": lambda: build_tiny_components("sd1"), "sdxl": lambda: build_tiny_components("sdxl"),
                "sd3": tiny_sd3, "flux-dev": tiny_flux}
    for name, build in families.items():
        c = build()
        model = LoadedModel(CheckpointInfo(Path("m.safetensors"), "m.safetensors"), "0" * 64, c,
                            torch.device("cpu"), torch.float32, 0.0)
        req = GenerationRequest(prompt="a red cube on a table", negative_prompt="blurry", steps=steps, width=size,
                                height=size, seed=1, sampler_name="Euler", scheduler="simple" if c.spec.is_flow
                                else "Automatic", cfg_scale=4.0, save_images=False)
        ours = _best(lambda: generate(ctx.pipeline_env(), model, req, Job(kind="txt2img"), opts), args.repeat)
        pipe = c.diffusers_pipeline()
        kw = dict(prompt=req.prompt, negative_prompt=req.negative_prompt, num_inference_steps=steps, height=size,
                  width=size, output_type="pil")
        if c.spec.is_flow:
            sampler, schedule = ctx.samplers.resolve("Euler", "simple")
            sigmas = sigmas_for(sampler, schedule, steps, flow_schedule(*model_shift(c.spec, size, size), "x"))
            noise = ImageRNG((16, size // 8, size // 8), [1], device=torch.device("cpu")).first()
            kw["sigmas"] = sigmas[:-1].tolist()
            if c.spec.family == "flux":
                kw.update(latents=pack_flux(noise), true_cfg_scale=4.0, guidance_scale=3.5)
            else:
                kw.update(latents=noise, guidance_scale=4.0)
        else:
            kw["guidance_scale"] = 4.0
        reference = _best(lambda: pipe(**kw), args.repeat)
        entry = {"ours_s_per_image": round(ours, 3), "diffusers_s_per_image": round(reference, 3),
                 "ratio": round(ours / reference, 3)}
        # single-file load
        if name == "sd3":
            path = save_sd3_file(c, tmp / "sd3.safetensors")
            folder = save_flow_folder(c, tmp / "sd3-folder")
            entry["load_ours_s"] = round(_best(lambda: load_components(path), args.repeat), 3)
            try:
                import diffusers

                entry["load_diffusers_s"] = round(_best(lambda: diffusers.SD3Transformer2DModel.from_single_file(
                    str(path), config=str(folder), subfolder="transformer", local_files_only=True), args.repeat), 3)
                entry["load_diffusers_note"] = "transformer only"
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                entry["load_diffusers_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        elif name == "flux-dev":
            paths = save_flux_files(c, tmp / "flux")
            choice = ModuleChoice((), (paths["vae"], paths["clip_l"], paths["t5"]))
            entry["load_ours_s"] = round(_best(lambda: load_components(paths["transformer"], modules=choice),
                                               args.repeat), 3)
        else:
            path = save_single_file(c, tmp / f"{name}.safetensors")
            entry["load_ours_s"] = round(_best(lambda: load_components(path), args.repeat), 3)
        results[name] = entry
    print(json.dumps({"size": size, "steps": steps, "families": results}, indent=2))


if __name__ == "__main__":
    main()
