"""Generation requests and their validation.

:class:`GenerationRequest` holds A1111's txt2img fields (same names). :func:`check_request`
raises :class:`RequestError` naming the offending field -- the API turns it into a 422.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from webui.errors import RequestError

#: Documented limits (also shown in the API schema).
MAX_SIDE = 4096
MAX_STEPS = 500
MAX_BATCH_SIZE = 64
MAX_BATCH_COUNT = 100
MAX_SEED = 2**32 - 1
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class GenerationRequest:
    """A txt2img request with A1111's field names and defaults (API defaults: steps 50, 512x512)."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    # CFG rescale (Lin et al. 2024) 0..1; None: 0.7 for zero-terminal-SNR v-prediction checkpoints, else 0
    cfg_rescale: float | None = None
    # FLUX.1 dev's guidance input (Forge's "Distilled CFG Scale"); other models ignore it
    distilled_cfg_scale: float = 3.5
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    styles: tuple[str, ...] = ()
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    eta: float | None = None
    # sigma parameters; None: the option of the same name (A1111). s_tmax 0 means no upper limit.
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    save_images: bool = True
    override_settings: dict[str, Any] = field(default_factory=dict)
    alwayson_scripts: dict[str, Any] = field(default_factory=dict)  # {"controlnet": {"args": [...]}, ...}
    mode: str = "txt2img"  # or "img2img"
    init_images: tuple[Any, ...] = ()  # PIL images (img2img)
    denoising_strength: float = 0.75
    resize_mode: int = 0
    tiling: bool | None = None  # None: the "tiling" option (A1111)
    restore_faces: bool | None = None  # None: the "face_restoration" option (A1111)
    refiner_checkpoint: str | None = None  # A1111 1.6+: a second model takes over at refiner_switch_at
    refiner_switch_at: float = 0.8
    # inpainting (img2img with a mask); defaults are A1111's API defaults
    mask: Any = None  # PIL image; white = repaint
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = True  # "only masked"
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    #: colour-correction references (A1111's ``p.color_corrections``, set by loopback so every loop is
    #: corrected to the first init image); empty: each init image as it is encoded
    color_correction_images: tuple[Any, ...] = ()
    # hires fix (txt2img)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None  # only the checkpoint in use (or "Use same checkpoint"): see generate.py
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""

    def with_(self, **changes: Any) -> GenerationRequest:
        return replace(self, **changes)


#: The hires-fix fields, which an API body or the txt2img tab sets only with ``enable_hr`` on.
HIRES_FIELDS = ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name",
                "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")


def request_from_values(values: Mapping[str, Any], names: Iterable[str], **fixed: Any) -> GenerationRequest:
    """The request an API body or a tab's form asks for: each field of ``names`` whose value in ``values``
    (A1111's names) is given -- None keeps the field's default --, ``enable_hr`` and :data:`HIRES_FIELDS`
    when ``enable_hr`` is on, then ``fixed``."""
    chosen = [*names, *(("enable_hr", *HIRES_FIELDS) if values.get("enable_hr") else ())]
    given = {name: values[name] for name in chosen if values.get(name) is not None}
    return GenerationRequest(**{**given, **fixed})


def _finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise RequestError(name, f"must be a finite number, got {value!r}")


