"""``python -m webui.training``: train the default model (resumable), then export it.

Example (the first of the six stages that made the shipped model; ``tools/make_default_model.sh`` runs all)::

    python -m webui.training --out runs/shapes --until 4000 --export runs/shapes-64.safetensors

Run it again with the same ``--out`` to resume after an interruption.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from webui.training.loop import Progress, TrainConfig, Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m webui.training", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the resumable training state")
    p.add_argument("--export", type=Path, help="write the finished model here (.safetensors, float16)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--image-size", type=int, default=defaults.image_size,
                   help="side of the training pictures in pixels, a multiple of 8 (the latents are 1/8 of it)")
    p.add_argument("--init-from", type=Path,
                   help="start from this checkpoint's weights (same architecture) instead of training a VAE")
    p.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    p.add_argument("--decoder-steps", type=int, default=defaults.decoder_steps)
    p.add_argument("--steps", type=int, default=defaults.unet_steps, help="diffusion (U-Net) steps")
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--layout-from", type=int, default=defaults.layout_from,
                   help="diffusion step where the layout stage starts")
    p.add_argument("--layout-fraction", type=float, default=defaults.layout_fraction,
                   help="share of each layout-stage batch drawn from the high-noise band")
    p.add_argument("--class-fraction", type=float, default=defaults.class_fraction,
                   help="share of each diffusion batch drawn from pictures named by --class-words (the confused "
                        "classes)")
    p.add_argument("--class-words", default=",".join(defaults.class_words),
                   help="comma-separated caption words of those pictures; an entry of several words (\"small "
                        "square\") picks captions holding all of them")
    p.add_argument("--class-t", default=f"{defaults.class_t_min}:{defaults.class_t_max}",
                   help="MIN:MAX, the band of timesteps those pictures are trained at")
    p.add_argument("--multires-levels", type=int, default=defaults.multires_noise_levels,
                   help="coarser noise levels added to the white noise (each half the size of the last)")
    p.add_argument("--latent-samples", type=int, default=defaults.latent_samples)
    p.add_argument("--save-every", type=int, default=defaults.save_every)
    p.add_argument("--until", type=int,
                   help="stop the diffusion phase at this step and export its EMA weights (stays resumable)")
    p.add_argument("--no-train", action="store_true",
                   help="only export the current state (with --export), even an unfinished diffusion phase")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_size < 32 or args.image_size % 8:
        raise SystemExit(f"--image-size must be a multiple of 8 and at least 32, not {args.image_size}")
    if args.init_from is not None and not args.init_from.is_file():
        raise SystemExit(f"--init-from: no such checkpoint file: {args.init_from}")
    class_words = tuple(w.strip() for w in args.class_words.split(",") if w.strip())
    try:
        class_t_min, class_t_max = (int(v) for v in args.class_t.split(":"))
    except ValueError:
        raise SystemExit(f"--class-t must be MIN:MAX (two whole numbers), not {args.class_t!r}") from None
    if not class_words:
        raise SystemExit("--class-words names no word")
    try:  # TrainConfig checks the band
        config = TrainConfig(seed=args.seed, image_size=args.image_size,
                             init_from=str(args.init_from) if args.init_from else "", vae_steps=args.vae_steps,
                             decoder_steps=args.decoder_steps, unet_steps=args.steps, batch=args.batch, lr=args.lr,
                             warmup=args.warmup, layout_from=args.layout_from, layout_fraction=args.layout_fraction,
                             multires_noise_levels=args.multires_levels,
                             class_fraction=args.class_fraction, class_words=class_words, class_t_min=class_t_min,
                             class_t_max=class_t_max, latent_samples=args.latent_samples,
                             save_every=args.save_every)
    except ValueError as error:
        raise SystemExit(f"--class-t {args.class_t!r}: {error}") from None
    trainer = Trainer(config, args.out)
    trainer.load()
    bars: dict[str, tqdm] = {}
    started = {"time": time.perf_counter(), "phase": trainer.phase, "step": trainer.step}

    def progress(p: Progress) -> None:
        if p.phase not in bars:
            for bar in bars.values():
                bar.close()
            bars[p.phase] = tqdm(total=p.total, initial=p.step - 1, desc=p.phase, unit="step", dynamic_ncols=True)
        bar = bars[p.phase]
        bar.update(1)
        bar.set_postfix(loss=f"{p.loss:.4f}")

    if args.no_train:
        if not args.export:
            raise SystemExit("--no-train needs --export")
        path = trainer.export(args.export, partial=True)
        logging.info("Exported %s at %s step %d", path, trainer.phase, trainer.step)
        return 0
    trainer.run(progress, until=args.until)
    for bar in bars.values():
        bar.close()
    elapsed = time.perf_counter() - started["time"]
    logging.info("Training finished in %.0f s (phase %s, step %d)", elapsed, trainer.phase, trainer.step)
    if args.export:
        path = trainer.export(args.export, partial=args.until is not None)
        logging.info("Exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
