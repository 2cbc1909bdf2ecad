"""Live previews of the image being generated (A1111's "Live previews" settings).

Every ``show_progress_every_n_steps`` finished sampling steps (when ``live_previews_enable`` is on) the
first image of the batch is rendered from the sampler's current ``denoised`` prediction with the method
in ``show_progress_type`` and stored as ``job.current_image`` -- what the UI shows and what
``GET /sdapi/v1/progress`` returns as ``current_image``:

* ``"Approx cheap"`` -- a linear latent->RGB map per architecture (:mod:`webui.previews.approx`);
* ``"Approx NN"`` -- A1111's small "VAE approx" network is not shipped here; it is treated as
  ``"Approx cheap"``;
* ``"TAESD"`` -- the tiny TAESD decoder from ``models/VAE-approx`` (:mod:`webui.previews.taesd`); a
  missing file is logged once per job and ``"Approx cheap"`` is used instead;
* ``"Full"`` -- the checkpoint's VAE (exact, and by far the most expensive).

The built-in plugin :mod:`webui.builtin.previews` calls this from the ``on_step_end`` hook.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from webui.previews.approx import approx_image
from webui.previews.taesd import TAESDDecoders, TAESDMissing, decode

log = logging.getLogger(__name__)

PREVIEW_TYPES = ("Full", "Approx NN", "Approx cheap", "TAESD")
DEFAULT_TYPE = "Approx NN"  # A1111's default; rendered with the cheap approximation (no weight file)


def preview_interval(opts: Mapping[str, Any] | None) -> int:
    """Steps between previews under ``opts``; 0 when previews are off."""
    if not opts or not opts.get("live_previews_enable", True):
        return 0
    try:
        every = int(opts.get("show_progress_every_n_steps", 0) or 0)
    except (TypeError, ValueError):
        return 0
    return max(every, 0)


def preview_due(opts: Mapping[str, Any] | None, step: int) -> bool:
    """Whether a preview is made after the 0-based sampling ``step``: after every N finished steps
    (steps N, 2N, ... counted from 1). A1111 previews at 0-based steps 0, N, 2N, ..., i.e. right after the
    first step, whose prediction is mostly noise; counting finished steps instead makes the last step of a
    multiple-of-N run previewed too."""
    every = preview_interval(opts)
    return every > 0 and (step + 1) % every == 0


def preview_method(opts: Mapping[str, Any] | None) -> str:
    """The effective method: one of "Full", "Approx cheap", "TAESD" ("Approx NN" and unknown names map to
    "Approx cheap")."""
    name = str((opts or {}).get("show_progress_type", DEFAULT_TYPE) or DEFAULT_TYPE)
    return name if name in ("Full", "TAESD") else "Approx cheap"


class PreviewRenderer:
    """Renders one latent with a method; owns the TAESD decoders and the once-per-job warnings."""

    def __init__(self, taesd_folder: Path) -> None:
        self.taesd = TAESDDecoders(taesd_folder)
        self._warned: OrderedDict[str, None] = OrderedDict()

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned[key] = None
        while len(self._warned) > 64:
            self._warned.popitem(last=False)
        log.warning("%s", message)

    @torch.no_grad()
    def render(self, method: str, latent: torch.Tensor, model: Any = None, opts: Mapping[str, Any] | None = None,
               job_id: str = "") -> Image.Image:
        """Preview of ``latent[:1]`` (scaled latents, ``[N, 4, h, w]``) as a PIL image of the final size."""
        latent = latent[:1]
        family = _family(model)
        if method == "Full" and model is not None:
            from webui.pipeline.vae import decode_to_pixels, tiling_wanted, to_images

            h, w = latent.shape[-2] * 8, latent.shape[-1] * 8
            return to_images(decode_to_pixels(model, latent, tiled=tiling_wanted(opts, w, h)))[0]
        if method == "TAESD":
            device = getattr(model, "device", latent.device)
            dtype = getattr(model, "dtype", torch.float32)
            try:
                decoder = self.taesd.get(family, device, dtype)
            except TAESDMissing as exc:
                self._warn_once(f"{job_id}:{exc.stem}", str(exc))
            except Exception as exc:  # noqa: BLE001 - a broken file must not stop the generation
                self._warn_once(f"{job_id}:taesd-error", f"TAESD live preview failed to load: {exc}; "
                                                         "using 'Approx cheap' instead")
            else:
                from webui.pipeline.vae import to_images

                return to_images(decode(decoder, latent))[0]
        return approx_image(latent, family, own=getattr(getattr(model, "components", None), "latent_rgb", None))


def _family(model: Any) -> str:
    try:
        return str(model.components.spec.family)
    except AttributeError:
        return "sd1"


__all__ = ["DEFAULT_TYPE", "PREVIEW_TYPES", "PreviewRenderer", "preview_due", "preview_interval", "preview_method"]
