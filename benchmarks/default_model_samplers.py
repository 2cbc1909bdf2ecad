"""Every sampler on the shipped default model: does it draw the prompt's picture? (The test suite runs a
few samplers of each kind, ``tests/test_default_model.py``; this runs them all, ~1 s each on 2 cores.)

    .venv/bin/python benchmarks/default_model_samplers.py

Prints one row per sampler: steps, CFG, schedule, what the image analysis reads (shape, colour, background)
and whether the background is plain; exits 1 when a sampler draws no shape or a noisy background, or when
more than three samplers miss the prompt's colours.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from tests.conftest import make_settings  # noqa: E402
from tests.test_default_model import BASE, HELD_OUT, USUAL, plain_background  # noqa: E402
from webui.context import build_context  # noqa: E402
from webui.pipeline.request import GenerationRequest  # noqa: E402
from webui.training import scoring, shapes  # noqa: E402


def main() -> int:
    data = Path(tempfile.mkdtemp())
    ctx = build_context(make_settings(data, data / "models"), load_model=True)
    scene = HELD_OUT[0]
    prompt = shapes.caption(scene)
    print(f"prompt: {prompt!r}\n")
    print("| sampler | steps | CFG | schedule | shape | colour | background | plain background |")
    print("|---|---|---|---|---|---|---|---|")
    bad, wrong_colours = [], []
    for name in ctx.samplers.samplers:
        steps, cfg, schedule = USUAL.get(name, (20, 7.0, "Automatic"))
        image = ctx.generate(GenerationRequest(**{**BASE, "prompt": prompt, "seed": 7, "sampler_name": name,
                                                 "steps": steps, "cfg_scale": cfg, "scheduler": schedule})).images[0]
        reading = scoring.read_image(image)
        plain = plain_background(np.asarray(image, dtype=np.float32))
        print(f"| {name} | {steps} | {cfg} | {schedule} | {reading.shape} | {reading.colour} | "
              f"{reading.background} | {plain} |")
        if reading.shape is None or not plain:
            bad.append(name)
        if (reading.colour, reading.background) != (scene.colour, scene.background):
            wrong_colours.append(name)
    print(f"\nno shape or a noisy background: {bad or 'none'}; wrong colours: {wrong_colours or 'none'}")
    return 1 if bad or len(wrong_colours) > 3 else 0


if __name__ == "__main__":
    sys.exit(main())
