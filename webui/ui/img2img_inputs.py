"""img2img's input section: the img2img / Sketch / Inpaint / Inpaint sketch / Inpaint upload / Batch
sub-tabs, the inpainting controls and outpainting, and turning their values into requests."""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from webui.context import AppContext
from webui.errors import RequestError
from webui.infotext import INPAINT_AREA, MASK_MODE, MASKED_CONTENT
from webui.pipeline.batch_folder import run_folder
from webui.pipeline.init_image import RESIZE_MODES
from webui.pipeline.outpaint import DIRECTIONS, outpaint_request
from webui.pipeline.request import GenerationRequest
from webui.pipeline.result import GenerationResult
from webui.ui.editor import inpaint_input, inpaint_sketch_input, sketch_input
from webui.ui.progress import Preview, run_with_progress, stream_with_progress, user_error

#: Sub-tab id -> label; the id is what ``input_mode`` holds.
INPUT_TABS = {"img2img": "img2img", "sketch": "Sketch", "inpaint": "Inpaint", "inpaint_sketch": "Inpaint sketch",
              "inpaint_upload": "Inpaint upload", "batch": "Batch"}
#: the sub-tabs that inpaint: the inpainting controls show only on these (A1111)
INPAINT_TABS = ("inpaint", "inpaint_sketch", "inpaint_upload")
SKETCH_COLOURS = ["#000000", "#ffffff", "#cc3232", "#32cc70", "#3270cc", "#eecc33", "#ad32cc"]


@dataclass
class Img2ImgInputs:
    tabs: Any = None
    tab_items: dict[str, Any] = field(default_factory=dict)
    mode_state: Any = None
    names: list[str] = field(default_factory=list)  # the request fields this section registered, in order
    inpaint_controls: Any = None  # the "Inpainting" accordion (shown on the sub-tabs that inpaint)


