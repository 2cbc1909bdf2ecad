"""The Settings tab: every option (core and plugins') grouped by its A1111 section, with its help line, applied and
persisted together; a search box (``static/panels.js``) shows the settings whose label, help, key or section hold
the words typed."""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.sections import icon_button
from webui.settings import OptionDef, OptionError
from webui.ui.page import localization_notes
from webui.ui.progress import named_handler


def _elem_id(d: OptionDef) -> str:
    return f"setting_{re.sub(r'[^A-Za-z0-9_]', '_', d.key)}"


def _section_id(section: str) -> str:
    return "settings_section_" + re.sub(r"[^A-Za-z0-9]+", "_", section).strip("_").lower()


def _help(d: OptionDef) -> str | None:
    return d.help or None


def search_index(defs: list[OptionDef]) -> str:
    """The hidden HTML holding what the search box matches (the English label, help line, key and section of each
    shown setting, with the element ids of the setting and its section)."""
    entries = [{"id": _elem_id(d), "key": d.key, "label": d.label, "help": d.help, "section": d.section,
                "section_id": _section_id(d.section)} for d in defs]
    return f"<div class='no-l10n' data-settings-index='{html.escape(json.dumps(entries), quote=True)}'></div>"


def _choices(d: OptionDef, value: Any = None) -> list[Any]:
    choices = list(d.choices_fn()) if d.choices_fn is not None else list(d.choices or ())
    if value is not None and value not in choices:
        choices.append(value)
    return choices


def _component(ctx: AppContext, d: OptionDef) -> Any:
    """The option's control, showing the option's value now (the page load shows the saved values: see
    :func:`build_settings_tab`). Choices found at run time (files, localizations) get a refresh button."""
    eid = _elem_id(d)
    value = _shown(ctx, d.key, ctx.options.current.get(d.key, d.default))
    if d.choices_fn is not None:
        with gr.Row():
            dropdown = gr.Dropdown(_choices(d, value), value=value, label=d.label, elem_id=eid, scale=4,
                                   allow_custom_value=True, info=_help(d))
            refresh = gr.Button(**icon_button("refresh"), elem_id=f"{eid}_refresh", scale=0)
        notes = None
        if d.key == "localization":  # the files skipped, and why
            notes = gr.HTML(localization_notes(ctx), elem_id=f"{eid}_notes")

        def on_refresh(current: Any):
            update = gr.update(choices=_choices(d, current))
            return update if notes is None else (update, localization_notes(ctx))

        refresh.click(on_refresh, inputs=dropdown, outputs=dropdown if notes is None else [dropdown, notes],
                      api_name=False, queue=False, show_progress="hidden")
        return dropdown
    if d.choices is not None:
        return gr.Dropdown(_choices(d, value), value=value, label=d.label, elem_id=eid, info=_help(d))
    if isinstance(d.default, bool):
        return gr.Checkbox(bool(value), label=d.label, elem_id=eid, info=_help(d))
    if isinstance(d.default, (int, float)):
        return gr.Number(value, label=d.label, elem_id=eid, minimum=d.minimum, maximum=d.maximum,
                         precision=0 if isinstance(d.default, int) else None, info=_help(d))
    return gr.Textbox(_text(value), label=d.label, elem_id=eid, info=_help(d))


def _shown(ctx: AppContext, key: str, value: Any) -> Any:
    """The value a setting's control shows: the option's, except a checkpoint never chosen, which shows the
    checkpoint in use (as the quick-settings bar does)."""
    if key == "sd_model_checkpoint" and not value and ctx.models.current is not None:
        return ctx.models.current.title
    return value


def _text(value: Any) -> str:
    return str(value if value is not None else "")


#: What the tab says once opening it has read the saved options into its controls.
SHOWING_SAVED = "Showing the saved settings."
#: What Apply says (the ``{}``: how many, and their keys); the localizations translate these templates.
NOTHING_CHANGED = "Nothing changed."
SETTINGS_CHANGED = "{} setting(s) changed: {}."


