"""Filling a generation tab from an infotext ("Send to txt2img/img2img", PNG Info, gallery send-to)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webui.infotext import (
    INPAINT_AREA,
    MASK_MODE,
    MASKED_CONTENT,
    OVERRIDE_SETTINGS,
    REQUEST_FIELDS,
    backcompat,
    infotext_to_request,
    parse_infotext,
)
from webui.pipeline.init_image import RESIZE_MODES

#: What a field becomes when the infotext does not mention it (A1111's paste behaviour).
ABSENT_DEFAULTS: Mapping[str, Any] = {
    "cfg_rescale": None,  # auto
    "distilled_cfg_scale": 3.5,  # Forge's default
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
    "inpainting_fill": MASKED_CONTENT,
    "inpaint_full_res": INPAINT_AREA,
    "inpainting_mask_invert": MASK_MODE,
}


#: infotext key -> option key of the settings an infotext can override (A1111's ``infotext=`` options)
OVERRIDE_KEYS: Mapping[str, str] = {f.source: f.target[1] for f in REQUEST_FIELDS
                                    if len(f.target) == 2 and f.target[0] == OVERRIDE_SETTINGS}


def override_pairs(overrides: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> list[str]:
    """The "Override settings" choices for a request's ``override_settings``: ``"Clip skip: 2"``, ...

    As A1111's ``get_override_settings``, settings equal to the current option are left out."""
    current = current or {}
    return [f"{label}: {'True' if v is True else 'False' if v is False else v}"
            for label, key in OVERRIDE_KEYS.items()
            if key in overrides and (v := overrides[key]) != current.get(key)]


def override_settings_from_pairs(pairs: Any) -> dict[str, Any]:
    """``override_settings`` from the "Override settings" choices (A1111's ``create_override_settings_dict``);
    pairs with an unknown key or a value that does not convert are left out."""
    if not isinstance(pairs, (list, tuple)):
        return {}
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition(":")
        if sep:
            params[key.strip()] = value.strip()
    req = infotext_to_request({k: v for k, v in params.items() if k in OVERRIDE_KEYS})
    out = req.get(OVERRIDE_SETTINGS)
    return dict(out) if isinstance(out, dict) else {}


def values_from_infotext(text: str, wanted: list[str], hooks: Any = None, mode: str = "txt2img", *,
                         auto_backcompat: bool = False, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """UI values for the fields in ``wanted`` that ``text`` determines (absent ones get A1111's reset).

    With ``hooks`` (:class:`webui.plugins.Hooks`), the plugins' ``parse_infotext`` values come on top: their
    section controls (``<section>__<name>``) and any request field they read back. ``override_settings``
    gets the list of "Key: value" choices of the settings the infotext changes from ``current`` (the
    options); ``auto_backcompat`` adds the compatibility options of an older A1111 version's infotext."""
    if not text or not text.strip():
        return {}
    parsed = backcompat(parse_infotext(text), auto_backcompat)
    req = infotext_to_request(parsed)
    overrides = dict(req.get(OVERRIDE_SETTINGS) or {})
    if hooks is not None:
        for k, v in hooks.parse_infotext(parsed, mode).items():
            if k == OVERRIDE_SETTINGS and isinstance(v, Mapping):
                overrides.update(v)
            elif k != "alwayson_scripts":
                req[k] = v
    if "mask_blur" in req:
        req["mask_blur_x"] = req["mask_blur"]
    req[OVERRIDE_SETTINGS] = override_pairs(overrides, current)
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
