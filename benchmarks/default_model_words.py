"""Which prompt words does a shapes checkpoint listen to? A diagnostic for the default model.

For a checkpoint of the built-in shapes model (default: the shipped one) it prints, as JSON:

- ``text_encoder``: how far the text encoder's state at the word moves when one word of a caption is swapped
  (circle -> square / triangle, red -> green, left -> right), and the largest move at the positions after it;
- ``unet_response``: how far the U-Net's noise prediction moves for the same swaps, at t = 300 / 600 / 900, from
  the same noisy latents;
- ``swapped_error``: the image-space (x0) error the U-Net implies on training pictures of circles and squares,
  with the right caption and with circle <-> square swapped (equal errors: the word is ignored);
- ``vae_shape_kept``: how often the shape reader still reads the right class after an encode/decode round trip,
  by size (held-out scenes): the ceiling a perfect U-Net could reach with this VAE;
- with ``--generate``: the shape confusion of real generations (every held-out prompt, one seed, the evaluation's
  sampler settings).

    .venv/bin/python benchmarks/default_model_words.py [checkpoint] [--generate]

Session 13 used it to find why the default model's shape class stays near 52 % (docs/training.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webui.models.default import default_checkpoint_path, native_size  # noqa: E402
from webui.models.loader import load_components  # noqa: E402
from webui.training import scoring, shapes  # noqa: E402

BASE = "a large red circle on the left, blue background"
SWAPS = {"square": ("circle", "square"), "triangle": ("circle", "triangle"), "green": ("red", "green"),
         "right": ("left", "right")}


def _states(c, captions: list[str]) -> torch.Tensor:
    ids = c.tokenizers[0](captions, padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        return c.text_encoders[0](ids)[0]


def _to_images(c, z: torch.Tensor) -> list[Image.Image]:
    with torch.no_grad():
        x = c.vae.decode(z / c.vae_scaling_factor).sample
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in pixels]


def _encode(c, images) -> torch.Tensor:
    x = torch.from_numpy(np.stack([shapes.to_tensor_array(i) for i in images]))
    with torch.no_grad():
        return c.vae.encode(x).latent_dist.mean * c.vae_scaling_factor


def text_encoder_moves(c) -> dict:
    tokens = c.tokenizers[0].tokenize(BASE)
    result = {}
    for name, (old, new) in SWAPS.items():
        at = tokens.index(old + "</w>") + 1  # +1: the start token
        diff = (_states(c, [BASE]) - _states(c, [BASE.replace(old, new)]))[0].norm(dim=-1)
        result[name] = {"at_word": round(diff[at].item(), 3), "after_word_max": round(diff[at + 1:].max().item(), 3)}
    return result


def unet_response(c, size: int) -> dict:
    x = torch.randn(4, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    base = _states(c, [BASE]).expand(4, -1, -1)
    result = {}
    for t in (300, 600, 900):
        tt = torch.full((4,), t)
        with torch.no_grad():
            e0 = c.unet(x, tt, base).sample
            result[t] = {name: round((c.unet(x, tt, _states(c, [BASE.replace(old, new)]).expand(4, -1, -1)).sample
                                      - e0).norm().item(), 4) for name, (old, new) in SWAPS.items()}
    return result


def swapped_error(c, size: int, count: int = 48) -> dict:
    items = [s for s in (shapes.sample(5, i, size=size) for i in range(4 * count)) if s[0].shape != "triangle"][:count]
    scenes = [s for s, _, _ in items]
    z0 = _encode(c, [image for _, _, image in items])
    swap = {"circle": "square", "square": "circle"}
    right = _states(c, [shapes.caption(s) for s in scenes])
    wrong = _states(c, [shapes.caption(s).replace(s.shape, swap[s.shape]) for s in scenes])
    result = {}
    for t in (100, 300, 500, 650, 800, 900):
        a = c.alphas_cumprod[t]
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        errors = []
        for context in (right, wrong):
            with torch.no_grad():
                eps = c.unet(zt, torch.full((len(z0),), t), context).sample
            errors.append(round(((zt - (1 - a).sqrt() * eps) / a.sqrt() - z0).pow(2).mean().item(), 5))
        result[t] = {"right": errors[0], "swapped": errors[1]}
    return result


def vae_shape_kept(c, size: int, count: int = 400) -> dict:
    kept, total = collections.Counter(), collections.Counter()
    for start in range(0, count, 100):
        items = [shapes.sample(3, i, split="eval", size=size) for i in range(start, start + 100)]
        decoded = _to_images(c, _encode(c, [image for _, _, image in items]))
        for (scene, _, _), image in zip(items, decoded):
            total[scene.size] += 1
            kept[scene.size] += scoring.read_image(image).shape == scene.shape
    return {size: round(kept[size] / total[size], 3) for size in total}


def generation_confusion(checkpoint: Path, size: int) -> dict:
    from webui.pipeline.request import GenerationRequest
    from webui.training.evaluate import CFG, SAMPLER, SCHEDULER, STEPS, context_for

    confusion: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = context_for(checkpoint, Path(tmp))
        for scene in shapes.eval_scenes():
            req = GenerationRequest(prompt=shapes.caption(scene), seed=1000, steps=STEPS, cfg_scale=CFG,
                                    sampler_name=SAMPLER, scheduler=SCHEDULER, width=size,
                                    height=size, save_images=False)
            read = scoring.read_image(ctx.generate(req).images[0]).shape
            confusion[f"{scene.size} {scene.shape}"][str(read)] += 1
    return {k: dict(v) for k, v in sorted(confusion.items())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, nargs="?")
    p.add_argument("--generate", action="store_true", help="also generate every held-out prompt (1-2 min)")
    args = p.parse_args()
    checkpoint = args.checkpoint or default_checkpoint_path()
    size = native_size(checkpoint)  # pictures and latents at the size the model was trained at
    c = load_components(checkpoint)
    report = {"checkpoint": str(checkpoint), "size": size, "text_encoder": text_encoder_moves(c),
              "unet_response": unet_response(c, size), "swapped_error": swapped_error(c, size),
              "vae_shape_kept": vae_shape_kept(c, size)}
    if args.generate:
        report["generation_confusion"] = generation_confusion(checkpoint, size)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
