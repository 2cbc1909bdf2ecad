"""The plugin manager: built-ins, entry-point packages and ``extensions/`` folders alike.

:func:`make_plugin_manager` builds a fresh :class:`pluggy.PluginManager` (nothing
at import time).  Every plugin -- built-in or third party -- goes through
:func:`_register`, which validates its hook implementations; a plugin that fails
to import or implements an unknown hook is reported in :attr:`Plugins.reports`
and skipped.  :class:`Hooks` is the typed facade the core calls.

Hook calls go through pluggy (``pm.hook.<name>(...)``), so everything pluggy
offers works for extensions: new-style ``@hookimpl(wrapper=True)`` and
old-style ``hookwrapper=True`` wrappers run around the other implementations,
``tryfirst``/``trylast`` order them, ``firstresult``/``historic`` specs behave as
pluggy documents, and ``pm.add_hookcall_monitoring``/``pm.enable_tracing`` see
every call.

Isolation (a failing plugin is logged, reported under its name in
``Plugins.reports`` and the others still run) needs a guard around *each*
implementation: pluggy's call loop stops at the first exception, so a wrapper of
our own around the whole call could only report that *some* plugin failed, after
the rest were skipped.  The guard is installed as the manager's innermost call
function (:func:`_isolate_failures`, wrapping ``pm._inner_hookexec``, the
function pluggy's own tracing wraps): at each call it hands pluggy's loop the
same implementations with their function behind a guard.  Tracing added later
wraps around it and so sees the plugins' own implementations; pluggy's
ordering, wrappers, ``firstresult`` and historic replay are untouched, since
they are pluggy's loop.  (Guarding at registration instead would mean
registering a proxy object in place of the plugin, which changes what
``pm.get_plugin`` returns.)  Wrappers are guarded too: an exception raised by the
wrapper's own code, before or after its ``yield``, is reported and the call goes
on as if the wrapper had stepped aside; an exception coming from inside (thrown
into the wrapper) is the wrapper's to handle and passes through unchanged.

Exceptions that are not a plugin's failure but a deliberate answer pass through
the guard: :class:`webui.jobs.Interrupted` from any hook, and
``RequestError``/``ModelError`` (input errors reaching the client as a 4xx) from
the hooks in :data:`CLIENT_ERROR_HOOKS`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import traceback
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from webui import hookspecs
from webui.builtin import BUILTIN_PLUGINS

if TYPE_CHECKING:  # pragma: no cover - the hookspecs' types, for the facade's annotations
    import fastapi
    from PIL import Image

    from webui.context import AppContext
    from webui.jobs import Job
    from webui.models.manager import LoadedModel
    from webui.pipeline.patches import UNetPatch
    from webui.pipeline.request import GenerationRequest
    from webui.pipeline.result import GenerationResult
    from webui.pipeline.state import ImageState, StepState
    from webui.restoration.registry import FaceRestorerDef
    from webui.sampling.registry import SamplerDef
    from webui.sampling.schedules import ScheduleDef
    from webui.scripts import ScriptDef
    from webui.sections import UiSection, UiTab
    from webui.settings import OptionDef, Settings
    from webui.ui.assets import UiAsset
    from webui.upscaling.registry import UpscalerDef

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "webui"

#: Hooks whose ``RequestError``/``ModelError`` reach the caller (a 4xx answer) instead of being isolated.
CLIENT_ERROR_HOOKS = frozenset({"prepare_model", "unet_patches"})


@dataclass
class PluginReport:
    """What happened to one plugin at load time, or a later hook failure."""

    name: str
    source: str  # "builtin", "entrypoint", "extension", or "hook" for a failure in a hook call
    ok: bool
    error: str | None = None
    path: str | None = None
    disabled: bool = False  # switched off by the user (Extensions tab / disabled_extensions)


@dataclass
class Plugins:
    """The plugin manager plus load reports and the typed hook facade.

    Creating it makes ``pm``'s hook calls isolate each plugin's failures into :attr:`reports`.
    """

    pm: pluggy.PluginManager
    reports: list[PluginReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        _isolate_failures(self.pm, self._hook_failed)

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

    def _hook_failed(self, hook_name: str, plugin_name: str, exc: Exception) -> None:
        log.error("Plugin %s failed in hook %s", plugin_name, hook_name, exc_info=exc)
        self.reports.append(PluginReport(plugin_name, "hook", False, f"{hook_name}: {type(exc).__name__}: {exc}"))


def _implemented_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """The hook names ``plugin`` implements, found as ``pm.register`` finds them (markers, ``specname``)."""
    names = []
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is not None:
            names.append(opts.get("specname") or attr)
    return names


def _register(plugins: Plugins, plugin: object, name: str, source: str, path: str | None = None) -> bool:
    """Register ``plugin``; a module that defines ``make_plugin()`` registers the object it returns
    instead (so a plugin can keep state in an instance rather than in module globals).  A plugin
    implementing a hook without a spec is refused before it is registered."""
    pm = plugins.pm
    try:
        if isinstance(plugin, ModuleType) and callable(getattr(plugin, "make_plugin", None)):
            plugin = plugin.make_plugin()
        unknown = [hook for hook in _implemented_hooks(pm, plugin)
                   if not (hasattr(pm.hook, hook) and getattr(pm.hook, hook).has_spec())]
        if unknown:
            raise pluggy.PluginValidationError(plugin, f"implements hooks that do not exist: {unknown}")
        pm.register(plugin, name=name)
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


#: what an extension folder without Python code may hold (A1111's translation and JavaScript-only extensions)
DATA_ONLY_PARTS = ("localizations", "javascript", "style.css")


def _data_only(folder: Path) -> bool:
    """A folder without ``__init__.py`` / ``<name>.py`` that holds localizations, JavaScript or CSS: loaded as an
    extension with no hooks (its files are used), as A1111 does."""
    if (folder / "__init__.py").exists() or (folder / f"{folder.name}.py").exists():
        return False
    return any((folder / part).exists() for part in DATA_ONLY_PARTS)


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
    data_only: set[str] = set()
    for folder in discover_extension_folders(root):
        if wanted is not None and folder.name not in wanted:
            continue
        if folder.name in off:
            plugins.reports.append(PluginReport(folder.name, "extension", False, None, str(folder), disabled=True))
            continue
        if _data_only(folder):  # e.g. an A1111 translation extension: nothing to import, its files are used
            plugins.reports.append(PluginReport(folder.name, "extension", True, None, str(folder)))
            data_only.add(folder.name)
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
    loaded: set[str] = set(data_only)
    for _, name, module, folder in sorted(imported, key=lambda t: (t[0], t[1])):
        missing = [r for r in getattr(module, "REQUIRES", ()) if r not in loaded]
        if missing:
            msg = f"requires {', '.join(missing)}, which is not loaded (missing, disabled or failed, or loads later)"
            plugins.reports.append(PluginReport(name, "extension", False, msg, str(folder)))
            log.error("Extension %s %s", name, msg)
            continue
        if _register(plugins, module, name, "extension", str(folder)):
            loaded.add(name)


# --- isolation ------------------------------------------------------------------------------------

_OnError = Callable[[str, str, Exception], None]  # (hook name, plugin name, exception)


def _isolate_failures(pm: pluggy.PluginManager, on_error: _OnError) -> None:
    """Make every hook call of ``pm`` run each implementation behind a guard (see the module docstring).

    pluggy calls ``pm._inner_hookexec(hook_name, impls, kwargs, firstresult)`` for every call (plain,
    historic, historic replay, ``call_extra``); ``add_hookcall_monitoring``/``enable_tracing`` wrap
    that same function, so tracers installed afterwards sit outside the guards.
    """
    inner = pm._inner_hookexec  # pluggy's call loop

    def isolated(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object],
                 firstresult: bool) -> object:
        return inner(hook_name, [_guarded(impl, hook_name, on_error) for impl in impls], kwargs, firstresult)

    pm._inner_hookexec = isolated


def _passes_through(hook_name: str, exc: Exception) -> bool:
    """Whether ``exc`` is a deliberate answer rather than a plugin failure (the caller gets it)."""
    from webui.jobs import Interrupted

    if isinstance(exc, Interrupted):
        return True
    if hook_name in CLIENT_ERROR_HOOKS:
        from webui.errors import ModelError, RequestError

        return isinstance(exc, (RequestError, ModelError))
    return False


def _guarded(impl: pluggy.HookImpl, hook_name: str, on_error: _OnError) -> pluggy.HookImpl:
    """``impl`` with its function behind a guard that reports the plugin's own exceptions and carries on.

    The guard keeps the function's signature (``functools.wraps``: pluggy reads the argument names
    through ``__wrapped__``) and its options (wrapper, tryfirst, ...), so pluggy calls it as it would
    the original.  A guarded call that failed gives ``None``: no result, as if the plugin had none.
    """
    fn = impl.function
    what = f"{impl.plugin_name}'s {hook_name} wrapper"

    def absorbed(exc: Exception) -> bool:
        if _passes_through(hook_name, exc):
            return False
        on_error(hook_name, impl.plugin_name, exc)
        return True

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> object:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not absorbed(exc):
                raise
            return None

    @functools.wraps(fn)
    def new_style(*args: Any, **kwargs: Any) -> Generator[None, object, object]:
        teardown = fn(*args, **kwargs)
        try:
            next(teardown)
        except StopIteration:
            absorbed(RuntimeError(f"{what} did not yield"))
            return (yield)
        except Exception as exc:  # failed before its yield: step aside
            if not absorbed(exc):
                raise
            return (yield)
        try:
            result = yield
        except BaseException as inner:  # from inside: the wrapper's to handle
            try:
                teardown.throw(inner)
            except StopIteration as stop:
                return stop.value  # it handled the exception and returned a result
            except Exception as exc:
                if exc is inner or not absorbed(exc):
                    raise
            else:
                teardown.close()
                absorbed(RuntimeError(f"{what} has a second yield"))
            raise inner
        try:
            teardown.send(result)
        except StopIteration as stop:
            return stop.value
        except Exception as exc:  # failed after its yield: the result stands
            if not absorbed(exc):
                raise
            return result
        teardown.close()
        absorbed(RuntimeError(f"{what} has a second yield"))
        return result

    @functools.wraps(fn)
    def old_style(*args: Any, **kwargs: Any) -> Generator[None, pluggy.Result[object], None]:
        teardown = fn(*args, **kwargs)
        try:
            next(teardown)
        except StopIteration:
            absorbed(RuntimeError(f"{what} did not yield"))
            yield
            return
        except Exception as exc:
            if not absorbed(exc):
                raise
            yield
            return
        outcome = yield
        try:
            teardown.send(outcome)
        except StopIteration:
            return
        except Exception as exc:
            if not absorbed(exc):
                raise
            return
        teardown.close()
        absorbed(RuntimeError(f"{what} has a second yield"))

    guard = new_style if impl.wrapper else old_style if impl.hookwrapper else plain
    return pluggy.HookImpl(impl.plugin, impl.plugin_name, guard, impl.opts)


# --- the facade ------------------------------------------------------------------------------------


def _concat(results: Iterable[Iterable[Any]]) -> list[Any]:
    """The lists the plugins returned, one after the other."""
    return [item for res in results for item in res]


def _merge(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The dicts the plugins returned, merged (a later plugin's key wins)."""
    merged: dict[str, Any] = {}
    for res in results:
        merged.update(res)
    return merged


