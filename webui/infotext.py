"""Generation-parameter text ("infotext") in the AUTOMATIC1111 v1.10 format.

An infotext is what the web UI stores in a PNG ``parameters`` text chunk and
shows under the gallery::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, ...

The negative prompt line is present only when the negative prompt is not
empty; the last line holds ``Key: value`` pairs joined by ``", "``.  Values
containing characters that would confuse the parser are JSON-quoted.

The module offers:

* :func:`quote` / :func:`unquote` for single values,
* :func:`format_infotext` to write an infotext,
* :func:`parse_infotext` to read one back (never raises), filling in the
  defaults A1111 assumes for keys that older infotexts leave out,
* :func:`infotext_to_request` to turn a parsed infotext into the field names
  and types of A1111's ``/sdapi/v1/txt2img`` / ``img2img`` request body,
* :func:`backcompat` to add the compatibility options an infotext of an older
  A1111 version needs (option ``auto_backcompat``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from packaging.version import InvalidVersion, Version

__all__ = [
    "NEGATIVE_PROMPT_PREFIX",
    "PARSE_DEFAULTS",
    "LEGACY_SCHEDULE_SUFFIXES",
    "REQUEST_FIELDS",
    "MASK_MODE",
    "MASKED_CONTENT",
    "INPAINT_AREA",
    "quote",
    "unquote",
    "format_infotext",
    "parse_infotext",
    "infotext_to_request",
    "parse_version",
    "backcompat",
]

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"
"""Prefix of the line that starts the negative prompt."""

MASK_MODE: Mapping[int, str] = MappingProxyType({0: "Inpaint masked", 1: "Inpaint not masked"})
"""A1111's labels of ``inpainting_mask_invert`` (infotext "Mask mode", the img2img tab's radio)."""

MASKED_CONTENT: Mapping[int, str] = MappingProxyType({0: "fill", 1: "original", 2: "latent noise",
                                                      3: "latent nothing"})
"""A1111's labels of ``inpainting_fill`` (infotext "Masked content", the img2img tab, outpainting scripts)."""

INPAINT_AREA: Mapping[bool, str] = MappingProxyType({False: "Whole picture", True: "Only masked"})
"""A1111's labels of ``inpaint_full_res`` (infotext "Inpaint area", the img2img tab's radio)."""

PARAM_SEPARATOR = ", "
"""Separator between ``Key: value`` pairs on the parameter line."""

PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
"""One ``Key: value`` pair; the value is either JSON-quoted or runs to the next comma."""

IMAGE_SIZE_PATTERN = re.compile(r"(\d+)x(\d+)")
"""A ``WxH`` value (matched in full), split into ``Key-1`` and ``Key-2``."""

MIN_PARAM_MATCHES = 3
"""The last line is the parameter line only with at least this many pairs."""

QUOTE_TRIGGERS = (",", ":", "\n", '"')
"""A value whose text contains any of these is written JSON-quoted."""

MAX_PLAIN_INTEGRAL_FLOAT = 1e16
"""Integral floats below this magnitude are written without ``.0``."""

PROMPT_KEY = "Prompt"
NEGATIVE_PROMPT_KEY = "Negative prompt"
SAMPLER_KEY = "Sampler"
SCHEDULE_TYPE_KEY = "Schedule type"

PARSE_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {
        # Missing "Clip skip" means the default of 1 (kept as a string, as A1111 does).
        "Clip skip": "1",
        # Hires fix: no explicit resize, same sampler/scheduler/checkpoint/prompts.
        "Hires resize-1": 0,
        "Hires resize-2": 0,
        "Hires sampler": "Use same sampler",
        "Hires schedule type": "Use same scheduler",
        "Hires checkpoint": "Use same checkpoint",
        "Hires prompt": "",
        "Hires negative prompt": "",
        # img2img inpainting defaults.
        "Mask mode": MASK_MODE[0],
        "Masked content": MASKED_CONTENT[1],
        "Inpaint area": INPAINT_AREA[False],
        "Masked area padding": 32,
        # Missing RNG means the default GPU noise source.
        "RNG": "GPU",
        # Scheduler defaults (0 means "use the model's own value").
        "Schedule type": "Automatic",
        "Schedule max sigma": 0,
        "Schedule min sigma": 0,
        "Schedule rho": 0,
        # Full (not tiny/TAESD) VAE for encoding and decoding.
        "VAE Encoder": "Full",
        "VAE Decoder": "Full",
        "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    }
)
"""Values A1111 v1.10 assumes for keys absent from an infotext."""

