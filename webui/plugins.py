"""The plugin manager: built-ins, entry-point packages and ``extensions/`` folders alike.

:func:`make_plugin_manager` builds a fresh :class:`pluggy.PluginManager` (nothing
at import time).  Every plugin -- built-in or third party -- goes through
:func:`_register`, which validates its hook implementations; a plugin that fails
to import or implements an unknown hook is reported in :attr:`Plugins.reports`
and skipped.  :class:`Hooks` is the typed facade the core calls: each call
runs every implementation, isolating and reporting exceptions per plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from webui import hookspecs
from webui.builtin import BUILTIN_PLUGINS

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "webui"


@dataclass
class PluginReport:
    """What happened to one plugin at load time, or a later hook failure."""

    name: str
    source: str  # "builtin", "entrypoint", "extension"
    ok: bool
    error: str | None = None
    path: str | None = None
    disabled: bool = False  # switched off by the user (Extensions tab / disabled_extensions)


@dataclass
class Plugins:
    """The plugin manager plus load reports and the typed hook facade."""

    pm: pluggy.PluginManager
    reports: list[PluginReport] = field(default_factory=list)

    @property
    def hooks(self) -> Hooks:
        return Hooks(self)

    def names(self) -> list[str]:
        return [r.name for r in self.reports if r.ok]

    def register(self, plugin: object, name: str, source: str = "runtime") -> bool:
        return _register(self, plugin, name, source)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.reports = [r for r in self.reports if r.name != name]


def _register(plugins: Plugins, plugin: object, name: str, source: str, path: str | None = None) -> bool:
    """Register ``plugin``; a module that defines ``make_plugin()`` registers the object it returns
    instead (so a plugin can keep state in an instance rather than in module globals)."""
    pm = plugins.pm
    try:
        if isinstance(plugin, ModuleType) and callable(getattr(plugin, "make_plugin", None)):
            plugin = plugin.make_plugin()
        pm.register(plugin, name=name)
        unknown = [
            impl.plugin_name
            for hook_name in dir(pm.hook)
            if not hook_name.startswith("_")
            for impl in getattr(pm.hook, hook_name).get_hookimpls()
            if impl.plugin is plugin and not getattr(pm.hook, hook_name).has_spec()
        ]
        if unknown:
            pm.unregister(plugin)
            raise pluggy.PluginValidationError(plugin, f"implements hooks that do not exist: {unknown}")
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, never fatal
        log.error("Plugin %s (%s) was not loaded: %s", name, source, exc)
        plugins.reports.append(PluginReport(name, source, False, f"{type(exc).__name__}: {exc}", path))
        return False
    plugins.reports.append(PluginReport(name, source, True, None, path))
    return True


def _import_extension(folder: Path) -> ModuleType:
    """Import ``extensions/<name>/__init__.py`` (or ``<name>.py``) as module ``webui_ext_<name>``."""
    mod_name = "webui_ext_" + "".join(c if c.isalnum() else "_" for c in folder.name)
    init = folder / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(mod_name, init, submodule_search_locations=[str(folder)])
    else:
        single = folder / f"{folder.name}.py"
        if not single.exists():
            raise ImportError(f"{folder} has neither __init__.py nor {folder.name}.py")
        spec = importlib.util.spec_from_file_location(mod_name, single)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


def discover_extension_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def make_plugin_manager(
    *,
    extensions_dir: Path | None = None,
    enabled_extensions: Iterable[str] | None = None,
    disable_extensions: bool = False,
    disabled_extensions: Iterable[str] = (),
    disabled_builtins: Iterable[str] = (),
    load_entrypoints: bool = True,
) -> Plugins:
    """Build a plugin manager with the built-ins, entry-point plugins and extension folders.

    :param enabled_extensions: names of extensions to load (None = all found).
    :param disable_extensions: load no third-party plugin at all.
    :param disabled_extensions: names the user switched off (kept in ``config.json``).
    :param disabled_builtins: built-in plugin module names (or their last part) to skip.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm)
    disabled = set(disabled_builtins)
    for mod_name in BUILTIN_PLUGINS:
        if mod_name in disabled or mod_name.rsplit(".", 1)[-1] in disabled:
            continue
        try:
            module = importlib.import_module(mod_name)
        except Exception as exc:  # noqa: BLE001
            plugins.reports.append(PluginReport(mod_name, "builtin", False, f"{type(exc).__name__}: {exc}"))
            log.error("Built-in plugin %s failed to import: %s", mod_name, exc)
            continue
        _register(plugins, module, mod_name, "builtin")
    if disable_extensions:
        return plugins
    wanted = None if enabled_extensions is None else set(enabled_extensions)
    off = set(disabled_extensions)
    if load_entrypoints:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            if ep.name in off:
                plugins.reports.append(PluginReport(ep.name, "entrypoint", False, None, None, disabled=True))
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001
                plugins.reports.append(PluginReport(ep.name, "entrypoint", False, f"{type(exc).__name__}: {exc}"))
                log.error("Entry-point plugin %s failed to import: %s", ep.name, exc)
                continue
            _register(plugins, obj, ep.name, "entrypoint")
    if extensions_dir is not None:
        _load_extension_folders(plugins, extensions_dir, wanted, off)
    return plugins