class Hooks:
    """Typed facade over the hooks: the core never calls ``pm.hook.<name>`` elsewhere.

    Each method calls its hook through pluggy and shapes the plugins' answers: lists are
    concatenated, dicts merged.  The parameters are the hookspec's, names and types
    (``tests/test_hook_calls.py`` checks); isolation is the manager's (see the module docstring).
    """

    def __init__(self, plugins: Plugins):
        self._plugins = plugins

    @property
    def _hook(self) -> pluggy.HookRelay:
        return self._plugins.pm.hook

    def startup(self, ctx: AppContext) -> None:
        self._hook.startup.call_historic(kwargs={"ctx": ctx})

    def register_samplers(self) -> list[SamplerDef]:
        return _concat(self._hook.register_samplers())

    def register_schedules(self) -> list[ScheduleDef]:
        return _concat(self._hook.register_schedules())

    def register_upscalers(self, settings: Settings) -> list[UpscalerDef]:
        return _concat(self._hook.register_upscalers(settings=settings))

    def register_face_restorers(self, settings: Settings) -> list[FaceRestorerDef]:
        return _concat(self._hook.register_face_restorers(settings=settings))

    def register_scripts(self) -> list[ScriptDef]:
        return _concat(self._hook.register_scripts())

    def register_settings(self) -> list[OptionDef]:
        return _concat(self._hook.register_settings())

    def model_loaded(self, model: LoadedModel) -> None:
        self._hook.model_loaded(model=model)

    def before_generate(self, request: GenerationRequest, job: Job) -> None:
        self._hook.before_generate(request=request, job=job)

    def prepare_model(self, request: GenerationRequest, model: LoadedModel, opts: Mapping[str, Any]) -> dict[str, Any]:
        return _merge(self._hook.prepare_model(request=request, model=model, opts=opts))

    def unet_patches(self, request: GenerationRequest, model: LoadedModel, job: Job) -> list[UNetPatch]:
        return _concat(self._hook.unet_patches(request=request, model=model, job=job))

    def on_step_end(self, state: StepState) -> None:
        self._hook.on_step_end(state=state)

    def postprocess_image(self, state: ImageState) -> None:
        self._hook.postprocess_image(state=state)

    def after_generate(self, result: GenerationResult, job: Job) -> None:
        self._hook.after_generate(result=result, job=job)

    def extra_infotext(self, request: GenerationRequest) -> dict[str, Any]:
        return _merge(self._hook.extra_infotext(request=request))

    def parse_infotext(self, params: Mapping[str, Any], mode: str) -> dict[str, Any]:
        """Every plugin's values read back from a parsed infotext, merged (``alwayson_scripts`` per entry);
        plugins get a read-only view of ``params``."""
        merged: dict[str, Any] = {}
        for res in self._hook.parse_infotext(params=MappingProxyType(dict(params)), mode=mode):
            if not isinstance(res, Mapping):
                continue
            for key, value in res.items():
                if key == "alwayson_scripts" and isinstance(value, Mapping):
                    merged["alwayson_scripts"] = {**merged.get("alwayson_scripts", {}), **value}
                else:
                    merged[key] = value
        return merged

    def image_saved(self, path: str, infotext: str, image: Image.Image) -> None:
        self._hook.image_saved(path=path, infotext=infotext, image=image)

    def api_routes(self, router: fastapi.APIRouter, ctx: AppContext) -> None:
        self._hook.api_routes(router=router, ctx=ctx)

    def ui_tabs(self, ctx: AppContext) -> list[UiTab]:
        return _concat(self._hook.ui_tabs(ctx=ctx))

    def ui_sections(self, ctx: AppContext, mode: str) -> list[UiSection]:
        return _concat(self._hook.ui_sections(ctx=ctx, mode=mode))

    def ui_assets(self, ctx: AppContext) -> list[UiAsset]:
        return _concat(self._hook.ui_assets(ctx=ctx))

