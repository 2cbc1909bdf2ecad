"""The GPU check (issue 25, part B): correctness, memory per mode and speed of the real-size models on CUDA.

One run, meant to take under 8 minutes on one H100 / H200, prints one JSON object. Sections (each timed, each
failure recorded with its traceback's last lines instead of ending the run; a section that would start after
``--budget-s`` is skipped and listed):

- ``correctness``: SD 1.5 (512²) and SDXL (1024²) random-weight real-size files (``benchmarks/real_models.py``)
  in float16 and bfloat16 (``--precision bf16``): txt2img, img2img, inpainting and hires fix through the
  product's pipeline give finite, non-flat images (pixel standard deviation > 2 levels).
- ``vae_nan``: a VAE file whose decoder overflows in float16 (its first conv's weights x 3000), chosen with
  ``sd_vae``: the product's NaN fallback decodes again in float32 and the image is not black.
- ``upscaler``: RealESRGAN_x4plus-shaped RRDB (random weights, a ``.pth`` as downloaded) on a 512² picture in float16
  vs float32 through the product's upscaler: largest difference in levels (target <= 2).
- ``tiled_vae``: the real-size VAE (random weights with the residual branches scaled by 0.25, see
  ``real_models.py``) decoding a 1024² latent untiled vs tiled: mean / max difference in levels.
- ``controlnet``: a real-size SD 1.5 ControlNet (``ControlNetModel.from_unet``, saved in the original layout) in
  a request: finite, and different from the image without it.
- ``memory``: peak CUDA memory of one txt2img per mode (none / ``--medvram`` / ``--lowvram``) for SD 1.5 and
  SDXL, beside plain diffusers with none / ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload``.
- ``speed``: SD 1.5 512², 20 steps, CFG 7, end to end (s per image, median of ``--repeat``) and the U-Net step
  (batch 2) vs plain diffusers on the same file; the same with ``--opt-channelslast``, ``--compile`` and both
  (first generation = compile time; the picture's largest difference from the plain path), and ``--compile`` in a
  new process on the filled Inductor cache (a restart); SDXL 1024² U-Net step. Targets: 0.25 s per image, 8 ms
  per SD 1.5 step, 40 ms per SDXL step.

``--dry-run`` runs every section on this CPU with tiny models at 64² (SDXL 128²) and 2 steps, so the script is
checked before a GPU is lent; CUDA numbers are then null.

    .venv/bin/python benchmarks/gpu.py [--dry-run] [--sections correctness,memory,...] [--budget-s 450]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTIONS = ("correctness", "vae_nan", "upscaler", "tiled_vae", "controlnet", "memory", "speed")
PROMPT, NEGATIVE = "a photo of a red cube on a wooden table", "blurry, low quality"


@dataclass
class Plan:
    """What a run uses: real-size files on CUDA, or tiny ones on the CPU (``--dry-run``)."""

    dry: bool
    work: Path
    files: dict[str, Path]
    configs: dict[str, Path]
    size: dict[str, int]
    steps: int
    repeat: int

    @property
    def cuda(self) -> bool:
        return not self.dry and torch.cuda.is_available()


def make_plan(args) -> Plan:
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    files, configs = {}, {}
    if args.dry_run:
        from webui.models.original_layout import save_diffusers_folder, save_single_file
        from webui.models.tiny import build_tiny_components

        for kind, family in (("sd15", "sd1"), ("sdxl", "sdxl")):
            components = build_tiny_components(family, seed=1)
            files[kind] = save_single_file(components.to(dtype=torch.float16), work / f"{kind}-tiny.safetensors")
            configs[kind] = save_diffusers_folder(components.to(dtype=torch.float32), work / f"{kind}-config")
        return Plan(True, work, files, configs, {"sd15": 64, "sdxl": 128}, 2, 1)
    from real_models import write_diffusers_config, write_random_file

    for kind in ("sd15", "sdxl"):
        files[kind] = work / f"{kind}-random.safetensors"
        if not files[kind].exists():
            write_random_file(kind, files[kind])
        configs[kind] = write_diffusers_config(kind, work / f"{kind}-config")
    return Plan(False, work, files, configs, {"sd15": 512, "sdxl": 1024}, 20, args.repeat)


# --- helpers ------------------------------------------------------------------------------------------------
def models_root(plan: Plan, *kinds: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="models-", dir=plan.work))
    (root / "Stable-diffusion").mkdir()
    for kind in kinds:
        (root / "Stable-diffusion" / plan.files[kind].name).symlink_to(plan.files[kind])
    return root


def context(plan: Plan, root: Path, **settings):
    from webui.context import build_context
    from webui.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="data-", dir=plan.work))
    return build_context(Settings(data_dir=data, models_dir=root, use_cpu=plan.dry, disable_extensions=True,
                                  **settings), load_model=True)


def generate(ctx, **kw):
    from webui.pipeline.request import GenerationRequest

    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, seed=7, sampler_name="Euler", cfg_scale=7.0,
                save_images=False)
    return ctx.generate(GenerationRequest(**{**base, **kw}))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return times, out


def peak_cuda_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None


def reset_cuda() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def check(image: np.ndarray) -> dict:
    return {"std": round(float(image.std()), 1), "ok": bool(image.std() > 2.0)}


# --- sections -----------------------------------------------------------------------------------------------
def section_correctness(plan: Plan) -> dict:
    from PIL import Image

    out = {}
    for kind in ("sd15", "sdxl"):
        size = plan.size[kind]
        for precision in ("fp16", "bf16"):
            reset_cuda()
            ctx = context(plan, models_root(plan, kind), bf16=precision == "bf16")
            steps = max(2, plan.steps // 4)
            t2i = generate(ctx, width=size, height=size, steps=steps)
            init = t2i.images[0]
            mask = Image.new("L", (size, size), 0)
            mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
            runs = {"txt2img": t2i,
                    "img2img": generate(ctx, mode="img2img", init_images=(init,), denoising_strength=0.6,
                                        width=size, height=size, steps=steps),
                    "inpaint": generate(ctx, mode="img2img", init_images=(init,), mask=mask, denoising_strength=0.8,
                                        width=size, height=size, steps=steps),
                    "hires": generate(ctx, width=max(64, size // 2), height=max(64, size // 2), steps=steps,
                                      enable_hr=True,
                                      hr_scale=2.0, hr_upscaler="Latent", hr_second_pass_steps=steps,
                                      denoising_strength=0.5)}
            out[f"{kind}-{precision}"] = {
                **{mode: check(pixels(result)) for mode, result in runs.items()},
                "dtype": str(ctx.models.current.dtype).removeprefix("torch."), "peak_cuda_gb": peak_cuda_gb()}
            del ctx
    out["all_ok"] = all(v["ok"] for entry in out.values() if isinstance(entry, dict)
                        for v in entry.values() if isinstance(v, dict))
    return out


def section_vae_nan(plan: Plan) -> dict:
    from safetensors.torch import load_file, save_file

    root = models_root(plan, "sd15")
    prefix = "first_stage_model."
    checkpoint = load_file(str(plan.files["sd15"]))
    weights = {k[len(prefix):]: v.float() for k, v in checkpoint.items() if k.startswith(prefix)}
    weights["decoder.conv_in.weight"] *= 3000.0  # activations beyond float16's 65504 right after the first conv
    (root / "VAE").mkdir()
    save_file(weights, str(root / "VAE" / "overflow.safetensors"))
    ctx = context(plan, root)
    size = plan.size["sd15"]
    result = generate(ctx, width=size, height=size, override_settings={"sd_vae": "overflow.safetensors"})
    return {**check(pixels(result)), "infotext_vae": "VAE: overflow.safetensors" in result.infotexts[0],
            "vae_dtype_after": str(ctx.models.current.components.vae.dtype).removeprefix("torch."),
            "model_dtype": str(ctx.models.current.dtype).removeprefix("torch."), "fallback_expected": plan.cuda}


def section_upscaler(plan: Plan) -> dict:
    from PIL import Image

    from webui.upscaling.gan import RRDBNet, load_gan, upscale_tiled

    torch.manual_seed(0)
    net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=6 if plan.dry else 23, num_grow_ch=32, scale=4)
    path = plan.work / "RealESRGAN_x4plus-random.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    size = 64 if plan.dry else 512
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)).resize((size, size))
    device = torch.device("cuda" if plan.cuda else "cpu")
    results, times = {}, {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16 if plan.cuda else torch.bfloat16)):
        model = load_gan(path, device, dtype)
        t, image = timed(lambda model=model: upscale_tiled(model, picture, 0 if plan.cuda else 32, 8), 2)
        results[name], times[name] = np.asarray(image, dtype=np.int16), min(t)
    diff = np.abs(results["fp16"] - results["fp32"])
    return {"size": size, "max_diff_levels": int(diff.max()), "mean_diff_levels": round(float(diff.mean()), 3),
            "ok": bool(diff.max() <= 2) if plan.cuda else None, "s": {k: round(v, 3) for k, v in times.items()},
            "half_dtype": "float16" if plan.cuda else "bfloat16 (CPU dry run)"}


def section_tiled_vae(plan: Plan) -> dict:
    from webui.pipeline.vae import decode_to_pixels

    ctx = context(plan, models_root(plan, "sdxl"))
    model = ctx.models.current
    size = plan.size["sdxl"]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, size // 8, size // 8, generator=generator).to(model.device, model.dtype)
    with torch.no_grad():
        whole = decode_to_pixels(model, latents, tiled=False)
        tiled = decode_to_pixels(model, latents, tiled=True)
    diff = (whole - tiled).abs().float() * 255
    return {"size": size, "mean_diff_levels": round(float(diff.mean()), 3),
            "max_diff_levels": round(float(diff.max()), 1),
            "p99_diff_levels": round(float(np.quantile(diff.cpu().numpy(), 0.99)), 2),
            "dtype": str(model.components.vae.dtype).removeprefix("torch.")}


def section_controlnet(plan: Plan) -> dict:
    import base64
    import io

    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from webui.controlnet.models import controlnet_to_original
    from webui.models.loader import load_components

    root = models_root(plan, "sd15")
    cn = ControlNetModel.from_unet(load_components(plan.files["sd15"], dtype=torch.float16).unet)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained ControlNet's zero convolutions are not zero any more
        for name, param in cn.named_parameters():
            if name.startswith(("controlnet_down", "controlnet_mid", "controlnet_cond_embedding.conv_out")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    (root / "ControlNet").mkdir()
    save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in controlnet_to_original(cn).items()},
              str(root / "ControlNet" / "control_random_sd15.safetensors"))
    del cn
    ctx = context(plan, root)
    size = plan.size["sd15"]
    hint = np.zeros((size, size, 3), np.uint8)
    hint[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(hint).save(buffer, "PNG")
    unit = {"enabled": True, "module": "none", "model": "control_random_sd15", "weight": 1.0,
            "image": base64.b64encode(buffer.getvalue()).decode()}
    plain = pixels(generate(ctx, width=size, height=size))
    with_cn = pixels(generate(ctx, width=size, height=size, alwayson_scripts={"controlnet": {"args": [unit]}}))
    change = float(np.abs(with_cn - plain).mean())
    return {**check(with_cn), "mean_change_levels": round(change, 2), "changes_image": change > 0.5}


def _diffusers_pipe(plan: Plan, kind: str, dtype: torch.dtype):
    import diffusers

    cls = diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline
    diffusers.utils.logging.disable_progress_bar()
    pipe = cls.from_single_file(str(plan.files[kind]), config=str(plan.configs[kind]), local_files_only=True,
                                torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def section_memory(plan: Plan) -> dict:
    out = {}
    dtype = torch.float16 if plan.cuda else torch.float32
    device = "cuda" if plan.cuda else "cpu"
    for kind in ("sd15", "sdxl"):
        size = plan.size[kind]
        entry = {}
        for mode in ("none", "medvram", "lowvram"):
            reset_cuda()
            ctx = context(plan, models_root(plan, kind), memory_mode=mode)
            times, _ = timed(lambda ctx=ctx: generate(ctx, width=size, height=size, steps=4), 1)
            entry[mode] = {"peak_cuda_gb": peak_cuda_gb(), "s_per_image": round(times[0], 2)}
            del ctx
        for mode, offload in (("none", None), ("model_cpu_offload", "enable_model_cpu_offload"),
                              ("sequential_cpu_offload", "enable_sequential_cpu_offload")):
            reset_cuda()
            pipe = _diffusers_pipe(plan, kind, dtype)
            if offload is None or not plan.cuda:
                pipe.to(device)
            else:
                getattr(pipe, offload)()
            times, _ = timed(lambda pipe=pipe: pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size,
                                                    num_inference_steps=4, guidance_scale=7.0), 1)
            entry[f"diffusers_{mode}"] = {"peak_cuda_gb": peak_cuda_gb(), "s_per_image": round(times[0], 2)}
            del pipe
        out[kind] = entry
    return out


def _unet_step_ms(unet, kind: str, size: int, dtype: torch.dtype, device: str, repeat: int) -> float:
    latent = size // 8
    sample = torch.randn(2, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    context_dim = unet.config.cross_attention_dim
    states = torch.randn(2, 77, context_dim, device=device, dtype=dtype)
    kwargs = {}
    if kind == "sdxl":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
                                       "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device,
                                                                dtype=dtype)}
    t = torch.tensor([500.0] * 2, device=device)
    with torch.inference_mode():
        for _ in range(2):
            unet(sample, t, encoder_hidden_states=states, **kwargs)
        times, _ = timed(lambda: unet(sample, t, encoder_hidden_states=states, **kwargs), repeat)
    return round(statistics.median(times) * 1000, 2)


def section_speed(plan: Plan) -> dict:
    dtype = torch.float16 if plan.cuda else torch.float32
    device = "cuda" if plan.cuda else "cpu"
    out = {}
    size, steps = plan.size["sd15"], plan.steps
    reset_cuda()
    ctx = context(plan, models_root(plan, "sd15"))
    generate(ctx, width=size, height=size, steps=steps)  # warm-up (kernels, caches)
    ours, _ = timed(lambda c=ctx: generate(c, width=size, height=size, steps=steps), plan.repeat + 2)
    pipe = _diffusers_pipe(plan, "sd15", dtype).to(device)
    call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
                guidance_scale=7.0)
    pipe(**call)
    theirs, _ = timed(lambda: pipe(**call), plan.repeat + 2)
    unet_ours = _unet_step_ms(ctx.models.current.components.unet, "sd15", size, dtype, device, 10)
    unet_theirs = _unet_step_ms(pipe.unet, "sd15", size, dtype, device, 10)
    out["sd15"] = {"size": size, "steps": steps, "s_per_image": round(statistics.median(ours), 3),
                   "diffusers_s_per_image": round(statistics.median(theirs), 3),
                   "ratio": round(statistics.median(ours) / statistics.median(theirs), 3),
                   "unet_step_ms": unet_ours, "diffusers_unet_step_ms": unet_theirs,
                   "target_s_per_image": 0.25, "target_unet_step_ms": 8.0}
    del pipe
    # the opt-in speed-ups on the same file: channels-last, torch.compile (cold, then a new process on the cache)
    backend = "aot_eager" if plan.dry else "inductor"
    for name, kw in (("channels_last", {"channels_last": True}),
                     ("compile", {"compile": True, "compile_backend": backend}),
                     ("channels_last_compile", {"channels_last": True, "compile": True, "compile_backend": backend})):
        reset_cuda()
        fast = context(plan, models_root(plan, "sd15"), **kw)
        first, _ = timed(lambda c=fast: generate(c, width=size, height=size, steps=steps), 1)
        times, result = timed(lambda c=fast: generate(c, width=size, height=size, steps=steps), plan.repeat + 2)
        reference = pixels(generate(ctx, width=size, height=size, steps=steps))
        out["sd15"][name] = {"first_s": round(first[0], 2), "s_per_image": round(statistics.median(times), 3),
                             "unet_step_ms": _unet_step_ms(fast.models.current.components.unet, "sd15", size, dtype,
                                                           device, 10),
                             "max_diff_levels_vs_plain": int(np.abs(pixels(result) - reference).max())}
        del fast
    restart = subprocess.run([sys.executable, __file__, "--child-compile", str(plan.files["sd15"]), str(size),
                              str(steps), backend, *(["--dry-run"] if plan.dry else [])],
                             capture_output=True, text=True, timeout=600)
    lines = [line for line in restart.stdout.splitlines() if line.startswith("{")]
    out["sd15"]["compile_after_restart"] = json.loads(lines[-1]) if lines else {"error": restart.stderr[-400:]}
    del ctx
    reset_cuda()
    size = plan.size["sdxl"]
    ctx = context(plan, models_root(plan, "sdxl"))
    unet_ours = _unet_step_ms(ctx.models.current.components.unet, "sdxl", size, dtype, device, 5)
    del ctx
    reset_cuda()
    pipe = _diffusers_pipe(plan, "sdxl", dtype).to(device)
    out["sdxl"] = {"size": size, "unet_step_ms": unet_ours,
                   "diffusers_unet_step_ms": _unet_step_ms(pipe.unet, "sdxl", size, dtype, device, 5),
                   "target_unet_step_ms": 40.0}
    return out


def child_compile(file: Path, size: int, steps: int, backend: str, dry: bool) -> dict:
    """A new process with --compile on the Inductor cache the parent filled: the first generation's time."""
    work = Path(tempfile.mkdtemp(prefix="restart-"))
    plan = Plan(dry, work, {"sd15": file}, {}, {"sd15": size}, steps, 1)
    start = time.perf_counter()
    ctx = context(plan, models_root(plan, "sd15"), compile=True, compile_backend=backend)
    load = time.perf_counter() - start
    first, _ = timed(lambda: generate(ctx, width=size, height=size, steps=steps), 1)
    second, _ = timed(lambda: generate(ctx, width=size, height=size, steps=steps), 1)
    return {"load_s": round(load, 2), "first_s": round(first[0], 2), "second_s": round(second[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on this CPU: check the script")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no section after this many seconds")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="folder for the model files (default: a temp one)")
    parser.add_argument("--child-compile", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "gpu-bench-inductor"))
    if args.child_compile:
        file, size, steps, backend = args.child_compile
        print(json.dumps(child_compile(Path(file), int(size), int(steps), backend, args.dry_run)))
        return
    start = time.perf_counter()
    report: dict = {"dry_run": args.dry_run, "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run
                    else "cpu"}
    plan = make_plan(args)
    report["setup_s"] = round(time.perf_counter() - start, 1)
    for name in args.sections.split(","):
        if time.perf_counter() - start > args.budget_s:
            report.setdefault("skipped", []).append(name)
            continue
        began = time.perf_counter()
        try:
            report[name] = globals()[f"section_{name}"](plan)
        except Exception as exc:  # noqa: BLE001 - one section's failure is reported, the others still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                            "where": traceback.format_exc().strip().splitlines()[-6:]}
        report[name]["section_s"] = round(time.perf_counter() - began, 1)
        print(f"[gpu.py] {name} done in {report[name]['section_s']} s", file=sys.stderr, flush=True)
    report["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