FP8_WEIGHT_KEY = "FP8 weight"
FP8_DISABLED = "Disable"
FP8_CACHE_KEY = "Cache FP16 weight for LoRA"
FP8_CACHE_DEFAULT = False
"""Default of ``Cache FP16 weight for LoRA``, applied only when FP8 is enabled."""

LEGACY_SCHEDULE_SUFFIXES = ("SGM Uniform", "Polyexponential", "Exponential", "Karras", "Uniform")
"""Scheduler labels that pre-1.9 infotexts appended to the sampler name.

Longer labels come first so that ``SGM Uniform`` wins over ``Uniform``.
"""


# --------------------------------------------------------------------------- writing


def _value_text(value: object) -> str:
    """Return the plain (unquoted) text A1111 writes for ``value``."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float) and value.is_integer() and abs(value) < MAX_PLAIN_INTEGRAL_FLOAT:
        return str(int(value))
    return str(value)


def quote(value: object) -> str:
    """Return ``value`` as written on the parameter line.

    The value is turned into text (booleans as ``True``/``False``, integral
    floats without ``.0``); the text is JSON-quoted when it contains a comma,
    colon, newline or double quote, and returned as is otherwise.
    """
    text = _value_text(value)
    if any(trigger in text for trigger in QUOTE_TRIGGERS):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Undo :func:`quote`: JSON-decode ``text`` if it is a ``"..."`` string.

    Text that is not enclosed in double quotes, or does not decode to a JSON
    string, is returned unchanged.
    """
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def _format_params(params: Mapping[str, object]) -> str:
    """Join ``params`` into the parameter line, leaving out ``None`` values."""
    return PARAM_SEPARATOR.join(
        f"{key}: {quote(value)}" for key, value in params.items() if value is not None
    )


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build an infotext from the prompts and the parameters (in their dict order).

    Parameters whose value is ``None`` are left out.  The negative prompt line
    is written only when ``negative_prompt`` is not empty, and the parameter
    line only when at least one parameter remains.  Like A1111, the result is
    stripped of surrounding whitespace.
    """
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PROMPT_PREFIX} {negative_prompt}")
    param_line = _format_params(params)
    if param_line:
        lines.append(param_line)
    return "\n".join(lines).strip()


# --------------------------------------------------------------------------- parsing


def _is_param_line(line: str) -> bool:
    """Tell whether ``line`` holds enough ``Key: value`` pairs to be the parameter line."""
    return len(PARAM_PATTERN.findall(line)) >= MIN_PARAM_MATCHES


def _split_off_param_line(text: str) -> tuple[list[str], str]:
    """Split ``text`` into its prompt lines and its parameter line ("" if none)."""
    *lines, last = text.strip().split("\n")
    if _is_param_line(last):
        return lines, last
    return [*lines, last], ""


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    """Divide the non-parameter lines into the prompt and the negative prompt.

    Lines are stripped of surrounding whitespace.  The first line starting with
    ``Negative prompt:`` and all lines after it form the negative prompt; the
    lines before it form the prompt.  As in A1111 (``parse_generation_parameters``)
    the prefix is removed from every line that starts with it, not only the first,
    and a line is joined with a newline only to a non-empty text (so empty lines at
    the start of the negative prompt vanish).
    """
    texts = ["", ""]  # prompt, negative prompt
    part = 0
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            part = 1
            line = line[len(NEGATIVE_PROMPT_PREFIX):].strip()
        texts[part] = f"{texts[part]}\n{line}" if texts[part] else line
    return texts[0], texts[1]


def _parse_param_line(line: str) -> dict[str, object]:
    """Read every ``Key: value`` pair of the parameter line.

    Quoted values are unquoted; ``WxH`` values become ``Key-1`` and ``Key-2``.
    A key given twice keeps its last value.  A key with an empty value is left
    out, as in A1111 (its parser fails on the empty value and skips the pair), so
    the key's default applies.
    """
    params: dict[str, object] = {}
    for key, raw in PARAM_PATTERN.findall(line):
        if not raw:
            continue
        value = unquote(raw)
        size = IMAGE_SIZE_PATTERN.fullmatch(value)
        if size is None:
            params[key] = value
        else:
            params[f"{key}-1"], params[f"{key}-2"] = size.group(1), size.group(2)
    return params


def _split_legacy_sampler(params: dict[str, object]) -> None:
    """Split a pre-1.9 sampler name such as ``DPM++ 2M Karras`` in place.

    Applies only when there is no ``Schedule type`` key: the scheduler label
    is moved from the end of ``Sampler`` into ``Schedule type``.
    """
    sampler = params.get(SAMPLER_KEY)
    if SCHEDULE_TYPE_KEY in params or not isinstance(sampler, str):
        return
    for suffix in LEGACY_SCHEDULE_SUFFIXES:
        if not sampler.endswith(f" {suffix}"):
            continue
        name = sampler[: -len(suffix) - 1]
        if name.strip():
            params[SAMPLER_KEY] = name
            params[SCHEDULE_TYPE_KEY] = suffix
        return


def _apply_defaults(params: dict[str, object]) -> None:
    """Fill in A1111's defaults for keys the infotext leaves out, in place."""
    for key, value in PARSE_DEFAULTS.items():
        params.setdefault(key, value)
    if params[FP8_WEIGHT_KEY] != FP8_DISABLED:
        params.setdefault(FP8_CACHE_KEY, FP8_CACHE_DEFAULT)


