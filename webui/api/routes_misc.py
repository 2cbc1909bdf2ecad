"""The rest of A1111 v1.10's ``/sdapi/v1`` routes: scripts, script-info, extensions, hypernetworks,
and clear 501 answers for the features this build does not ship (interrogation, training,
server control).

Mounted by :func:`webui.server.create_app` beside the main router, behind the same API auth.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from webui.api.errors import error_json
from webui.context import AppContext
from webui.infotext import MASKED_CONTENT

log = logging.getLogger(__name__)

#: A1111 lists script names lower-cased (``Script.title().lower()``); ``script_name`` matching is
#: case-insensitive, so both spellings work in requests.
POOR_MANS_OUTPAINTING = "poor man's outpainting"
OUTPAINTING_MK2 = "outpainting mk2"
DIRECTIONS = ["left", "right", "up", "down"]


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list, description="txt2img scripts (selectable and always-on)")
    img2img: list[str] = Field(default_factory=list, description="img2img scripts (selectable and always-on)")


class ScriptArg(BaseModel):
    label: str | None = Field(None, description="name of the argument in the UI")
    # Not in A1111 (clients ignore extra keys): the keyword of this argument when ``script_args`` is an object.
    name: str | None = Field(None, description="keyword for script_args given as an object")
    value: Any | None = Field(None, description="default value")
    minimum: Any | None = None
    maximum: Any | None = None
    step: Any | None = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str | None = Field(None, description="script name (as in script_name / alwayson_scripts)")
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg] = Field(default_factory=list, description="the script's arguments, in order")


class ExtensionItem(BaseModel):
    name: str
    remote: str | None = None
    branch: str | None = None
    commit_hash: str | None = None
    version: str | None = None
    commit_date: int | str | None = None
    enabled: bool
    # Not in A1111 (clients ignore extra keys): where the plugin came from and why it failed.
    source: str | None = Field(None, description="builtin, entrypoint or extension")
    path: str | None = None
    errors: list[str] = Field(default_factory=list, description="load or hook errors reported by the plugin system")


def _public_url(url: str | None) -> str | None:
    """A remote URL without user/password (never echo credentials)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def git_info(folder: str | None) -> dict[str, Any]:
    """``remote``, ``branch``, ``commit_hash``, ``version`` (short hash), ``commit_date`` (unix time) of
    a git checkout, or nothing."""
    if not folder or not (Path(folder) / ".git").exists():
        return {}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=5,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("log", "-1", "--format=%H %ct")
    commit, _, date = (head or "").partition(" ")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    return {"remote": _public_url(git("config", "--get", "remote.origin.url")),
            "branch": None if branch in (None, "HEAD") else branch, "commit_hash": commit or None,
            "version": commit[:8] or None, "commit_date": int(date) if date.isdigit() else None}


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


def _slider(label: str, value: float, minimum: float, maximum: float, step: float) -> ScriptArg:
    return ScriptArg(label=label, value=value, minimum=minimum, maximum=maximum, step=step)


#: A1111's argument lists of scripts that have no UI controls here (``ScriptDef.render`` is None).
KNOWN_ARGS: dict[str, list[ScriptArg]] = {
    POOR_MANS_OUTPAINTING: [
        _slider("Pixels to expand", 128, 8, 256, 8),
        _slider("Mask blur", 4, 0, 64, 1),
        ScriptArg(label="Masked content", value=MASKED_CONTENT[0], choices=list(MASKED_CONTENT.values())),
        ScriptArg(label="Outpainting direction", value=list(DIRECTIONS), choices=list(DIRECTIONS)),
    ],
    OUTPAINTING_MK2: [
        ScriptArg(label="", value="<p>Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, "
                                  "Denoising strength: 0.8</p>"),
        _slider("Pixels to expand", 128, 8, 256, 8),
        _slider("Mask blur", 8, 0, 64, 1),
        ScriptArg(label="Outpainting direction", value=list(DIRECTIONS), choices=list(DIRECTIONS)),
        _slider("Fall-off exponent (lower=higher detail)", 1.0, 0.0, 4.0, 0.01),
        _slider("Color variation", 0.05, 0.0, 1.0, 0.01),
    ],
}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _arg_from_component(name: str, component: Any) -> ScriptArg:
    """A1111's ``ScriptArg`` from a Gradio component (label, value, minimum, maximum, step, choices)."""
    choices = getattr(component, "choices", None)
    if choices is not None:
        choices = [str(c[0] if isinstance(c, (tuple, list)) else c) for c in choices]
    return ScriptArg(label=getattr(component, "label", None) or "", name=name,
                     value=_jsonable(getattr(component, "value", None)),
                     minimum=getattr(component, "minimum", None), maximum=getattr(component, "maximum", None),
                     step=getattr(component, "step", None), choices=choices)


def _script_args(ctx: AppContext, script: Any, mode: str) -> list[ScriptArg]:
    """A script's arguments: A1111's list for the known ones, else read from its UI controls (built in a
    throw-away Blocks, as A1111 reads them from its Gradio components); in ``arg_names`` order when the
    script declares it, else in the order of its controls."""
    known = KNOWN_ARGS.get(script.title.lower())
    if known is not None:
        return [a.model_copy() for a in known]
    if script.render is None:
        return []
    try:
        import gradio as gr

        with gr.Blocks():
            controls = script.render_controls(mode, ctx.script_choices)
    except Exception:  # noqa: BLE001 - a plugin's UI code failing must not break the route
        log.exception("script %r: could not read its controls for script-info", script.title)
        return []
    order = [n for n in script.arg_names if n in controls]
    order += [n for n in controls if n not in order]
    return [_arg_from_component(n, controls[n]) for n in order if n in controls]


