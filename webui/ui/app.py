"""Build the Gradio Blocks for the whole UI."""

from __future__ import annotations

import logging

import gradio as gr

from webui.context import AppContext
from webui.models.default import HOW_TO_ADD
from webui.models.errors import ModelError
from webui.models.manager import UnknownCheckpoint
from webui.ui.pnginfo import build_pnginfo_tab
from webui.ui.txt2img import build_img2img_tab, build_txt2img_tab

log = logging.getLogger(__name__)


def _checkpoint_titles(ctx: AppContext) -> list[str]:
    return [ctx.models.title(i) for i in ctx.models.checkpoints()]


def _current_title(ctx: AppContext) -> str | None:
    current = ctx.models.current
    if current is not None:
        return current.title
    titles = _checkpoint_titles(ctx)
    return titles[0] if titles else None


def build_ui(ctx: AppContext) -> gr.Blocks:
    """All tabs; plugin tabs come from the ``ui_tabs`` hook."""
    with gr.Blocks(title="Stable Diffusion web UI", analytics_enabled=False) as demo:
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(
                _checkpoint_titles(ctx), value=_current_title(ctx), label="Stable Diffusion checkpoint",
                elem_id="sd_model_checkpoint", scale=4,
            )
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", min_width=40, scale=0)
        notice = gr.Markdown(HOW_TO_ADD if ctx.models.using_builtin_default else "", elem_id="model_notice")

        def on_change(title: str | None):
            if not title:
                return gr.update()
            try:
                model = ctx.models.ensure_loaded(title)
                ctx.options.update({"sd_model_checkpoint": model.title})
            except (ModelError, UnknownCheckpoint) as exc:
                raise gr.Error(str(exc)) from exc
            return gr.update(choices=_checkpoint_titles(ctx), value=model.title)

        def on_refresh():
            ctx.models.refresh()
            return (
                gr.update(choices=_checkpoint_titles(ctx), value=_current_title(ctx)),
                HOW_TO_ADD if ctx.models.using_builtin_default else "",
            )

        checkpoint.input(on_change, inputs=checkpoint, outputs=checkpoint, api_name="change_checkpoint",
                         concurrency_id="gpu")
        refresh.click(on_refresh, inputs=None, outputs=[checkpoint, notice], api_name="refresh_checkpoints")

        with gr.Tabs():
            with gr.Tab("txt2img", id="txt2img"):
                build_txt2img_tab(ctx)
            with gr.Tab("img2img", id="img2img"):
                build_img2img_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo"):
                build_pnginfo_tab()
            for tab in ctx.hooks.ui_tabs(ctx):
                with gr.Tab(tab.title, elem_id=tab.elem_id):
                    tab.render()
    demo.queue(max_size=ctx.settings.max_queue_size)
    return demo
