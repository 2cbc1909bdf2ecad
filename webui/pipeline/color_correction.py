"""img2img colour correction (A1111's ``img2img_color_correction`` option).

A1111 keeps, per init image, the image as it went into the VAE (after resizing, the "only masked" crop
and the masked-content fill) converted to 8-bit CIELAB; each result is then corrected against it:

1. the result is converted to 8-bit LAB and every channel's histogram is matched to the reference's
   channel (cumulative-distribution matching; the matched values are truncated back to 8 bits), then
   converted back to RGB;
2. a "Luminosity" blend puts the luminosity of the *uncorrected* result on the corrected colours: the
   corrected image is the backdrop, the uncorrected result the source layer, so the correction changes
   hue and saturation only (W3C Compositing and Blending, ``B(Cb, Cs) = SetLum(Cb, Lum(Cs))`` with its
   ``ClipColor``). ``Lum`` uses the weights of the blend library A1111 uses (0.299, 0.587, 0.114) rather
   than the W3C text's (0.3, 0.59, 0.11).

OpenCV does the 8-bit RGB <-> LAB conversions, as in A1111.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

#: The luminosity weights of A1111's blend library (``blendmodes``).
LUM_WEIGHTS = (0.299, 0.587, 0.114)


def color_reference(image: Image.Image) -> np.ndarray:
    """The correction target of one init image: its 8-bit LAB pixels (``H x W x 3``)."""
    return cv2.cvtColor(np.asarray(image.convert("RGB"), dtype=np.uint8), cv2.COLOR_RGB2LAB)


def _match_channel(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """One 8-bit channel mapped so that its cumulative histogram follows ``reference``'s: each source
    value goes to the reference's quantile function (linear between the values the reference has) at
    the source's cumulative frequency of that value."""
    src_counts = np.bincount(source.ravel(), minlength=256)
    src_cdf = np.cumsum(src_counts) / source.size
    ref_counts = np.bincount(reference.ravel(), minlength=256)
    present = np.flatnonzero(ref_counts)
    ref_cdf = np.cumsum(ref_counts[present]) / reference.size
    lut = np.interp(src_cdf, ref_cdf, present.astype(np.float64))
    return lut.astype(np.uint8)[source]  # truncated to 8 bits, as A1111's uint8 result array does


def match_histograms(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``source`` (``H x W x C`` uint8) with each channel's histogram matched to ``reference``'s."""
    if source.dtype != np.uint8 or reference.dtype != np.uint8:
        raise ValueError("histogram matching works on 8-bit images")
    if source.shape[-1] != reference.shape[-1]:
        raise ValueError("source and reference must have the same number of channels")
    out = np.empty_like(source)
    for c in range(source.shape[-1]):
        out[..., c] = _match_channel(source[..., c], reference[..., c])
    return out


def _lum(rgb: np.ndarray) -> np.ndarray:
    wr, wg, wb = LUM_WEIGHTS
    return rgb[..., 0] * wr + rgb[..., 1] * wg + rgb[..., 2] * wb


def luminosity_blend(backdrop: Image.Image, source: Image.Image) -> Image.Image:
    """The "Luminosity" blend mode: hue and saturation of ``backdrop``, luminosity of ``source``
    (both opaque RGB of the same size)."""
    cb = np.asarray(backdrop.convert("RGB"), dtype=np.float64) / 255.0
    cs = np.asarray(source.convert("RGB"), dtype=np.float64) / 255.0
    c = cb + (_lum(cs) - _lum(cb))[..., None]  # SetLum
    lum = _lum(c)[..., None]  # ClipColor
    lo = c.min(axis=-1, keepdims=True)
    hi = c.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(lo < 0, lum + (c - lum) * lum / (lum - lo), c)
        c = np.where(hi > 1, lum + (c - lum) * (1 - lum) / (hi - lum), c)
    c = np.nan_to_num(c, nan=0.0)
    return Image.fromarray(np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8), "RGB")


def apply_color_correction(reference: np.ndarray, image: Image.Image) -> Image.Image:
    """``image`` colour-corrected against ``reference`` (from :func:`color_reference`)."""
    original = image.convert("RGB")
    lab = cv2.cvtColor(np.asarray(original, dtype=np.uint8), cv2.COLOR_RGB2LAB)
    corrected = Image.fromarray(cv2.cvtColor(match_histograms(lab, reference), cv2.COLOR_LAB2RGB), "RGB")
    return luminosity_blend(corrected, original)
