"""What each page load reads besides Gradio's config: the chosen localization, colour theme and prompt-editing
options.

``GET /webui-page.json`` (a route of the UI itself, so it needs a UI login exactly like the page) answers
``{"localization": name, "strings": {...}, "theme": "Auto"|"Light"|"Dark", "error": text or null,
"keyedit": {A1111's prompt-editing options}}`` from the options as they are now: a change made in Settings or
through ``/sdapi/v1/options`` applies at the next page load. ``static/page.js`` reads it and applies the
localization and theme; ``static/keys.js`` (the keyboard shortcuts) reads ``keyedit``. A localization that
cannot be used gives English strings and an ``error`` the page shows (never a blank page).
"""

from __future__ import annotations

import html
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from webui.context import AppContext
from webui.localization import NONE, LocalizationError

log = logging.getLogger(__name__)

ROUTE = "/webui-page.json"

#: A1111's options for Ctrl+Up/Down (attention weight) and Alt+Left/Right (move prompt elements) in prompt boxes
KEYEDIT_OPTIONS = ("keyedit_precision_attention", "keyedit_precision_extra", "keyedit_delimiters",
                   "keyedit_delimiters_whitespace", "keyedit_move")

#: the tooltip of the button that dismisses the default-model notice (static/keys.js)
DISMISS_LABEL = "Dismiss"

#: the page's footer line: the keyboard shortcuts of the prompt boxes (static/keys.js)
SHORTCUTS_HELP = ("Keyboard: Ctrl+Enter or Alt+Enter in a prompt generates · Esc interrupts the running "
                  "generation · Ctrl+↑ / Ctrl+↓ change the attention weight of the selection or of the word at "
                  "the caret · Alt+← / Alt+→ move the prompt element at the caret · ← / → move through an opened "
                  "picture's gallery")


def keyedit_options(ctx: AppContext) -> dict[str, Any]:
    """The current values of :data:`KEYEDIT_OPTIONS` (each option's default where it was never set)."""
    opts = ctx.options.current
    out = {}
    for key in KEYEDIT_OPTIONS:
        d = ctx.options.defs.get(key)
        out[key] = opts.get(key, d.default if d is not None else None)
    return out


def page_data(ctx: AppContext) -> dict[str, Any]:
    """The page's localization, theme and prompt-editing options as the options say now."""
    opts = ctx.options.current
    name = str(opts.get("localization") or NONE)
    data: dict[str, Any] = {"localization": name, "strings": {}, "theme": str(opts.get("theme_mode") or "Auto"),
                            "error": None, "keyedit": keyedit_options(ctx)}
    try:
        data["strings"] = ctx.localizations.strings(name)
    except LocalizationError as exc:
        log.warning("Localization %s is not used: %s", name, exc)
        data["localization"] = NONE
        data["error"] = f"The localization {name!r} is not used: {exc}. The page is shown in English."
    return data


def add_page_route(gradio_app: FastAPI, ctx: AppContext) -> None:
    """Serve :func:`page_data` beside Gradio's own routes (behind the same UI login)."""

    def webui_page() -> JSONResponse:
        return JSONResponse(page_data(ctx), headers={"Cache-Control": "no-store"})

    gradio_app.add_api_route(ROUTE, webui_page, methods=["GET"], include_in_schema=False)


#: the heading of the Settings note that lists the localization files skipped
SKIPPED_HEADING = "Localization files not used:"


def localization_notes(ctx: AppContext) -> str:
    """HTML for Settings: the localization files skipped and why (empty when there are none)."""
    problems = ctx.localizations.listing().problems
    if not problems:
        return ""
    items = "".join(f"<li>{html.escape(str(p))}</li>" for p in problems)
    return (f"<div class='localization-problems'><p>{html.escape(SKIPPED_HEADING)}</p>"
            f"<ul class='no-l10n'>{items}</ul></div>")