def build_img2img_inputs(f: dict[str, Any]) -> Img2ImgInputs:
    """Create the input sub-tabs and inpainting controls, registering them in ``f`` by name."""
    out = Img2ImgInputs()
    before = set(f)
    # which sub-tab is active; a hidden field (not a State) so API clients can choose it too
    f["input_mode"] = out.mode_state = gr.Textbox("img2img", visible=False, elem_id="img2img_input_mode")
    with gr.Tabs(elem_id="mode_img2img") as out.tabs:
        with gr.Tab("img2img", id="img2img_img2img_tab") as t:
            f["input_image"] = gr.Image(label="Image for img2img", type="pil", sources=["upload", "clipboard"],
                                        elem_id="img2img_image", height=360, image_mode="RGBA", format="png")
        out.tab_items["img2img"] = t
        with gr.Tab("Sketch", id="img2img_sketch_tab") as t:
            f["input_sketch"] = gr.ImageEditor(label="Sketch", type="pil", sources=["upload", "clipboard"],
                                               elem_id="img2img_sketch", height=420, transforms=(),
                                               brush=gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults"),
                                               layers=False, format="png")
        out.tab_items["sketch"] = t
        with gr.Tab("Inpaint", id="img2img_inpaint_tab") as t:
            f["input_inpaint"] = gr.ImageEditor(label="Image for inpainting with mask", type="pil",
                                                sources=["upload", "clipboard"], elem_id="img2img_inpaint",
                                                height=420, transforms=(), layers=False, format="png",
                                                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
        out.tab_items["inpaint"] = t
        with gr.Tab("Inpaint sketch", id="img2img_inpaint_sketch_tab") as t:
            f["input_inpaint_sketch"] = gr.ImageEditor(label="Inpaint sketch", type="pil",
                                                       sources=["upload", "clipboard"],
                                                       elem_id="img2img_inpaint_sketch", height=420, transforms=(),
                                                       brush=gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults"),
                                                       layers=False, format="png")
        out.tab_items["inpaint_sketch"] = t
        with gr.Tab("Inpaint upload", id="img2img_inpaint_upload_tab") as t:
            with gr.Row():
                f["input_upload_image"] = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"],
                                                   elem_id="img2img_inpaint_upload_image", image_mode="RGBA",
                                                   format="png")
                f["input_upload_mask"] = gr.Image(label="Mask (white = repaint)", type="pil",
                                                  sources=["upload", "clipboard"], image_mode="RGBA",
                                                  elem_id="img2img_inpaint_upload_mask", format="png")
        out.tab_items["inpaint_upload"] = t
        with gr.Tab("Batch", id="img2img_batch_tab") as t:
            gr.Markdown("Process every image of a folder on the server. Masks (optional) are matched by file name.")
            f["batch_input_dir"] = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
            f["batch_output_dir"] = gr.Textbox(label="Output directory (empty: the usual outputs folder)",
                                               elem_id="img2img_batch_output_dir")
            f["batch_mask_dir"] = gr.Textbox(label="Inpaint batch mask directory (optional)",
                                             elem_id="img2img_batch_inpaint_mask_dir")
        out.tab_items["batch"] = t
    f["resize_mode"] = gr.Radio(list(RESIZE_MODES.values()), value=RESIZE_MODES[0], label="Resize mode",
                                elem_id="img2img_resize_mode")
    with gr.Accordion("Inpainting", open=True, elem_id="img2img_inpaint_controls",
                      visible=False) as out.inpaint_controls:
        with gr.Row():
            f["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
            f["inpainting_mask_invert"] = gr.Radio(list(MASK_MODE.values()), value=MASK_MODE[0], label="Mask mode",
                                                   elem_id="img2img_mask_mode")
        f["inpainting_fill"] = gr.Radio(list(MASKED_CONTENT.values()), value=MASKED_CONTENT[1],
                                        label="Masked content", elem_id="img2img_inpainting_fill")
        with gr.Row():
            f["inpaint_full_res"] = gr.Radio(list(INPAINT_AREA.values()), value=INPAINT_AREA[False],
                                             label="Inpaint area", elem_id="img2img_inpaint_full_res")
            f["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4,
                                                      label="Only masked padding, pixels",
                                                      elem_id="img2img_inpaint_full_res_padding")
    with gr.Accordion("Outpainting", open=False, elem_id="img2img_outpainting"):
        f["outpaint_enable"] = gr.Checkbox(False, label="Outpaint (extend the canvas and fill the new area)",
                                           elem_id="img2img_outpaint_enable")
        with gr.Row():
            f["outpaint_pixels"] = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand",
                                             elem_id="img2img_outpaint_pixels")
            f["outpaint_directions"] = gr.CheckboxGroup(list(DIRECTIONS), value=list(DIRECTIONS),
                                                        label="Outpainting direction",
                                                        elem_id="img2img_outpaint_directions")
    # the sub-tab chosen sets the input mode ("send to" sets it itself); the mode's change event shows the
    # inpainting controls on the sub-tabs that inpaint. Both run in the browser, in the order the events happen:
    # as server calls, the select that Gradio fires for the first sub-tab when the img2img tab first opens could
    # answer after the user's own pick and turn the mode back to "img2img"
    for key, item in out.tab_items.items():
        item.select(None, inputs=None, outputs=out.mode_state, api_name=False, js=f"() => {json.dumps(key)}")
    out.mode_state.change(None, inputs=out.mode_state, outputs=out.inpaint_controls, api_name=False,
                          show_progress="hidden",
                          js=f"(mode) => ({{__type__: 'update', visible: {json.dumps(list(INPAINT_TABS))}"
                             ".includes(mode)})")
    out.names = [k for k in f if k not in before]
    return out


def _index(table: Mapping[Any, str], label: Any, default: Any) -> Any:
    for key, value in table.items():
        if value == label:
            return key
    return label if label in table else default


def _mask_fields(v: dict[str, Any]) -> dict[str, Any]:
    blur = int(v.get("mask_blur") or 0)
    return {"mask_blur_x": blur, "mask_blur_y": blur,
            "inpainting_mask_invert": _index(MASK_MODE, v.get("inpainting_mask_invert"), 0),
            "inpainting_fill": _index(MASKED_CONTENT, v.get("inpainting_fill"), 1),
            "inpaint_full_res": bool(_index(INPAINT_AREA, v.get("inpaint_full_res"), False)),
            "inpaint_full_res_padding": int(v.get("inpaint_full_res_padding") or 0)}