def parse_infotext(text: str) -> dict[str, object]:
    """Parse an infotext into a dict; never raises.

    The result holds ``Prompt`` and ``Negative prompt`` (first), then every
    parameter of the last line (as strings; ``Size: 512x512`` gives
    ``Size-1``/``Size-2``), then A1111's defaults for missing keys
    (:data:`PARSE_DEFAULTS`).  The last line counts as the parameter line only
    when it holds at least three ``Key: value`` pairs; otherwise it belongs to
    the prompt.  Prompt lines are stripped of surrounding whitespace.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    lines, param_line = _split_off_param_line(text)
    prompt, negative_prompt = _split_prompts(lines)
    result: dict[str, object] = {PROMPT_KEY: prompt, NEGATIVE_PROMPT_KEY: negative_prompt}
    params = _parse_param_line(param_line)
    params.pop(PROMPT_KEY, None)
    params.pop(NEGATIVE_PROMPT_KEY, None)
    _split_legacy_sampler(params)
    result.update(params)
    _apply_defaults(result)
    return result


# --------------------------------------------------------------------------- API request


def _to_str(value: object) -> str | None:
    """Convert to a string (``None`` stays ``None``)."""
    return None if value is None else str(value)


def _to_int(value: object) -> int | None:
    """Convert ``"20"``, ``20`` or an integral ``"20.0"`` to an int; else ``None``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        number = _to_float(text)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _to_float(value: object) -> float | None:
    """Convert to a finite float; ``None`` if that is not possible."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value if isinstance(value, (int, float)) else str(value).strip())
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _to_bool(value: object) -> bool | None:
    """``True``/``"True"`` and ``False``/``"False"`` (as A1111 writes them); else ``None``."""
    return {"True": True, "False": False}.get(str(value).strip())


def _lookup(table: Mapping[str, object], value: object) -> object | None:
    """A named choice's value (``None`` for an unknown name)."""
    return table.get(str(value).strip())


def _value_of(labels: Mapping[object, str]) -> dict[str, object]:
    """label -> value of a table of labels (value -> label)."""
    return {label: value for value, label in labels.items()}


def _choice_unless(sentinel: str) -> Callable[[object], str | None]:
    """Make a string converter that skips the "use the same as ..." ``sentinel``."""

    def convert(value: object) -> str | None:
        text = _to_str(value)
        return None if text == sentinel else text

    return convert


class RequestField(NamedTuple):
    """How one infotext key maps onto the API request body."""

    source: str
    """Key in the parsed infotext."""
    target: tuple[str, ...]
    """Path in the request; more than one part means nested dicts."""
    convert: Callable[[object], object]
    """Converter; returning ``None`` (or raising) skips the field."""


OVERRIDE_SETTINGS = "override_settings"

