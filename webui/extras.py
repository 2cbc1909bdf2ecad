"""The Extras operation (A1111's postprocessing): upscale (by a factor or to a size, optionally
cropped; a second upscaler blended by visibility), then GFPGAN, then CodeFormer, each with its
visibility. The input's infotext is kept; what was done is recorded in a ``postprocessing`` text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from webui.errors import RequestError
from webui.infotext import format_infotext
from webui.restoration.registry import FaceRestorerRegistry, blend
from webui.upscaling.registry import UpscalerDef, UpscalerRegistry

MAX_OUTPUT_SIDE = 8192


@dataclass(frozen=True)
class ExtrasRequest:
    """A1111's extras fields (same names and defaults as ``/sdapi/v1/extra-single-image``)."""

    resize_mode: int = 0  # 0: scale by upscaling_resize, 1: to upscaling_resize_w x _h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False  # accepted for compatibility; the order is upscale, GFPGAN, CodeFormer (A1111 1.x)

    def with_(self, **changes: Any) -> ExtrasRequest:
        return replace(self, **changes)


def _fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise RequestError(name, f"must be between 0 and 1, got {value!r}")


def check_extras(req: ExtrasRequest) -> None:
    if req.resize_mode not in (0, 1):
        raise RequestError("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {req.resize_mode!r}")
    if not isinstance(req.upscaling_resize, (int, float)) or not math.isfinite(req.upscaling_resize) \
            or not 0 < req.upscaling_resize <= 16:
        raise RequestError("upscaling_resize", f"must be above 0 and at most 16, got {req.upscaling_resize!r}")
    for name in ("upscaling_resize_w", "upscaling_resize_h"):
        value = getattr(req, name)
        if not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_SIDE:
            raise RequestError(name, f"must be an integer between 1 and {MAX_OUTPUT_SIDE}, got {value!r}")
    for name in ("extras_upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
        _fraction(name, getattr(req, name))


def _upscaler(upscalers: UpscalerRegistry, name: str | None, field: str) -> UpscalerDef | None:
    if name in (None, "", "None"):
        return None
    return upscalers.get(name, field)


def _scaled(up: UpscalerDef | None, image: Image.Image, scale: float, opts: Mapping[str, Any]) -> Image.Image:
    """``image`` enlarged by ``scale`` with ``up`` (passes until big enough), fitted with Lanczos."""
    w, h = max(1, int(image.width * scale)), max(1, int(image.height * scale))
    out = image
    if up is not None:
        for _ in range(3):
            if out.width >= w and out.height >= h:
                break
            before = out.size
            out = up.upscale(out, w / out.width, opts).convert("RGB")
            if out.size == before:
                break
    if out.size != (w, h):
        out = out.resize((w, h), Image.Resampling.LANCZOS)
    return out


def run_extras(upscalers: UpscalerRegistry, restorers: FaceRestorerRegistry, image: Image.Image,
               req: ExtrasRequest, opts: Mapping[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    """Apply the extras to one image; returns the image and the ``postprocessing`` parameters."""
    check_extras(req)
    up1 = _upscaler(upscalers, req.upscaler_1, "upscaler_1")
    up2 = _upscaler(upscalers, req.upscaler_2, "upscaler_2") if req.extras_upscaler_2_visibility > 0 else None
    image = image.convert("RGB")
    info: dict[str, Any] = {}
    scale = req.upscaling_resize
    if req.resize_mode == 1:
        scale = max(req.upscaling_resize_w / image.width, req.upscaling_resize_h / image.height)
    out_w, out_h = int(image.width * scale), int(image.height * scale)
    if max(out_w, out_h) > MAX_OUTPUT_SIDE:
        field = "upscaling_resize" if req.resize_mode == 0 else "upscaling_resize_w"
        raise RequestError(field, f"the result would be {out_w}x{out_h}; the limit is {MAX_OUTPUT_SIDE} per side")
    # A1111 (scripts/postprocessing_upscale.py): with upscaler 1 "None" the upscaling step does nothing at
    # all, whatever the scale and upscaler 2 say
    if up1 is not None:
        upscaled = _scaled(up1, image, scale, opts)
        if up2 is not None:
            second = _scaled(up2, image, scale, opts)
            upscaled = Image.blend(upscaled, second, req.extras_upscaler_2_visibility)
        if req.resize_mode == 1 and req.upscaling_crop:
            w, h = req.upscaling_resize_w, req.upscaling_resize_h
            cropped = Image.new("RGB", (w, h))
            cropped.paste(upscaled, (w // 2 - upscaled.width // 2, h // 2 - upscaled.height // 2))
            upscaled = cropped
        image = upscaled
        if req.resize_mode == 1:
            info["Postprocess upscale to"] = f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"
            if req.upscaling_crop:
                info["Postprocess crop to"] = f"{req.upscaling_resize_w}x{req.upscaling_resize_h}"
        else:
            info["Postprocess upscale by"] = req.upscaling_resize
        info["Postprocess upscaler"] = up1.name
        if up2 is not None:
            info["Postprocess upscaler 2"] = up2.name
            info["Postprocess upscaler 2 visibility"] = req.extras_upscaler_2_visibility
    for name, visibility in (("GFPGAN", req.gfpgan_visibility), ("CodeFormer", req.codeformer_visibility)):
        if visibility <= 0:
            continue
        restorer = restorers.get(name, f"{name.lower()}_visibility")
        restore_opts = {**opts, "code_former_weight": req.codeformer_weight} if name == "CodeFormer" else opts
        image = blend(image, restorer.restore(image, restore_opts), visibility)
        info[f"{name} visibility"] = visibility
        if name == "CodeFormer":
            info["CodeFormer weight"] = req.codeformer_weight
    return image, info


def postprocessing_text(info: Mapping[str, Any]) -> str:
    """``Key: value, ...`` as A1111 writes the ``postprocessing`` PNG text (quoted like infotext)."""
    return format_infotext("", "", dict(info)).strip()
