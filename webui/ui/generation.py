"""The txt2img and img2img tabs (one builder; img2img adds its input section).

Every control is registered under its request field name in :attr:`GenerationTab.fields`; the
event handler receives the values by name, so adding a control never shifts the others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.errors import RequestError
from webui.fileio import StorageError
from webui.models.default import EXAMPLE_PROMPT, native_size
from webui.pipeline.conditioning import count_tokens
from webui.pipeline.hires import LATENT_UPSCALE_MODES, SAME_SAMPLER, SAME_SCHEDULER
from webui.pipeline.request import GenerationRequest, request_from_values
from webui.sections import collect_sections, icon_button, section_field
from webui.styles import Style
from webui.ui.img2img_inputs import Img2ImgInputs, build_img2img_inputs, img2img_request, stream_img2img
from webui.ui.networks_panel import build_networks_panel
from webui.ui.progress import map_yields, named_handler, stream_with_progress, user_error
from webui.ui.sendto import override_settings_from_pairs


@dataclass
class GenerationTab:
    mode: str
    fields: dict[str, Any] = field(default_factory=dict)  # request field name -> component
    gallery: Any = None
    info: Any = None
    infotexts: Any = None  # gr.State: infotext of each shown image
    selected: Any = None  # gr.State: index of the selected gallery image
    send_buttons: dict[str, Any] = field(default_factory=dict)
    paste: Any = None  # the paste button: read parameters from the prompt (or the last generation)
    img2img: Img2ImgInputs | None = None
    generate: Any = None  # the Generate button


#: the output gallery's height: its top and most of a picture fit the first screen at 1366x768 (A1111's layout)
OUTPUT_HEIGHT = 480


@dataclass
class _PromptRow:
    """The components of a tab's prompt row besides the prompt fields (wired by :func:`_wire_helpers`)."""

    token_counter: Any
    neg_token_counter: Any
    generate: Any
    interrupt: Any
    skip: Any
    style_name: Any
    save_style: Any


def _prompt_row(ctx: AppContext, tab: GenerationTab, demo: bool) -> _PromptRow:
    """A1111's top row across the tab: the prompts (each with its token counter in its corner) on the left;
    Generate, Interrupt / Skip, paste and the styles on the right."""
    mode, f = tab.mode, tab.fields
    with gr.Row(elem_id=f"{mode}_toprow", equal_height=False):
        with gr.Column(scale=6, elem_id=f"{mode}_prompt_container", elem_classes=["webui-prompts"]):
            with gr.Column(elem_classes=["webui-prompt-box"]):
                f["prompt"] = gr.Textbox(label="Prompt", lines=3, max_lines=12, elem_id=f"{mode}_prompt",
                                         placeholder=f"Prompt, e.g. {EXAMPLE_PROMPT}" if demo else "Prompt")
                token_counter = gr.HTML("", elem_id=f"{mode}_token_counter", elem_classes=["webui-token-counter"])
            with gr.Column(elem_classes=["webui-prompt-box"]):
                f["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, max_lines=12,
                                                  elem_id=f"{mode}_neg_prompt")
                neg_token_counter = gr.HTML("", elem_id=f"{mode}_negative_token_counter",
                                            elem_classes=["webui-token-counter"])
        with gr.Column(scale=2, min_width=250, elem_id=f"{mode}_actions_column", elem_classes=["webui-actions"]):
            generate = tab.generate = gr.Button("Generate", variant="primary", elem_id=f"{mode}_generate",
                                                elem_classes=["webui-generate"])
            with gr.Row(elem_classes=["webui-run-buttons"]):
                interrupt = gr.Button("Interrupt", elem_id=f"{mode}_interrupt")
                skip = gr.Button("Skip", elem_id=f"{mode}_skip")
                tab.paste = gr.Button(**icon_button("paste"), elem_id=f"{mode}_paste", scale=0)
            f["styles"] = gr.Dropdown(ctx.styles.names(), value=[], multiselect=True, label="Styles",
                                      elem_id=f"{mode}_styles")
            with gr.Accordion("Save the prompts as a style", open=False, elem_id=f"{mode}_style_editor"):
                with gr.Row():
                    style_name = gr.Textbox(label="New style name", elem_id=f"{mode}_style_name", scale=2)
                    save_style = gr.Button("Save style", elem_id=f"{mode}_style_save", scale=1)
    return _PromptRow(token_counter, neg_token_counter, generate, interrupt, skip, style_name, save_style)