REQUEST_FIELDS: tuple[RequestField, ...] = (
    RequestField("Prompt", ("prompt",), _to_str),
    RequestField("Negative prompt", ("negative_prompt",), _to_str),
    RequestField("Steps", ("steps",), _to_int),
    RequestField("Sampler", ("sampler_name",), _to_str),
    RequestField("Schedule type", ("scheduler",), _to_str),
    RequestField("CFG scale", ("cfg_scale",), _to_float),
    RequestField("CFG Rescale φ", ("cfg_rescale",), _to_float),
    RequestField("Distilled CFG Scale", ("distilled_cfg_scale",), _to_float),
    RequestField("Seed", ("seed",), _to_int),
    RequestField("Size-1", ("width",), _to_int),
    RequestField("Size-2", ("height",), _to_int),
    RequestField("Variation seed", ("subseed",), _to_int),
    RequestField("Variation seed strength", ("subseed_strength",), _to_float),
    RequestField("Seed resize from-1", ("seed_resize_from_w",), _to_int),
    RequestField("Seed resize from-2", ("seed_resize_from_h",), _to_int),
    RequestField("Denoising strength", ("denoising_strength",), _to_float),
    RequestField("Hires upscale", ("hr_scale",), _to_float),
    RequestField("Hires upscaler", ("hr_upscaler",), _to_str),
    RequestField("Hires steps", ("hr_second_pass_steps",), _to_int),
    RequestField("Hires resize-1", ("hr_resize_x",), _to_int),
    RequestField("Hires resize-2", ("hr_resize_y",), _to_int),
    RequestField("Hires sampler", ("hr_sampler_name",), _choice_unless("Use same sampler")),
    RequestField("Hires schedule type", ("hr_scheduler",), _choice_unless("Use same scheduler")),
    RequestField("Hires checkpoint", ("hr_checkpoint_name",), _choice_unless("Use same checkpoint")),
    RequestField("Hires prompt", ("hr_prompt",), _to_str),
    RequestField("Hires negative prompt", ("hr_negative_prompt",), _to_str),
    RequestField("Clip skip", (OVERRIDE_SETTINGS, "CLIP_stop_at_last_layers"), _to_int),
    RequestField("Old prompt editing timelines", (OVERRIDE_SETTINGS, "use_old_scheduling"), _to_bool),
    RequestField("Downcast alphas_cumprod", (OVERRIDE_SETTINGS, "use_downcasted_alpha_bar"), _to_bool),
    RequestField("Noise Schedule", (OVERRIDE_SETTINGS, "sd_noise_schedule"), _to_str),
    RequestField("VAE", (OVERRIDE_SETTINGS, "sd_vae"), _to_str),
    RequestField("Refiner", ("refiner_checkpoint",), _to_str),
    RequestField("Refiner switch at", ("refiner_switch_at",), _to_float),
    RequestField("Face restoration", ("restore_faces",), lambda v: True if str(v).strip() else None),
    RequestField("Tiling", ("tiling",), lambda v: _lookup({"True": True, "False": False}, v)),
    RequestField("Mask blur", ("mask_blur",), _to_int),
    RequestField("Mask mode", ("inpainting_mask_invert",), lambda v: _lookup(_value_of(MASK_MODE), v)),
    RequestField("Masked content", ("inpainting_fill",), lambda v: _lookup(_value_of(MASKED_CONTENT), v)),
    RequestField("Inpaint area", ("inpaint_full_res",), lambda v: _lookup(_value_of(INPAINT_AREA), v)),
    RequestField("Masked area padding", ("inpaint_full_res_padding",), _to_int),
)
"""Infotext key → API request field; add a line here to map another field."""

HIRES_MARKER_KEYS = ("Hires upscale", "Hires upscaler")
"""Any of these keys in an infotext means the hires fix was enabled."""


def _convert_field(field: RequestField, parsed: Mapping[str, object]) -> object | None:
    """Convert one parsed value for ``field``; ``None`` when absent or unconvertible."""
    if field.source not in parsed:
        return None
    try:
        return field.convert(parsed[field.source])
    except Exception:  # a converter must never make the whole mapping fail
        return None


