"""A registry of named definitions (upscalers, face restorers), filled from a hook and replaced on refresh."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from webui.errors import UnknownChoice


class _Named(Protocol):
    @property
    def name(self) -> str: ...


D = TypeVar("D", bound=_Named)


class NamedRegistry(Generic[D]):
    """Definitions by ``name``: the first registration of a name wins; :meth:`get` matches exactly, then
    ignoring case. A subclass says what one is called (``what``) and the request field or option that
    names one when the caller gives none (``field``)."""

    what = "name"
    field = "name"

    def __init__(self, defs: Iterable[D] = ()):
        self._defs: dict[str, D] = {}
        self.replace(defs)

    def replace(self, defs: Iterable[D]) -> None:
        fresh: dict[str, D] = {}
        for d in defs:
            fresh.setdefault(d.name, d)
        self._defs = fresh

    def names(self) -> list[str]:
        return list(self._defs)

    def all(self) -> list[D]:
        return list(self._defs.values())

    def get(self, name: str, field: str | None = None) -> D:
        """The definition named ``name``; :class:`~webui.errors.UnknownChoice` on ``field`` otherwise."""
        if name in self._defs:
            return self._defs[name]
        for key, d in self._defs.items():
            if key.lower() == name.lower():
                return d
        raise UnknownChoice(field or self.field, self.what, name, self.names())
