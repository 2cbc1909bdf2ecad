"""Selectable scripts (A1111's "Script" dropdown and the API's ``script_name``/``script_args``).

A script is a :class:`ScriptDef` returned by the ``register_scripts`` hook. When a request names it,
the script gets a :class:`ScriptRun` -- the request, its arguments **by name**, and ``generate()``,
which runs one generation inside the same job (same queue slot, same progress and interrupt) -- and
returns the :class:`~webui.pipeline.result.GenerationResult` the client receives.

Arguments arrive as A1111's positional ``script_args`` list or as a keyword dict; a script's
``parse_args(args, mode)`` turns either into a dict of named values (raising
:class:`~webui.pipeline.request.RequestError` with field ``script_args`` for bad input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webui.jobs import Job
from webui.pipeline.request import GenerationRequest, RequestError
from webui.pipeline.result import GenerationResult


@dataclass(frozen=True)
class ScriptChoices:
    """Names a script may validate against (the app's current lists)."""

    samplers: list[str] = field(default_factory=list)
    schedules: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    vaes: list[str] = field(default_factory=list)
    upscalers: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)


@dataclass
class ScriptRun:
    request: GenerationRequest
    args: dict[str, Any]
    mode: str  # "txt2img" or "img2img"
    generate: Callable[[GenerationRequest], GenerationResult]
    job: Job
    choices: ScriptChoices = field(default_factory=ScriptChoices)
    save_grid: Callable[[Any, str], str | None] | None = None  # (image, infotext) -> saved path


@dataclass(frozen=True)
class ScriptDef:
    """A selectable script.

    :param title: the name shown and matched (case-insensitively) against ``script_name``.
    :param run: does the work; calls ``run.generate(request)`` as often as it needs.
    :param parse_args: ``(script_args, mode) -> named args``; default: a dict is taken as is, a
        positional list is refused.
    :param render: ``(mode) -> {name: gradio component}`` builds its controls for the UI (optional);
        the values come back by the same names.
    """

    title: str
    run: Callable[[ScriptRun], GenerationResult]
    modes: tuple[str, ...] = ("txt2img", "img2img")
    parse_args: Callable[[Any, str], dict[str, Any]] | None = None
    render: Callable[[str], Mapping[str, Any]] | None = None

    def named_args(self, args: Any, mode: str) -> dict[str, Any]:
        if self.parse_args is not None:
            return self.parse_args(args, mode)
        if args in (None, []):
            return {}
        if isinstance(args, Mapping):
            return dict(args)
        raise RequestError("script_args", f"{self.title!r} takes keyword arguments (an object)")


class UnknownScript(RequestError):
    def __init__(self, name: str, choices: list[str]):
        super().__init__("script_name", f"unknown script {name!r}; available: {', '.join(choices) or 'none'}")


class ScriptRegistry:
    def __init__(self, defs: Iterable[ScriptDef] = ()):
        self._defs: dict[str, ScriptDef] = {}
        for d in defs:
            self._defs.setdefault(d.title.lower(), d)

    def titles(self, mode: str | None = None) -> list[str]:
        return [d.title for d in self._defs.values() if mode is None or mode in d.modes]

    def all(self) -> list[ScriptDef]:
        return list(self._defs.values())

    def get(self, name: str, mode: str) -> ScriptDef:
        script = self._defs.get(name.strip().lower())
        if script is None or mode not in script.modes:
            raise UnknownScript(name, self.titles(mode))
        return script