def _set_path(request: dict[str, object], path: tuple[str, ...], value: object) -> None:
    """Store ``value`` in ``request`` at ``path``, creating nested dicts as needed."""
    *parents, leaf = path
    node = request
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _hires_enabled(parsed: Mapping[str, object]) -> bool:
    """Tell whether the infotext describes a hires-fix generation."""
    if any(key in parsed for key in HIRES_MARKER_KEYS):
        return True
    return bool(_to_int(parsed.get("Hires resize-1")))


def infotext_to_request(parsed: Mapping[str, object]) -> dict[str, object]:
    """Map a :func:`parse_infotext` result onto A1111 API request fields.

    Each entry of :data:`REQUEST_FIELDS` whose key is present and whose value
    converts is copied under its request name; others are skipped.  Settings
    such as clip skip go into a nested ``override_settings`` dict, and
    ``enable_hr`` is set from the presence of hires-fix keys.  Never raises.
    """
    request: dict[str, object] = {}
    for field in REQUEST_FIELDS:
        value = _convert_field(field, parsed)
        if value is not None:
            _set_path(request, field.target, value)
    request["enable_hr"] = _hires_enabled(parsed)
    modules = _modules(parsed)
    if modules:
        _set_path(request, (OVERRIDE_SETTINGS, "forge_additional_modules"), modules)
    return request


def _modules(parsed: Mapping[str, object]) -> list[str]:
    """Forge's ``Module 1``, ``Module 2``, ... keys (the separate VAE / text-encoder files of an SD 3.x or FLUX.1
    image), in their order."""
    numbered = []
    for key, value in parsed.items():
        match = re.fullmatch(r"Module (\d+)", str(key))
        text = _to_str(value) if match else None
        if match and text:
            numbered.append((int(match.group(1)), text))
    return [text for _, text in sorted(numbered)]


# --------------------------------------------------------------------------- backward compatibility

V160 = Version("1.6.0")
"""Before it: the old prompt-editing timelines (A1111 ``infotext_versions.v160``)."""

V170_TSNR = Version("1.7.0.post225")
"""Before it (``v1.7.0-225``, the zero-terminal-SNR commit): alphas_cumprod was float16."""

_RE_GIT_DESCRIBE = re.compile(r"([^-]+-[^-]+)-.*")


def parse_version(text: object) -> Version | None:
    """An infotext's ``Version`` as A1111 reads it (``infotext_versions.parse_version``), or None.

    From ``git describe`` text such as ``v1.7.0-225-gabc1234`` only ``v1.7.0-225`` is kept (the part
    before the second ``-``), then the text is read as a PEP 440 version: ``v1.7.0-225`` is 1.7.0.post225,
    ``v1.6.0-RC`` is 1.6.0rc0. Anything else, this web UI's own ``webui-<version>`` included, is None.
    """
    if not isinstance(text, str):
        return None
    m = _RE_GIT_DESCRIBE.match(text)
    if m:
        text = m.group(1)
    try:
        return Version(text)
    except InvalidVersion:
        return None


def backcompat(parsed: Mapping[str, object], enabled: bool) -> dict[str, object]:
    """A copy of a :func:`parse_infotext` result with A1111's backward-compatibility keys added.

    A1111 1.10 (``infotext_versions.backcompat``, called at the end of ``parse_generation_parameters``
    when the option ``auto_backcompat`` is on) looks at the infotext's ``Version``; when it reads as a
    version (:func:`parse_version`):

    * older than 1.6.0 and the prompt contains ``[``: "Old prompt editing timelines: True"
      (option ``use_old_scheduling``);
    * older than ``v1.7.0-225``: "Downcast alphas_cumprod: True" (``use_downcasted_alpha_bar``).

    A1111's other two rules are not applied, their options having no effect here: older than 1.6.0 with
    sampler DDIM or PLMS -> "Pad conds v0" (``pad_cond_uncond_v0``, not implemented), older than 1.8.0
    with a refiner -> "Refiner switch by sampling steps" (``refiner_switch_by_sample_steps``: the refiner
    always switches by sampling steps here).
    """
    out = dict(parsed)
    if not enabled:
        return out
    ver = parse_version(out.get("Version"))
    if ver is None:
        return out
    if ver < V160 and "[" in str(out.get(PROMPT_KEY, "")):
        out["Old prompt editing timelines"] = True
    if ver < V170_TSNR:
        out["Downcast alphas_cumprod"] = True
    return out
