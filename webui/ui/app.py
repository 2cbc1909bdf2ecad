"""Build the Gradio Blocks for the whole UI."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.errors import ModelError, UnknownChoice
from webui.models.default import HOW_TO_ADD
from webui.sections import icon_button
from webui.settings import OptionError
from webui.ui.editor import editor_value
from webui.ui.extensions_tab import build_extensions_tab
from webui.ui.extras import build_extras_tab
from webui.ui.generation import GenerationTab, build_generation_tab
from webui.ui.merger import build_merger_tab
from webui.ui.page import SHORTCUTS_HELP
from webui.ui.pnginfo import build_pnginfo_tab
from webui.ui.sendto import values_from_infotext
from webui.ui.settings_tab import build_settings_tab
from webui.ui.train_tab import build_train_tab
from webui.ui.workers_panel import build_workers_panel

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
            refresh = gr.Button(**icon_button("refresh"), elem_id="refresh_sd_model_checkpoint", scale=0)
            _option_dropdowns(ctx, ("sd_vae",))
            _modules_select(ctx)
        # dismissible: static/keys.js adds a × button that hides it in this browser (localStorage)
        notice = gr.Markdown(HOW_TO_ADD if ctx.models.using_builtin_default else "", elem_id="model_notice")
        build_workers_panel(ctx)

        def on_change(title: str | None):
            if not title:
                return gr.update()
            try:
                chosen = ctx.select_checkpoint(title)
                ctx.options.update({"sd_model_checkpoint": chosen})
            except (ModelError, UnknownChoice) as exc:
                raise gr.Error(str(exc)) from exc
            return gr.update(choices=_checkpoint_titles(ctx), value=chosen)

        def on_refresh():
            ctx.refresh_models()
            return (
                gr.update(choices=_checkpoint_titles(ctx), value=_current_title(ctx)),
                HOW_TO_ADD if ctx.models.using_builtin_default else "",
            )

        checkpoint.input(on_change, inputs=checkpoint, outputs=checkpoint, api_name="change_checkpoint",
                         concurrency_id="gpu")
        refresh.click(on_refresh, inputs=None, outputs=[checkpoint, notice], api_name="refresh_checkpoints")

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t2i = build_generation_tab(ctx, "txt2img")
            with gr.Tab("img2img", id="img2img"):
                i2i = build_generation_tab(ctx, "img2img")
            with gr.Tab("Extras", id="extras"):
                extras = build_extras_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo"):
                png = build_pnginfo_tab()
            with gr.Tab("Checkpoint Merger", id="modelmerger"):
                build_merger_tab(ctx)
            with gr.Tab("Train", id="train"):
                build_train_tab(ctx)
            with gr.Tab("Settings", id="settings") as settings_tab:
                build_settings_tab(ctx, settings_tab)
            with gr.Tab("Extensions", id="extensions"):
                build_extensions_tab(ctx)
            for tab in ctx.hooks.ui_tabs(ctx):
                with gr.Tab(tab.title, elem_id=tab.elem_id):
                    tab.render()
        gr.Markdown(SHORTCUTS_HELP, elem_id="webui_shortcuts")  # static/keys.js makes them work
        _wire_model_loading(ctx, demo, [t2i.generate, i2i.generate])
        _wire_send_to(ctx, tabs, t2i, i2i, png, extras)
        for tab in (t2i, i2i):
            _wire_paste(ctx, tab)
    demo.queue(max_size=ctx.settings.max_queue_size)
    return demo


LOADING_LABEL = "Loading model…"


def loading_state(ctx: AppContext, buttons: int) -> list[Any]:
    """Updates for ``buttons`` Generate buttons and the timer that polls: "Loading model…" and not clickable
    while a checkpoint loads, the timer active; "Generate" and the timer off once the model is ready."""
    loading = ctx.models.loading is not None
    label = gr.update(value=LOADING_LABEL if loading else "Generate", interactive=not loading)
    return [label] * buttons + [gr.Timer(active=loading)]


def _wire_model_loading(ctx: AppContext, demo: gr.Blocks, buttons: list[Any]) -> None:
    """While a checkpoint loads (the first one at start), the Generate buttons say so and wait; a timer,
    active only then, gives them back when the model is ready."""
    timer = gr.Timer(1.0, active=False)

    def state():
        return loading_state(ctx, len(buttons))

    demo.load(state, inputs=None, outputs=[*buttons, timer], api_name=False, queue=False, show_progress="hidden")
    timer.tick(state, inputs=None, outputs=[*buttons, timer], api_name=False, queue=False, show_progress="hidden")


def _module_names(ctx: AppContext) -> list[str]:
    return [f.model_name for f in ctx.models.module_choice_files()]


def _modules_select(ctx: AppContext) -> None:
    """Forge's "VAE / Text encoder" multi-select (option ``forge_additional_modules``): the separate files an
    SD 3.x / FLUX.1 checkpoint takes its missing parts from; a loaded flow model is loaded again with them."""
    current = [str(v) for v in ctx.options.current.get("forge_additional_modules") or []]
    select = gr.Dropdown(_module_names(ctx), value=current, multiselect=True, label="VAE / Text encoder",
                         elem_id="forge_additional_modules", scale=3,
                         info="For SD 3.x / FLUX.1 files without their VAE or text encoders")
    refresh = gr.Button(**icon_button("refresh"), elem_id="refresh_forge_additional_modules", scale=0)

    def on_change(values: list[str] | None):
        values = list(values or [])
        try:
            ctx.options.update(ctx.options.validate({"forge_additional_modules": values}))
            current_model = ctx.models.current
            if current_model is not None and current_model.spec.is_flow:
                ctx.models.ensure_loaded(None, modules=values)
        except (ModelError, UnknownChoice, OptionError) as exc:
            raise gr.Error(str(exc)) from exc
        return gr.update(value=values)

    select.input(on_change, inputs=select, outputs=select, api_name="change_modules", concurrency_id="gpu")
    refresh.click(lambda: gr.update(choices=_module_names(ctx)), inputs=None, outputs=select, api_name=False)


def _option_dropdowns(ctx: AppContext, keys: tuple[str, ...]) -> None:
    """Quick settings: a dropdown per option whose choices come from its ``choices_fn`` (e.g. VAE files)."""
    for key in keys:
        d = ctx.options.defs.get(key)
        if d is None or d.choices_fn is None:
            continue

        def choices(d=d) -> list:
            try:
                return list(d.choices_fn())
            except Exception:  # noqa: BLE001 - a plugin's listing must not break the page
                log.exception("Listing the choices of %s failed", d.key)
                return [d.default]

        current = ctx.options.current.get(key, d.default)
        dropdown = gr.Dropdown(choices(), value=current, label=d.label, elem_id=key, scale=2,
                               allow_custom_value=True)
        button = gr.Button(**icon_button("refresh"), elem_id=f"refresh_{key}", scale=0)

        def on_change(value, key=key):
            try:
                ctx.options.update(ctx.options.validate({key: value}))
            except Exception as exc:  # noqa: BLE001 - shown to the user
                raise gr.Error(str(exc)) from None
            return gr.update()

        def on_refresh(choices=choices):
            return gr.update(choices=choices())

        dropdown.input(on_change, inputs=dropdown, outputs=dropdown, api_name=f"set_{key}")
        button.click(on_refresh, inputs=None, outputs=dropdown, api_name=f"refresh_{key}")


def _param_names(tab: GenerationTab) -> list[str]:
    return [n for n in tab.fields if not n.startswith(("input_", "batch_input", "batch_output", "batch_mask",
                                                          "outpaint_"))]


def _fill(ctx: AppContext, tab: GenerationTab, infotext: str) -> list[Any]:
    """Updates for the tab's parameter fields from an infotext (core fields and the plugins' own keys)."""
    current = ctx.options.current
    values = values_from_infotext(infotext or "", _param_names(tab), ctx.hooks, tab.mode,
                                  auto_backcompat=bool(current.get("auto_backcompat", True)), current=current)

    def update(n: str):
        if n not in values:
            return gr.update()
        if n == "override_settings":  # shown only when the infotext changes some settings (A1111)
            return gr.update(value=values[n], choices=values[n], visible=bool(values[n]))
        return gr.update(value=values[n])

    return [update(n) for n in _param_names(tab)]


def _wire_paste(ctx: AppContext, tab: GenerationTab) -> None:
    """The paste button (A1111's "paste"): read the parameters from the prompt box, or, when it is empty, from
    the last generation shown in this tab."""
    names = _param_names(tab)

    def paste(prompt: str | None, infotexts: list[str] | None) -> list[Any]:
        text = prompt if (prompt or "").strip() else (infotexts[0] if infotexts else "")
        if not (text or "").strip():
            return [gr.update() for _ in names]
        return _fill(ctx, tab, text)

    tab.paste.click(paste, inputs=[tab.fields["prompt"], tab.infotexts], outputs=[tab.fields[n] for n in names],
                    api_name=f"{tab.mode}_paste", queue=False)


def _wire_send_to(ctx: AppContext, tabs: gr.Tabs, t2i: GenerationTab, i2i: GenerationTab, png: dict[str, Any],
                  extras: dict[str, Any]) -> None:
    """"Send to" buttons: the selected output (or the PNG Info image) and its parameters go to a tab."""
    assert i2i.img2img is not None
    sub = i2i.img2img.tabs
    i2i_params = [i2i.fields[n] for n in _param_names(i2i)]
    t2i_params = [t2i.fields[n] for n in _param_names(t2i)]
    to_img2img = [tabs, sub, i2i.img2img.mode_state, i2i.fields["input_image"], *i2i_params]
    to_inpaint = [tabs, sub, i2i.img2img.mode_state, i2i.fields["input_inpaint"], *i2i_params]

    def pick(gallery: list | None, index: int | None, infotexts: list[str] | None):
        if not gallery:
            raise gr.Error("Generate an image first")
        i = min(max(int(index or 0), 0), len(gallery) - 1)
        item = gallery[i]
        image = item[0] if isinstance(item, (list, tuple)) else item
        text = infotexts[i] if infotexts and i < len(infotexts) else ""
        return image, text

    def send_img2img(gallery, index, infotexts):
        image, text = pick(gallery, index, infotexts)
        return [gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img_img2img_tab"), "img2img", image,
                *_fill(ctx, i2i, text)]

    def send_inpaint(gallery, index, infotexts):
        image, text = pick(gallery, index, infotexts)
        return [gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img_inpaint_tab"), "inpaint",
                editor_value(image), *_fill(ctx, i2i, text)]

    def send_extras(gallery, index, infotexts):
        image, _ = pick(gallery, index, infotexts)
        return [gr.Tabs(selected="extras"), "single", image]

    to_extras = [tabs, extras["mode"], extras["image"]]
    for src in (t2i, i2i):
        state = [src.gallery, src.selected, src.infotexts]
        src.send_buttons["extras"].click(send_extras, inputs=state, outputs=to_extras,
                                         api_name=f"{src.mode}_send_to_extras")
        src.send_buttons["img2img"].click(send_img2img, inputs=state, outputs=to_img2img,
                                          api_name=f"{src.mode}_send_to_img2img")
        src.send_buttons["inpaint"].click(send_inpaint, inputs=state, outputs=to_inpaint,
                                          api_name=f"{src.mode}_send_to_inpaint")

    def png_to_txt2img(text):
        return [gr.Tabs(selected="txt2img"), *_fill(ctx, t2i, text)]

    def png_to(target: str):
        def send(image, text):
            if image is None:
                raise gr.Error("Drop an image into PNG Info first")
            value = image if target == "img2img" else editor_value(image)
            return [gr.Tabs(selected="img2img"), gr.Tabs(selected=f"img2img_{target}_tab"), target, value,
                    *_fill(ctx, i2i, text)]

        return send

    def png_to_extras(image):
        if image is None:
            raise gr.Error("Drop an image into PNG Info first")
        return [gr.Tabs(selected="extras"), "single", image]

    png["extras"].click(png_to_extras, inputs=png["image"], outputs=to_extras, api_name="pnginfo_send_to_extras")
    png["txt2img"].click(png_to_txt2img, inputs=png["infotext"], outputs=[tabs, *t2i_params],
                         api_name="pnginfo_send_to_txt2img")
    png["img2img"].click(png_to("img2img"), inputs=[png["image"], png["infotext"]], outputs=to_img2img,
                         api_name="pnginfo_send_to_img2img")
    png["inpaint"].click(png_to("inpaint"), inputs=[png["image"], png["infotext"]], outputs=to_inpaint,
                         api_name="pnginfo_send_to_inpaint")
