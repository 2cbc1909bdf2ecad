"""What each page load reads besides Gradio's config: the chosen localization and colour theme.

``GET /webui-page.json`` (a route of the UI itself, so it needs a UI login exactly like the page) answers
``{"localization": name, "strings": {...}, "theme": "Auto"|"Light"|"Dark", "error": text or null}`` from the
options as they are now: a change made in Settings or through ``/sdapi/v1/options`` applies at the next page
load. ``static/page.js`` reads it and applies both. A localization that cannot be used gives English strings
and an ``error`` the page shows (never a blank page).
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


def page_data(ctx: AppContext) -> dict[str, Any]:
    """The page's localization and theme as the options say now."""
    opts = ctx.options.current
    name = str(opts.get("localization") or NONE)
    data: dict[str, Any] = {"localization": name, "strings": {}, "theme": str(opts.get("theme_mode") or "Auto"),
                            "error": None}
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
