"""A synthetic captioned data set: simple shapes in named colours at named places.

Every sample is a :class:`Scene` (shape, shape colour, background colour,
position, size) drawn from a seeded RNG, rendered to a small RGB image and
captioned in plain English ("a small red circle on the left, blue
background").  Sample ``i`` of a data set depends only on ``(seed, i)``, so a
resumed training run sees exactly the samples an uninterrupted one would.

A fixed tenth of the (shape, colour, background, position) combinations is
held out of training (:func:`is_held_out`); evaluation prompts come only from
those, so the score measures prompts the model never saw.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

#: Named colours, far apart in RGB so a nearest-colour classifier is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 45),
    "purple": (135, 50, 165),
    "orange": (240, 135, 25),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
#: Position name -> (phrase in captions, centre as fractions of the image side).
POSITIONS: dict[str, tuple[str, tuple[float, float]]] = {
    "left": ("on the left", (0.25, 0.5)),
    "right": ("on the right", (0.75, 0.5)),
    "top": ("at the top", (0.5, 0.25)),
    "bottom": ("at the bottom", (0.5, 0.75)),
    "center": ("in the center", (0.5, 0.5)),
}
#: Size name -> half-extent as a fraction of the image side.
SIZES = {"small": 0.13, "large": 0.21}
HOLD_OUT_PERCENT = 10
COLOUR_JITTER = 12
POSITION_JITTER = 0.04


@dataclass(frozen=True)
class Scene:
    """One image's content, in the words the captions use."""

    shape: str
    colour: str
    background: str
    position: str
    size: str

    def combination(self) -> tuple[str, str, str, str]:
        """The attributes that define a held-out combination (size excluded)."""
        return (self.shape, self.colour, self.background, self.position)


def is_held_out(scene: Scene) -> bool:
    """Whether the scene's combination is reserved for evaluation (a stable hash, ~10 %)."""
    digest = hashlib.sha256("|".join(scene.combination()).encode()).digest()
    return digest[0] * 100 // 256 < HOLD_OUT_PERCENT


def random_scene(rng: random.Random) -> Scene:
    """A uniformly drawn scene; shape and background colours always differ."""
    colour = rng.choice(list(COLOURS))
    background = rng.choice([c for c in COLOURS if c != colour])
    return Scene(rng.choice(SHAPES), colour, background, rng.choice(list(POSITIONS)), rng.choice(list(SIZES)))


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """The scene in plain English; with ``rng`` one of several phrasings, without it the canonical one."""
    where = POSITIONS[scene.position][0]
    if rng is None:
        return f"a {scene.size} {scene.colour} {scene.shape} {where}, {scene.background} background"
    size = f"{scene.size} " if rng.random() < 0.75 else ""
    template = rng.randrange(3)
    if template == 0:
        return f"a {size}{scene.colour} {scene.shape} {where}, {scene.background} background"
    if template == 1:
        return f"a {size}{scene.colour} {scene.shape} {where} on a {scene.background} background"
    return f"{scene.background} background, a {size}{scene.colour} {scene.shape} {where}"


def render(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene (anti-aliased by supersampling) with small colour and position jitter."""
    big = size * SUPERSAMPLE

    def jitter(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(max(0, min(255, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in rgb)  # type: ignore

    image = Image.new("RGB", (big, big), jitter(COLOURS[scene.background]))
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position][1]
    cx = (fx + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * big
    cy = (fy + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * big
    r = SIZES[scene.size] * big * rng.uniform(0.9, 1.1)
    fill = jitter(COLOURS[scene.colour])
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        s = r * 0.9  # same area impression as the circle
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r * 1.05, cy + r * 0.85), (cx - r * 1.05, cy + r * 0.85)], fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


def sample(seed: int, index: int, *, split: str = "train", size: int = IMAGE_SIZE) -> tuple[Scene, str, Image.Image]:
    """Sample ``index`` of the data set ``seed``: scene, caption and image (``size`` pixels square).

    ``split="train"`` draws only combinations that are not held out,
    ``split="eval"`` only held-out ones.  The scene and caption do not depend on ``size``.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    rng = random.Random(f"{seed}:{split}:{index}")
    while True:
        scene = random_scene(rng)
        if is_held_out(scene) == (split == "eval"):
            break
    return scene, caption(scene, rng), render(scene, rng, size)


def to_tensor_array(image: Image.Image) -> np.ndarray:
    """``HWC uint8`` -> ``CHW float32`` in [-1, 1], the VAE's input range."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def eval_scenes() -> Iterator[Scene]:
    """Every held-out combination in each size, in a stable order."""
    for shape in SHAPES:
        for colour in COLOURS:
            for background in COLOURS:
                if background == colour:
                    continue
                for position in POSITIONS:
                    for size in SIZES:
                        scene = Scene(shape, colour, background, position, size)
                        if is_held_out(scene):
                            yield scene
