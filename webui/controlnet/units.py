"""ControlNet units in sd-webui-controlnet's shape: parsing API/UI input, infotext writing and reading."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from PIL import Image

from webui.errors import RequestError

log = logging.getLogger(__name__)

SECTION = "controlnet"
"""The UI section's name, which is also the ``alwayson_scripts`` key."""
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
_RESIZE_ALIASES = {"just resize": 0, "resize": 0, "crop and resize": 1, "scale to fit (inner fit)": 1,
                   "inner fit": 1, "resize and fill": 2, "envelope (outer fit)": 2, "outer fit": 2}
_CONTROL_ALIASES = {"balanced": 0, "my prompt is more important": 1, "controlnet is more important": 2}
#: Whether a unit applies in the hires-fix pass (sd-webui-controlnet's ``hr_option``); without hires it is ignored.
HR_OPTIONS = ("Both", "Low res only", "High res only")
_HR_ALIASES = {"both": 0, "low res only": 1, "high res only": 2, "hiresfixoption.both": 0,
               "hiresfixoption.low_res_only": 1, "hiresfixoption.high_res_only": 2}
#: ``union_control_type`` values the Union ControlNets understand (FLUX.1's, then SDXL ControlNet++'s; "Unknown":
#: from the preprocessor)
UNION_CONTROL_TYPES = ("Unknown", "Canny", "Tile", "Depth", "Blur", "OpenPose", "Gray", "Low quality", "Soft Edge",
                       "Hard Edge", "Normal Map", "Segmentation", "Inpaint")
#: Keys sd-webui-controlnet's API takes that change nothing here (no log line for them).
_QUIET_KEYS = frozenset({"is_ui", "input_mode", "batch_images", "output_dir", "loopback",
                         "use_preview_as_input",
                         "batch_image_dir", "batch_mask_dir", "batch_input_gallery", "batch_mask_gallery",
                         "generated_image", "mask_image_from_pixels", "ipadapter_input", "animatediff_batch"})
