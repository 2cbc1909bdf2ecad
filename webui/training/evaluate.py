"""``python -m webui.training.evaluate``: how well a checkpoint follows shapes prompts.

Generates every held-out prompt (combinations never seen in training, both
sizes) with a few seeds through the product's own pipeline (default sampler
DPM++ 2M, Automatic schedule, 20 steps, CFG 7, 64x64), reads each image back
with :mod:`webui.training.scoring` and prints per-attribute accuracy as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from webui.training import scoring, shapes

SAMPLER, SCHEDULER, STEPS, CFG = "DPM++ 2M", "Automatic", 20, 7.0
ATTRIBUTES = ("colour", "background", "shape", "position")


def evaluate(ctx, scenes: Iterable[shapes.Scene], seeds: Iterable[int], *, sampler: str = SAMPLER,
             steps: int = STEPS, cfg_scale: float = CFG, save_dir: Path | None = None,
             size: int = shapes.IMAGE_SIZE) -> dict:
    """Accuracy per attribute over ``scenes`` x ``seeds`` on ``ctx``'s loaded model, ``size`` pixels square."""
    from webui.pipeline.request import GenerationRequest

    totals = dict.fromkeys(ATTRIBUTES, 0)
    count, started, failures = 0, time.perf_counter(), []
    seeds = list(seeds)
    for scene in scenes:
        prompt = shapes.caption(scene)
        for seed in seeds:
            req = GenerationRequest(prompt=prompt, seed=seed, steps=steps, cfg_scale=cfg_scale, sampler_name=sampler,
                                    scheduler=SCHEDULER, width=size, height=size,
                                    save_images=False)
            image = ctx.generate(req).images[0]
            reading = scoring.read_image(image)
            result = scoring.score(scene, reading)
            for key, ok in result.items():
                totals[key] += ok
            count += 1
            if not all(result.values()):
                failures.append({"prompt": prompt, "seed": seed, "read": reading.__dict__})
            if save_dir is not None:
                save_dir.mkdir(parents=True, exist_ok=True)
                image.save(save_dir / f"{count:04d}-{seed}-{prompt.replace(' ', '_').replace(',', '')}.png")
    elapsed = time.perf_counter() - started
    return {"images": count, "size": size, "sampler": sampler, "steps": steps, "cfg_scale": cfg_scale,
            "accuracy": {k: round(v / max(1, count), 4) for k, v in totals.items()},
            "seconds_per_image": round(elapsed / max(1, count), 4), "failures": failures[:20]}


def context_for(checkpoint: Path, data_dir: Path):
    """An app context that serves ``checkpoint`` (no extensions, CPU unless CUDA is there)."""
    from webui.context import build_context
    from webui.settings import Settings

    settings = Settings(data_dir=data_dir, models_dir=data_dir / "models", ckpt=checkpoint, disable_extensions=True)
    return build_context(settings, load_model=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m webui.training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, nargs="?", help="checkpoint (default: the shipped default model)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (1000, 1001, ...)")
    p.add_argument("--sampler", default=SAMPLER)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--cfg-scale", type=float, default=CFG)
    p.add_argument("--save", type=Path, help="also save every image here")
    p.add_argument("--size", type=int, default=0, help="picture size (default: the checkpoint's native size)")
    p.add_argument("--limit", type=int, default=0,
                   help="only this many held-out prompts, a fixed random choice (0: all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from webui.models.default import default_checkpoint_path, native_size

    checkpoint = args.checkpoint or default_checkpoint_path()
    size = args.size or native_size(checkpoint)
    scenes = list(shapes.eval_scenes())
    if args.limit and args.limit < len(scenes):
        chosen = sorted(random.Random(0).sample(range(len(scenes)), args.limit))
        scenes = [scenes[i] for i in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context_for(checkpoint, Path(tmp))
        report = evaluate(ctx, scenes, range(1000, 1000 + args.seeds), sampler=args.sampler,
                          steps=args.steps, cfg_scale=args.cfg_scale, save_dir=args.save, size=size)
    report["checkpoint"] = str(checkpoint)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
