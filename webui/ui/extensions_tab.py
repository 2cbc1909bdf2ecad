"""The Extensions tab: what loaded (with errors), switching extensions on/off, install and update."""

from __future__ import annotations

import html

import gradio as gr

from webui.context import AppContext
from webui.errors import RequestError
from webui.extensions_admin import install_allowed, install_from_git, update

#: what the tab says (``{}``: names, paths); the localizations translate these templates
INSTALL_OFF = ("Installing is off because the server listens on the network (start without --listen, or add "
               "--enable-insecure-extension-access).")
SAVED = "Saved. Disabled: {}. Restart to apply."
INSTALLED = "Installed {} into {}. Restart to load it."
INSTALLED_WITH_REQUIREMENTS = "Installed {} and its requirements into {}. Restart to load it."
UPDATED = "{}: {}. Restart to load the new version."
MESSAGES = (INSTALL_OFF, SAVED, INSTALLED, INSTALLED_WITH_REQUIREMENTS, UPDATED)
#: the words of the status table (the localizations translate them; names and errors stay as they are)
STATUS_WORDS = ("Name", "Source", "Status", "Error", "builtin", "entrypoint", "extension", "hook", "runtime",
                "loaded", "failed", "disabled")


def _status_table(ctx: AppContext) -> str:
    rows = []
    for r in ctx.plugins.reports:
        status = "disabled" if r.disabled else ("loaded" if r.ok else "failed")
        rows.append(f"<tr><td class='no-l10n'>{html.escape(r.name)}</td><td>{html.escape(r.source)}</td>"
                    f"<td class='ext-{status}'>{status}</td><td><pre>{html.escape(r.error or '')}</pre></td></tr>")
    return ("<table id='extensions_table'><tr><th>Name</th><th>Source</th><th>Status</th><th>Error</th></tr>"
            + "".join(rows) + "</table>")


def _third_party(ctx: AppContext) -> list[str]:
    return sorted({r.name for r in ctx.plugins.reports if r.source in ("extension", "entrypoint")})


def build_extensions_tab(ctx: AppContext) -> None:
    gr.HTML(_status_table(ctx), elem_id="extensions_status")
    names = _third_party(ctx)
    disabled = list(ctx.options.current.get("disabled_extensions", []) or [])
    enabled = gr.CheckboxGroup(names, value=[n for n in names if n not in disabled], label="Enabled extensions",
                               elem_id="extensions_enabled")
    apply = gr.Button("Apply (takes effect at the next start)", elem_id="extensions_apply")
    message = gr.Markdown("", elem_id="extensions_message")
    with gr.Accordion("Install from a git URL", open=False):
        allowed = install_allowed(ctx.settings)
        if not allowed:
            gr.Markdown(INSTALL_OFF)
        url = gr.Textbox(label="URL", elem_id="extensions_install_url", interactive=allowed)
        name = gr.Textbox(label="Folder name (optional)", elem_id="extensions_install_name", interactive=allowed)
        install = gr.Button("Install", elem_id="extensions_install", interactive=allowed)
    with gr.Row():
        update_name = gr.Dropdown(names, label="Update (git pull)", elem_id="extensions_update_name")
        do_update = gr.Button("Update", elem_id="extensions_update")

    def on_apply(chosen: list[str] | None):
        off = sorted(set(_third_party(ctx)) - set(chosen or []))
        ctx.options.update({"disabled_extensions": off})
        return SAVED.format(", ".join(off) or "none")

    def on_install(u: str, n: str):
        try:
            res = install_from_git(ctx.settings, u, n or None)
        except RequestError as exc:
            raise gr.Error(f"{exc.field}: {exc.message}") from None
        return (INSTALLED_WITH_REQUIREMENTS if res.requirements_installed else INSTALLED).format(res.name, res.path)

    def on_update(n: str | None):
        if not n:
            raise gr.Error("Choose an extension")
        try:
            return UPDATED.format(n, update(ctx.settings, n) or "up to date")
        except RequestError as exc:
            raise gr.Error(f"{exc.field}: {exc.message}") from None

    apply.click(on_apply, inputs=enabled, outputs=message, api_name="extensions_apply")
    install.click(on_install, inputs=[url, name], outputs=message, api_name="extensions_install")
    do_update.click(on_update, inputs=update_name, outputs=message, api_name="extensions_update")
