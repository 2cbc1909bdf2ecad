"""ControlNet during sampling: prepared units and the U-Net patch that adds their residuals.

Control modes follow sd-webui-controlnet (``scripts/hook.py``): "Balanced" scales every residual by the
weight and applies it to the conditional and unconditional passes; "My prompt is more important" scales
output ``i`` (the down residuals, then the mid residual) by ``weight * 0.825 ** (12 - i)`` (deeper =
stronger, "soft injection": SD 1.5's 13 outputs end at 1.0, SDXL's 10 keep the first 10 of those scales,
so its mid residual gets ``0.825 ** 3``; T2I-Adapter features get ``weight * (0.25, 0.62, 0.825, 1.0)``);
"ControlNet is more important" does the same and leaves the unconditional pass without control, so CFG
pushes towards the control. The hires-fix second pass forces soft injection for units whose preprocessor
is a canny or mlsd one. ``advanced_weighting`` replaces all of these scales. A unit acts on step ``i`` of
``n`` when ``guidance_start <= i / n <= guidance_end``. SD 3.x / FLUX.1
ControlNets go through :meth:`ControlNetPatch.transformer_residuals` (:mod:`webui.controlnet.flow_patch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import ControlNetModel
from PIL import Image

from webui.controlnet import inpaint as inpainting
from webui.controlnet.flow_models import flow_family
from webui.controlnet.flow_patch import Encode, block_residuals, control_input
from webui.controlnet.t2i_adapter import adapter_features, is_adapter
from webui.controlnet.union_sdxl import is_union, union_residuals
from webui.controlnet.units import ControlUnit
from webui.pipeline.init_image import resize_image
from webui.pipeline.patches import (
    Residuals,
    TransformerCall,
    TransformerResiduals,
    UNetCall,
    add_transformer_residuals,
)

SOFT_BASE = 0.825
ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)  # T2I-Adapter features' soft-injection scales


def pixel_perfect_resolution(image_hw: tuple[int, int], width: int, height: int, resize_mode: int) -> int:
    """sd-webui-controlnet's "pixel perfect" processor resolution for a target size."""
    raw_h, raw_w = image_hw
    k0, k1 = height / raw_h, width / raw_w
    k = min(k0, k1) if resize_mode == 2 else max(k0, k1)
    return int(round(k * min(raw_h, raw_w)))


@dataclass
class PreparedUnit:
    unit: ControlUnit
    model: ControlNetModel | None  # None: a reference unit
    detected: np.ndarray  # the preprocessor's output (H x W x 3 uint8)
    hint: torch.Tensor | None = field(default=None)  # [1, 3, height, width] in [0, 1] at the pass's size
    region: torch.Tensor | None = field(default=None)  # [1, 1, height, width] effective region, 0..1
    cond: torch.Tensor | None = field(default=None)  # SD 3.x / FLUX.1 ControlNets: their controlnet_cond
    union_mode: int | None = field(default=None)  # Union ControlNets (FLUX.1, SDXL ControlNet++): the type's index
    ip: Any = field(default=None)  # IP-Adapter units: their image tokens (webui.controlnet.ip_adapter.IPUnit)
    reference: Any = field(default=None)  # reference units (no model): webui.controlnet.reference.ReferenceUnit
    style: Any = field(default=None)  # style T2I-Adapter units: their tokens (webui.controlnet.style_adapter)
    #: inpaint units (webui.controlnet.inpaint): ``detected`` is the RGBA picture (alpha = mask); ``restore`` the
    #: pass's (control picture latent, latent mask) for inpaint_only / inpaint_only+lama
    inpaint: bool = field(default=False)
    restore: tuple[torch.Tensor, torch.Tensor] | None = field(default=None)


