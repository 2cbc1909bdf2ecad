"""JavaScript and CSS of the page: the product's own (``static/page.js``, ``static/keys.js``, ``static/panels.js``,
``static/page.css`` and the icon rules made from ``static/icons/*.svg``), then what plugins add: the ``ui_assets``
hook plus, for extension folders, their ``javascript/*.js`` (in name order) and ``style.css``, as A1111 does."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

#: the product's own page script, styles and icons
STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class UiAsset:
    kind: str  # "js" or "css"
    text: str
    name: str = ""


def _folder_assets(folder: Path) -> list[UiAsset]:
    out = []
    for js in sorted((folder / "javascript").glob("*.js")):
        out.append(UiAsset("js", js.read_text(encoding="utf-8"), f"{folder.name}/javascript/{js.name}"))
    css = folder / "style.css"
    if css.is_file():
        out.append(UiAsset("css", css.read_text(encoding="utf-8"), f"{folder.name}/style.css"))
    return out


def icon_css(folder: Path = STATIC_DIR / "icons") -> str:
    """A rule per icon ``<name>.svg``: ``button.webui-icon-<name>`` draws it (see ``webui.sections.icon_button``)."""
    rules = []
    for svg in sorted(folder.glob("*.svg")):
        data = quote(" ".join(svg.read_text(encoding="utf-8").split()), safe=" =:/'")
        rules.append(f'button.webui-icon-{svg.stem} {{ --webui-icon: url("data:image/svg+xml,{data}"); }}')
    return "\n".join(rules)


def own_assets() -> list[UiAsset]:
    """The product's page script and styles (first on the page, so plugins can build on them)."""
    return [UiAsset("js", (STATIC_DIR / "page.js").read_text(encoding="utf-8"), "webui/page.js"),
            UiAsset("js", (STATIC_DIR / "keys.js").read_text(encoding="utf-8"), "webui/keys.js"),
            UiAsset("js", (STATIC_DIR / "panels.js").read_text(encoding="utf-8"), "webui/panels.js"),
            UiAsset("css", (STATIC_DIR / "page.css").read_text(encoding="utf-8") + "\n" + icon_css(),
                    "webui/page.css")]


def collect_assets(ctx: Any) -> list[UiAsset]:
    assets: list[UiAsset] = own_assets()
    for report in ctx.plugins.reports:
        if report.ok and report.source == "extension" and report.path:
            try:
                assets += _folder_assets(Path(report.path))
            except OSError as exc:
                log.warning("Could not read the assets of extension %s: %s", report.name, exc)
    for asset in ctx.hooks.ui_assets(ctx):
        if isinstance(asset, UiAsset) and asset.kind in ("js", "css"):
            assets.append(asset)
        else:
            log.warning("Ignoring a UI asset that is not a UiAsset(kind='js'|'css', ...): %r", asset)
    return assets


def page_css_and_head(ctx: Any) -> tuple[str, str]:
    """(CSS, HTML for <head>) to give ``gr.mount_gradio_app``."""
    assets = collect_assets(ctx)
    css = "\n".join(f"/* {a.name} */\n{a.text}" for a in assets if a.kind == "css")
    head = "\n".join(_script_tag(a) for a in assets if a.kind == "js")
    return css, head


def _script_tag(asset: UiAsset) -> str:
    body = asset.text.replace("</script", "<\\/script")  # a literal end tag would close the element early
    name = asset.name.replace("'", "")
    return f"<script data-asset='{name}'>\n{body}\n</script>"
