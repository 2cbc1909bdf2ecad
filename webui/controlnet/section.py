"""The "ControlNet" section of the txt2img/img2img tabs: N units (option ``control_net_unit_count``).

Gradio code that belongs to the ControlNet plugin, not to the product's tabs in :mod:`webui.ui`: the built-in
hands it to the UI through the ``ui_sections`` hook, exactly as an extension hands over its own section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr
import numpy as np

from webui.controlnet.units import CONTROL_MODES, RESIZE_MODES, SECTION, UNION_CONTROL_TYPES
from webui.sections import UiSection, icon_button

FIELDS = ("enabled", "image", "mask", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode",
          "resize_mode", "pixel_perfect", "processor_res", "threshold_a", "threshold_b", "union_control_type")


def controlnet_section(plugin: Any, ctx: Any, mode: str) -> UiSection:
    count = int(ctx.options.current.get("control_net_unit_count", 3))

    def render() -> Mapping[str, Any]:
        comps: dict[str, Any] = {}
        modules = plugin.preprocessors.names()
        with gr.Accordion("ControlNet", open=False, elem_id=f"{mode}_controlnet"):
            with gr.Tabs():
                for i in range(count):
                    with gr.Tab(f"ControlNet Unit {i}"):
                        comps.update(_unit(plugin, mode, i, modules))
        return comps

    def collect(values: Mapping[str, Any]) -> dict[str, Any] | None:
        """The enabled units as API-shaped dicts (checked by ``parse_unit`` like an API request's units;
        a value left out, or empty, takes the unit's default)."""
        units = []
        for i in range(count):
            v = {f: values.get(f"{i}_{f}") for f in FIELDS}
            if not v["enabled"]:
                continue
            unit: dict[str, Any] = {"enabled": True, "module": v["module"] or "none", "model": v["model"] or "None"}
            for key in ("image", "mask", "weight", "guidance_start", "guidance_end"):
                if v[key] is not None and v[key] != "":
                    unit[key] = v[key]
            for key in ("processor_res", "threshold_a", "threshold_b"):
                if v[key] is not None and v[key] != "":
                    unit[key] = int(v[key]) if key == "processor_res" else float(v[key])
            unit["pixel_perfect"] = bool(v["pixel_perfect"])
            unit["resize_mode"] = v["resize_mode"] if v["resize_mode"] in RESIZE_MODES else RESIZE_MODES[1]
            unit["control_mode"] = v["control_mode"] if v["control_mode"] in CONTROL_MODES else CONTROL_MODES[0]
            if v["union_control_type"] in UNION_CONTROL_TYPES[1:]:
                unit["union_control_type"] = v["union_control_type"]
            units.append(unit)
        return {"args": units} if units else None

    return UiSection(SECTION, render, collect)


def _unit(plugin: Any, mode: str, i: int, modules: list[str]) -> dict[str, Any]:
    p = f"{mode}_controlnet_{i}"
    c: dict[str, Any] = {}
    with gr.Row():
        c[f"{i}_image"] = gr.Image(label="Control image" + (" (empty: the img2img input)" if mode == "img2img" else ""),
                                   type="pil", sources=["upload", "clipboard"], elem_id=f"{p}_image", height=240,
                                   format="png")
        preview = gr.Image(label="Preprocessor preview", interactive=False, elem_id=f"{p}_preview", height=240,
                           format="png")
    with gr.Accordion("Mask (optional: white = where the control applies)", open=False):
        c[f"{i}_mask"] = gr.Image(label="Mask", type="pil", sources=["upload", "clipboard"], elem_id=f"{p}_mask",
                                  height=160, format="png")
    with gr.Row():
        c[f"{i}_enabled"] = gr.Checkbox(False, label="Enable", elem_id=f"{p}_enabled")
        c[f"{i}_pixel_perfect"] = gr.Checkbox(False, label="Pixel Perfect", elem_id=f"{p}_pixel_perfect")
        preview_button = gr.Button("Preview preprocessor", elem_id=f"{p}_preview_button", size="sm")
    with gr.Row():
        c[f"{i}_module"] = gr.Dropdown(modules, value="none", label="Preprocessor", elem_id=f"{p}_module")
        c[f"{i}_model"] = gr.Dropdown(["None", *plugin.models.titles()], value="None", label="Model",
                                      elem_id=f"{p}_model")
        refresh = gr.Button(**icon_button("refresh"), scale=0, elem_id=f"{p}_refresh")
        c[f"{i}_union_control_type"] = gr.Dropdown(list(UNION_CONTROL_TYPES), value="Unknown",
                                                   label="Union control type", elem_id=f"{p}_union_control_type",
                                                   info="for Union ControlNets (FLUX.1); Unknown: from the "
                                                        "preprocessor")
    with gr.Row():
        c[f"{i}_weight"] = gr.Slider(0, 2, value=1, step=0.05, label="Control Weight", elem_id=f"{p}_weight")
        c[f"{i}_guidance_start"] = gr.Slider(0, 1, value=0, step=0.01, label="Starting Control Step",
                                             elem_id=f"{p}_guidance_start")
        c[f"{i}_guidance_end"] = gr.Slider(0, 1, value=1, step=0.01, label="Ending Control Step",
                                           elem_id=f"{p}_guidance_end")
    with gr.Row():
        c[f"{i}_processor_res"] = gr.Slider(-1, 2048, value=-1, step=8, label="Preprocessor resolution (-1: default)",
                                            elem_id=f"{p}_processor_res")
        c[f"{i}_threshold_a"] = gr.Number(-1, label="Threshold A (-1: default)", elem_id=f"{p}_threshold_a")
        c[f"{i}_threshold_b"] = gr.Number(-1, label="Threshold B (-1: default)", elem_id=f"{p}_threshold_b")
    c[f"{i}_control_mode"] = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control Mode",
                                      elem_id=f"{p}_control_mode")
    c[f"{i}_resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[1], label="Resize Mode",
                                     elem_id=f"{p}_resize_mode")

    def on_preview(image, module, res, a, b):
        if image is None:
            raise gr.Error("Upload a control image first")
        try:
            out = plugin.preprocessors.detect(np.asarray(image.convert("RGB")), module or "none",
                                              int(res) if res and res > 0 else None,
                                              a if a is not None and a >= 0 else None,
                                              b if b is not None and b >= 0 else None)
        except Exception as exc:  # noqa: BLE001 - an unknown name, missing annotator weights: show the message
            raise gr.Error(str(exc)) from None
        return out

    preview_button.click(on_preview, inputs=[c[f"{i}_image"], c[f"{i}_module"], c[f"{i}_processor_res"],
                                             c[f"{i}_threshold_a"], c[f"{i}_threshold_b"]],
                         outputs=preview, api_name=f"{p}_preview")

    def on_refresh():
        plugin.models.refresh()
        return gr.update(choices=["None", *plugin.models.titles()])

    refresh.click(on_refresh, inputs=None, outputs=c[f"{i}_model"], api_name=f"{p}_refresh")
    return c
