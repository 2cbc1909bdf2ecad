"""Example extension: a UI section in txt2img/img2img and a processing hook.

Adds a "Film grain" section (strength 0 = off). When on, grain is added to every image after it is
decoded (``postprocess_image``), deterministically from the image's seed, and the strength is written
to the infotext as ``Film grain``; ``parse_infotext`` reads it back, so PNG Info's "Send to txt2img" and the
paste button refill the section, and an API request with ``infotext`` applies the same grain. Shows:
``ui_sections`` (named values), ``postprocess_image``, ``parse_infotext``, reading the request's
``alwayson_scripts``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from webui.hookspecs import hookimpl

NAME = "film_grain"
INFOTEXT_KEY = "Film grain"


def add_grain(image: Image.Image, strength: float, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    noise = rng.normal(0.0, 255.0 * strength, arr.shape[:2])[..., None]
    return Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8))


def strength_of(request) -> float:
    entry = (request.alwayson_scripts or {}).get(NAME) or {}
    args = entry.get("args") if isinstance(entry, dict) else entry
    try:
        return max(0.0, min(1.0, float(args[0]))) if args else 0.0
    except (TypeError, ValueError):
        return 0.0


@hookimpl
def ui_sections(ctx, mode):
    import gradio as gr

    from webui.sections import UiSection

    def render():
        with gr.Accordion("Film grain (example extension)", open=False):
            return {"strength": gr.Slider(0, 0.5, value=0, step=0.01, label="Grain strength",
                                          elem_id=f"{mode}_film_grain_strength")}

    def collect(values):
        strength = float(values.get("strength") or 0)
        return {"args": [strength]} if strength > 0 else None

    return [UiSection(NAME, render, collect)]


@hookimpl
def postprocess_image(state):
    strength = strength_of(state.request)
    if strength > 0:
        state.image = add_grain(state.image, strength, state.seed)
        state.extra_infotext[INFOTEXT_KEY] = strength


@hookimpl
def parse_infotext(params, mode):
    # "Film grain: 0.2" -> the section's "strength" control; no key means no grain (so pasting an infotext
    # without it switches the grain off, as the image had none). The API runs the section's collect on it.
    try:
        strength = float(params.get(INFOTEXT_KEY, 0))
    except (TypeError, ValueError):
        return None
    return {f"{NAME}__strength": max(0.0, min(1.0, strength))}