def _load_extension_folders(plugins: Plugins, root: Path, wanted: set[str] | None, off: set[str]) -> None:
    """Import the extension folders, then register them by ``LOAD_ORDER`` (default 100) and name; an
    extension whose ``REQUIRES`` (names of other extensions) are not all loaded is reported, not loaded."""
    imported: list[tuple[int, str, ModuleType, Path]] = []
    for folder in discover_extension_folders(root):
        if wanted is not None and folder.name not in wanted:
            continue
        if folder.name in off:
            plugins.reports.append(PluginReport(folder.name, "extension", False, None, str(folder), disabled=True))
            continue
        try:
            module = _import_extension(folder)
        except Exception as exc:  # noqa: BLE001
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            plugins.reports.append(PluginReport(folder.name, "extension", False, detail, str(folder)))
            log.error("Extension %s failed to import: %s", folder.name, detail)
            continue
        order = getattr(module, "LOAD_ORDER", 100)
        imported.append((order if isinstance(order, int) else 100, folder.name, module, folder))
    loaded: set[str] = set()
    for _, name, module, folder in sorted(imported, key=lambda t: (t[0], t[1])):
        missing = [r for r in getattr(module, "REQUIRES", ()) if r not in loaded]
        if missing:
            msg = f"requires {', '.join(missing)}, which is not loaded (missing, disabled or failed, or loads later)"
            plugins.reports.append(PluginReport(name, "extension", False, msg, str(folder)))
            log.error("Extension %s %s", name, msg)
            continue
        if _register(plugins, module, name, "extension", str(folder)):
            loaded.add(name)


class Hooks:
    """Typed facade over the hooks: the core never calls ``pm.hook.<name>`` by string elsewhere.

    Every implementation runs in turn; an exception in one is logged, recorded in
    ``plugins.reports`` and does not stop the others (isolation).
    Exceptions of type :class:`webui.jobs.Interrupted` propagate.
    """

    def __init__(self, plugins: Plugins):
        self._plugins = plugins

    def _call(self, name: str, propagate: tuple[type[BaseException], ...] = (), **kwargs: Any) -> list[Any]:
        from webui.jobs import Interrupted

        caller = getattr(self._plugins.pm.hook, name)
        results = []
        for impl in reversed(caller.get_hookimpls()):
            args = {a: kwargs[a] for a in impl.argnames}
            try:
                res = impl.function(**args)
            except Interrupted:
                raise
            except propagate:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate a failing plugin
                log.exception("Plugin %s failed in hook %s", impl.plugin_name, name)
                self._plugins.reports.append(
                    PluginReport(impl.plugin_name, "hook", False, f"{name}: {type(exc).__name__}: {exc}")
                )
                continue
            if res is not None:
                results.append(res)
        return results

    def _flat(self, name: str, **kwargs: Any) -> list[Any]:
        return [item for res in self._call(name, **kwargs) for item in res]

    def startup(self, ctx: Any) -> None:
        self._call("startup", ctx=ctx)

    def register_samplers(self) -> list[Any]:
        return self._flat("register_samplers")

    def register_schedules(self) -> list[Any]:
        return self._flat("register_schedules")

    def register_upscalers(self, settings: Any) -> list[Any]:
        return self._flat("register_upscalers", settings=settings)

    def register_face_restorers(self, settings: Any) -> list[Any]:
        return self._flat("register_face_restorers", settings=settings)

    def register_scripts(self) -> list[Any]:
        return self._flat("register_scripts")

    def register_settings(self) -> list[Any]:
        return self._flat("register_settings")

    def model_loaded(self, model: Any) -> None:
        self._call("model_loaded", model=model)

    def before_generate(self, request: Any, job: Any) -> None:
        self._call("before_generate", request=request, job=job)

    def prepare_model(self, request: Any, model: Any, opts: Any) -> dict[str, Any]:
        from webui.models.errors import ModelError
        from webui.pipeline.request import RequestError

        merged: dict[str, Any] = {}
        for res in self._call("prepare_model", propagate=(RequestError, ModelError), request=request, model=model,
                              opts=opts):
            merged.update(res)
        return merged

    def unet_patches(self, request: Any, model: Any, job: Any) -> list[Any]:
        from webui.models.errors import ModelError
        from webui.pipeline.request import RequestError

        return [p for res in self._call("unet_patches", propagate=(RequestError, ModelError), request=request,
                                        model=model, job=job) for p in res]

    def on_step_end(self, state: Any) -> None:
        self._call("on_step_end", state=state)

    def postprocess_image(self, state: Any) -> None:
        self._call("postprocess_image", state=state)

    def after_generate(self, result: Any, job: Any) -> None:
        self._call("after_generate", result=result, job=job)

    def extra_infotext(self, request: Any) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for res in self._call("extra_infotext", request=request):
            merged.update(res)
        return merged

    def parse_infotext(self, params: Any, mode: str) -> dict[str, Any]:
        """Every plugin's values read back from a parsed infotext, merged (``alwayson_scripts`` per entry);
        plugins get a read-only view of ``params``."""
        from types import MappingProxyType

        view = MappingProxyType(dict(params))
        merged: dict[str, Any] = {}
        for res in self._call("parse_infotext", params=view, mode=mode):
            if not isinstance(res, Mapping):
                continue
            for key, value in res.items():
                if key == "alwayson_scripts" and isinstance(value, Mapping):
                    merged["alwayson_scripts"] = {**merged.get("alwayson_scripts", {}), **value}
                else:
                    merged[key] = value
        return merged

    def image_saved(self, path: str, infotext: str, image: Any) -> None:
        self._call("image_saved", path=path, infotext=infotext, image=image)

    def api_routes(self, router: Any, ctx: Any) -> None:
        self._call("api_routes", router=router, ctx=ctx)

    def ui_tabs(self, ctx: Any) -> list[Any]:
        return self._flat("ui_tabs", ctx=ctx)

    def ui_assets(self, ctx: Any) -> list[Any]:
        return self._flat("ui_assets", ctx=ctx)

    def ui_sections(self, ctx: Any, mode: str) -> list[Any]:
        return self._flat("ui_sections", ctx=ctx, mode=mode)

    def has_impl(self, name: str) -> bool:
        return bool(getattr(self._plugins.pm.hook, name).get_hookimpls())
