"""img2img and inpainting input, prepared once per request: init latents, masks, overlays.

Whole picture: each init image is resized to the output size; the mask likewise. Only masked:
the mask's bounding box (plus padding, grown to the output's aspect ratio) is cut from the image,
processed at the output size and pasted back into the full-size original at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from webui.infotext import INPAINT_AREA, MASK_MODE, MASKED_CONTENT
from webui.models.manager import LoadedModel
from webui.pipeline.color_correction import apply_color_correction, color_reference
from webui.pipeline.guidance import Inpaint
from webui.pipeline.init_image import Resize, flatten, image_to_tensor, resize_image
from webui.pipeline.masking import PreparedMask, apply_overlay, fill_masked, make_overlay, prepare_mask
from webui.pipeline.request import GenerationRequest
from webui.pipeline.vae import encode_pixels, tiling_wanted
from webui.upscaling.registry import UpscalerDef, upscale_to


@dataclass
class InitLatents:
    """Per init image: ``latents[i]``; with a mask also the latent ``keep`` mask (1 = original stays),
    inpainting-U-Net conditioning and the overlays restoring unmasked pixels."""

    latents: torch.Tensor
    keep: torch.Tensor | None = None
    image_cond: torch.Tensor | None = None
    overlays: list[Image.Image] | None = None
    paste_to: tuple[int, int, int, int] | None = None
    fill: int = 1
    color_refs: list[np.ndarray] | None = None  # option img2img_color_correction: LAB references
    resize: Resize | None = None  # option upscaler_for_img2img: how the result is enlarged to paste back

    def index(self, image_index: int) -> int:
        """The init image used for image ``image_index`` of the job (the last one repeats)."""
        return min(image_index, len(self.latents) - 1)

    def for_batch(self, first: int, batch: int, noise: torch.Tensor) -> tuple[torch.Tensor, Inpaint]:
        """Starting latents (before noise) of a batch and its inpainting inputs; ``noise`` is the batch's
        first noise, which "latent noise" puts into the hole."""
        idx = [self.index(first + j) for j in range(batch)]
        x0 = self.latents[idx].to(noise.device)
        if self.keep is None:
            return x0, Inpaint(image_cond=None if self.image_cond is None else self.image_cond[idx])
        keep = self.keep.to(noise.device)
        if self.fill == 2:
            x0 = x0 * keep + noise * (1 - keep)
        elif self.fill == 3:
            x0 = x0 * keep
        cond = None if self.image_cond is None else self.image_cond[idx]
        return x0, Inpaint(image_cond=cond, init=x0, keep=keep)

    def correct_colors(self, image: Image.Image, image_index: int) -> Image.Image:
        """Colour correction against the init image of ``image_index`` (when the option is on)."""
        if not self.color_refs:
            return image
        return apply_color_correction(self.color_refs[min(self.index(image_index), len(self.color_refs) - 1)], image)

    def finish(self, image: Image.Image, image_index: int) -> Image.Image:
        """The overlay step: the generated image pasted back, original pixels on top where unmasked."""
        if self.overlays is None:
            return image
        if self.paste_to is not None and self.resize is not None:
            # A1111 pastes back with resize mode 1 and the img2img upscaler; once at the region's size the
            # overlay's own resize leaves the image as it is
            image = resize_image(image, self.paste_to[2], self.paste_to[3], 1, self.resize)
        return apply_overlay(image, self.overlays[self.index(image_index)], self.paste_to)


def img2img_steps(steps: int, denoising_strength: float, fix_steps: bool) -> tuple[int, int]:
    """``(schedule steps, steps run)`` of img2img, A1111's ``setup_img2img_steps``: the run is the last
    steps of a schedule. Option ``img2img_fix_steps`` on: exactly ``steps`` steps of a schedule of
    ``int(steps / min(strength, 0.999))``; off: ``int(min(strength, 0.999) * steps) + 1`` steps of a
    ``steps`` schedule. Strength 0 runs no step (the init image comes back)."""
    if denoising_strength <= 0:
        return steps, 0
    strength = min(denoising_strength, 0.999)
    if fix_steps:
        return int(steps / strength), steps
    return steps, int(strength * steps) + 1


def upscaler_resize(upscaler: UpscalerDef | None, opts: Mapping[str, Any] | None = None) -> Resize | None:
    """A1111's ``resize_image`` with an upscaler: enlargements go through ``upscaler`` (then Lanczos to the
    exact size); reductions, and everything without an upscaler, are Lanczos resizes (``upscale_to`` runs
    the upscaler only while the image is smaller than the target)."""
    if upscaler is None:
        return None
    return lambda image, width, height: upscale_to(upscaler, image, width, height, opts=opts)


def _latent_mask(mask: Image.Image, h: int, w: int, round_mask: bool) -> torch.Tensor:
    small = np.asarray(mask.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)[..., 0]
    small = small / 255.0
    if round_mask:
        small = np.around(small)
    return torch.from_numpy(small)[None, None]


@torch.no_grad()
def _inpaint_conditioning(model: LoadedModel, pixels: torch.Tensor, mask: Image.Image, latent_hw: tuple[int, int],
                          round_mask: bool, weight: float, tiled: bool = False) -> torch.Tensor:
    """``[N, 5, h, w]``: the mask and the latent of the image with the masked area blanked (grey)."""
    m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    if round_mask:
        m = torch.round(m)
    masked = torch.lerp(pixels, pixels * (1.0 - m), weight)
    latent = encode_pixels(model, masked, tiled=tiled)
    small = F.interpolate(m, size=latent_hw).to(latent.device).expand(latent.shape[0], -1, -1, -1)
    return torch.cat([small, latent], dim=1)


def prepare_init(model: LoadedModel, req: GenerationRequest, opts: dict[str, Any] | Any,
                 upscaler: UpscalerDef | None = None) -> InitLatents:
    """Resize, mask, fill and encode the init images of ``req`` (once per request). ``upscaler`` enlarges
    the init images (option ``upscaler_for_img2img``; None: Lanczos)."""
    w, h = req.width, req.height
    resize = upscaler_resize(upscaler, opts)
    correct = bool(opts.get("img2img_color_correction", False))
    color_refs: list[np.ndarray] | None = None
    if correct and req.color_correction_images:  # given references (loopback: the first init image)
        color_refs = [color_reference(im) for im in req.color_correction_images]
    elif correct:
        color_refs = []
    background = str(opts.get("img2img_background_color", "#ffffff"))
    images = [flatten(im, background) for im in req.init_images]
    prepared: PreparedMask | None = None
    if req.mask is not None:
        prepared = prepare_mask(req.mask, images[0].size, w, h, invert=bool(req.inpainting_mask_invert),
                                blur_x=req.mask_blur_x, blur_y=req.mask_blur_y, only_masked=req.inpaint_full_res,
                                padding=req.inpaint_full_res_padding, resize_mode=req.resize_mode)
    pixels, overlays = [], []
    for image in images:
        if prepared is not None and prepared.region is not None:
            if image.size != prepared.overlay_mask.size:
                image = image.resize(prepared.overlay_mask.size, Image.Resampling.LANCZOS)
            overlays.append(make_overlay(image, prepared.overlay_mask))
            work = _resize(image.crop(prepared.region), w, h, 2, resize)
        else:
            work = _resize_for_mode(image, w, h, req.resize_mode, masked=prepared is not None, resize=resize)
            if prepared is not None:
                overlays.append(make_overlay(work, prepared.overlay_mask))
        if prepared is not None and req.inpainting_fill != 1:
            # A1111: every masked content but "original" fills the hole of the picture it encodes (latent noise
            # and latent nothing then replace the hole's latents; the edges and the inpainting conditioning keep it)
            work = fill_masked(work, prepared.mask)
        if color_refs is not None and not req.color_correction_images:
            # A1111: the reference is the image as processed -- resized, cropped, and filled unless the
            # masked content is "original"
            color_refs.append(color_reference(work))
        pixels.append(image_to_tensor(work))
    tiled = tiling_wanted(opts, w, h)
    if prepared is None and req.resize_mode == 3:
        latents = _latent_upscale(model, pixels, w, h, opts)
    else:
        latents = torch.cat([encode_pixels(model, p, tiled=tiled) for p in pixels])
    if prepared is None:
        image_cond = None
        if model.components.spec.inpainting:
            full = Image.new("L", (w, h), 255)
            sized = torch.cat([_as_size(p, w, h) for p in pixels])
            image_cond = _inpaint_conditioning(model, sized, full, latents.shape[-2:], True,
                                               float(opts.get("inpainting_mask_weight", 1.0)), tiled)
        return InitLatents(latents, image_cond=image_cond, color_refs=color_refs, resize=resize)
    round_mask = bool(req.mask_round)
    latmask = _latent_mask(prepared.mask, latents.shape[2], latents.shape[3], round_mask)
    image_cond = None
    if model.components.spec.inpainting:
        image_cond = _inpaint_conditioning(model, torch.cat(pixels), prepared.mask, latents.shape[-2:], round_mask,
                                           float(opts.get("inpainting_mask_weight", 1.0)), tiled)
    paste_to = None
    if prepared.region is not None:
        x1, y1, x2, y2 = prepared.region
        paste_to = (x1, y1, x2 - x1, y2 - y1)
    return InitLatents(latents, keep=1.0 - latmask, image_cond=image_cond, overlays=overlays, paste_to=paste_to,
                       fill=int(req.inpainting_fill), color_refs=color_refs, resize=resize)


def _resize_for_mode(image: Image.Image, w: int, h: int, mode: int, masked: bool,
                     resize: Resize | None = None) -> Image.Image:
    """The init image at the processing size; ``resize`` (the img2img upscaler) scales it in modes 0-2,
    which are the modes A1111 resizes with it."""
    if mode == 3:  # latent upscale: encoded at its own size (multiple of 8); with a mask, plain resize
        if masked:
            return resize_image(image, w, h, 0)
        return resize_image(image, max(64, image.width // 8 * 8), max(64, image.height // 8 * 8), 0)
    return _resize(image, w, h, mode, resize)


def _resize(image: Image.Image, w: int, h: int, mode: int, resize: Resize | None) -> Image.Image:
    return resize_image(image, w, h, mode) if resize is None else resize_image(image, w, h, mode, resize)


def _latent_upscale(model: LoadedModel, pixels: list[torch.Tensor], w: int, h: int, opts: Any) -> torch.Tensor:
    out = []
    for p in pixels:
        latent = encode_pixels(model, p, tiled=tiling_wanted(opts, p.shape[-1], p.shape[-2]))
        if latent.shape[-2:] != (h // 8, w // 8):
            latent = F.interpolate(latent, size=(h // 8, w // 8), mode="bilinear")
        out.append(latent)
    return torch.cat(out)


def _as_size(pixels: torch.Tensor, w: int, h: int) -> torch.Tensor:
    if pixels.shape[-2:] == (h, w):
        return pixels
    return F.interpolate(pixels, size=(h, w), mode="bilinear")


def inpaint_infotext(req: GenerationRequest) -> dict[str, Any]:
    """The inpainting fields A1111 writes (and reads back when pasting parameters)."""
    if req.mask is None:
        return {}
    info: dict[str, Any] = {}
    if req.mask_blur_x == req.mask_blur_y:
        info["Mask blur"] = req.mask_blur_x
    else:
        info["Mask blur x"], info["Mask blur y"] = req.mask_blur_x, req.mask_blur_y
    if req.inpainting_mask_invert:
        info["Mask mode"] = MASK_MODE[1]
    info["Masked content"] = MASKED_CONTENT.get(req.inpainting_fill, req.inpainting_fill)
    if req.inpaint_full_res:
        info["Inpaint area"] = INPAINT_AREA[True]
        info["Masked area padding"] = req.inpaint_full_res_padding
    return info
