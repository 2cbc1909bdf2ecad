"""sd-webui-controlnet's inpaint units: ``inpaint`` ("inpaint_global_harmonious"), ``inpaint_only`` and
``inpaint_only+lama``, for ``control_v11p_sd15_inpaint``-style ControlNets.

The rules, restated from sd-webui-controlnet (``scripts/controlnet.py``: ``choose_input_image``,
``detectmap_proc``, the ``inpaint_only`` post-processing; ``scripts/hook.py``: the inpaint hint protocol and
"Post-processing for restore"; ``scripts/preprocessor/inpaint.py`` and ``lama_inpaint.py``):

- The unit works on an RGBA picture whose alpha is the mask (255 = repaint): the unit's image with its ``mask``
  (``mask_image``, or the ``{"image", "mask"}`` form; the mask's first channel; no mask: nothing is masked), or,
  without a unit image in img2img, the img2img input with A1111's inpaint mask (grey, inverted when
  ``inpainting_mask_invert``, blurred by ``mask_blur``). An image's own alpha is not a mask (its API reads the
  mask from ``mask`` only).
- The RGBA map is resized to the pass's size as its ``detectmap_proc`` does (nearest for 3-199 colours, area
  when shrinking, cubic when enlarging; the mask with the same interpolation, then cut at 127; "Resize and
  Fill" pads with the borders' median colour and a *masked* alpha, so the padding is outpainted).
- The ControlNet's hint is the colour with the masked pixels at -1: ``rgb * (1 - m) - m`` with ``m = alpha > 0.5``.
- ``inpaint_only`` / ``inpaint_only+lama`` also keep everything outside the mask: after every U-Net call the
  prediction of the clean latent is replaced by the VAE latent of the control picture outside the mask (mask
  max-pooled to the latent grid: 10x10 windows, stride 8, padding 1), mixed by the weight clamped to [0, 1]
  (it does this whatever the unit's guidance window), and the decoded image is blended with the control
  picture: ``m * x + (1 - m) * picture``, ``m`` the mask dilated by a ``s x s`` square and box-blurred ``s x s``
  (option ``control_net_inpaint_blur_sigma``, 7).
- ``inpaint_only+lama`` first fills the masked area with LaMa (:mod:`webui.controlnet.lama`), and the first
  pass's noise draws become ``sqrt(a) * x0 + sqrt(1 - a) * noise`` with ``x0`` the filled picture's latent and
  ``a`` the model's alpha-bar at timestep 999 (its ``HackedImageRNG``).
- In img2img with an inpaint mask, ``inpaint_only`` falls back to ``inpaint`` with its warning.

sd-webui-controlnet works on the U-Net's noise prediction at the rounded timestep; the restore is done here on
the denoised prediction at the step's sigma, which is the same operation written in the clean-latent space
(exactly equal at integer timesteps), applied once after the CFG combination (the rule is affine and the same
for every row, so this equals doing it per row first; CFG rescale aside).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

INPAINT_MODULES = ("inpaint", "inpaint_only", "inpaint_only+lama")
FALLBACK_WARNING = "A1111 inpaint and ControlNet inpaint duplicated. Falls back to inpaint_global_harmonious."
DEFAULT_BLUR_SIGMA = 7


def is_inpaint(module: str) -> bool:
    """sd-webui-controlnet's ``is_inpaint``: the module's name holds "inpaint"."""
    return "inpaint" in module


def restores(module: str) -> bool:
    """Whether the module keeps the picture outside the mask (``inpaint_only``, ``inpaint_only+lama``)."""
    return "inpaint_only" in module


def rgba(image: Image.Image, mask: Image.Image | np.ndarray | None) -> np.ndarray:
    """H x W x 4 uint8: the image's colour and the mask (its first channel; None: nothing masked) as alpha."""
    color = np.asarray(image.convert("RGB"))
    if mask is None:
        alpha = np.zeros(color.shape[:2], np.uint8)
    elif isinstance(mask, np.ndarray):
        alpha = mask
    else:
        alpha = np.asarray(mask.convert("RGB"))[:, :, 0]
    if alpha.shape[:2] != color.shape[:2]:
        raise ValueError(f"the mask is {alpha.shape[1]}x{alpha.shape[0]}, the image {color.shape[1]}x"
                         f"{color.shape[0]}: they must be the same size")
    return np.ascontiguousarray(np.concatenate([color, alpha[:, :, None].astype(np.uint8)], axis=2))


def img2img_mask(mask: Image.Image, size: tuple[int, int], invert: bool, blur_x: float, blur_y: float) -> np.ndarray:
    """A1111's inpaint mask as sd-webui-controlnet's ``prepare_mask`` gives it to a unit: grey at the img2img
    input's size, inverted when asked, Gaussian-blurred by ``mask_blur`` (x, then y)."""
    from webui.pipeline.masking import processed_mask

    return np.asarray(processed_mask(mask, size, invert, blur_x, blur_y))


