"""Extra UI tabs contributed by plugins through the ``ui_tabs`` hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class UiTab:
    """A top-level tab: ``render()`` is called inside ``gr.Tab(title)`` and creates its components."""

    title: str
    render: Callable[[], None]
    elem_id: str | None = None
