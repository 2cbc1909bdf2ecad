"""The picture a ControlNet unit's preprocessor reads, chosen as sd-webui-controlnet does
(``scripts/controlnet.py``: ``choose_input_image``, ``try_crop_image_with_a1111_mask``).

- The unit's own image, else (img2img) the img2img input; then the unit is resized with img2img's resize mode
  (0-2; 3, "Just resize (latent upscale)", is "Just Resize"), not its own.
- Inpaint modules read RGBA (alpha = mask, :mod:`webui.controlnet.inpaint`): the unit's image with its
  ``mask``, or the img2img input with A1111's inpaint mask.
- Other modules given an image and a ``mask`` (``mask_image``): unless the mask is all but empty or all but
  full (every value <= 5, or every value >= 250), the mask itself is the picture ("Canvas scribble mode",
  logged as it does); else the image. (IP-Adapter modules would use it as a CLIP attention mask there; here it
  is ignored for them.)
- img2img inpainting of the "Only masked" area (``inpaint_full_res``) with a mask: unless the unit sets
  ``inpaint_crop_input_image`` false (default true) or is a reference unit, its picture is cut like the init
  image: each channel resized to the mask's size with the unit's resize mode, cropped to the masked region
  (grown by ``inpaint_full_res_padding`` and to the generation's aspect ratio), then resized to the generation
  size with "Resize and Fill".
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image

from webui.controlnet.inpaint import img2img_mask, is_inpaint, rgba
from webui.errors import RequestError
from webui.pipeline.init_image import resize_image
from webui.pipeline.masking import crop_region, expand_to_aspect

log = logging.getLogger(__name__)

#: A1111's img2img resize modes as sd-webui-controlnet's (``resize_mode_from_value``)
_IMG2IMG_RESIZE = {0: 0, 1: 1, 2: 2, 3: 0}


def a1111_mask(request: Any) -> np.ndarray | None:
    """img2img's inpaint mask as a unit sees it (grey, at the img2img input's size), or None."""
    if getattr(request, "mode", "") != "img2img" or request.mask is None or not request.init_images:
        return None
    return img2img_mask(request.mask, request.init_images[0].size, bool(request.inpainting_mask_invert),
                        request.mask_blur_x, request.mask_blur_y)


def unit_input(unit: Any, module: str, request: Any, prefix: str) -> tuple[np.ndarray, int]:
    """The unit's picture (H x W x 3, or x 4 for inpaint modules) and the resize mode it is used with."""
    resize_mode = unit.resize_mode
    mask = a1111_mask(request)
    if unit.image is not None:
        if is_inpaint(module):
            try:
                picture = rgba(unit.image, unit.mask)
            except ValueError as exc:
                raise RequestError(f"{prefix}.mask", str(exc)) from None
        else:
            picture = np.asarray(unit.image.convert("RGB"))
            if unit.mask is not None and "ip-adapter" not in module:
                picture = _scribble_or_image(picture, unit.mask, prefix)
    elif request.init_images:  # the img2img input, with img2img's resize mode
        image = request.init_images[0]
        resize_mode = _IMG2IMG_RESIZE.get(int(request.resize_mode), 0)
        picture = rgba(image, mask) if is_inpaint(module) else np.asarray(image.convert("RGB"))
    else:
        raise RequestError(f"{prefix}.image", "a ControlNet unit needs an image (or use img2img)")
    if mask is not None and request.inpaint_full_res and "reference" not in module \
            and getattr(unit, "inpaint_crop_input_image", True):
        picture = crop_to_mask(picture, mask, resize_mode, int(request.inpaint_full_res_padding),
                               request.width, request.height)
    return np.ascontiguousarray(picture), resize_mode


def _scribble_or_image(picture: np.ndarray, mask: Image.Image, prefix: str) -> np.ndarray:
    alpha = np.asarray(mask.convert("RGB"))[:, :, 0]
    if alpha.shape != picture.shape[:2]:
        raise RequestError(f"{prefix}.mask", f"the mask is {alpha.shape[1]}x{alpha.shape[0]}, the image "
                                             f"{picture.shape[1]}x{picture.shape[0]}: they must be the same size")
    if (alpha <= 5).all() or (alpha >= 250).all():
        return picture
    log.info("Canvas scribble mode. Using mask scribble as input.")
    return np.repeat(alpha[:, :, None], 3, axis=2)


def crop_to_mask(picture: np.ndarray, mask: np.ndarray, resize_mode: int, padding: int, width: int,
                 height: int) -> np.ndarray:
    """``picture`` cut to the region A1111's "Only masked" inpainting generates (see the module's docstring)."""
    grey = Image.fromarray(mask)
    region = crop_region(grey, padding)
    if region is None:
        return picture
    region = expand_to_aspect(region, width, height, grey.width, grey.height)
    channels = []
    for c in range(picture.shape[2]):
        channel = resize_image(Image.fromarray(picture[:, :, c]), grey.width, grey.height, resize_mode)
        channel = resize_image(channel.crop(region), width, height, 2)
        channels.append(np.asarray(channel.convert("L")))
    return np.stack(channels, axis=2)