def _resized(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """sd-webui-controlnet's ``high_quality_resize`` of an RGBA inpaint map (float32 colour, mask cut at 127).
    Its black-and-white line-map branch (exactly two colours) is not taken: a picture to inpaint is not one."""
    color, mask = x[:, :, :3], x[:, :, 3]
    if color.shape[:2] != (height, width):
        colors = len(np.unique(color.reshape(-1, 3), axis=0))
        if 2 < colors < 200:
            interpolation = cv2.INTER_NEAREST
        elif width * height < color.shape[0] * color.shape[1]:
            interpolation = cv2.INTER_AREA
        else:
            interpolation = cv2.INTER_CUBIC
        color = cv2.resize(color, (width, height), interpolation=interpolation)
        mask = cv2.resize(mask, (width, height), interpolation=interpolation)
    mask = (mask > 127).astype(np.float32) * 255.0
    return np.concatenate([color, mask[:, :, None]], axis=2)


def resize_map(rgba_map: np.ndarray, width: int, height: int, resize_mode: int) -> np.ndarray:
    """The RGBA map (uint8 or float) at ``width x height`` as sd-webui-controlnet's ``detectmap_proc`` makes it
    for inpaint modules (float32 H x W x 4 in 0..255, alpha 0 or 255). ``resize_mode``: 0 Just Resize,
    1 Crop and Resize, 2 Resize and Fill."""
    x = np.asarray(rgba_map, dtype=np.float32)
    if resize_mode == 0:
        return _resized(x, width, height)
    old_h, old_w = x.shape[:2]
    k0, k1 = height / old_h, width / old_w
    if resize_mode == 2:
        k = min(k0, k1)
        borders = np.concatenate([x[0, :, :], x[-1, :, :], x[:, 0, :], x[:, -1, :]], axis=0)
        fill = np.median(borders, axis=0).astype(np.float32)
        fill[3] = 255.0  # the padding is masked: it is outpainted
        out = np.tile(fill[None, None], (height, width, 1))
        inner = _resized(x, int(np.round(old_w * k)), int(np.round(old_h * k)))
        nh, nw = inner.shape[:2]
        top, left = max(0, (height - nh) // 2), max(0, (width - nw) // 2)
        out[top:top + nh, left:left + nw] = inner
        return out
    k = max(k0, k1)
    inner = _resized(x, int(np.round(old_w * k)), int(np.round(old_h * k)))
    nh, nw = inner.shape[:2]
    top, left = max(0, (nh - height) // 2), max(0, (nw - width) // 2)
    return np.ascontiguousarray(inner[top:top + height, left:left + width])


def shown_map(resized: np.ndarray) -> Image.Image:
    """The detected map sd-webui-controlnet appends for an inpaint unit: the picture with the masked pixels
    half transparent (``visualize_inpaint_mask``: alpha ``255 - mask // 2``)."""
    arr = np.clip(resized, 0, 255).astype(np.uint8)
    arr[:, :, 3] = 255 - arr[:, :, 3] // 2
    return Image.fromarray(arr, "RGBA")


def to_tensor(resized: np.ndarray) -> torch.Tensor:
    """``[1, 4, H, W]`` in 0..1 (colour, mask)."""
    return torch.from_numpy(np.ascontiguousarray(resized) / 255.0).float().permute(2, 0, 1)[None]


def control_hint(rgba_tensor: torch.Tensor) -> torch.Tensor:
    """The inpaint ControlNet's hint (``control_v11p_sd15_inpaint``'s protocol): the colour, masked pixels -1."""
    color, mask = rgba_tensor[:, :3], (rgba_tensor[:, 3:4] > 0.5).to(rgba_tensor.dtype)
    return color * (1 - mask) - mask


def latent_mask(rgba_tensor: torch.Tensor) -> torch.Tensor:
    """The mask on the latent grid for the restore: max-pooled over 10x10 windows, stride 8, padding 1."""
    return torch.nn.functional.max_pool2d(rgba_tensor[:, 3:4], (10, 10), stride=(8, 8), padding=1)


def restore(denoised: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor, weight: float) -> torch.Tensor:
    """The clean-latent prediction with the control picture's latent ``x0`` outside ``mask`` (latent grid), mixed
    by ``weight`` clamped to [0, 1]."""
    w = max(0.0, min(1.0, float(weight)))
    if w == 0.0:
        return denoised
    keep = (1 - mask.to(denoised)) * w
    return denoised + keep * (x0.to(denoised) - denoised)


def blend_mask(mask: np.ndarray, sigma: int) -> np.ndarray:
    """The final blend's mask (0..1, H x W): the binary mask dilated by a ``sigma x sigma`` square, then box-blurred
    ``sigma x sigma`` (sigma 0: the mask as it is)."""
    m = np.ascontiguousarray(mask, dtype=np.float32)
    if sigma > 0:
        m = cv2.dilate(m, np.ones((sigma, sigma), np.uint8))
        m = cv2.blur(m, (sigma, sigma))
    return m


def blend_pixels(pixels: torch.Tensor, picture: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` decoded pixels (0..1) kept inside ``mask`` (``[H, W]``) and the control ``picture``
    (``[3, H, W]``, 0..1) outside; images of another size are left as they are (its log line)."""
    if tuple(pixels.shape[-2:]) != tuple(mask.shape[-2:]):
        log.error("Error: ControlNet find post-processing resolution mismatch. This could be related to other "
                  "extensions hacked processing.")
        return pixels
    m = mask.to(pixels)
    return (m * pixels.clamp(0, 1) + (1 - m) * picture.to(pixels)).clamp(0, 1)


def noised_start(noise: torch.Tensor, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``inpaint_only+lama``'s noise: ``sqrt(a) * x0 + sqrt(1 - a) * noise``, ``a`` = alpha-bar at timestep 999;
    noise of another latent size (the hires pass) is left as it is."""
    if tuple(noise.shape[-2:]) != tuple(x0.shape[-2:]):
        return noise
    a = alphas_cumprod[999].to(noise.device, torch.float64)
    return (a.sqrt() * x0.to(noise.device, torch.float64)
            + (1 - a).sqrt() * noise.to(torch.float64)).to(noise.dtype)
