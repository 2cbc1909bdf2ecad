"""Built-in plugin: live previews during sampling (see :mod:`webui.previews`).

Options (A1111 keys): ``live_previews_enable``, ``show_progress_every_n_steps`` (core option, 0 = off)
and ``show_progress_type``. When previews are off, ``on_step_end`` returns before any preview work.
"""

from __future__ import annotations

import logging
from typing import Any

from webui.hookspecs import hookimpl
from webui.previews import DEFAULT_TYPE, PREVIEW_TYPES, PreviewRenderer, preview_due, preview_method
from webui.settings import OptionDef

log = logging.getLogger(__name__)


class PreviewsPlugin:
    def __init__(self) -> None:
        self.ctx: Any = None
        self.renderer: PreviewRenderer | None = None

    @hookimpl
    def register_settings(self) -> list[OptionDef]:
        return [
            OptionDef("live_previews_enable", True, "Show live previews of the created image", "Live previews",
                      help="The picture is shown as it forms, in the output area, while it generates."),
            # "Approx NN" (A1111's small VAE-approx network) is rendered with the cheap linear approximation.
            OptionDef("show_progress_type", DEFAULT_TYPE, "Live preview method", "Live previews",
                      choices=PREVIEW_TYPES, help="Approx cheap is the fastest, TAESD the closest to the result, "
                      "Full decodes with the VAE (slow)."),
        ]

    @hookimpl
    def startup(self, ctx: Any) -> None:
        self.ctx = ctx
        self.renderer = PreviewRenderer(ctx.settings.model_dir("VAE-approx"))

    @hookimpl
    def on_step_end(self, state: Any) -> None:
        opts = state.opts
        if opts is None and self.ctx is not None:
            opts = self.ctx.options.current
        if not preview_due(opts, state.step):
            return
        latent = state.denoised if state.denoised is not None else state.latents
        if latent is None:
            return
        if self.renderer is None:  # used without startup (e.g. registered at run time)
            from webui.settings import Settings

            self.renderer = PreviewRenderer(Settings().model_dir("VAE-approx"))
        job = state.job
        try:
            image = self.renderer.render(preview_method(opts), latent, state.model, opts, getattr(job, "id", ""))
        except Exception as exc:  # noqa: BLE001 - a failed preview never stops the generation
            log.warning("Live preview failed: %s: %s", type(exc).__name__, exc)
            return
        job.current_image = image


def make_plugin() -> PreviewsPlugin:
    return PreviewsPlugin()