def img2img_request(base: GenerationRequest, v: dict[str, Any]) -> GenerationRequest:
    """The request for the selected input sub-tab (not "batch"); RequestError names what is missing."""
    mode = v.get("input_mode") or "img2img"
    mask: Image.Image | None = None
    if mode == "sketch":
        image = sketch_input(v.get("input_sketch"))
    elif mode == "inpaint":
        image, mask = inpaint_input(v.get("input_inpaint"))
        if image is not None and mask is None and not v.get("outpaint_enable"):
            raise RequestError("mask", "paint over the area to repaint first (Inpaint tab)")
    elif mode == "inpaint_sketch":
        image, mask = inpaint_sketch_input(v.get("input_inpaint_sketch"))
        if image is not None and mask is None and not v.get("outpaint_enable"):
            raise RequestError("mask", "draw on the image first (Inpaint sketch tab)")
    elif mode == "inpaint_upload":
        image, mask = v.get("input_upload_image"), v.get("input_upload_mask")
        if image is not None and mask is None:
            raise RequestError("mask", "upload a mask image (white = repaint)")
    else:
        image = v.get("input_image")
    if image is None:
        raise RequestError("init_images", f"add an image in the {INPUT_TABS.get(mode, mode)} tab first")
    req = base.with_(mode="img2img", init_images=(image,), mask=mask,
                     resize_mode=_index(RESIZE_MODES, v.get("resize_mode"), 0), **_mask_fields(v))
    if v.get("outpaint_enable"):
        fields = _mask_fields(v)
        req = outpaint_request(req, int(v.get("outpaint_pixels") or 128), list(v.get("outpaint_directions") or []),
                               fields["mask_blur_x"], fields["inpainting_fill"])
    return req


def stream_img2img(ctx: AppContext, inputs: Img2ImgInputs | None, base: GenerationRequest, v: dict[str, Any],
                   owner: str | None, progress: gr.Progress, script: tuple[str, Any] | None = None
                   ) -> Generator[Preview, None, GenerationResult]:
    """:func:`run_img2img` yielding live previews (single requests; the Batch sub-tab shows none)."""
    if v.get("input_mode") == "batch":
        return run_img2img(ctx, inputs, base, v, owner, progress)
    try:
        req = img2img_request(base, v)
    except RequestError as exc:
        raise user_error(exc) from None
    return (yield from stream_with_progress(ctx, req, owner, progress, script=script))


def run_img2img(ctx: AppContext, inputs: Img2ImgInputs | None, base: GenerationRequest, v: dict[str, Any],
                owner: str | None, progress: gr.Progress, script: tuple[str, Any] | None = None) -> GenerationResult:
    """Run the img2img tab's request (or, in the Batch sub-tab, one request per image of a folder). ``script``
    ``(name, args)`` runs that selectable script on the request (the Batch sub-tab ignores it)."""
    if v.get("input_mode") != "batch":
        try:
            req = img2img_request(base, v)
        except RequestError as exc:
            raise user_error(exc) from None
        return run_with_progress(ctx, req, owner, progress, script=script)
    if ctx.settings.listen and not ctx.settings.auth_enabled:
        raise gr.Error("Batch from server folders is off when the server listens on the network without "
                       "--gradio-auth")
    base = base.with_(mode="img2img", resize_mode=_index(RESIZE_MODES, v.get("resize_mode"), 0), **_mask_fields(v))

    def one(req: GenerationRequest) -> GenerationResult:
        return run_with_progress(ctx, req, owner, progress, prefix=state["prefix"])

    state = {"prefix": ""}

    def on_item(n: int, total: int, name: str) -> None:
        state["prefix"] = f"{name} ({n + 1}/{total}): "

    try:
        report = run_folder(one, base, v.get("batch_input_dir") or "", v.get("batch_output_dir") or None,
                            ctx.saver, v.get("batch_mask_dir") or None, on_item=on_item,
                            opts=ctx.options_for(base.override_settings))
    except RequestError as exc:
        raise user_error(exc) from None
    result = GenerationResult(images=report.images, infotexts=report.infotexts, seeds=report.seeds,
                              interrupted=report.interrupted)
    result.warnings = [f"Processed {len(report.processed)} image(s); outputs: "
                       + (str(report.outputs[0].parent) if report.outputs else "none")]
    result.warnings += [f"Skipped {name}: {why}" for name, why in report.skipped]
    return result