class ControlNetPatch:
    """The :class:`~webui.pipeline.patches.UNetPatch` of a job's enabled units."""

    def __init__(self, units: list[PreparedUnit], device: torch.device, dtype: torch.dtype,
                 detected_maps: bool = True, encode: Encode | None = None, *,
                 vae_shift_scale: tuple[float, float], alphas_cumprod: torch.Tensor | None = None,
                 inpaint_blur: int = inpainting.DEFAULT_BLUR_SIGMA, hires_size: tuple[int, int] | None = None):
        self.units = units
        #: txt2img with hires fix: the second pass's (width, height), whose detected maps come first
        self.hires_size = hires_size
        #: inpaint_only+lama's noise needs the model's alpha-bars; the final blend the option
        #: control_net_inpaint_blur_sigma
        self.alphas_cumprod, self.inpaint_blur = alphas_cumprod, int(inpaint_blur)
        self._noise_x0: torch.Tensor | None = None
        #: SD 3.x / FLUX.1: the checkpoint's VAE encoder (pixels in [-1, 1] -> scaled latents) and its
        #: (shift, scale), for the ControlNets that read latents
        self.encode, self.vae_shift_scale = encode, vae_shift_scale
        self.device, self.dtype = device, dtype
        self.detected_maps = detected_maps  # False: option control_net_no_detectmap
        #: sd-webui-controlnet's detected maps (the pipeline appends them to the job's images after the generated
        #: ones; see :meth:`_show_maps`)
        self.extra_images: list[tuple[Image.Image, str]] = []
        self._shown: set[int] = set()

    def _map(self, u: PreparedUnit, width: int, height: int) -> Image.Image:
        """A unit's control picture at a pass's size, as its detected map shows it."""
        if u.inpaint:
            return inpainting.shown_map(inpainting.resize_map(u.detected, width, height, u.unit.resize_mode))
        return resize_image(Image.fromarray(u.detected), width, height, u.unit.resize_mode)

    def _show_maps(self, width: int, height: int) -> None:
        """sd-webui-controlnet's detected maps (``get_control``), once per job and unit unless the unit says
        ``save_detected_map: false`` (or the option ``control_net_no_detectmap``): the control picture at the
        generation size, preceded, when txt2img's hires fix is on, by the one at the hires size (whatever
        ``hr_option``); IP-Adapter units (no picture: their preprocessor makes an embedding) show their input
        once."""
        for i, u in enumerate(self.units):
            if not (self.detected_maps and u.unit.save_detected_map) or i in self._shown:
                continue
            self._shown.add(i)
            if u.ip is not None or u.style is not None:
                self.extra_images.append((Image.fromarray(u.detected), u.unit.module))
                continue
            if self.hires_size is not None:
                self.extra_images.append((self._map(u, *self.hires_size), u.unit.module))
            self.extra_images.append((self._map(u, width, height), u.unit.module))

    def prepare(self, width: int, height: int, hires: bool = False) -> None:
        if not hires:
            self._show_maps(width, height)
        for i, u in enumerate(self.units):
            if u.inpaint:
                self._prepare_inpaint(i, u, width, height, hires)
                continue
            image = resize_image(Image.fromarray(u.detected), width, height, u.unit.resize_mode)
            if u.ip is not None or u.reference is not None or u.style is not None:  # only their detected map (the
                # image) here: the IP-Adapter / reference / style patches steer
                continue
            # (a unit's mask was applied to its picture already: webui.controlnet.inputs)
            hint = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            u.hint = hint.to(self.device, self.dtype)
            if is_adapter(u.model):  # T2I-Adapter: its features depend on the hint only
                u.cond = adapter_features(u.model, u.hint)
            elif flow_family(u.model) is not None:
                if self.encode is None:
                    raise ValueError("an SD 3.x / FLUX.1 ControlNet patch needs the checkpoint's VAE encoder")
                u.cond = control_input(u.model, u.hint, self.encode, self.vae_shift_scale)
            self._prepare_region(u, width, height)

    def _prepare_region(self, u: PreparedUnit, width: int, height: int) -> None:
        """The unit's effective region mask at the pass's size, 0..1 (None without one)."""
        if u.unit.effective_region_mask is not None:
            region = resize_image(u.unit.effective_region_mask, width, height, u.unit.resize_mode).convert("L")
            u.region = torch.from_numpy(np.asarray(region, dtype=np.float32) / 255.0)[None, None].to(
                self.device, self.dtype)

    def _prepare_inpaint(self, i: int, u: PreparedUnit, width: int, height: int, hires: bool) -> None:
        """An inpaint unit's pass: its RGBA picture at the pass's size, the hint with the masked pixels at -1, and
        for inpaint_only the picture's latent and the latent mask of the restore (webui.controlnet.inpaint)."""
        resized = inpainting.resize_map(u.detected, width, height, u.unit.resize_mode)
        picture = inpainting.to_tensor(resized)
        u.hint = inpainting.control_hint(picture).to(self.device, self.dtype)
        u.restore = None
        if inpainting.restores(u.unit.module):
            if self.encode is None:
                raise ValueError("an inpaint_only unit needs the checkpoint's VAE encoder")
            x0 = self.encode((picture[:, :3] * 2 - 1).to(self.device))
            u.restore = (x0, inpainting.latent_mask(picture).to(x0.device))
            if not hires and u.unit.module == "inpaint_only+lama":
                self._noise_x0 = x0  # the last such unit's, as sd-webui-controlnet keeps one noise modifier
        self._prepare_region(u, width, height)

    def adjust_denoised(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """inpaint_only units: the control picture's latent outside the mask, every denoiser call of every pass,
        mixed by the weight (webui.controlnet.inpaint.restore)."""
        for u in self.units:
            if u.restore is not None and tuple(u.restore[0].shape[-2:]) == tuple(denoised.shape[-2:]):
                denoised = inpainting.restore(denoised, u.restore[0], u.restore[1], u.unit.weight)
        return denoised

    def modify_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """inpaint_only+lama: the first pass's noise draws start from the LaMa-filled picture's latent."""
        if self._noise_x0 is None or self.alphas_cumprod is None:
            return noise
        return inpainting.noised_start(noise, self._noise_x0, self.alphas_cumprod)

    def postprocess_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """inpaint_only units: the decoded images keep the control picture outside the (dilated, blurred) mask."""
        for u in self.units:
            if u.inpaint and inpainting.restores(u.unit.module):
                height, width = pixels.shape[-2:]
                resized = inpainting.resize_map(u.detected, width, height, u.unit.resize_mode)
                picture = torch.from_numpy(resized[:, :, :3] / 255.0).float().permute(2, 0, 1)
                mask = inpainting.blend_mask(resized[:, :, 3] / 255.0, self.inpaint_blur)
                pixels = inpainting.blend_pixels(pixels, picture.to(pixels.device),
                                                 torch.from_numpy(mask).to(pixels.device))
        return pixels

    def residuals(self, call: UNetCall) -> Residuals | None:
        total: Residuals | None = None
        for u in self.units:
            unit = u.unit
            if not _acts(unit, call) or u.hint is None or is_adapter(u.model):
                continue
            n = call.x.shape[0]
            hint = u.hint.expand(n, -1, -1, -1)
            if is_union(u.model):  # SDXL ControlNet++ Union: told the control type
                down, mid = union_residuals(u.model, call.x.to(self.dtype), call.t, call.context.to(self.dtype), hint,
                                            u.union_mode, call.added)
            else:
                down, mid = u.model(call.x.to(self.dtype), call.t, encoder_hidden_states=call.context.to(self.dtype),
                                    controlnet_cond=hint, added_cond_kwargs=call.added, return_dict=False)
            scales = output_scales(unit, len(down) + 1, call.hires)
            down = [d * s for d, s in zip(down, scales)]
            mid = mid * scales[-1]
            if u.region is not None:  # sd-webui-controlnet: each output times the mask at its own size
                down = [_in_region(d, u.region) for d in down]
                mid = _in_region(mid, u.region)
            only_cond = unit.control_mode == 2 or bool(getattr(u.model.config, "global_pool_conditions", False))
            if only_cond and call.has_uncond:
                keep = _conditional_rows(call, mid)
                down = [d * keep for d in down]
                mid = mid * keep
            if total is None:
                total = (down, mid)
            else:
                total = ([a + b for a, b in zip(total[0], down)], total[1] + mid)
        return total

    def adapter_residuals(self, call: UNetCall) -> list[torch.Tensor] | None:
        """The T2I-Adapter units' features for this U-Net call (one per level, every row; "ControlNet is more
        important": not on the unconditional rows), times their scales (:func:`output_scales`), summed over the
        units."""
        total: list[torch.Tensor] | None = None
        for u in self.units:
            unit = u.unit
            if not is_adapter(u.model) or u.cond is None or not _acts(unit, call):
                continue
            n = call.x.shape[0]
            scales = output_scales(unit, len(u.cond), call.hires, adapter=True)
            features = [f.to(call.x.dtype).expand(n, -1, -1, -1) * s for f, s in zip(u.cond, scales)]
            if unit.control_mode == 2 and call.has_uncond:
                keep = _conditional_rows(call, features[0])
                features = [f * keep for f in features]
            if u.region is not None:
                features = [_in_region(f, u.region) for f in features]
            total = features if total is None else [a + b for a, b in zip(total, features)]
        return total

    def transformer_residuals(self, call: TransformerCall) -> TransformerResiduals | None:
        """The SD 3.x / FLUX.1 counterpart of :meth:`residuals` (see :mod:`webui.controlnet.flow_patch`)."""
        total: TransformerResiduals | None = None
        for u in self.units:
            unit = u.unit
            if u.cond is None or not _acts(unit, call):
                continue
            outputs = block_residuals(u.model, u.cond, call, u.union_mode)
            keep = None
            if unit.control_mode == 2 and call.has_uncond:
                keep = _conditional_rows(call, next(iter(outputs.values()))[0])
            region = None
            if u.region is not None:  # per token: the region at the 2x2-patch grid of the latents
                grid = (call.x.shape[-2] // 2, call.x.shape[-1] // 2)
                region = torch.nn.functional.interpolate(u.region.float(), size=grid, mode="bilinear",
                                                         align_corners=False).reshape(1, -1, 1)
            weights = list(unit.advanced_weighting) if unit.advanced_weighting is not None else None
            position = 0
            weighted: TransformerResiduals = {}
            for key, values in outputs.items():
                scaled = []
                for v in values:
                    scale = unit.weight if weights is None else (weights[position] if position < len(weights) else 0.0)
                    position += 1
                    out = v * scale
                    if keep is not None:
                        out = out * keep
                    if region is not None:
                        out = out * region.to(out.device, out.dtype)
                    scaled.append(out)
                weighted[key] = scaled
            total = add_transformer_residuals(total, weighted)
        return total


def _acts(unit: ControlUnit, call: UNetCall | TransformerCall) -> bool:
    """Whether ``unit`` works in this model call: a weight, the step inside its guidance window, and its
    ``hr_option`` allowing the pass."""
    fraction = call.step / max(call.steps, 1)
    return unit.weight != 0 and unit.guidance_start <= fraction <= unit.guidance_end and applies(unit, call.hires)


def _conditional_rows(call: UNetCall | TransformerCall, like: torch.Tensor) -> torch.Tensor:
    """1 on the conditional rows and 0 on the unconditional ones (they come last), shaped to broadcast over
    ``like``'s rows."""
    n = like.shape[0]
    keep = torch.ones(n, *([1] * (like.ndim - 1)), device=like.device, dtype=like.dtype)
    keep[n - call.batch:] = 0
    return keep


def _in_region(output: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    mask = torch.nn.functional.interpolate(region.to(output.dtype), size=output.shape[-2:], mode="bilinear",
                                           align_corners=False)
    return output * mask


def output_scales(unit: ControlUnit, count: int, hires: bool, adapter: bool = False) -> list[float]:
    """sd-webui-controlnet's scales for a unit's ``count`` control outputs in order (ControlNet: the down
    residuals, then the mid one; T2I-Adapter: its features), ``scripts/hook.py``'s ``control_scales``:

    * the weight for each output ("Balanced");
    * soft injection ("My prompt is more important", "ControlNet is more important", and in the hires-fix pass
      for canny / mlsd preprocessors, its ``high_res_fix_forced_soft_injection``): ``weight * 0.825 ** (12 - i)``
      for ControlNet output ``i`` (SD 1.5 has 13 outputs; SDXL's 10 take the first 10), ``weight * (0.25, 0.62,
      0.825, 1.0)[i]`` for T2I-Adapter feature ``i``;
    * ``advanced_weighting`` instead of all of these when given.

    It ``zip``s outputs with scales: an output past the end of the list adds nothing (scale 0 here).
    """
    if unit.advanced_weighting is not None:
        listed = list(unit.advanced_weighting)
    elif unit.control_mode != 0 or (hires and ("canny" in unit.module or "mlsd" in unit.module)):
        listed = [unit.weight * s for s in ADAPTER_SOFT] if adapter else \
            [unit.weight * SOFT_BASE ** float(12 - i) for i in range(13)]
    else:
        return [unit.weight] * count
    return [listed[i] if i < len(listed) else 0.0 for i in range(count)]


def applies(unit: Any, hires: bool) -> bool:
    """Whether ``unit`` works in the first pass (``hires`` False) or the hires-fix pass, by its ``hr_option``
    (0 Both, 1 Low res only, 2 High res only)."""
    return unit.hr_option == 0 or unit.hr_option == (2 if hires else 1)


def describe(units: list[Any]) -> str:
    return ", ".join(f"{u.unit.module}/{u.unit.model}" for u in units)
