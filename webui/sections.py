"""The contract for UI that plugins contribute (stdlib only, so any layer may use it).

- :class:`UiTab`: a top-level tab (``ui_tabs`` hook).
- :class:`UiSection`: controls inside the txt2img/img2img tabs (``ui_sections`` hook); their values
  travel as tab fields named ``<section>__<value>`` (:func:`section_field`; also the Gradio API keywords
  and the keys a ``parse_infotext`` hook returns for the section), and :func:`collect_sections` turns
  them into the request's ``alwayson_scripts`` entries (Generate in the UI, an infotext in the API).

- :func:`icon_button`: the keyword arguments of a ``gr.Button`` drawn as an icon (refresh, dice, ...).

``webui.ui.tabs`` re-exports these names for extensions written against it (deprecated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class UiTab:
    """A top-level tab: ``render()`` is called inside ``gr.Tab(title)`` and creates its components."""

    title: str
    render: Callable[[], None]
    elem_id: str | None = None


@dataclass(frozen=True)
class UiSection:
    """Controls a plugin adds inside the txt2img/img2img tab (returned by the ``ui_sections`` hook).

    ``render()`` creates the components (inside the tab's layout) and returns them by value name;
    on Generate, ``collect(values_by_name)`` turns their values into ``request.alwayson_scripts[name]``
    (return None to add nothing). The values arrive by name, never as positional slices.
    """

    name: str
    render: Callable[[], Mapping[str, Any]]
    collect: Callable[[Mapping[str, Any]], Any]


#: Separator between a section's name and a value name in a tab field (``film_grain__strength``).
SECTION_SEP = "__"


def section_field(section: str, name: str) -> str:
    """The tab field (and Gradio API keyword) of value ``name`` of section ``section``."""
    return f"{section}{SECTION_SEP}{name}"


def section_values(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``section`` among tab fields ``values``, by value name (prefix removed)."""
    prefix = section_field(section, "")
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}


def collect_sections(sections: list[UiSection], values: Mapping[str, Any], *,
                     only_mentioned: bool = False) -> dict[str, Any]:
    """``alwayson_scripts`` entries from tab field values: each section's values go through its ``collect``.

    With ``only_mentioned``, sections none of whose values are in ``values`` are skipped (reading an
    infotext back: a plugin the infotext does not mention adds nothing). ``RequestError`` propagates.
    """
    out: dict[str, Any] = {}
    for section in sections:
        mine = section_values(section.name, values)
        if only_mentioned and not mine:
            continue
        collected = section.collect(mine)
        if collected is not None:
            out[section.name] = collected
    return out


#: The icons a button can be drawn as, with the button's text: its tooltip and accessible name (translated by
#: the localization like any other text). The page draws the icon itself (``webui/ui/static/icons/<name>.svg``,
#: as a CSS mask in the text colour), so it shows on machines without an emoji font and in the dark theme.
ICON_LABELS: Mapping[str, str] = MappingProxyType({
    "refresh": "Refresh",
    "random": "Random seed (-1)",
    "reuse": "Reuse the seed of the last image",
    "paste": "Read the parameters from the prompt, or from the last image when the prompt is empty",
})


def icon_button(icon: str) -> dict[str, Any]:
    """``gr.Button(**icon_button("refresh"), elem_id=...)``: a small button drawn as the icon ``icon`` (one of
    :data:`ICON_LABELS`), its text kept as the tooltip and accessible name."""
    return {"value": ICON_LABELS[icon], "elem_classes": ["webui-icon", f"webui-icon-{icon}"], "min_width": 40}
