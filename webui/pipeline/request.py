"""Generation requests and their validation.

:class:`GenerationRequest` holds A1111's txt2img fields (same names). :func:`check_request`
raises :class:`RequestError` naming the offending field -- the API turns it into a 422.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

#: Documented limits (also shown in the API schema).
MAX_SIDE = 4096
MAX_STEPS = 500
MAX_BATCH_SIZE = 64
MAX_BATCH_COUNT = 100
MAX_SEED = 2**32 - 1
SIZE_MULTIPLE = 8


class RequestError(ValueError):
    """Invalid request value; ``field`` names the request field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: {message}")


@dataclass(frozen=True)
class GenerationRequest:
    """A txt2img request with A1111's field names and defaults (API defaults: steps 50, 512x512)."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
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
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float | None = None
    save_images: bool = True
    override_settings: dict[str, Any] = field(default_factory=dict)
    mode: str = "txt2img"  # or "img2img"
    init_images: tuple[Any, ...] = ()  # PIL images (img2img)
    denoising_strength: float = 0.75
    resize_mode: int = 0

    def with_(self, **changes: Any) -> GenerationRequest:
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


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
    _int_range("seed", req.seed, -1, MAX_SEED)
    _int_range("subseed", req.subseed, -1, MAX_SEED)
    _finite("subseed_strength", req.subseed_strength)
    if not 0 <= req.subseed_strength <= 1:
        raise RequestError("subseed_strength", f"must be between 0 and 1, got {req.subseed_strength}")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        _int_range(name, getattr(req, name), -1, MAX_SIDE)
    for name in ("eta", "s_noise"):
        value = getattr(req, name)
        if value is not None:
            _finite(name, value)
    for name in ("s_churn", "s_tmin"):
        _finite(name, getattr(req, name))
    if req.mode == "img2img":
        if not req.init_images:
            raise RequestError("init_images", "img2img needs at least one init image")
        _finite("denoising_strength", req.denoising_strength)
        if not 0 <= req.denoising_strength <= 1:
            raise RequestError("denoising_strength", f"must be between 0 and 1, got {req.denoising_strength}")
        if req.resize_mode not in (0, 1, 2, 3):
            raise RequestError("resize_mode", f"must be 0, 1, 2 or 3, got {req.resize_mode}")
    if not isinstance(req.prompt, str):
        raise RequestError("prompt", "must be a string")
    if not isinstance(req.negative_prompt, str):
        raise RequestError("negative_prompt", "must be a string")