#: sd-webui-controlnet's older field names.
_FIELD_ALIASES = {"input_image": "image", "processor_resolution": "processor_res", "guidance": "guidance_end",
                  "lowvram": "low_vram", "guessmode": "guess_mode", "mask_image": "mask"}


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit (sd-webui-controlnet's fields and defaults)."""

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Any = None  # PIL image (None: the img2img input)
    #: PIL image: inpaint modules' mask (white = repaint); for other modules a scribble used as the picture
    #: (webui.controlnet.inputs)
    mask: Any = None
    #: PIL image: white = where the unit's output reaches the U-Net (sd-webui-controlnet's
    #: ``effective_region_mask``; grey values scale it)
    effective_region_mask: Any = None
    resize_mode: int = 1  # 0 Just Resize, 1 Crop and Resize, 2 Resize and Fill
    processor_res: int = -1  # -1: the module's default
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: int = 0  # 0 Balanced, 1 My prompt is more important, 2 ControlNet is more important
    low_vram: bool = False
    save_detected_map: bool = True  # the API response carries the detected map after the images
    #: one scale per control output (down blocks, then the middle block: 13 for SD 1.5, 10 for SDXL) that
    #: replaces the weight and soft-injection scales, as sd-webui-controlnet's ``advanced_weighting``
    advanced_weighting: tuple[float, ...] | None = None
    hr_option: int = 0  # 0 Both, 1 Low res only, 2 High res only (see HR_OPTIONS)
    #: the control type a Union ControlNet is told (sd-webui-controlnet's names; "Unknown": from the module).
    #: FLUX.1 Union ControlNets use it (webui.controlnet.flow_patch); SDXL ControlNet++ is not supported yet.
    union_control_type: str = "Unknown"
    #: img2img "Only masked" inpainting: cut the unit's picture to the generated region as the init image is
    #: (sd-webui-controlnet's ``inpaint_crop_input_image``; webui.controlnet.inputs)
    inpaint_crop_input_image: bool = True

    def with_(self, **changes: Any) -> ControlUnit:
        return replace(self, **changes)


def _choice(field: str, value: Any, aliases: Mapping[str, int], names: tuple[str, ...]) -> int:
    if isinstance(value, bool):
        raise RequestError(field, f"must be one of {list(names)} or 0-{len(names) - 1}")
    if isinstance(value, (int, float)) and int(value) == value and 0 <= int(value) < len(names):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in aliases:
        return aliases[value.strip().lower()]
    raise RequestError(field, f"must be one of {list(names)} or 0-{len(names) - 1}, got {value!r}")


def _number(field: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(field, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(field, f"must be between {lo} and {hi}, got {value}")
    return float(value)


def parse_unit(data: Any, index: int, decode_image=None) -> ControlUnit:
    """A unit from an API dict (names or integers for the modes, image as base64 or {image, mask}) or a
    :class:`ControlUnit`. ``decode_image(value, field)`` turns base64 into a PIL image."""
    if isinstance(data, ControlUnit):
        return data
    prefix = f"alwayson_scripts.controlnet.args[{index}]"
    if not isinstance(data, Mapping):
        raise RequestError(prefix, "a ControlNet unit must be an object")
    known = {f.name for f in fields(ControlUnit)}
    values: dict[str, Any] = {}
    guess_mode = False  # sd-webui-controlnet before 1.1: "ControlNet is more important"
    for key, value in data.items():
        key = _FIELD_ALIASES.get(key, key)
        if key in known and value is not None:
            values[key] = value
        elif key == "guess_mode":
            guess_mode = bool(value)
        elif key not in known and key not in _QUIET_KEYS:
            log.info("ControlNet unit %d: unknown parameter %r ignored", index, key)
    image = values.get("image")
    if isinstance(image, (list, tuple)) and len(image) == 2 and not isinstance(image[0], Mapping):
        image = {"image": image[0], "mask": image[1]}  # [image, mask]
    if isinstance(image, Mapping):  # {"image": ..., "mask": ...}
        values["image"] = image.get("image")
        if image.get("mask") is not None:
            values["mask"] = image.get("mask")
    for key in ("image", "mask", "effective_region_mask"):
        if isinstance(values.get(key), str) and values[key]:
            if decode_image is not None:  # without a decoder the text is kept (e.g. for infotext)
                values[key] = decode_image(values[key], f"{prefix}.{key}")
        elif values.get(key) is not None and not isinstance(values[key], Image.Image):
            raise RequestError(f"{prefix}.{key}", "must be a base64 image")
        elif values.get(key) == "":
            values[key] = None
    if "resize_mode" in values:
        values["resize_mode"] = _choice(f"{prefix}.resize_mode", values["resize_mode"], _RESIZE_ALIASES, RESIZE_MODES)
    if "control_mode" in values:
        values["control_mode"] = _choice(f"{prefix}.control_mode", values["control_mode"], _CONTROL_ALIASES,
                                         CONTROL_MODES)
    if "hr_option" in values:
        values["hr_option"] = _choice(f"{prefix}.hr_option", values["hr_option"], _HR_ALIASES, HR_OPTIONS)
    if guess_mode and "control_mode" not in values:
        values["control_mode"] = 2
    if "weight" in values:
        values["weight"] = _number(f"{prefix}.weight", values["weight"], 0.0, 2.0)
    for key in ("guidance_start", "guidance_end"):
        if key in values:
            values[key] = _number(f"{prefix}.{key}", values[key], 0.0, 1.0)
    if "processor_res" in values:
        # a value outside the module's range is its default, with a log line (builtin.controlnet)
        values["processor_res"] = int(_number(f"{prefix}.processor_res", values["processor_res"], -1e6, 1e6))
    for key in ("threshold_a", "threshold_b"):
        if key in values:
            values[key] = _number(f"{prefix}.{key}", values[key], -1e6, 1e6)
    for key in ("module", "model"):
        if key in values and not isinstance(values[key], str):
            raise RequestError(f"{prefix}.{key}", "must be a string")
    if "advanced_weighting" in values:
        weights = values["advanced_weighting"]
        if not isinstance(weights, (list, tuple)) or not weights:
            raise RequestError(f"{prefix}.advanced_weighting",
                               "must be a list of numbers (13 for SD 1.5, 10 for SDXL)")
        values["advanced_weighting"] = tuple(_number(f"{prefix}.advanced_weighting[{i}]", w, -10.0, 10.0)
                                             for i, w in enumerate(weights))
    for key in ("enabled", "pixel_perfect", "low_vram", "save_detected_map", "inpaint_crop_input_image"):
        if key in values:
            values[key] = bool(values[key])
    unit = ControlUnit(**values)
    if unit.guidance_start > unit.guidance_end:
        raise RequestError(f"{prefix}.guidance_start", "must not be after guidance_end")
    return unit


def units_from_request(alwayson: Mapping[str, Any], decode_image=None) -> list[ControlUnit]:
    """The enabled units of ``alwayson_scripts["controlnet"]`` (``{"args": [...]}`` or a bare list)."""
    entry = None
    for key, value in (alwayson or {}).items():
        if key.lower() in ("controlnet", "sd-webui-controlnet"):
            entry = value
    if entry is None:
        return []
    args = entry.get("args") if isinstance(entry, Mapping) else entry
    if not isinstance(args, list):
        raise RequestError("alwayson_scripts.controlnet.args", "must be a list of units")
    units = [parse_unit(a, i, decode_image) for i, a in enumerate(args)]
    return [u for u in units if u.enabled]


def _num(value: float) -> str:
    return str(float(value))


def unit_infotext(unit: ControlUnit, model_title: str, res: int, thr_a: float, thr_b: float) -> str:
    """sd-webui-controlnet's infotext value for a unit (written JSON-quoted as ``ControlNet N: "..."``)."""
    return (f"Module: {unit.module}, Model: {model_title}, Weight: {_num(unit.weight)}, "
            f"Resize Mode: {RESIZE_MODES[unit.resize_mode]}, Processor Res: {res}, Threshold A: {_num(thr_a)}, "
            f"Threshold B: {_num(thr_b)}, Guidance Start: {_num(unit.guidance_start)}, "
            f"Guidance End: {_num(unit.guidance_end)}, Pixel Perfect: {unit.pixel_perfect}, "
            f"Control Mode: {CONTROL_MODES[unit.control_mode]}"
            + (f", Union Control Type: {unit.union_control_type}" if unit.union_control_type != "Unknown" else ""))


_INFO_FIELDS = {"Module": ("module", str), "Model": ("model", str), "Weight": ("weight", float),
                "Resize Mode": ("resize_mode", str), "Processor Res": ("processor_res", int),
                "Threshold A": ("threshold_a", float), "Threshold B": ("threshold_b", float),
                "Guidance Start": ("guidance_start", float), "Guidance End": ("guidance_end", float),
                "Pixel Perfect": ("pixel_perfect", lambda v: v.strip() == "True"),
                "Control Mode": ("control_mode", str), "Union Control Type": ("union_control_type", str)}


def units_from_infotext(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Unit dicts (API shape) from parsed infotext keys ``ControlNet 0``, ``ControlNet 1``, ..."""
    units = []
    for i in range(32):
        text = params.get(f"ControlNet {i}")
        if text is None:
            continue
        unit: dict[str, Any] = {"enabled": True}
        for part in str(text).split(", "):
            key, _, value = part.partition(": ")
            if key in _INFO_FIELDS:
                name, conv = _INFO_FIELDS[key]
                try:
                    unit[name] = conv(value)
                except ValueError:
                    continue
        units.append(unit)
    return units
