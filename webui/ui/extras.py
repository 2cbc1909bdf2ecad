"""The Extras tab: upscale and restore faces of one image, several uploads, or a server folder."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from webui.context import AppContext
from webui.errors import RequestError
from webui.extras import ExtrasRequest, postprocessing_text
from webui.image_metadata import read_image_info
from webui.pipeline.batch_folder import input_files
from webui.ui.progress import USER_ERRORS, named_handler, user_error

log = logging.getLogger(__name__)

MODES = {"single": "Single Image", "batch": "Batch Process", "folder": "Batch from Directory"}


def build_extras_tab(ctx: AppContext) -> dict[str, Any]:
    """Create the tab; returns its components by name (``image`` is the send-to target)."""
    f: dict[str, Any] = {}
    upscalers = ["None", *[n for n in ctx.upscalers.names() if n != "None"]]
    with gr.Row():
        with gr.Column():
            f["mode"] = gr.Textbox("single", visible=False, elem_id="extras_mode")
            with gr.Tabs(elem_id="mode_extras"):
                with gr.Tab(MODES["single"], id="extras_single_tab") as t_single:
                    f["image"] = gr.Image(label="Source", type="pil", sources=["upload", "clipboard"],
                                          elem_id="extras_image", image_mode="RGBA", format="png")
                with gr.Tab(MODES["batch"], id="extras_batch_tab") as t_batch:
                    f["files"] = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                         elem_id="extras_image_batch")
                with gr.Tab(MODES["folder"], id="extras_folder_tab") as t_folder:
                    f["input_dir"] = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir")
                    f["output_dir"] = gr.Textbox(label="Output directory (empty: outputs/extras-images)",
                                                 elem_id="extras_batch_output_dir")
            # set in the browser, in event order (as for img2img's sub-tabs: a server call for the select fired
            # when the tab first opens could answer after the user's pick)
            for key, tab in (("single", t_single), ("batch", t_batch), ("folder", t_folder)):
                tab.select(None, inputs=None, outputs=f["mode"], api_name=False, js=f"() => {json.dumps(key)}")
            f["resize_mode"] = gr.Radio(["Scale by", "Scale to"], value="Scale by", label="Resize",
                                        elem_id="extras_resize_mode")
            with gr.Row():
                f["upscaling_resize"] = gr.Slider(1, 8, value=2, step=0.05, label="Scale by",
                                                  elem_id="extras_upscaling_resize")
                f["upscaling_resize_w"] = gr.Slider(64, 8192, value=512, step=8, label="Width",
                                                    elem_id="extras_upscaling_resize_w")
                f["upscaling_resize_h"] = gr.Slider(64, 8192, value=512, step=8, label="Height",
                                                    elem_id="extras_upscaling_resize_h")
                f["upscaling_crop"] = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                f["upscaler_1"] = gr.Dropdown(upscalers, value="None", label="Upscaler 1", elem_id="extras_upscaler_1")
                f["upscaler_2"] = gr.Dropdown(upscalers, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                f["extras_upscaler_2_visibility"] = gr.Slider(0, 1, value=0, step=0.001, label="Upscaler 2 visibility",
                                                              elem_id="extras_upscaler_2_visibility")
            with gr.Row():
                f["gfpgan_visibility"] = gr.Slider(0, 1, value=0, step=0.001, label="GFPGAN visibility",
                                                   elem_id="extras_gfpgan_visibility")
                f["codeformer_visibility"] = gr.Slider(0, 1, value=0, step=0.001, label="CodeFormer visibility",
                                                       elem_id="extras_codeformer_visibility")
                f["codeformer_weight"] = gr.Slider(0, 1, value=0, step=0.001,
                                                   label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                                   elem_id="extras_codeformer_weight")
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            gallery = gr.Gallery(label="Result", columns=2, height=512, elem_id="extras_gallery", format="png",
                                 interactive=False)
            info = gr.HTML(elem_id="extras_info")
    names = list(f)

    def work(v: dict[str, Any], request: gr.Request, progress: gr.Progress):
        if v.get("mode") == "folder" and ctx.settings.listen and not ctx.settings.auth_enabled:
            raise gr.Error("Folders on the server are off when it listens on the network without --gradio-auth")
        req = _request(v)
        sources = _sources(v)
        outdir = _outdir(ctx, v)
        images, texts, warnings = [], [], []
        for n, (name, image) in enumerate(sources):
            progress(n / max(len(sources), 1), desc=f"Extras: {name} ({n + 1}/{len(sources)})")
            try:
                out, post_info = ctx.extras(image, req)
            except USER_ERRORS as exc:
                raise user_error(exc) from None
            original, items = read_image_info(image)
            post = postprocessing_text(post_info)
            # A1111 (postprocessing.py): the source's text items and parameters, "postprocessing" and
            # "extras" chunks; named after the source in the batch modes (use_original_name_batch), else
            # numbered; into the batch's output folder or outdir_samples / outdir_extras_samples
            existing = {**items, **({"parameters": original} if original else {}), "postprocessing": post}
            opts = ctx.options.current
            keep_name = v.get("mode") in ("batch", "folder") and opts.get("use_original_name_batch", True)
            try:  # the result is shown even when it cannot be saved (full disk, read-only folder)
                ctx.saver.save_image(out, "extras", opts, ctx.settings.data_dir, None, post, outdir=outdir,
                                     forced_filename=Path(name).stem if keep_name else None,
                                     existing_info=existing, hooks=ctx.hooks)
            except OSError as exc:
                log.error("Extras: could not save %s: %s", name, exc)
                if not warnings:
                    warnings.append(f"could not save the image: {exc}")
            images.append(out)
            texts.append(post)
        summary = html.escape(texts[0] if texts else "") + (f" ({len(images)} images)" if len(images) > 1 else "")
        notes = "".join(f"<p class='warning'>{html.escape(w)}</p>" for w in warnings)
        return images, f"<p>{summary}</p>{notes}"

    handler = named_handler(names, work)
    handler.__name__ = "extras"
    run.click(handler, inputs=[f[n] for n in names], outputs=[gallery, info], api_name="extras",
              concurrency_id="gpu")
    return f


def _request(v: dict[str, Any]) -> ExtrasRequest:
    return ExtrasRequest(
        resize_mode=1 if v.get("resize_mode") == "Scale to" else 0,
        upscaling_resize=float(v.get("upscaling_resize") or 2),
        upscaling_resize_w=int(v.get("upscaling_resize_w") or 512),
        upscaling_resize_h=int(v.get("upscaling_resize_h") or 512), upscaling_crop=bool(v.get("upscaling_crop")),
        upscaler_1=v.get("upscaler_1") or "None", upscaler_2=v.get("upscaler_2") or "None",
        extras_upscaler_2_visibility=float(v.get("extras_upscaler_2_visibility") or 0),
        gfpgan_visibility=float(v.get("gfpgan_visibility") or 0),
        codeformer_visibility=float(v.get("codeformer_visibility") or 0),
        codeformer_weight=float(v.get("codeformer_weight") or 0))


def _open(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.copy()


def _sources(v: dict[str, Any]) -> list[tuple[str, Image.Image]]:
    mode = v.get("mode") or "single"
    try:
        if mode == "batch":
            files = v.get("files") or []
            out = []
            for item in files:
                path = getattr(item, "name", item)
                out.append((Path(str(path)).name, _open(path)))
            if not out:
                raise gr.Error("Upload images in the Batch Process tab first")
            return out
        if mode == "folder":
            return [(p.name, _open(p)) for p in input_files(v.get("input_dir") or "")]
    except RequestError as exc:
        raise user_error(exc) from None
    except OSError as exc:
        raise gr.Error(f"Could not read an image: {exc}") from None
    if v.get("image") is None:
        raise gr.Error("Upload an image in the Single Image tab first")
    return [("image.png", v["image"])]


def _outdir(ctx: AppContext, v: dict[str, Any]) -> Path | None:
    if v.get("mode") == "folder" and v.get("output_dir"):
        return Path(str(v["output_dir"])).expanduser().absolute()
    return None
