"""Behaviour of the shipped default model (the trained shapes model) through the real pipeline.

These tests read generated pictures back with the same simple image analysis
as the prompt-following benchmark (``python -m webui.training.evaluate``), so
they check what the model draws, not only image shapes.  Prompts are
held-out combinations (never seen in training).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.conftest import make_settings, needs
from webui.context import build_context
from webui.models.default import DEFAULT_FILE, ensure_default_checkpoint, native_size
from webui.pipeline.request import GenerationRequest
from webui.training import scoring, shapes

pytestmark = needs(DEFAULT_FILE.exists(), "the shipped default model file is missing")

#: Held-out combinations used below (``shapes.is_held_out`` is asserted, so they stay unseen in training).
HELD_OUT = [scene for scene in shapes.eval_scenes() if scene.size == "large"]
#: the size the shipped model was trained at (its metadata); the pictures below are drawn at that size
SIZE = native_size(DEFAULT_FILE)
BASE = dict(steps=20, cfg_scale=7.0, width=SIZE, height=SIZE, sampler_name="DPM++ 2M", save_images=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A context on an empty models folder: the built-in default model is what loads."""
    data = tmp_path_factory.mktemp("demo")
    ctx = build_context(make_settings(data, data / "models"), load_model=True)
    assert ctx.models.using_builtin_default
    return ctx


def read(ctx, **kw):
    return scoring.read_image(ctx.generate(GenerationRequest(**{**BASE, **kw})).images[0])


def test_default_model_is_the_shipped_checkpoint(demo, tmp_path):
    assert ensure_default_checkpoint(tmp_path) == DEFAULT_FILE
    assert DEFAULT_FILE.stat().st_size <= 20 * 1024 * 1024
    model = demo.models.current
    assert model.info.builtin and model.info.path == DEFAULT_FILE and model.spec.family == "sd1"


def test_prompt_colour_wins(demo):
    scene = next(s for s in HELD_OUT if s.colour not in ("red", "green") and s.background not in ("red", "green"))
    assert shapes.is_held_out(scene)
    for colour in ("red", "green"):
        prompt = shapes.caption(shapes.Scene(scene.shape, colour, scene.background, scene.position, "large"))
        readings = [read(demo, prompt=prompt, seed=seed) for seed in (11, 12, 13)]
        assert [r.colour for r in readings].count(colour) >= 2, (prompt, readings)


def test_prompt_position_wins(demo):
    """One unseen scene's shape and colours asked for at three places land where the prompt says."""
    scene = next(s for s in HELD_OUT if s.position == "left")
    for position in ("left", "right", "top"):
        asked = shapes.Scene(scene.shape, scene.colour, scene.background, position, "large")
        readings = [read(demo, prompt=shapes.caption(asked), seed=seed) for seed in (31, 32, 33)]
        assert [r.position for r in readings].count(position) >= 2, (asked, readings)


def test_generation_follows_held_out_prompts(demo):
    """A small sample of the benchmark: colour, background and position on 6 unseen prompts."""
    rng = random.Random(3)
    scenes = rng.sample(HELD_OUT, 6)
    results = [scoring.score(s, read(demo, prompt=shapes.caption(s), seed=100 + i)) for i, s in enumerate(scenes)]
    for key in ("colour", "background", "position"):
        assert sum(r[key] for r in results) >= 5, (key, results)


def _rendered(scene: shapes.Scene):
    return shapes.render(scene, random.Random(0), SIZE)


def test_img2img_strength_keeps_layout_or_follows_prompt(demo):
    source = shapes.Scene("square", "yellow", "purple", "right", "large")
    target = shapes.Scene("circle", "white", "green", "left", "large")
    image = _rendered(source)
    common = dict(mode="img2img", init_images=(image,), prompt=shapes.caption(target), seed=21)
    low = demo.generate(GenerationRequest(**{**BASE, **common, "denoising_strength": 0.25})).images[0]
    kept = scoring.read_image(low)
    assert kept.position == "right" and kept.shape is not None  # the input's layout survives
    # (the colours already move towards the prompt's at this strength: the model weighs colour words strongly)
    high_image = demo.generate(GenerationRequest(**{**BASE, **common, "denoising_strength": 1.0})).images[0]
    high = scoring.read_image(high_image)
    assert (high.colour, high.background, high.position) == ("white", "green", "left")  # the prompt's picture


def test_inpainting_changes_the_masked_area_only(demo):
    from PIL import Image

    source = shapes.Scene("circle", "red", "blue", "center", "large")
    image = _rendered(source)
    k = SIZE // 64  # the mask and the areas checked below scale with the picture
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16 * k, 16 * k, 48 * k, 48 * k))
    prompt = shapes.caption(shapes.Scene("circle", "yellow", "blue", "center", "large"))
    out = demo.generate(GenerationRequest(**{**BASE, "mode": "img2img", "init_images": (image,), "mask": mask,
                                            "prompt": prompt, "seed": 5, "denoising_strength": 1.0,
                                            "inpainting_fill": 1, "inpaint_full_res": False})).images[0]
    before, after = np.asarray(image, dtype=np.float32), np.asarray(out, dtype=np.float32)
    outside = np.ones((SIZE, SIZE), bool)
    outside[8 * k:56 * k, 8 * k:56 * k] = False  # mask plus its blur
    assert np.abs(after[outside] - before[outside]).max() <= 1
    centre = after[24 * k:40 * k, 24 * k:40 * k].reshape(-1, 3).mean(axis=0)
    assert scoring.nearest_colour(centre) == "yellow", centre


#: Sampler -> (steps, CFG, schedule) as people use it (LMS: "LMS Karras" in A1111 before 1.9).
USUAL = {"DPM fast": (30, 7.0, "Automatic"), "LCM": (8, 1.5, "Automatic"), "LMS": (20, 7.0, "Karras"),
         "PLMS": (50, 7.0, "Automatic")}  # PLMS: the original SD scripts used 50 steps


#: One sampler of each kind the pipeline drives differently: ancestral, multistep, SDE (Brownian noise),
#: A1111's timestep-grid samplers (VP latents), LCM. ``benchmarks/default_model_samplers.py`` runs them all;
#: every sampler's maths is checked on the tiny models (tests/test_sampler_sanity.py, test_sampler_parity.py)
#: and each runs through the pipeline in tests/test_pipeline.py.
KINDS = ("Euler a", "DPM++ 2M", "DPM++ SDE", "UniPC", "LCM")


def plain_background(pixels: np.ndarray) -> bool:
    """The top and bottom three rows are one colour, give or take (no noise left in the picture)."""
    ring = np.concatenate([pixels[:3].reshape(-1, 3), pixels[-3:].reshape(-1, 3)])
    return bool(np.abs(ring - np.median(ring, axis=0)).mean() < 20)


@pytest.mark.parametrize("name", KINDS)
def test_samplers_of_each_kind_draw_on_distribution(demo, name):
    """One shape on a plain background, in the prompt's colours."""
    scene = HELD_OUT[0]
    steps, cfg, schedule = USUAL.get(name, (20, 7.0, "Automatic"))
    image = demo.generate(GenerationRequest(**{**BASE, "prompt": shapes.caption(scene), "seed": 7,
                                              "sampler_name": name, "steps": steps, "cfg_scale": cfg,
                                              "scheduler": schedule})).images[0]
    assert plain_background(np.asarray(image, dtype=np.float32))
    reading = scoring.read_image(image)
    assert reading.shape is not None, reading
    assert (reading.colour, reading.background) == (scene.colour, scene.background), reading