def build_settings_tab(ctx: AppContext, tab: gr.Tab) -> None:
    """The tab's controls and events. Opening the tab reads the saved options into the controls in **one**
    event and then says so (:data:`SHOWING_SAVED`), so the tab shows them, not the values of the server's
    start, even after another client changed them (a callable value per control would cost a queued event
    per option at every page load)."""
    sections: dict[str, list[OptionDef]] = defaultdict(list)
    for d in ctx.options.defs.values():
        # A1111 keys that change nothing here stay out (docs/api.md lists them); lists (e.g.
        # disabled_extensions) have their own UI
        if not d.note and (d.default is None or isinstance(d.default, (bool, int, float, str))):
            sections[d.section].append(d)
    fields: dict[str, Any] = {}
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        reload_ui = gr.Button("Reload values", elem_id="settings_reload")
    result = gr.Markdown("", elem_id="settings_result")
    gr.Textbox(label="Search settings", placeholder="Search by name, help text or key", elem_id="settings_search",
               show_label=False, lines=1, max_lines=1, submit_btn=False)
    shown = [d for section in sorted(sections, key=str.lower)
             for d in sorted(sections[section], key=lambda o: o.label.lower())]
    gr.HTML(search_index(shown), elem_id="settings_index", js_on_load=None)
    for section in sorted(sections, key=str.lower):
        with gr.Accordion(section, open=section in ("Stable Diffusion", "Saving images/grids"),
                          elem_id=_section_id(section)):
            for d in sorted(sections[section], key=lambda o: o.label.lower()):
                fields[d.key] = _component(ctx, d)
    keys = list(fields)

    def on_apply(values: dict[str, Any], request: gr.Request, progress: gr.Progress):
        now = ctx.options.current
        # a text box shows "no value" (an option defaulting to None) as ""
        values = {k: (None if v == "" and ctx.options.defs[k].default is None else v) for k, v in values.items()}
        changes = {k: v for k, v in values.items()
                   if v != _shown(ctx, k, now.get(k)) and (v is not None or ctx.options.defs[k].default is None)}
        for key, value in list(changes.items()):  # gr.Number gives floats; int options want ints
            d = ctx.options.defs[key]
            if isinstance(d.default, int) and not isinstance(d.default, bool) and isinstance(value, float) \
                    and value.is_integer():
                changes[key] = int(value)
        if not changes:
            return NOTHING_CHANGED
        try:
            clean = ctx.options.validate(changes)
            if clean.get("sd_model_checkpoint"):
                clean["sd_model_checkpoint"] = ctx.select_checkpoint(clean["sd_model_checkpoint"])
            ctx.options.update(clean)
        except OptionError as exc:
            raise gr.Error("; ".join(f"{k}: {m}" for k, m in exc.errors.items())) from None
        except Exception as exc:  # noqa: BLE001 - e.g. a checkpoint that fails to load
            raise gr.Error(str(exc)) from None
        return SETTINGS_CHANGED.format(len(clean), ", ".join(sorted(clean)))

    handler = named_handler(keys, on_apply)
    handler.__name__ = "apply_settings"
    apply.click(handler, inputs=[fields[k] for k in keys], outputs=result, api_name="apply_settings")

    def on_reload():
        snapshot = ctx.options.current
        values = [_shown(ctx, k, snapshot.get(k, ctx.options.defs[k].default)) for k in keys]
        return [gr.update(value=_text(v) if isinstance(fields[k], gr.Textbox) else v)
                for k, v in zip(keys, values)]

    reload_ui.click(on_reload, inputs=None, outputs=[fields[k] for k in keys], api_name="reload_settings")
    def on_open():
        return [*on_reload(), SHOWING_SAVED]

    tab.select(on_open, inputs=None, outputs=[*(fields[k] for k in keys), result], api_name=False, queue=False,
               show_progress="hidden")
