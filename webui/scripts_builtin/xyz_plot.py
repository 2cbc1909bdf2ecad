"""The "X/Y/Z plot" script (A1111 v1.10's ``scripts/xyz_grid.py``): one generation per combination of up
to three axes' values, a labelled grid of the first image of each cell, and optionally the images.

Clients address the axes by index into the list of :data:`AXES` available in their mode (A1111's
``script_args`` layout, see :data:`ARG_NAMES`) or by label; :func:`parse_args` accepts both, and the
keyword form ``{"x_type": "Steps", "x_values": "10,20", ...}``. Values are checked -- choices
against ``run.choices``, every cell's request against :func:`~webui.pipeline.request.check_request`
-- before anything is generated. Seeds of -1 are fixed once unless ``no_fixed_seeds``; the
``vary_seeds_x/y/z`` flags then give each cell along those axes its own seed (:func:`seed_offset`).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

from PIL import Image

from webui.errors import RequestError
from webui.hookspecs import hookimpl
from webui.pipeline.hires import LATENT_UPSCALE_MODES, SAME_SAMPLER
from webui.pipeline.noise import resolve_seed
from webui.pipeline.request import MAX_SEED, GenerationRequest, check_request
from webui.pipeline.result import GenerationResult
from webui.scripts import ScriptChoices, ScriptDef, ScriptRun, raw_script_args, script_flag, script_int
from webui.scripts_builtin.grid import draw_annotations, image_grid
from webui.scripts_builtin.results import add_params, closest_checkpoint, combined_info

TITLE = "X/Y/Z plot"
FIELD = "script_args"
#: A1111's positional ``script_args`` order (v1.7 to v1.10: 18 items; v1.7 put the three "vary seeds"
#: flags between ``no_fixed_seeds`` and ``margin_size``).
ARG_NAMES = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown",
             "z_type", "z_values", "z_values_dropdown", "draw_legend", "include_lone_images",
             "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z",
             "margin_size", "csv_mode")
FLAGS = ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
         "vary_seeds_y", "vary_seeds_z", "csv_mode")
DEFAULTS: dict[str, Any] = {
    "x_type": "Nothing", "x_values": "", "x_values_dropdown": [],
    "y_type": "Nothing", "y_values": "", "y_values_dropdown": [],
    "z_type": "Nothing", "z_values": "", "z_values_dropdown": [],
    "draw_legend": True, "include_lone_images": False, "include_sub_grids": False, "no_fixed_seeds": False,
    "vary_seeds_x": False, "vary_seeds_y": False, "vary_seeds_z": False, "margin_size": 0, "csv_mode": False,
}
#: A grid above this many megapixels is refused (A1111's ``img_max_size_mp`` default).
MAX_GRID_MP = 200
MAX_MARGIN = 500

Apply = Callable[[GenerationRequest, Any, list[Any]], GenerationRequest]
Resolve = Callable[[ScriptChoices, str], Any]


class _NoNeutral:
    def __repr__(self) -> str:
        return "<no neutral value>"


NO_NEUTRAL = _NoNeutral()


@dataclass(frozen=True)
class AxisOption:
    """One axis type.

    :param kind: how values are parsed: ``int``/``float`` (with ranges), ``str``, ``perm`` (Prompt order:
        every permutation of the values).
    :param apply: returns the cell's request; None for axes this build cannot vary (refused unless every
        value equals ``neutral``).
    :param fmt: legend text: ``label`` ("Steps: 20"), ``raw``, ``join`` (a permutation), ``basename``,
        ``nothing``.
    :param choices: the valid values (shown in the UI's dropdown); None for free-form axes.
    :param resolve: checks one value against ``run.choices`` and returns the canonical one.
    :param cost: costly axes (model loads) go to the outer loops.
    :param mode: None for both modes, else ``txt2img`` or ``img2img`` only.
    """

    label: str
    kind: str
    apply: Apply | None = None
    fmt: str = "label"
    choices: Callable[[ScriptChoices], list[str]] | None = None
    resolve: Resolve | None = None
    cost: float = 0.0
    mode: str | None = None
    neutral: Any = NO_NEUTRAL
    check: Callable[[GenerationRequest, list[Any], str], None] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def supported(self) -> bool:
        return self.apply is not None


# --------------------------------------------------------------------------- applying values


def _field(name: str) -> Apply:
    return lambda req, x, xs: req.with_(**{name: x})


def _override(key: str) -> Apply:
    return lambda req, x, xs: req.with_(override_settings={**req.override_settings, key: x})


def _prompt_sr(req: GenerationRequest, x: str, xs: list[Any]) -> GenerationRequest:
    return req.with_(prompt=req.prompt.replace(xs[0], x), negative_prompt=req.negative_prompt.replace(xs[0], x))


def _check_prompt_sr(req: GenerationRequest, xs: list[Any], axis: str) -> None:
    if xs and xs[0] not in req.prompt and xs[0] not in req.negative_prompt:
        raise RequestError(FIELD, f"{TITLE}: Prompt S/R ({axis} axis) did not find {xs[0]!r} in the prompt or "
                                  "the negative prompt")


def _prompt_order(req: GenerationRequest, x: tuple[str, ...], xs: list[Any]) -> GenerationRequest:
    """Put the tokens ``x`` into the prompt's token slots in this order (slots taken by first appearance)."""
    rest = req.prompt
    parts: list[str] = []
    for _, token in sorted((rest.find(t), t) for t in x):
        n = rest.find(token)
        parts.append(rest[:n])
        rest = rest[n + len(token):]
    return req.with_(prompt="".join(part + x[i] for i, part in enumerate(parts)) + rest)


def _check_prompt_order(req: GenerationRequest, xs: list[Any], axis: str) -> None:
    missing = [t for t in (xs[0] if xs else ()) if t not in req.prompt]
    if missing:
        raise RequestError(FIELD, f"{TITLE}: Prompt order ({axis} axis): {', '.join(map(repr, missing))} not found "
                                  "in the prompt")


def _styles(req: GenerationRequest, x: str, xs: list[Any]) -> GenerationRequest:
    return req.with_(styles=(*req.styles, *_split_styles(x)))


def _split_styles(x: str) -> list[str]:
    return [s.strip() for s in str(x).split(",") if s.strip()]


def _face_restore(req: GenerationRequest, x: str, xs: list[Any]) -> GenerationRequest:
    value = str(x).strip().lower()
    models = {"codeformer": "CodeFormer", "gfpgan": "GFPGAN"}
    if value in models:
        return req.with_(restore_faces=True,
                         override_settings={**req.override_settings, "face_restoration_model": models[value]})
    return req.with_(restore_faces=value in ("true", "yes", "y", "1"))


def _refiner(req: GenerationRequest, x: Any, xs: list[Any]) -> GenerationRequest:
    return req.with_(refiner_checkpoint=x)


# --------------------------------------------------------------------------- checking choices


def _pick(value: str, valid: Sequence[str], what: str) -> str:
    """``value`` matched case-insensitively against ``valid``; RequestError listing them otherwise."""
    text = str(value).strip()
    for v in valid:
        if v.lower() == text.lower():
            return v
    raise RequestError(FIELD, f"{TITLE}: unknown {what} {text!r}; valid: {', '.join(valid) or 'none'}")


def _sampler(c: ScriptChoices, x: str) -> str:
    return _pick(x, c.samplers, "sampler")


def _hires_sampler(c: ScriptChoices, x: str) -> str:
    return _pick(x, [SAME_SAMPLER, *c.samplers], "hires sampler")


def _schedule(c: ScriptChoices, x: str) -> str:
    return _pick(x, ["Automatic", *c.schedules], "schedule type")


def _checkpoint(c: ScriptChoices, x: str) -> str:
    title = closest_checkpoint(c.checkpoints, x)
    if title is None:
        raise RequestError(FIELD, f"{TITLE}: unknown checkpoint {str(x).strip()!r}; valid: "
                                  f"{', '.join(c.checkpoints) or 'none'}")
    return title


def _refiner_checkpoint(c: ScriptChoices, x: str) -> str | None:
    if str(x).strip().lower() in ("", "none"):
        return None
    return _checkpoint(c, x)


def _vae(c: ScriptChoices, x: str) -> str:
    text = str(x).strip()
    low = text.lower()
    if low in ("auto", "automatic"):
        return "Automatic"
    if low == "none":
        return "None"
    for v in c.vaes:
        if v.lower() == low:
            return v
    found = sorted((v for v in c.vaes if low and low in v.lower()), key=len)
    if found:
        return found[0]
    raise RequestError(FIELD, f"{TITLE}: unknown VAE {text!r}; valid: {', '.join(c.vaes) or 'none'}")


def _hires_upscaler(c: ScriptChoices, x: str) -> str:
    return _pick(x, [*LATENT_UPSCALE_MODES, *c.upscalers], "hires upscaler")


def _style(c: ScriptChoices, x: str) -> str:
    return ",".join(_pick(s, c.styles, "style") for s in _split_styles(x))


def _rng(c: ScriptChoices, x: str) -> str:
    return _pick(x, RNG_SOURCES, "RNG source")


def _face_restore_value(c: ScriptChoices, x: str) -> str:
    valid = ["CodeFormer", "GFPGAN", "True", "False", "Yes", "No", "Y", "N", "1", "0"]
    _pick(x, valid, "face restore value")
    return str(x).strip()


RNG_SOURCES = ["GPU", "CPU", "NV"]
BOOL_CHOICES = ["False", "True"]

# --------------------------------------------------------------------------- the axis table (A1111 v1.10 order)


def _opt(label: str, kind: str, apply: Apply | None = None, **kw: Any) -> AxisOption:
    return AxisOption(label, kind, apply, **kw)


AXES: tuple[AxisOption, ...] = (
    _opt("Nothing", "str", lambda req, x, xs: req, fmt="nothing"),
    _opt("Seed", "int", _field("seed")),
    _opt("Var. seed", "int", _field("subseed")),
    _opt("Var. strength", "float", _field("subseed_strength")),
    _opt("Steps", "int", _field("steps")),
    _opt("Hires steps", "int", _field("hr_second_pass_steps"), mode="txt2img"),
    _opt("CFG Scale", "float", _field("cfg_scale")),
    _opt("Image CFG Scale", "float", mode="img2img"),
    _opt("Prompt S/R", "str", _prompt_sr, fmt="raw", check=_check_prompt_sr),
    _opt("Prompt order", "perm", _prompt_order, fmt="join", check=_check_prompt_order),
    _opt("Sampler", "str", _field("sampler_name"), fmt="raw", mode="txt2img", choices=lambda c: list(c.samplers),
         resolve=_sampler),
    _opt("Hires sampler", "str", _field("hr_sampler_name"), mode="txt2img",
         choices=lambda c: [SAME_SAMPLER, *c.samplers], resolve=_hires_sampler),
    _opt("Sampler", "str", _field("sampler_name"), fmt="raw", mode="img2img", choices=lambda c: list(c.samplers),
         resolve=_sampler),
    _opt("Checkpoint name", "str", _override("sd_model_checkpoint"), fmt="basename", cost=1.0,
         choices=lambda c: sorted(c.checkpoints, key=str.casefold), resolve=_checkpoint),
    _opt("Negative Guidance minimum sigma", "float", neutral=0.0),
    _opt("Sigma Churn", "float", _field("s_churn")),
    _opt("Sigma min", "float", _field("s_tmin")),
    _opt("Sigma max", "float", _field("s_tmax")),
    _opt("Sigma noise", "float", _field("s_noise")),
    _opt("Schedule type", "str", _field("scheduler"), choices=lambda c: ["Automatic", *c.schedules],
         resolve=_schedule),
    _opt("Schedule min sigma", "float", neutral=0.0),
    _opt("Schedule max sigma", "float", neutral=0.0),
    _opt("Schedule rho", "float", neutral=0.0),
    _opt("Eta", "float", _field("eta")),
    _opt("Clip skip", "int", _override("CLIP_stop_at_last_layers"), minimum=1, maximum=12),
    _opt("Denoising", "float", _field("denoising_strength")),
    _opt("Initial noise multiplier", "float", _field("initial_noise_multiplier")),
    _opt("Extra noise", "float", _override("img2img_extra_noise"), minimum=0.0, maximum=1.0),
    _opt("Hires upscaler", "str", _field("hr_upscaler"), mode="txt2img",
         choices=lambda c: [*LATENT_UPSCALE_MODES, *c.upscalers], resolve=_hires_upscaler),
    _opt("Cond. Image Mask Weight", "float", _override("inpainting_mask_weight"), mode="img2img", minimum=0.0,
         maximum=1.0),
    _opt("VAE", "str", _override("sd_vae"), cost=0.7, choices=lambda c: ["None", *(v for v in c.vaes if v != "None")],
         resolve=_vae),
    _opt("Styles", "str", _styles, choices=lambda c: list(c.styles), resolve=_style),
    _opt("UniPC Order", "int", cost=0.5),
    _opt("Face restore", "str", _face_restore, fmt="raw", resolve=_face_restore_value),
    _opt("Token merging ratio", "float", neutral=0.0),
    _opt("Token merging ratio high-res", "float", neutral=0.0),
    _opt("Always discard next-to-last sigma", "str", neutral="False", choices=lambda c: list(BOOL_CHOICES)),
    _opt("SGM noise multiplier", "str", neutral="False", choices=lambda c: list(BOOL_CHOICES)),
    _opt("Refiner checkpoint", "str", _refiner, fmt="basename", cost=1.0,
         choices=lambda c: ["None", *sorted(c.checkpoints, key=str.casefold)], resolve=_refiner_checkpoint),
    _opt("Refiner switch at", "float", _field("refiner_switch_at")),
    _opt("RNG source", "str", _override("randn_source"), choices=lambda c: list(RNG_SOURCES), resolve=_rng),
)


def axes_for(mode: str) -> list[AxisOption]:
    """The axis types offered in ``mode``, in the order A1111's ``script_args`` indices count them."""
    return [a for a in AXES if a.mode is None or a.mode == mode]


def axis_labels(mode: str) -> list[str]:
    return [a.label for a in axes_for(mode)]


# --------------------------------------------------------------------------- arguments


def _bool(name: str, value: Any) -> bool:
    return script_flag(TITLE, name, value, bool(DEFAULTS[name]))


def _axis_type(name: str, value: Any, mode: str) -> str:
    axes = axes_for(mode)
    if value is None or value == "":
        return "Nothing"
    if isinstance(value, bool):
        raise RequestError(FIELD, f"{TITLE}: {name} must be an axis index or label, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if not 0 <= value < len(axes):
            raise RequestError(FIELD, f"{TITLE}: {name} index {value} is out of range for {mode} (0-{len(axes) - 1}: "
                                      f"{', '.join(f'{i} {a.label}' for i, a in enumerate(axes))})")
        return axes[value].label
    if isinstance(value, str):
        for a in axes:
            if a.label.lower() == value.strip().lower():
                return a.label
        raise RequestError(FIELD, f"{TITLE}: unknown {name} {value!r} for {mode}; valid: "
                                  f"{', '.join(a.label for a in axes)}")
    raise RequestError(FIELD, f"{TITLE}: {name} must be an axis index or label, got {value!r}")


def _values_arg(name: str, value: Any) -> str | list[Any]:
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise RequestError(FIELD, f"{TITLE}: {name} must be text or a list, got {value!r}")


def _dropdown_arg(name: str, value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return csv_to_list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise RequestError(FIELD, f"{TITLE}: {name} must be a list, got {value!r}")


def parse_args(args: Any, mode: str) -> dict[str, Any]:
    """A1111's positional ``script_args`` (the 18 items of :data:`ARG_NAMES`; missing trailing ones take the
    UI defaults) or a dict with the same names, normalised: axis types become labels, flags booleans."""
    raw = raw_script_args(TITLE, args, ARG_NAMES)
    out: dict[str, Any] = {}
    for axis in "xyz":
        out[f"{axis}_type"] = _axis_type(f"{axis}_type", raw.get(f"{axis}_type"), mode)
        out[f"{axis}_values"] = _values_arg(f"{axis}_values", raw.get(f"{axis}_values"))
        out[f"{axis}_values_dropdown"] = _dropdown_arg(f"{axis}_values_dropdown", raw.get(f"{axis}_values_dropdown"))
    for name in FLAGS:
        out[name] = _bool(name, raw.get(name))
    margin = script_int(TITLE, "margin_size", raw.get("margin_size"), 0, MAX_MARGIN)
    out["margin_size"] = margin
    return out


# --------------------------------------------------------------------------- values


_NUM = r"[+-]?\s*\d+"
_FNUM = r"[+-]?\s*\d+(?:\.\d*)?"
RE_RANGE = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})(?:\s*\(([+-]?\d+)\s*\))?\s*")
RE_RANGE_COUNT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})\s*\[(\d+)\s*]\s*")
RE_RANGE_FLOAT = re.compile(rf"\s*({_FNUM})\s*-\s*({_FNUM})(?:\s*\(([+-]?\d+(?:\.\d*)?)\s*\))?\s*")
RE_RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FNUM})\s*-\s*({_FNUM})\s*\[(\d+)\s*]\s*")


