"""Inpainting masks in pixel space: reading, blurring, the "only masked" crop, fills and the overlay.

White (255) in a mask means "repaint here". The functions reproduce A1111's inpainting behaviour:

- :func:`binary_mask` turns an uploaded or drawn mask into ``L`` mode (drawn masks: their alpha);
- :func:`blur_mask` is a separable Gaussian blur with A1111's kernel size for ``mask_blur_x/y``;
- :func:`crop_region` / :func:`expand_to_aspect` give the "only masked" region (bounding box of the
  mask + padding, grown to the output's aspect ratio and kept inside the image);
- :func:`fill_masked` is masked-content "fill": the hole is filled with ever finer blurs of the
  surrounding pixels;
- :func:`make_overlay` / :func:`apply_overlay` are the final step that pastes the generated image
  back and puts the original pixels on top wherever the mask was 0, so those pixels stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from webui.pipeline.init_image import resize_image


def binary_mask(mask: Image.Image) -> Image.Image:
    """An ``L`` mask. Images with real transparency use their alpha (>128 -> 255); others their luminance."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha.point(lambda v: 255 if v > 128 else 0)
    return mask.convert("L")


def _kernel_size(sigma: float) -> int:
    return 2 * int(2.5 * sigma + 0.5) + 1


def _gaussian_1d(sigma: float) -> np.ndarray:
    size = _kernel_size(sigma)
    x = np.arange(size, dtype=np.float64) - size // 2
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def _blur_axis(arr: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    kernel = _gaussian_1d(sigma)
    r = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    padded = np.pad(arr, pad, mode="reflect" if arr.shape[axis] > r else "edge")
    out = np.zeros_like(arr, dtype=np.float64)
    n = arr.shape[axis]
    for i, w in enumerate(kernel):
        out += w * (padded[i:i + n, :] if axis == 0 else padded[:, i:i + n])
    return out


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Gaussian blur along x then y (sigma = blur, kernel ``2*int(2.5*sigma+0.5)+1``); 0 skips an axis."""
    arr = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur_x > 0:
        arr = _blur_axis(arr, blur_x, axis=1)
    if blur_y > 0:
        arr = _blur_axis(arr, blur_y, axis=0)
    return Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), "L")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)``: the bounding box of the non-zero mask pixels grown by ``padding``,
    clipped to the image; None for an empty mask."""
    arr = np.asarray(mask.convert("L"))
    ys, xs = np.nonzero(arr)
    if len(xs) == 0:
        return None
    h, w = arr.shape
    return (max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0),
            min(int(xs.max()) + 1 + padding, w), min(int(ys.max()) + 1 + padding, h))


def expand_to_aspect(region: tuple[int, int, int, int], width: int, height: int,
                     image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """Grow ``region`` (never shrink) to the aspect ratio ``width/height``, centred, shifted to stay
    inside the ``image_w x image_h`` image where it can."""
    x1, y1, x2, y2 = region
    target = width / height
    rw, rh = x2 - x1, y2 - y1
    if rw / rh < target:  # too narrow: widen
        want = min(int(round(rh * target)), image_w)
        x1, x2 = _grow(x1, x2, want, image_w)
    elif rw / rh > target:  # too wide: heighten
        want = min(int(round(rw / target)), image_h)
        y1, y2 = _grow(y1, y2, want, image_h)
    return x1, y1, x2, y2


def _grow(a: int, b: int, want: int, limit: int) -> tuple[int, int]:
    extra = want - (b - a)
    a -= extra // 2
    b += extra - extra // 2
    if a < 0:
        b, a = b - a, 0
    if b > limit:
        a, b = max(a - (b - limit), 0), limit
    return a, b


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": paint the masked area with blurred colours of the area around it.

    The unmasked pixels (premultiplied by their opacity) are blurred at decreasing radii and layered,
    so the hole gets a smooth guess of its surroundings while unmasked pixels end up unchanged.
    """
    keep = ImageOps.invert(mask.convert("L"))
    src = Image.new("RGBa", image.size)
    src.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    out = Image.new("RGBA", image.size)
    for radius, times in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        layer = src.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            out.alpha_composite(layer)
    return out.convert("RGB")


def make_overlay(image: Image.Image, overlay_mask: Image.Image) -> Image.Image:
    """The original pixels with alpha = 255 - mask: pasted over the result, they restore every
    unmasked pixel exactly."""
    keep = ImageOps.invert(overlay_mask.convert("L"))
    layer = Image.new("RGBa", image.size)
    layer.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    return layer.convert("RGBA")


def apply_overlay(image: Image.Image, overlay: Image.Image,
                  paste_to: tuple[int, int, int, int] | None) -> Image.Image:
    """Paste the generated ``image`` back (at ``paste_to = (x, y, w, h)`` for "only masked") and put
    the overlay on top."""
    if paste_to is not None:
        x, y, w, h = paste_to
        base = Image.new("RGBA", overlay.size)
        base.paste(resize_image(image, w, h, 1), (x, y))
        image = base
    out = image.convert("RGBA")
    out.alpha_composite(overlay)
    return out.convert("RGB")


@dataclass
class PreparedMask:
    """A request's mask after invert/blur/crop, ready for encoding.

    ``mask`` is at the processing size (``width x height``); ``overlay_mask`` at the size of the
    image the overlay is made from; ``region`` the crop in the original image ("only masked")."""

    mask: Image.Image
    overlay_mask: Image.Image
    region: tuple[int, int, int, int] | None


def processed_mask(mask: Image.Image, size: tuple[int, int], invert: bool, blur_x: float,
                   blur_y: float) -> Image.Image:
    """A1111's inpaint mask before cropping: grey (:func:`binary_mask`), resized to ``size`` (Lanczos) when it has
    another size, inverted when asked, Gaussian-blurred by ``blur_x`` then ``blur_y``."""
    grey = binary_mask(mask)
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.LANCZOS)
    if invert:
        grey = ImageOps.invert(grey)
    if blur_x > 0 or blur_y > 0:
        grey = blur_mask(grey, blur_x, blur_y)
    return grey


def prepare_mask(mask: Image.Image, image_size: tuple[int, int], width: int, height: int, *,
                 invert: bool, blur_x: float, blur_y: float, only_masked: bool, padding: int,
                 resize_mode: int) -> PreparedMask:
    """Invert and blur the mask, then either crop the "only masked" region or resize it like the image.

    A mask of another size than the init image is first resized to the image (documented choice)."""
    mask = processed_mask(mask, image_size, invert, blur_x, blur_y)
    if only_masked:
        region = crop_region(mask, padding)
        if region is not None:
            region = expand_to_aspect(region, width, height, mask.width, mask.height)
            return PreparedMask(resize_image(mask.crop(region), width, height, 2).convert("L"), mask, region)
    resized = resize_image(mask, width, height, 0 if resize_mode == 3 else resize_mode).convert("L")
    overlay = Image.fromarray(np.clip(np.asarray(resized, dtype=np.float32) * 2, 0, 255).astype(np.uint8), "L")
    return PreparedMask(resized, overlay, None)
