"""UI contributed by plugins: top-level tabs (``ui_tabs``) and sections in the generation tabs (``ui_sections``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