def csv_to_list(text: str) -> list[str]:
    """A1111's CSV reading: comma-separated, double quotes allowed (also after a space), values stripped."""
    return [v.strip() for row in csv.reader(StringIO(text), skipinitialspace=True) for v in row]


def list_to_csv(values: Sequence[Any]) -> str:
    out = StringIO()
    csv.writer(out).writerow([str(v) for v in values])
    return out.getvalue().strip()


def _num(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _int_range(start: int, end: int, step: int) -> list[int]:
    if step == 0:
        raise ValueError("a range step cannot be 0")
    return list(range(start, end + (1 if step > 0 else -1), step))


def _float_range(start: float, end: float, step: float) -> list[float]:
    if step == 0:
        raise ValueError("a range step cannot be 0")
    count = math.floor((end - start) / step + 1e-9) + 1
    return [round(start + i * step, 10) for i in range(max(0, count))]


def _linspace(start: float, end: float, num: int) -> list[float]:
    if num <= 1:
        return [start] if num == 1 else []
    return [start + (end - start) * i / (num - 1) for i in range(num)]


def expand_values(kind: str, values: list[str]) -> list[Any]:
    """Typed values with A1111's ranges: ``1-5`` (every integer), ``1-5 (+2)`` (a step), ``1-10 [4]`` (a count,
    evenly spaced); the same for floats. Raises ValueError for a value of the wrong type."""
    if kind == "perm":
        return [tuple(p) for p in itertools.permutations(values)]
    if kind not in ("int", "float"):
        return list(values)
    out: list[Any] = []
    for val in values:
        if val == "" or val is None:
            continue
        if not isinstance(val, str):
            val = str(val)
        if kind == "int":
            if m := RE_RANGE.fullmatch(val):
                step = int(m.group(3)) if m.group(3) else 1
                out += _int_range(int(_num(m.group(1))), int(_num(m.group(2))), step)
            elif m := RE_RANGE_COUNT.fullmatch(val):
                out += [int(x) for x in _linspace(int(_num(m.group(1))), int(_num(m.group(2))), int(m.group(3)))]
            else:
                out.append(int(float(val)) if re.fullmatch(r"[+-]?\d+(\.0*)?", val.strip()) else int(val))
        else:
            if m := RE_RANGE_FLOAT.fullmatch(val):
                step = float(m.group(3)) if m.group(3) else 1.0
                out += _float_range(float(_num(m.group(1))), float(_num(m.group(2))), step)
            elif m := RE_RANGE_COUNT_FLOAT.fullmatch(val):
                out += _linspace(float(_num(m.group(1))), float(_num(m.group(2))), int(m.group(3)))
            else:
                out.append(float(val))
    return out


def format_value(opt: AxisOption, x: Any) -> str:
    """The legend text for one value (A1111's ``format_value_add_label`` and friends)."""
    if isinstance(x, float):
        x = round(x, 8)
    if opt.fmt == "nothing":
        return ""
    if opt.fmt == "join":
        return ", ".join(x)
    if opt.fmt == "basename":
        return os.path.basename(str(x)) if x is not None else "None"
    if opt.fmt == "raw":
        return str(x)
    return f"{opt.label}: {x}"


@dataclass
class Axis:
    opt: AxisOption
    name: str  # "X", "Y" or "Z"
    values: list[Any]
    text: str  # the values as the client gave them (infotext "X Values")

    @property
    def labels(self) -> list[str]:
        return [format_value(self.opt, x) for x in self.values]


def _axis(run: ScriptRun, name: str) -> Axis:
    key = name.lower()
    args = run.args
    label = args.get(f"{key}_type") or "Nothing"
    opt = next(a for a in axes_for(run.mode) if a.label == label)
    if opt.label == "Nothing":
        return Axis(opt, name, [0], "")
    text_arg = args.get(f"{key}_values", "")
    dropdown = list(args.get(f"{key}_values_dropdown") or [])
    if opt.choices is not None and not args.get("csv_mode") and dropdown:
        raw_values = [str(v).strip() for v in dropdown]
        text = list_to_csv(raw_values)
    elif isinstance(text_arg, list):
        raw_values = [str(v).strip() if isinstance(v, str) else v for v in text_arg]
        text = list_to_csv(raw_values)
    else:
        raw_values, text = csv_to_list(text_arg), text_arg
    try:
        values = expand_values(opt.kind, raw_values)
    except ValueError as exc:
        kind = {"int": "integers", "float": "numbers"}.get(opt.kind, "values")
        raise RequestError(FIELD, f"{TITLE}: {name} values for {opt.label} must be {kind}: {exc}") from None
    if not values:
        raise RequestError(FIELD, f"{TITLE}: no {name} values given for {opt.label}")
    if not opt.supported:
        if opt.neutral is NO_NEUTRAL or any(not _is_neutral(opt, v) for v in values):
            raise RequestError(FIELD, f"{TITLE}: axis {opt.label} is not supported here")
        return Axis(opt, name, values, text)
    for v in values:
        if opt.minimum is not None and isinstance(v, (int, float)) and not opt.minimum <= v <= opt.maximum:
            raise RequestError(FIELD, f"{TITLE}: {opt.label} ({name} axis) must be between {opt.minimum} and "
                                      f"{opt.maximum}, got {v}")
    if opt.resolve is not None:
        values = [opt.resolve(run.choices, v) for v in values]
    return Axis(opt, name, values, text)


def _is_neutral(opt: AxisOption, v: Any) -> bool:
    if isinstance(opt.neutral, str):
        return str(v).strip().lower() == opt.neutral.lower()
    try:
        return float(v) == float(opt.neutral)
    except (TypeError, ValueError):
        return False


def _fix_seeds(axis: Axis) -> None:
    if axis.opt.label in ("Seed", "Var. seed"):
        axis.values = [resolve_seed(v) if v in (None, "", -1) else v for v in axis.values]


def seed_offset(ix: int, iy: int, iz: int, sizes: tuple[int, int, int], vary: tuple[bool, bool, bool]) -> int:
    """How far "Vary seeds for X/Y/Z" (A1111 v1.7+) moves the seed of cell ``(ix, iy, iz)`` on.

    The varied axes number their cells like digits, X the fastest: a varied X adds ``ix``, a varied Y adds
    ``iy`` times the X size, a varied Z ``iz`` times the X and Y sizes -- where an axis that is not varied
    counts as size 1, so with only Y varied the rows get seed, seed+1, seed+2 ... whatever the X size.
    """
    nx = sizes[0] if vary[0] else 1
    ny = sizes[1] if vary[1] else 1
    return (ix if vary[0] else 0) + (iy * nx if vary[1] else 0) + (iz * nx * ny if vary[2] else 0)


def _vary_seed(req: GenerationRequest, offset: int) -> GenerationRequest:
    """The cell's request with its seed moved on by ``offset`` (after the axes are applied, so a Seed axis
    value moves too). A seed of -1 ("Keep -1 for seeds") stays random: each such cell draws its own seed
    anyway (A1111 would add the offset to -1 and give the fixed seeds 0, 1, ...). Past the largest seed it
    wraps around to 0."""
    if not offset or req.seed == -1:
        return req
    return req.with_(seed=(req.seed + offset) % (MAX_SEED + 1))


# --------------------------------------------------------------------------- running


@dataclass
class _Cell:
    request: GenerationRequest
    result: GenerationResult | None = None


@dataclass
class _Plan:
    x: Axis
    y: Axis
    z: Axis
    cells: dict[tuple[int, int, int], _Cell] = field(default_factory=dict)

    def index(self, ix: int, iy: int, iz: int) -> int:
        return ix + iy * len(self.x.values) + iz * len(self.x.values) * len(self.y.values)


def _order(x: Axis, y: Axis, z: Axis) -> list[tuple[int, int, int]]:
    """Cell coordinates, the most costly axis outermost (A1111: z, then y, then x by default)."""
    cx, cy, cz = x.opt.cost, y.opt.cost, z.opt.cost
    first, second = "z", "y"
    if cx > cy and cx > cz:
        first, second = "x", ("y" if cy > cz else "z")
    elif cy > cx and cy > cz:
        first, second = "y", ("x" if cx > cz else "z")
    elif cz > cx and cz > cy:
        first, second = "z", ("x" if cx > cy else "y")
    third = ({"x", "y", "z"} - {first, second}).pop()
    sizes = {"x": len(x.values), "y": len(y.values), "z": len(z.values)}
    out = []
    for a, b, c in itertools.product(range(sizes[first]), range(sizes[second]), range(sizes[third])):
        pos = {first: a, second: b, third: c}
        out.append((pos["x"], pos["y"], pos["z"]))
    return out


def _script_params(title: str, axes: Sequence[Axis], fixed_seeds: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"Script": title}
    for axis in axes:
        if axis.opt.label == "Nothing":
            continue
        params[f"{axis.name} Type"] = axis.opt.label
        params[f"{axis.name} Values"] = axis.text
        if axis.opt.label in ("Seed", "Var. seed") and fixed_seeds:
            params[f"Fixed {axis.name} Values"] = ", ".join(str(v) for v in axis.values)
    return params


def run(r: ScriptRun) -> GenerationResult:
    a = r.args = parse_args(r.args, r.mode)  # idempotent: run_script already parsed them
    base = r.request
    check_request(base)
    fixed = not a["no_fixed_seeds"]
    if fixed:
        base = base.with_(seed=resolve_seed(base.seed), subseed=resolve_seed(base.subseed))
    x, y, z = _axis(r, "X"), _axis(r, "Y"), _axis(r, "Z")
    if fixed:
        for axis in (x, y, z):
            _fix_seeds(axis)
    for axis in (x, y, z):
        if axis.opt.check is not None:
            axis.opt.check(base, axis.values, axis.name)
    count = len(x.values) * len(y.values) * len(z.values)
    # A1111 (scripts/xyz_grid.py): the grid's rounded megapixels must stay below img_max_size_mp
    limit = float(r.opts.get("img_max_size_mp", MAX_GRID_MP))
    mp = round(count * base.width * base.height / 1_000_000)
    if mp >= limit:
        raise RequestError(FIELD, f"{TITLE}: the grid would be {mp} megapixels; the limit is below {limit:g} "
                                  "(option img_max_size_mp)")

    plan = _Plan(x, y, z)
    sizes = (len(x.values), len(y.values), len(z.values))
    vary = (a["vary_seeds_x"], a["vary_seeds_y"], a["vary_seeds_z"])
    for ix, vx in enumerate(x.values):
        for iy, vy in enumerate(y.values):
            for iz, vz in enumerate(z.values):
                req = base
                for axis, v in ((x, vx), (y, vy), (z, vz)):
                    req = axis.opt.apply(req, v, axis.values) if axis.opt.supported else req
                req = _vary_seed(req, seed_offset(ix, iy, iz, sizes, vary))
                try:
                    check_request(req)
                except RequestError as exc:
                    where = ", ".join(f"{ax.name}={lab}" for ax, lab in
                                      ((x, x.labels[ix]), (y, y.labels[iy]), (z, z.labels[iz])) if lab)
                    raise RequestError(FIELD, f"{TITLE}: cell {where or 1}: {exc.field}: {exc.message}") from None
                plan.cells[(ix, iy, iz)] = _Cell(req)

    r.job.plan(sum(cell.request.n_iter for cell in plan.cells.values()))  # progress over the whole grid
    for key in _order(x, y, z):
        if r.job.interrupted:
            break
        cell = plan.cells[key]
        cell.result = r.generate(cell.request)
        if r.job.interrupted:
            break
    return _assemble(r, plan, a, fixed)


def _assemble(r: ScriptRun, plan: _Plan, a: dict[str, Any], fixed: bool) -> GenerationResult:
    x, y, z = plan.x, plan.y, plan.z
    keys = sorted(plan.cells, key=lambda k: plan.index(*k))
    done = [plan.cells[k].result for k in keys if plan.cells[k].result is not None and plan.cells[k].result.images]
    interrupted = r.job.interrupted or any(res.interrupted for res in done) or len(done) < len(keys)
    if not done:
        return GenerationResult(interrupted=interrupted, info={"infotexts": [], "interrupted": interrupted})
    first = done[0]
    cell_size = first.images[0].size
    blank = Image.new("RGB", cell_size)

    def cell_image(k: tuple[int, int, int]) -> Image.Image:
        res = plan.cells[k].result
        return res.images[0] if res is not None and res.images else blank

    def cell_infotext(k: tuple[int, int, int]) -> str:
        res = plan.cells[k].result
        return res.infotexts[0] if res is not None and res.infotexts else (first.infotexts[0] if first.infotexts
                                                                            else "")

    grid_params = _script_params(TITLE, (x, y), fixed)
    sub_grids, sub_infos = [], []
    for iz in range(len(z.values)):
        grid = image_grid([cell_image((ix, iy, iz)) for iy in range(len(y.values)) for ix in range(len(x.values))],
                          rows=len(y.values))
        if a["draw_legend"]:
            grid = draw_annotations(grid, cell_size[0], cell_size[1], x.labels, y.labels, a["margin_size"])
        sub_grids.append(grid)
        sub_infos.append(add_params(cell_infotext((0, 0, iz)), grid_params))
    if len(z.values) == 1 and z.opt.label == "Nothing":
        main = sub_grids[0]
    else:
        main = image_grid(sub_grids, rows=1)
        if a["draw_legend"]:
            main = draw_annotations(main, sub_grids[0].width, sub_grids[0].height, z.labels, [""])
    main_info = add_params(cell_infotext((0, 0, 0)), _script_params(TITLE, (x, y, z), fixed))

    grids = [main]
    grid_infos = [main_info]
    if a["include_sub_grids"]:
        grids += sub_grids
        grid_infos += sub_infos
    lone = done if a["include_lone_images"] else []
    paths: list[str] = []
    if r.save_grid is not None:
        count = len(grids) if a["include_sub_grids"] and len(z.values) > 1 else 1
        for image, info in zip(grids[:count], grid_infos[:count]):
            saved = r.save_grid(image, info)
            if saved:
                paths.append(saved)
    for res in done:
        paths += res.paths
    out = combined_info(grids, grid_infos, done, lone, first, interrupted, paths)
    if a["include_sub_grids"]:
        _sub_grid_params(out, [plan.cells[(0, 0, iz)].result for iz in range(len(z.values))])
    return out


def _sub_grid_params(out: GenerationResult, firsts: Sequence[GenerationResult | None]) -> None:
    """Sub-grid ``1 + iz`` takes the seed, variation seed and prompts of its own first cell ``firsts[iz]`` (as
    its infotext does, and A1111's ``all_seeds``): they differ from the main grid's with a Z axis of seeds,
    prompts, or "Vary seeds for Z"."""
    for i, res in enumerate(firsts, start=1):
        if res is None or not res.images:
            continue
        for name in ("seeds", "subseeds", "prompts", "negative_prompts"):
            values = getattr(res, name)
            if values and i < len(getattr(out, name)):
                getattr(out, name)[i] = values[0]
    out.info.update(all_seeds=list(out.seeds), all_subseeds=list(out.subseeds), all_prompts=list(out.prompts),
                    all_negative_prompts=list(out.negative_prompts))


def render(mode: str, choices: Callable[[], ScriptChoices] | None = None) -> dict[str, Any]:
    """The UI controls (A1111's layout, by the same names as the keyword ``script_args``)."""
    import gradio as gr

    axes = axes_for(mode)
    labels = [a.label for a in axes]
    by_label = {a.label: a for a in axes}
    out: dict[str, Any] = {}
    for axis, default in (("x", "Seed"), ("y", "Nothing"), ("z", "Nothing")):
        with gr.Row():
            out[f"{axis}_type"] = gr.Dropdown(labels, value=default, label=f"{axis.upper()} type",
                                              elem_id=f"{mode}_xyz_{axis}_type", scale=1)
            out[f"{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", lines=1, scale=3,
                                               elem_id=f"{mode}_xyz_{axis}_values")
            out[f"{axis}_values_dropdown"] = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                                         label=f"{axis.upper()} values", visible=False, scale=3,
                                                         elem_id=f"{mode}_xyz_{axis}_values_dropdown")
    with gr.Row():
        with gr.Column():
            out["draw_legend"] = gr.Checkbox(True, label="Draw legend", elem_id=f"{mode}_xyz_draw_legend")
            out["no_fixed_seeds"] = gr.Checkbox(False, label="Keep -1 for seeds",
                                                elem_id=f"{mode}_xyz_no_fixed_seeds")
            with gr.Row():
                for axis in "xyz":
                    out[f"vary_seeds_{axis}"] = gr.Checkbox(False, label=f"Vary seeds for {axis.upper()}",
                                                            min_width=80, elem_id=f"{mode}_xyz_vary_seeds_{axis}")
        with gr.Column():
            out["include_lone_images"] = gr.Checkbox(False, label="Include Sub Images",
                                                     elem_id=f"{mode}_xyz_include_lone_images")
            out["include_sub_grids"] = gr.Checkbox(False, label="Include Sub Grids",
                                                   elem_id=f"{mode}_xyz_include_sub_grids")
            out["csv_mode"] = gr.Checkbox(False, label="Use text inputs instead of dropdowns",
                                          elem_id=f"{mode}_xyz_csv_mode")
        with gr.Column():
            out["margin_size"] = gr.Slider(0, MAX_MARGIN, value=0, step=2, label="Grid margins (px)",
                                           elem_id=f"{mode}_xyz_margin_size")

    def select_axis(label: str, text: str, picked: list[str] | None, csv_mode: bool):
        opt = by_label.get(label)
        if opt is None or opt.choices is None:
            return gr.update(visible=True), gr.update(visible=False)
        valid = opt.choices(choices() if choices is not None else ScriptChoices())
        if csv_mode:
            if picked:
                text = list_to_csv([p for p in picked if p in valid])
            return gr.update(visible=True, value=text), gr.update(visible=False, choices=valid, value=[])
        if text:
            picked = [v for v in csv_to_list(text) if v in valid]
        return gr.update(visible=False, value=""), gr.update(visible=True, choices=valid, value=picked or [])

    for axis in "xyz":
        ins = [out[f"{axis}_type"], out[f"{axis}_values"], out[f"{axis}_values_dropdown"], out["csv_mode"]]
        outs = [out[f"{axis}_values"], out[f"{axis}_values_dropdown"]]
        out[f"{axis}_type"].change(select_axis, inputs=ins, outputs=outs, api_name=False, queue=False,
                                   show_progress="hidden")
        out["csv_mode"].change(select_axis, inputs=ins, outputs=outs, api_name=False, queue=False,
                               show_progress="hidden")
    return out


#: The script; registering it makes this module a built-in plugin (:data:`webui.builtin.BUILTIN_PLUGINS`).
SCRIPT = ScriptDef(TITLE, run, parse_args=parse_args, render=render, arg_names=ARG_NAMES)


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [SCRIPT]
