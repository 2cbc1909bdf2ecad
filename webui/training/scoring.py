"""Read a shapes image back into words with simple image analysis.

Background: the median colour of the outer ring of pixels.  Shape: the pixels
far from the background colour, their largest 4-connected region.  Colours
are the nearest named colour; the position is the nearest named anchor to
the region's centroid; the class comes from how much of its bounding box the
region fills (square ~1, circle ~pi/4, triangle ~1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from webui.training.shapes import COLOURS, POSITIONS, Scene

BORDER = 3
#: Minimum RGB distance from the background for a pixel to belong to the shape.
SHAPE_DISTANCE = 60.0
MIN_SHAPE_PIXELS = 12
#: Fill ratio above which a region is a square, below which it is a triangle.
SQUARE_FILL, TRIANGLE_FILL = 0.9, 0.66


@dataclass(frozen=True)
class Reading:
    """What the analysis saw; ``shape``/``colour``/``position`` are None when no shape was found."""

    background: str
    colour: str | None
    shape: str | None
    position: str | None
    fill: float


def nearest_colour(rgb: np.ndarray) -> str:
    """The named colour closest (Euclidean RGB) to ``rgb``."""
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((palette - rgb[None, :]) ** 2).sum(axis=1)))]


def read_image(image: Image.Image) -> Reading:
    """Analyse one generated image (any size; positions are relative)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = pixels.shape
    ring = np.concatenate([pixels[:BORDER].reshape(-1, 3), pixels[-BORDER:].reshape(-1, 3),
                           pixels[:, :BORDER].reshape(-1, 3), pixels[:, -BORDER:].reshape(-1, 3)])
    background_rgb = np.median(ring, axis=0)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=2))
    labels, count = ndimage.label(distance > SHAPE_DISTANCE)
    background = nearest_colour(background_rgb)
    if count == 0:
        return Reading(background, None, None, None, 0.0)
    sizes = ndimage.sum(np.ones_like(distance), labels, index=range(1, count + 1))
    region = labels == (int(np.argmax(sizes)) + 1)
    if region.sum() < MIN_SHAPE_PIXELS:
        return Reading(background, None, None, None, 0.0)
    ys, xs = np.nonzero(region)
    colour = nearest_colour(np.median(pixels[region], axis=0))
    cx, cy = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][1][0] - cx) ** 2 + (POSITIONS[p][1][1] - cy) ** 2)
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = float(region.sum() / box)
    shape = "square" if fill >= SQUARE_FILL else "circle" if fill >= TRIANGLE_FILL else "triangle"
    return Reading(background, colour, shape, position, fill)


def score(scene: Scene, reading: Reading) -> dict[str, bool]:
    """Per-attribute correctness of one reading against the prompt's scene."""
    return {
        "colour": reading.colour == scene.colour,
        "background": reading.background == scene.background,
        "shape": reading.shape == scene.shape,
        "position": reading.position == scene.position,
    }