def not_implemented(feature: str, why: str) -> JSONResponse:
    """501 in A1111's error shape."""
    message = f"{feature} is not available: {why}"
    return error_json(501, "NotImplemented", message, errors=message)


_NOT_IMPLEMENTED_RESPONSE = {501: {"description": "the feature is not part of this build"}}


def build_misc_router(ctx: AppContext) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
    alwayson_cache: dict[str, list[str]] = {}

    def alwayson(mode: str) -> list[str]:
        """Always-on scripts of a tab: the plugins' UI sections (their values arrive in
        ``alwayson_scripts[name]``, the API's way to reach them)."""
        if mode not in alwayson_cache:
            names = [getattr(section, "name", None) for section in ctx.hooks.ui_sections(ctx, mode)]
            alwayson_cache[mode] = [str(n).lower() for n in names if n]
        return alwayson_cache[mode]

    def selectable(mode: str) -> list[Any]:
        return [d for d in ctx.scripts.all() if mode in d.modes]

    @r.get("/scripts", response_model=ScriptsList)
    def scripts() -> ScriptsList:
        """Selectable scripts (``script_name``) then always-on ones (``alwayson_scripts``), per tab."""
        return ScriptsList(**{mode: [d.title.lower() for d in selectable(mode)] + alwayson(mode)
                              for mode in ("txt2img", "img2img")})

    info_cache: dict[tuple[str, str], list[ScriptArg]] = {}

    @r.get("/script-info", response_model=list[ScriptInfo])
    def script_info() -> list[ScriptInfo]:
        out: list[ScriptInfo] = []
        for mode in ("txt2img", "img2img"):
            for d in selectable(mode):
                key = (d.title.lower(), mode)
                if key not in info_cache:
                    info_cache[key] = _script_args(ctx, d, mode)
                out.append(ScriptInfo(name=d.title.lower(), is_alwayson=False, is_img2img=mode == "img2img",
                                      args=info_cache[key]))
            out += [ScriptInfo(name=name, is_alwayson=True, is_img2img=mode == "img2img", args=[])
                    for name in alwayson(mode)]
        return out

    @r.get("/extensions", response_model=list[ExtensionItem])
    def extensions() -> list[ExtensionItem]:
        items: dict[str, ExtensionItem] = {}
        hook_errors: dict[str, list[str]] = {}
        for report in ctx.plugins.reports:
            if report.source == "hook":  # a later hook failure of a loaded plugin
                hook_errors.setdefault(report.name, []).append(report.error or "")
                continue
            items[report.name] = ExtensionItem(
                name=report.name, enabled=report.ok and ctx.plugins.pm.get_plugin(report.name) is not None,
                source=report.source, path=report.path, errors=[report.error] if report.error else [],
                **git_info(report.path if report.source == "extension" else None))
        for name, errs in hook_errors.items():
            if name in items:
                items[name].errors.extend(errs)
        return list(items.values())

    @r.get("/hypernetworks", response_model=list[HypernetworkItem])
    def hypernetworks() -> list[HypernetworkItem]:
        """Always empty: hypernetworks are not supported (A1111 answers a list, so clients get one)."""
        return []

    _not_implemented_routes(r)
    return r


_TRAINING = ("A1111's preprocessing is not part of this build: put captions in same-stem .txt files and train with "
             "/sdapi/v1/train/embedding")
_HYPERNETWORKS = "hypernetworks are not supported"
_SERVER_CONTROL = ("stopping or restarting the server over the API is disabled in this build "
                   "(A1111 gates it behind --api-server-stop); stop the process with SIGTERM instead")

#: A1111's routes for features this build does not ship, and why: each answers 501 in A1111's error shape,
#: whatever the body (excluded from the schemathesis "no 5xx" run, tested on their own).
NOT_IMPLEMENTED: dict[str, str] = {
    "interrogate": "no interrogation model in this build; CLIP/DeepBooru are not shipped",
    "create/hypernetwork": _HYPERNETWORKS,
    "preprocess": _TRAINING,
    "train/hypernetwork": _HYPERNETWORKS,
    "server-kill": _SERVER_CONTROL,
    "server-restart": _SERVER_CONTROL,
    "server-stop": _SERVER_CONTROL,
}
NOT_IMPLEMENTED_ROUTES = tuple(f"/sdapi/v1/{path}" for path in NOT_IMPLEMENTED)


def _not_implemented_routes(r: APIRouter) -> None:
    """``POST`` routes that answer 501 (:data:`NOT_IMPLEMENTED`)."""
    def answering(feature: str, why: str) -> Callable[[], JSONResponse]:
        return lambda: not_implemented(feature, why)

    for path, why in NOT_IMPLEMENTED.items():
        r.add_api_route(f"/{path}", answering(path, why), methods=["POST"], responses=_NOT_IMPLEMENTED_RESPONSE,
                        name=path.replace("/", "_").replace("-", "_"))
