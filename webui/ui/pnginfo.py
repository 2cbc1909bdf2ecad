"""The PNG Info tab: shows the generation parameters stored in a dropped image."""

from __future__ import annotations

import html

import gradio as gr
from PIL import Image

from webui.image_metadata import read_image_info
from webui.infotext import parse_infotext


def describe_image(image: Image.Image | None) -> tuple[str, str, dict]:
    """(raw infotext, HTML summary, parsed parameters) for an image."""
    if image is None:
        return "", "", {}
    text, items = read_image_info(image)
    if not text and not items:
        return "", "<p>This image holds no generation parameters.</p>", {}
    rows = []
    if text:
        rows.append(f"<div><b>parameters</b><pre>{html.escape(text)}</pre></div>")
    for key, value in items.items():
        rows.append(f"<div><b>{html.escape(key)}</b><pre>{html.escape(str(value))}</pre></div>")
    return text or "", "\n".join(rows), parse_infotext(text) if text else {}


def build_pnginfo_tab() -> dict[str, gr.components.Component]:
    """The tab; returns its image, raw infotext and "send to" buttons for :mod:`webui.ui.app` to wire."""
    with gr.Row():
        image = gr.Image(label="Source", type="pil", sources=["upload", "clipboard"], elem_id="pnginfo_image",
                         image_mode=None, format="png")
        with gr.Column():
            html_out = gr.HTML(elem_id="pnginfo_html")
            raw = gr.Textbox(label="Infotext", lines=4, interactive=False, elem_id="pnginfo_generation_info")
            parsed = gr.JSON(label="Parameters", elem_id="pnginfo_parameters")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img", size="sm")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img", size="sm")
                to_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_to_inpaint", size="sm")
                to_extras = gr.Button("Send to extras", elem_id="pnginfo_send_to_extras", size="sm")

    def run(img: Image.Image | None):
        text, summary, params = describe_image(img)
        return summary, text, params

    image.change(run, inputs=image, outputs=[html_out, raw, parsed], api_name="png_info")
    return {"image": image, "infotext": raw, "txt2img": to_txt2img, "img2img": to_img2img, "inpaint": to_inpaint,
            "extras": to_extras}
