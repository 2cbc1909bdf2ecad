"""Filling a generation tab from an infotext ("Send to txt2img/img2img", PNG Info, gallery send-to)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui.infotext import infotext_to_request, parse_infotext
from webui.pipeline.init_image import RESIZE_MODES

#: What a field becomes when the infotext does not mention it (A1111's paste behaviour).
ABSENT_DEFAULTS: Mapping[str, Any] = {
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_w": 0,
    "seed_resize_from_h": 0,
    "tiling": False,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_second_pass_steps": 0,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "hr_sampler_name": "Use same sampler",
    "hr_scheduler": "Use same scheduler",
    "scheduler": "Automatic",
    "refiner_checkpoint": "None",
}

#: Radio fields whose UI value is a label rather than the request's number/bool.
_LABELS: Mapping[str, Mapping[Any, str]] = {
    "resize_mode": RESIZE_MODES,
    "inpainting_fill": {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"},
    "inpaint_full_res": {False: "Whole picture", True: "Only masked"},
    "inpainting_mask_invert": {0: "Inpaint masked", 1: "Inpaint not masked"},
}


def values_from_infotext(text: str, wanted: list[str], hooks: Any = None, mode: str = "txt2img") -> dict[str, Any]:
    """UI values for the fields in ``wanted`` that ``text`` determines (absent ones get A1111's reset).

    With ``hooks`` (:class:`webui.plugins.Hooks`), the plugins' ``parse_infotext`` values come on top: their
    section controls (``<section>__<name>``) and any request field they read back."""
    if not text or not text.strip():
        return {}
    parsed = parse_infotext(text)
    req = infotext_to_request(parsed)
    if hooks is not None:
        req.update((k, v) for k, v in hooks.parse_infotext(parsed, mode).items() if k != "alwayson_scripts")
    if "mask_blur" in req:
        req["mask_blur_x"] = req["mask_blur"]
    out: dict[str, Any] = {}
    for name in wanted:
        if name in req:
            value = req[name]
        elif name in ABSENT_DEFAULTS:
            value = ABSENT_DEFAULTS[name]
        else:
            continue
        if name in _LABELS:
            value = _LABELS[name].get(value, value)
        out[name] = value
    return out
