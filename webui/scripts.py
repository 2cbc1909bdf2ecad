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

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webui.errors import RequestError, UnknownChoice
from webui.jobs import Job
from webui.pipeline.request import GenerationRequest
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
    #: ``(image, upscaler name, width, height) -> image``: enlarged to exactly that size with a registered
    #: upscaler (the request's options apply); an unknown name raises :class:`~webui.errors.UnknownChoice` (a KeyError).
    upscale: Callable[[Any, str, int, int], Any] | None = None
    #: ``(image, seed, infotext) -> saved path``: saves an image the script made (not a generation's own) as
    #: a sample of the tab, when the request saves images and ``samples_save`` is on; None when not saved.
    save_image: Callable[[Any, int, str], str | None] | None = None
    #: the options in force for this request (saved options with its ``override_settings``)
    opts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScriptDef:
    """A selectable script.

    :param title: the name shown and matched (case-insensitively) against ``script_name``.
    :param run: does the work; calls ``run.generate(request)`` as often as it needs.
    :param parse_args: ``(script_args, mode) -> named args``; default: a dict is taken as is, a
        positional list is refused.
    :param render: ``(mode) -> {name: gradio component}`` or ``(mode, choices) -> {...}`` builds its
        controls for the UI (optional); the values come back by the same names. A render with a second
        parameter named ``choices`` gets a callable returning the app's current :class:`ScriptChoices`
        (samplers, checkpoints ...; call it in event handlers, so the lists stay current). See
        :meth:`render_controls`.
    :param arg_names: the names of the arguments in A1111's positional ``script_args`` order (optional);
        ``GET /sdapi/v1/script-info`` lists the controls in this order (others follow in render order).
    """

    title: str
    run: Callable[[ScriptRun], GenerationResult]
    modes: tuple[str, ...] = ("txt2img", "img2img")
    parse_args: Callable[[Any, str], dict[str, Any]] | None = None
    render: Callable[..., Mapping[str, Any]] | None = None
    arg_names: tuple[str, ...] = ()

    def render_controls(self, mode: str, choices: Callable[[], ScriptChoices] | None = None) -> dict[str, Any]:
        """Build the controls (inside the caller's Gradio layout): ``render(mode)``, or
        ``render(mode, choices=choices)`` when ``render`` has a ``choices`` parameter. ``{}`` without render."""
        if self.render is None:
            return {}
        if choices is not None and _takes_choices(self.render):
            return dict(self.render(mode, choices=choices) or {})
        return dict(self.render(mode) or {})

    def named_args(self, args: Any, mode: str) -> dict[str, Any]:
        if self.parse_args is not None:
            return self.parse_args(args, mode)
        if args in (None, []):
            return {}
        if isinstance(args, Mapping):
            return dict(args)
        raise RequestError("script_args", f"{self.title!r} takes keyword arguments (an object)")


def _takes_choices(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "choices" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


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
            raise UnknownChoice("script_name", "script", name, self.titles(mode))
        return script


def script_flag(title: str, name: str, value: Any, default: bool = False) -> bool:
    """A boolean script argument: bools, numbers and "true"/"false"/"yes"/"no"/"1"/"0"."""
    if value is None:
        return default
    if isinstance(value, (bool, int, float)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", ""):
        return value.strip().lower() in ("true", "1", "yes")
    raise RequestError("script_args", f"{title}: {name} must be true or false, got {value!r}")


def raw_script_args(title: str, args: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """``script_args`` as a dict by name: A1111's positional list (in ``names`` order; missing trailing
    ones are left out) or a keyword dict (unknown keys refused)."""
    if args is None:
        return {}
    if isinstance(args, Mapping):
        unknown = sorted(set(args) - set(names))
        if unknown:
            raise RequestError("script_args", f"{title}: unknown argument(s) {', '.join(map(str, unknown))}; "
                                              f"valid: {', '.join(names)}")
        return dict(args)
    if isinstance(args, (list, tuple)):
        if len(args) > len(names):
            raise RequestError("script_args", f"{title} takes at most {len(names)} positional arguments "
                                              f"({', '.join(names)}), got {len(args)}")
        return dict(zip(names, args))
    raise RequestError("script_args", f"{title}: script_args must be a list or an object")


def script_int(title: str, name: str, value: Any, lo: int, hi: int, default: int = 0) -> int:
    """An integer script argument in ``[lo, hi]`` (numbers or numeric text; empty = ``default``)."""
    try:
        out = int(float(value)) if value not in (None, "") else default
    except (TypeError, ValueError):
        raise RequestError("script_args", f"{title}: {name} must be a number, got {value!r}") from None
    if not lo <= out <= hi:
        raise RequestError("script_args", f"{title}: {name} must be between {lo} and {hi}, got {out}")
    return out


def script_float(title: str, name: str, value: Any, lo: float, hi: float, default: float, *,
                 above_lo: bool = False) -> float:
    """A number script argument in ``[lo, hi]`` (``(lo, hi]`` with ``above_lo``; numbers or numeric text,
    not booleans; empty = ``default``)."""
    if value in (None, ""):
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise RequestError("script_args", f"{title}: {name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(out) or not (lo < out if above_lo else lo <= out) or out > hi:
        where = f"above {lo:g} and at most {hi:g}" if above_lo else f"between {lo:g} and {hi:g}"
        raise RequestError("script_args", f"{title}: {name} must be {where}, got {value!r}")
    return out


def generate_all(run: ScriptRun, requests: list[GenerationRequest]) -> tuple[list[GenerationResult], bool]:
    """Run ``requests`` one after another until the job is interrupted (the job's progress counts over all
    of them); returns the results that have images and whether the run stopped early (interrupt, or a
    generation that was interrupted)."""
    run.job.plan(sum(req.n_iter for req in requests))
    done: list[GenerationResult] = []
    for req in requests:
        if run.job.interrupted:
            break
        res = run.generate(req)
        if res.images:
            done.append(res)
    interrupted = run.job.interrupted or len(done) < len(requests) or any(res.interrupted for res in done)
    return done, interrupted
