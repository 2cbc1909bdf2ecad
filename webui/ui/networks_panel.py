"""The Extra networks panel of txt2img / img2img: a card per LoRA and textual-inversion embedding, with the file's
preview picture when one sits beside it (A1111's convention: ``name.png`` or ``name.preview.png``, also .jpg,
.jpeg, .webp, .gif). Clicking a card inserts ``<lora:name:1>`` or the embedding's name at the caret of the
tab's prompt (``static/cards.js``).

The pictures are served by ``GET /webui-network-preview?kind=lora|embedding&name=...`` (a route of the UI, so
it needs the UI login exactly like the page): the name is looked up among the listed files, and only a picture
file beside that file is served, never a path taken from the request.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse

from webui.context import AppContext
from webui.sections import icon_button

ROUTE = "/webui-network-preview"
#: picture types a preview may have, with the media type it is served as
PREVIEW_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".gif": "image/gif"}
KINDS = ("lora", "embedding")

#: the panel's headings and what an empty list says (the localizations translate them)
LORA_HEADING = "LoRA"
EMBEDDING_HEADING = "Textual Inversion"
NO_LORAS = "No LoRA files: put .safetensors files into models/Lora and press the refresh button."
NO_EMBEDDINGS = "No embeddings: put them into models/embeddings and press the refresh button."
CARD_HINT = "Click a card to insert it into the prompt at the caret."
PANEL_STRINGS = (LORA_HEADING, EMBEDDING_HEADING, NO_LORAS, NO_EMBEDDINGS, CARD_HINT)


def network_file(ctx: AppContext, kind: str, name: str) -> Path | None:
    """The listed file of the LoRA or embedding ``name`` (None when there is none)."""
    if kind == "lora":
        return ctx.loras.paths().get(name)
    if kind == "embedding":
        emb = ctx.embeddings.loaded.get(name)
        return emb.path if emb is not None else None
    return None


def preview_of(path: Path) -> Path | None:
    """The preview picture beside the model file ``path`` (``stem.<ext>`` first, then ``stem.preview.<ext>``):
    a regular file in the same folder, also once links are resolved; None when there is none."""
    folder = path.parent
    try:
        real_folder = folder.resolve()
    except OSError:
        return None
    for pattern in ("{}{}", "{}.preview{}"):
        for suffix in PREVIEW_TYPES:
            candidate = folder / pattern.format(path.stem, suffix)
            try:
                if candidate.is_file() and candidate.resolve().parent == real_folder:
                    return candidate
            except OSError:
                continue
    return None


def preview_url(kind: str, name: str, picture: Path) -> str:
    """The card's picture address (relative to the page; the file's time makes a changed picture load again)."""
    try:
        version = int(picture.stat().st_mtime)
    except OSError:
        version = 0
    return "." + ROUTE + "?" + urlencode({"kind": kind, "name": name, "v": version})


def _card(kind: str, name: str, insert: str, path: Path | None) -> str:
    picture = preview_of(path) if path is not None else None
    image = (f"<img src='{html.escape(preview_url(kind, name, picture))}' alt='' loading='lazy'>"
             if picture is not None else "<span class='webui-network-nopreview'></span>")
    return (f"<button type='button' class='webui-network-card' data-kind='{kind}' data-name='{html.escape(name)}' "
            f"data-insert='{html.escape(insert)}' title='{html.escape(insert)}'>{image}"
            f"<span class='webui-network-name no-l10n'>{html.escape(name)}</span></button>")


def cards_html(ctx: AppContext, mode: str) -> str:
    """The panel's HTML: a section of cards per kind (file name and preview picture), for the tab ``mode``."""
    loras = sorted(ctx.loras.paths().items(), key=lambda item: item[0].casefold())
    embeddings = sorted(ctx.embeddings.loaded.items(), key=lambda item: item[0].casefold())
    sections = []
    for kind, heading, empty, cards in (
        ("lora", LORA_HEADING, NO_LORAS, [_card("lora", n, f"<lora:{n}:1>", p) for n, p in loras]),
        ("embedding", EMBEDDING_HEADING, NO_EMBEDDINGS, [_card("embedding", n, n, e.path) for n, e in embeddings]),
    ):
        body = (f"<div class='webui-network-cards'>{''.join(cards)}</div>" if cards
                else f"<p class='webui-networks-empty'>{html.escape(empty)}</p>")
        sections.append(f"<div class='webui-networks-section' data-kind='{kind}'><h4>{html.escape(heading)}</h4>"
                        f"{body}</div>")
    return (f"<div class='webui-networks' data-mode='{html.escape(mode)}'>"
            f"<p class='webui-networks-hint'>{html.escape(CARD_HINT)}</p>{''.join(sections)}</div>")


def _insert_text(text: str | None, addition: str) -> str:
    text = (text or "").rstrip()
    return f"{text} {addition}" if text else addition


@dataclass
class NetworksPanel:
    mode: str
    cards: Any  # gr.HTML
    refresh: Any  # gr.Button

    def wire(self, ctx: AppContext, prompt: Any) -> None:
        """The refresh button, and the API endpoints ``<mode>_add_lora`` / ``<mode>_add_embedding`` that add a
        tag at the end of a prompt (for API clients; the cards insert at the caret in the page itself)."""
        mode = self.mode

        def on_refresh() -> str:
            ctx.loras.refresh()
            ctx.embeddings.refresh()
            return cards_html(ctx, mode)

        self.refresh.click(on_refresh, inputs=None, outputs=self.cards, api_name=f"{mode}_refresh_networks")

        def add_lora(p: str, name: str) -> str:  # (the parameter names API clients used before the cards)
            return _insert_text(p, f"<lora:{name}:1>") if name else p

        def add_embedding(p: str, name: str) -> str:
            return _insert_text(p, name) if name else p

        gr.api(add_lora, api_name=f"{mode}_add_lora", queue=False)
        gr.api(add_embedding, api_name=f"{mode}_add_embedding", queue=False)


def build_networks_panel(ctx: AppContext, mode: str) -> NetworksPanel:
    """The panel (an accordion, closed at first); :meth:`NetworksPanel.wire` adds its events."""
    with gr.Accordion("Extra networks", open=False, elem_id=f"{mode}_extra_networks"):
        with gr.Row(elem_classes=["webui-networks-bar"]):
            refresh = gr.Button(**icon_button("refresh"), elem_id=f"{mode}_networks_refresh", scale=0)
        cards = gr.HTML(cards_html(ctx, mode), elem_id=f"{mode}_network_cards", js_on_load=None)
    return NetworksPanel(mode, cards, refresh)


def add_preview_route(gradio_app: FastAPI, ctx: AppContext) -> None:
    """Serve the cards' pictures beside Gradio's own routes (behind the same UI login)."""

    def network_preview(kind: str = "", name: str = "") -> Any:
        path = network_file(ctx, kind, name)
        picture = preview_of(path) if path is not None else None
        if picture is None:
            return JSONResponse({"error": "NotFound", "detail": "no preview picture"}, status_code=404)
        return FileResponse(picture, media_type=PREVIEW_TYPES[picture.suffix.lower()],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})

    gradio_app.add_api_route(ROUTE, network_preview, methods=["GET"], include_in_schema=False)