def build_generation_tab(ctx: AppContext, mode: str) -> GenerationTab:
    """One generation tab; element ids and API names are prefixed with ``mode``."""
    tab = GenerationTab(mode)
    f = tab.fields
    samplers = list(ctx.samplers.samplers)
    schedules = ["Automatic", *(s.label for s in ctx.samplers.schedules.values())]
    demo = ctx.models.using_builtin_default  # the shapes demo model draws small pictures (its native size)
    listed = ctx.models.checkpoints() if demo else []
    size = native_size(listed[0].path) if listed else 512
    top = _prompt_row(ctx, tab, demo)
    with gr.Row(elem_id=f"{mode}_main", equal_height=False):
        with gr.Column(scale=1, elem_id=f"{mode}_settings"):
            if mode == "img2img":
                tab.img2img = build_img2img_inputs(f)
            networks = build_networks_panel(ctx, mode)
            with gr.Row():
                f["sampler_name"] = gr.Dropdown(samplers, value="Euler a" if "Euler a" in samplers else samplers[0],
                                                label="Sampling method", elem_id=f"{mode}_sampling")
                f["scheduler"] = gr.Dropdown(schedules, value="Automatic", label="Schedule type",
                                             elem_id=f"{mode}_scheduler")
            f["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{mode}_steps")
            with gr.Row():
                f["width"] = gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id=f"{mode}_width")
                f["height"] = gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id=f"{mode}_height")
            with gr.Row():
                f["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{mode}_batch_count")
                f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{mode}_batch_size")
            with gr.Row():
                f["cfg_scale"] = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id=f"{mode}_cfg_scale",
                                           scale=3)
                f["cfg_rescale"] = gr.Number(None, label="CFG Rescale φ", minimum=0, maximum=1, step=0.05,
                                             placeholder="auto", elem_id=f"{mode}_cfg_rescale", scale=1,
                                             info="0-1; empty: 0.7 for zero-terminal-SNR v-pred models, else 0")
                f["distilled_cfg_scale"] = gr.Slider(0, 30, value=3.5, step=0.1, label="Distilled CFG Scale",
                                                     elem_id=f"{mode}_distilled_cfg_scale", scale=2,
                                                     info="FLUX.1 dev only (use CFG Scale 1 with it)")
            if mode == "img2img":
                f["denoising_strength"] = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                                    elem_id="img2img_denoising_strength")
            with gr.Row():
                f["seed"] = gr.Number(value=-1, label="Seed", precision=0, elem_id=f"{mode}_seed")
                random_seed = gr.Button(**icon_button("random"), elem_id=f"{mode}_random_seed")
                reuse_seed = gr.Button(**icon_button("reuse"), elem_id=f"{mode}_reuse_seed")
                seed_extras = gr.Checkbox(False, label="Extra", elem_id=f"{mode}_subseed_show")
            with gr.Row(visible=False, elem_id=f"{mode}_seed_extras") as extras_row:
                f["subseed"] = gr.Number(value=-1, label="Variation seed", precision=0, elem_id=f"{mode}_subseed")
                f["subseed_strength"] = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                                  elem_id=f"{mode}_subseed_strength")
                f["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                                    elem_id=f"{mode}_seed_resize_from_w")
                f["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                                    elem_id=f"{mode}_seed_resize_from_h")
            with gr.Row():
                f["restore_faces"] = gr.Checkbox(False, label="Restore faces", elem_id=f"{mode}_restore_faces")
                f["tiling"] = gr.Checkbox(False, label="Tiling", elem_id=f"{mode}_tiling")
            if mode == "txt2img":
                _hires_controls(ctx, f, samplers, schedules)
            with gr.Accordion("Refiner", open=False, elem_id=f"{mode}_refiner"):
                with gr.Row():
                    titles = ["None", *(ctx.models.title(i) for i in ctx.models.checkpoints())]
                    f["refiner_checkpoint"] = gr.Dropdown(titles, value="None", label="Refiner checkpoint",
                                                          elem_id=f"{mode}_refiner_checkpoint",
                                                          allow_custom_value=True)
                    f["refiner_switch_at"] = gr.Slider(0.01, 0.99, value=0.8, step=0.01, label="Switch at",
                                                       elem_id=f"{mode}_refiner_switch_at")
            # A1111's "Override settings": filled by pasting an infotext (Clip skip, compatibility options, ...)
            f["override_settings"] = gr.Dropdown([], value=[], multiselect=True, label="Override settings",
                                                 visible=False, allow_custom_value=True,
                                                 elem_id=f"{mode}_override_settings")
            sections = ctx.hooks.ui_sections(ctx, mode)
            for section in sections:
                for key, component in section.render().items():
                    f[section_field(section.name, key)] = component
            _script_controls(ctx, mode, f)
        with gr.Column(scale=1, elem_id=f"{mode}_results"):
            tab.gallery = gr.Gallery(label="Output", columns=2, height=OUTPUT_HEIGHT, elem_id=f"{mode}_gallery",
                                     format="png", interactive=False, type="pil", allow_preview=True,
                                     buttons=["download", "fullscreen"], object_fit="contain")
            with gr.Row():
                tab.send_buttons["img2img"] = gr.Button("Send to img2img", elem_id=f"{mode}_send_to_img2img",
                                                        size="sm")
                tab.send_buttons["inpaint"] = gr.Button("Send to inpaint", elem_id=f"{mode}_send_to_inpaint",
                                                        size="sm")
                tab.send_buttons["extras"] = gr.Button("Send to extras", elem_id=f"{mode}_send_to_extras",
                                                       size="sm")
            tab.info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{mode}_info")
            used_seed = gr.State(-1)
            tab.infotexts = gr.State([])
            tab.selected = gr.State(0)
    if tab.img2img is not None:  # the input fields first, as before the layout put them in the settings column
        tab.fields = f = {**{k: f[k] for k in tab.img2img.names}, **f}

    names = list(f)

    def generate_fn(v: dict[str, Any], request: gr.Request, progress: gr.Progress):
        owner = getattr(request, "session_hash", None)
        base = _form_request(v).with_(alwayson_scripts=_collect_sections(sections, v))
        script = _chosen_script(ctx, mode, v)
        if mode == "img2img":
            stream = stream_img2img(ctx, tab.img2img, base, v, owner, progress, script=script)
        else:
            stream = stream_with_progress(ctx, base, owner, progress, script=script)
        # live previews (when on): the gallery shows the preview and the info box the progress meanwhile
        result = yield from map_yields(stream, lambda p: ([(p.image, "Preview")], p.text, gr.skip(), gr.skip(),
                                                          gr.skip()))
        gallery_items = [(img, f"seed {s}") for img, s in zip(result.images, result.seeds)]
        gallery_items += [(img, label) for img, label in result.extra_images]
        text = result.infotexts[0] if result.infotexts else ""
        if result.interrupted:
            text = "(interrupted)\n" + text
        if result.warnings:
            text += "\n" + "\n".join(result.warnings)
        yield gallery_items, text, (result.seeds[0] if result.seeds else -1), list(result.infotexts), 0

    on_generate = named_handler(names, generate_fn)
    on_generate.__name__ = mode
    inputs = [f[n] for n in names]
    outputs = [tab.gallery, tab.info, used_seed, tab.infotexts, tab.selected]
    seed_extras.change(lambda show: gr.update(visible=show), inputs=seed_extras, outputs=extras_row,
                       api_name=f"{mode}_seed_extras", queue=False)
    top.generate.click(on_generate, inputs=inputs, outputs=outputs, api_name=mode, concurrency_id="gpu",
                   concurrency_limit=ctx.settings.concurrency)
    f["prompt"].submit(on_generate, inputs=inputs, outputs=outputs, api_name=f"{mode}_submit", concurrency_id="gpu")

    def on_select(evt: gr.SelectData) -> int:
        return int(evt.index or 0)

    tab.gallery.select(on_select, inputs=None, outputs=tab.selected, api_name=False, queue=False)
    _wire_helpers(ctx, tab, top, random_seed, reuse_seed, used_seed)
    networks.wire(ctx, f["prompt"])
    return tab


def _collect_sections(sections: list[Any], v: dict[str, Any]) -> dict[str, Any]:
    """``alwayson_scripts`` from the plugin sections' values (grouped back by section name)."""
    try:
        return collect_sections(sections, v)
    except RequestError as exc:
        raise user_error(exc) from None


def script_slug(title: str) -> str:
    """A script's title as a name part: ``X/Y/Z plot`` -> ``x_y_z_plot``."""
    return re.sub(r"[^0-9a-z]+", "_", title.lower()).strip("_")


def script_field(title: str, name: str) -> str:
    """The field (and API keyword) of a script's control ``name``: ``script__<slug>__<name>``."""
    return f"script__{script_slug(title)}__{name}"


def _script_controls(ctx: AppContext, mode: str, f: dict[str, Any]) -> None:
    """The "Script" dropdown (``script_name``) and, for each selectable script with controls, a hidden group
    holding them (shown while the script is selected); controls are registered by :func:`script_field`."""
    titles = sorted(ctx.scripts.titles(mode), key=str.casefold)
    f["script_name"] = gr.Dropdown(["None", *titles], value="None", label="Script", elem_id=f"{mode}_script",
                                   allow_custom_value=True)
    groups: dict[str, Any] = {}
    for script in sorted(ctx.scripts.all(), key=lambda s: s.title.casefold()):
        if mode not in script.modes or script.render is None:
            continue
        with gr.Group(visible=False, elem_id=f"{mode}_script_{script_slug(script.title)}") as group:
            controls = script.render_controls(mode, ctx.script_choices)
        for name, component in (controls or {}).items():
            f[script_field(script.title, name)] = component
        groups[script.title.lower()] = group
    if not groups:
        return

    def on_script(name: str | None):
        chosen = (name or "").strip().lower()
        return [gr.update(visible=key == chosen) for key in groups]

    f["script_name"].change(on_script, inputs=f["script_name"], outputs=list(groups.values()), api_name=False,
                            queue=False, show_progress="hidden")


def _chosen_script(ctx: AppContext, mode: str, v: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(title, named args)`` of the selected script, or None; controls left out (None) take the script's
    defaults."""
    name = (v.get("script_name") or "").strip()
    if not name or name.lower() == "none":
        return None
    try:
        script = ctx.scripts.get(name, mode)
    except RequestError as exc:
        raise user_error(exc) from None
    prefix = script_field(script.title, "")
    args = {k[len(prefix):]: val for k, val in v.items() if k.startswith(prefix) and val is not None}
    return script.title, args


def _hires_controls(ctx: AppContext, f: dict[str, Any], samplers: list[str], schedules: list[str]) -> None:
    upscalers = [*LATENT_UPSCALE_MODES, *ctx.upscalers.names()]
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        f["enable_hr"] = gr.Checkbox(False, label="Enable hires. fix", elem_id="txt2img_enable_hr")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown(upscalers, value="Latent", label="Upscaler", elem_id="txt2img_hr_upscaler")
            f["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                  elem_id="txt2img_hires_steps")
            f["denoising_strength"] = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength",
                                                elem_id="txt2img_denoising_strength")
        with gr.Row():
            f["hr_scale"] = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            f["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                         elem_id="txt2img_hr_resize_x")
            f["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                         elem_id="txt2img_hr_resize_y")
        with gr.Row():
            f["hr_sampler_name"] = gr.Dropdown([SAME_SAMPLER, *samplers], value=SAME_SAMPLER,
                                               label="Hires sampling method", elem_id="txt2img_hr_sampler")
            f["hr_scheduler"] = gr.Dropdown([SAME_SCHEDULER, *schedules], value=SAME_SCHEDULER,
                                            label="Hires schedule type", elem_id="txt2img_hr_scheduler")
        with gr.Row():
            f["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, placeholder="(same as the prompt)",
                                        elem_id="txt2img_hr_prompt")
            f["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2,
                                                 placeholder="(same as the negative prompt)",
                                                 elem_id="txt2img_hr_neg_prompt")


#: The form's number fields (sliders and number boxes give floats; None or "": the field's default).
_NUMBERS: Mapping[str, type] = MappingProxyType({
    "steps": int, "width": int, "height": int, "n_iter": int, "batch_size": int, "seed": int, "subseed": int,
    "cfg_scale": float, "cfg_rescale": float, "distilled_cfg_scale": float, "subseed_strength": float,
    "refiner_switch_at": float, "denoising_strength": float, "hr_scale": float,
    "hr_second_pass_steps": int, "hr_resize_x": int, "hr_resize_y": int})
#: The request fields every tab's form sets as they are (the hires ones join with enable_hr).
_FORM_FIELDS = ("prompt", "negative_prompt", "steps", "sampler_name", "scheduler", "width", "height", "n_iter",
                "batch_size", "cfg_scale", "cfg_rescale", "distilled_cfg_scale", "seed", "subseed", "subseed_strength",
                "refiner_switch_at", "denoising_strength")


def _form_request(v: dict[str, Any]) -> GenerationRequest:
    """The request a tab's form asks for, converted from UI values."""
    typed = {**v, "hr_upscaler": v.get("hr_upscaler") or "Latent"}
    for name, kind in _NUMBERS.items():
        typed[name] = None if v.get(name) in (None, "") else kind(v[name])
    return request_from_values(
        typed, _FORM_FIELDS,
        seed_resize_from_w=int(v["seed_resize_from_w"]) if v.get("seed_resize_from_w") else -1,
        seed_resize_from_h=int(v["seed_resize_from_h"]) if v.get("seed_resize_from_h") else -1,
        styles=tuple(v.get("styles") or ()), tiling=bool(v.get("tiling")), save_images=True,
        restore_faces=bool(v.get("restore_faces")),
        refiner_checkpoint=None if v.get("refiner_checkpoint") in (None, "", "None") else v["refiner_checkpoint"],
        override_settings=override_settings_from_pairs(v.get("override_settings")))


def _wire_helpers(ctx: AppContext, tab: GenerationTab, top: _PromptRow, random_seed, reuse_seed, used_seed) -> None:
    mode, f = tab.mode, tab.fields

    def on_tokens(text: str) -> str:
        model = ctx.models.current
        if model is None:
            return ""
        lookup = ctx.embeddings.lookup(model.components)
        used, available = count_tokens(model.components, text or "", embeddings=lookup)
        return f"<span class='token-counter'>{used}/{available}</span>"

    f["prompt"].change(on_tokens, inputs=f["prompt"], outputs=top.token_counter, api_name=f"{mode}_token_count",
                       queue=False, show_progress="hidden")
    f["negative_prompt"].change(on_tokens, inputs=f["negative_prompt"], outputs=top.neg_token_counter,
                                api_name=f"{mode}_negative_token_count", queue=False, show_progress="hidden")
    style_name, save_style = top.style_name, top.save_style

    def on_save_style(name: str, p: str, n: str):
        name = (name or "").strip()
        if not name:
            raise gr.Error("Enter a name for the style")
        try:
            ctx.styles.save(Style(name, p or "", n or ""))
        except StorageError as exc:
            raise gr.Error(f"The style was not saved: {exc}") from None
        return gr.update(choices=ctx.styles.names()), ""

    save_style.click(on_save_style, inputs=[style_name, f["prompt"], f["negative_prompt"]],
                     outputs=[f["styles"], style_name], api_name=f"{mode}_save_style")

    def on_interrupt(request: gr.Request) -> None:
        ctx.jobs.interrupt(owner=getattr(request, "session_hash", None))

    def on_skip(request: gr.Request) -> None:
        ctx.jobs.skip(owner=getattr(request, "session_hash", None))

    top.interrupt.click(on_interrupt, inputs=None, outputs=None, api_name=f"{mode}_interrupt",
                        concurrency_limit=None, queue=False)
    top.skip.click(on_skip, inputs=None, outputs=None, api_name=f"{mode}_skip", concurrency_limit=None, queue=False)
    random_seed.click(lambda: -1, inputs=None, outputs=f["seed"], api_name=f"{mode}_random_seed", queue=False)
    reuse_seed.click(lambda s: s, inputs=used_seed, outputs=f["seed"], api_name=f"{mode}_reuse_seed", queue=False)


__all__ = ["GenerationTab", "build_generation_tab", "img2img_request"]