def _int_range(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(name, f"must be between {lo} and {hi}, got {value}")


def check_request(req: GenerationRequest) -> None:
    """Raise :class:`RequestError` for the first invalid field.

    Sizes must be multiples of 8 (the VAE's downscale factor) between 64 and 4096; we refuse
    other sizes rather than silently rounding them (documented in docs/api.md).
    """
    for name in ("width", "height"):
        value = getattr(req, name)
        _int_range(name, value, 64, MAX_SIDE)
        if value % SIZE_MULTIPLE:
            raise RequestError(name, f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
    _int_range("steps", req.steps, 1, MAX_STEPS)
    _int_range("batch_size", req.batch_size, 1, MAX_BATCH_SIZE)
    _int_range("n_iter", req.n_iter, 1, MAX_BATCH_COUNT)
    _finite("cfg_scale", req.cfg_scale)
    if not 0 <= req.cfg_scale <= 100:
        raise RequestError("cfg_scale", f"must be between 0 and 100, got {req.cfg_scale}")
    if req.cfg_rescale is not None:
        _finite("cfg_rescale", req.cfg_rescale)
        if not 0 <= req.cfg_rescale <= 1:
            raise RequestError("cfg_rescale", f"must be between 0 and 1, got {req.cfg_rescale}")
    _finite("distilled_cfg_scale", req.distilled_cfg_scale)
    if not 0 <= req.distilled_cfg_scale <= 100:
        raise RequestError("distilled_cfg_scale", f"must be between 0 and 100, got {req.distilled_cfg_scale}")
    _int_range("seed", req.seed, -1, MAX_SEED)
    _int_range("subseed", req.subseed, -1, MAX_SEED)
    _finite("subseed_strength", req.subseed_strength)
    if not 0 <= req.subseed_strength <= 1:
        raise RequestError("subseed_strength", f"must be between 0 and 1, got {req.subseed_strength}")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        _int_range(name, getattr(req, name), -1, MAX_SIDE)
    for name in ("eta", "s_noise", "s_churn", "s_tmin"):
        value = getattr(req, name)
        if value is not None:
            _finite(name, value)
    if req.s_tmax is not None:  # infinity allowed: no upper limit
        if not isinstance(req.s_tmax, (int, float)) or isinstance(req.s_tmax, bool) or math.isnan(req.s_tmax):
            raise RequestError("s_tmax", f"must be a number, got {req.s_tmax!r}")
    if req.mode == "img2img":
        if not req.init_images:
            raise RequestError("init_images", "img2img needs at least one init image")
        _finite("denoising_strength", req.denoising_strength)
        if not 0 <= req.denoising_strength <= 1:
            raise RequestError("denoising_strength", f"must be between 0 and 1, got {req.denoising_strength}")
        if req.resize_mode not in (0, 1, 2, 3):
            raise RequestError("resize_mode", f"must be 0, 1, 2 or 3, got {req.resize_mode}")
    if req.mode == "img2img" and req.mask is not None:
        _check_inpaint(req)
    if req.mode == "txt2img" and req.enable_hr:
        _check_hires(req)
    if req.refiner_checkpoint not in (None, "", "None"):
        _finite("refiner_switch_at", req.refiner_switch_at)
        if not 0 < req.refiner_switch_at < 1:
            raise RequestError("refiner_switch_at", f"must be between 0 and 1 (exclusive), got {req.refiner_switch_at}")
    if req.initial_noise_multiplier is not None:
        _finite("initial_noise_multiplier", req.initial_noise_multiplier)
        if not 0 <= req.initial_noise_multiplier <= 2:
            raise RequestError("initial_noise_multiplier",
                               f"must be between 0 and 2, got {req.initial_noise_multiplier}")
    for name in ("hr_prompt", "hr_negative_prompt"):
        if not isinstance(getattr(req, name), str):
            raise RequestError(name, "must be a string")
    if not isinstance(req.prompt, str):
        raise RequestError("prompt", "must be a string")
    if not isinstance(req.negative_prompt, str):
        raise RequestError("negative_prompt", "must be a string")


def _check_inpaint(req: GenerationRequest) -> None:
    for name in ("mask_blur_x", "mask_blur_y"):
        _int_range(name, getattr(req, name), 0, 64)
    _int_range("inpainting_fill", req.inpainting_fill, 0, 3)
    _int_range("inpaint_full_res_padding", req.inpaint_full_res_padding, 0, MAX_SIDE)
    _int_range("inpainting_mask_invert", int(req.inpainting_mask_invert), 0, 1)


def hires_target(req: GenerationRequest) -> tuple[int, int]:
    """The hires fix's output size (multiples of 8, rounded down); both ``hr_resize_x/y`` set means
    exactly that size (scaled to cover, centre-cropped), one of them keeps the aspect ratio."""
    rx, ry = req.hr_resize_x, req.hr_resize_y
    if rx == 0 and ry == 0:
        w, h = int(req.width * req.hr_scale), int(req.height * req.hr_scale)
    elif ry == 0:
        w, h = rx, rx * req.height // req.width
    elif rx == 0:
        w, h = ry * req.width // req.height, ry
    else:
        w, h = rx, ry
    return max(64, w // SIZE_MULTIPLE * SIZE_MULTIPLE), max(64, h // SIZE_MULTIPLE * SIZE_MULTIPLE)


def _check_hires(req: GenerationRequest) -> None:
    _finite("hr_scale", req.hr_scale)
    if not 1 <= req.hr_scale <= 8:
        raise RequestError("hr_scale", f"must be between 1 and 8, got {req.hr_scale}")
    for name in ("hr_resize_x", "hr_resize_y"):
        _int_range(name, getattr(req, name), 0, MAX_SIDE)
    _int_range("hr_second_pass_steps", req.hr_second_pass_steps, 0, MAX_STEPS)
    _finite("denoising_strength", req.denoising_strength)
    if not 0 <= req.denoising_strength <= 1:
        raise RequestError("denoising_strength", f"must be between 0 and 1, got {req.denoising_strength}")
    w, h = hires_target(req)
    if w > MAX_SIDE or h > MAX_SIDE:
        field_name = "hr_scale" if req.hr_resize_x == 0 and req.hr_resize_y == 0 else "hr_resize_x"
        raise RequestError(field_name, f"hires size {w}x{h} is larger than {MAX_SIDE}")
