"""How hooks are called: through pluggy (wrappers, ``firstresult``, ``historic``, tracing), each plugin's
failure isolated and reported, the facade typed as the hookspecs, the docs checked against them.

Fast: a plugin manager without built-ins, no model, no app.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pluggy
import pytest

from webui import hookspecs
from webui.builtin import BUILTIN_PLUGINS
from webui.hookspecs import hookimpl, hookspec
from webui.jobs import Interrupted
from webui.pipeline.request import RequestError
from webui.plugins import Hooks, Plugins, make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
REQUEST = SimpleNamespace(prompt="x", alwayson_scripts={})


def _bare(*plugins: tuple[str, object]) -> Plugins:
    """A manager with no built-in and no extension, then ``plugins`` registered in order."""
    made = make_plugin_manager(disable_extensions=True, load_entrypoints=False, disabled_builtins=BUILTIN_PLUGINS)
    for name, plugin in plugins:
        assert made.register(plugin, name), made.reports
    return made


def _failures(plugins: Plugins) -> list[tuple[str, str]]:
    return [(r.name, r.error) for r in plugins.reports if r.source == "hook"]


def _infotext_plugin(key: str, seen: list):
    class P:
        @hookimpl
        def extra_infotext(self, request):
            seen.append(key)
            return {key: 1}

    return P()


class Broken:
    @hookimpl
    def extra_infotext(self, request):
        raise RuntimeError("boom")


# --- wrappers ----------------------------------------------------------------------------------------


def test_new_style_wrapper_runs_around_the_others_and_sees_their_result():
    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def extra_infotext(self, request):
            seen.append("before")
            results = yield
            seen.append(("after", list(results)))
            return [*results, {"Counted": len(results)}]

    plugins = _bare(("a", _infotext_plugin("A", seen)), ("w", Wrapper()), ("b", _infotext_plugin("B", seen)))
    assert plugins.hooks.extra_infotext(REQUEST) == {"B": 1, "A": 1, "Counted": 2}
    assert seen == ["before", "B", "A", ("after", [{"B": 1}, {"A": 1}])]


def test_old_style_hookwrapper_runs_around_the_others_and_sees_their_result():
    seen = []

    class Wrapper:
        @hookimpl(hookwrapper=True)
        def extra_infotext(self, request):
            seen.append("before")
            outcome = yield
            seen.append(("after", outcome.get_result()))
            outcome.force_result([*outcome.get_result(), {"Counted": len(outcome.get_result())}])

    plugins = _bare(("w", Wrapper()), ("a", _infotext_plugin("A", seen)))
    assert plugins.hooks.extra_infotext(REQUEST) == {"A": 1, "Counted": 1}
    assert seen == ["before", "A", ("after", [{"A": 1}])]


def test_a_wrapper_can_handle_an_answer_raised_inside():
    class Refuses:
        @hookimpl
        def unet_patches(self, request, model, job):
            raise RequestError("alwayson_scripts.x", "bad")

    class Forgiving:
        @hookimpl(wrapper=True)
        def unet_patches(self, request, model, job):
            try:
                return (yield)
            except RequestError:
                return []

    class Transparent:
        @hookimpl(wrapper=True)
        def unet_patches(self, request, model, job):
            return (yield)

    with pytest.raises(RequestError):  # passes through the isolation of prepare_model/unet_patches
        _bare(("refuses", Refuses())).hooks.unet_patches(REQUEST, None, None)
    transparent = _bare(("refuses", Refuses()), ("transparent", Transparent()))
    with pytest.raises(RequestError):  # and through a wrapper that does not handle it, not reported
        transparent.hooks.unet_patches(REQUEST, None, None)
    assert _failures(transparent) == []
    plugins = _bare(("refuses", Refuses()), ("forgiving", Forgiving()))
    assert plugins.hooks.unet_patches(REQUEST, None, None) == []
    assert _failures(plugins) == []


def test_an_error_from_inside_that_a_wrapper_lets_through_is_not_its_failure():
    class Transparent:
        @hookimpl(wrapper=True)
        def extra_infotext(self):
            return (yield)

    plugins = _bare(("a", _infotext_plugin("A", [])), ("transparent", Transparent()))
    with pytest.raises(pluggy.HookCallError), pytest.warns(UserWarning):  # a call without the hook's argument
        plugins.pm.hook.extra_infotext()
    assert _failures(plugins) == []


def test_tryfirst_and_trylast_order_the_implementations():
    seen = []

    class Last:
        @hookimpl(trylast=True)
        def extra_infotext(self, request):
            seen.append("last")

    class First:
        @hookimpl(tryfirst=True)
        def extra_infotext(self, request):
            seen.append("first")

    _bare(("first", First()), ("a", _infotext_plugin("A", seen)), ("last", Last())).hooks.extra_infotext(REQUEST)
    assert seen == ["first", "A", "last"]


# --- firstresult and historic ------------------------------------------------------------------------


class PickSpec:
    @hookspec(firstresult=True)
    def pick_one(self, value):
        """A first-result hook of the test only."""


def test_firstresult_hook_returns_the_first_answer_and_skips_the_rest():
    seen = []

    def answering(name, answer):
        class P:
            @hookimpl
            def pick_one(self, value):
                seen.append(name)
                if answer == "raise":
                    raise RuntimeError("no")
                return answer

        return P()

    plugins = _bare()
    plugins.pm.add_hookspecs(PickSpec)
    for name, answer in [("late", "late answer"), ("first", "first answer"), ("fails", "raise"), ("none", None)]:
        assert plugins.register(answering(name, answer), name)
    assert plugins.pm.hook.pick_one(value=1) == "first answer"
    assert seen == ["none", "fails", "first"]  # a failure is isolated, then the first answer ends the call
    assert _failures(plugins) == [("fails", "pick_one: RuntimeError: no")]


def test_startup_is_historic_a_plugin_registered_later_gets_it():
    seen = []

    class P:
        def __init__(self, name):
            self.name = name

        @hookimpl
        def startup(self, ctx):
            seen.append((self.name, ctx))

    plugins = _bare(("early", P("early")))
    ctx = object()
    plugins.hooks.startup(ctx)
    assert seen == [("early", ctx)]
    assert plugins.register(P("late"), "late")
    assert seen == [("early", ctx), ("late", ctx)]

    class Wraps:
        @hookimpl(wrapper=True)
        def startup(self, ctx):
            return (yield)

    assert not plugins.register(Wraps(), "wraps")  # pluggy: historic hooks take no wrappers
    assert any(r.name == "wraps" and not r.ok and "historic" in r.error for r in plugins.reports)


# --- tracing ----------------------------------------------------------------------------------------


def test_pluggy_tracing_records_a_hook_call():
    plugins = _bare(("a", _infotext_plugin("A", [])))
    messages = []
    plugins.pm.trace.root.setwriter(messages.append)
    undo = plugins.pm.enable_tracing()
    plugins.hooks.extra_infotext(REQUEST)
    undo()
    assert any("extra_infotext" in m for m in messages) and any("finish" in m for m in messages)


def test_hookcall_monitoring_sees_the_plugins_own_implementations_and_the_result():
    calls = []
    plugins = _bare(("a", _infotext_plugin("A", [])), ("broken", Broken()))
    plugins.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, [i.plugin_name for i in impls], kwargs["request"])),
        lambda outcome, name, impls, kwargs: calls.append(("result", outcome.get_result())))
    plugins.hooks.extra_infotext(REQUEST)
    assert calls == [("extra_infotext", ["a", "broken"], REQUEST), ("result", [{"A": 1}])]
    impls = plugins.pm.hook.extra_infotext.get_hookimpls()
    assert [i.function.__func__ for i in impls] == [type(i.plugin).extra_infotext for i in impls]  # not wrapped


# --- isolation --------------------------------------------------------------------------------------


def test_a_failing_plugin_is_isolated_and_reported_with_its_name():
    seen = []
    plugins = _bare(("a", _infotext_plugin("A", seen)), ("broken", Broken()), ("b", _infotext_plugin("B", seen)))
    assert plugins.hooks.extra_infotext(REQUEST) == {"A": 1, "B": 1}
    assert seen == ["B", "A"]
    assert _failures(plugins) == [("broken", "extra_infotext: RuntimeError: boom")]


@pytest.mark.parametrize("style", ["wrapper", "hookwrapper"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failing_wrapper_is_isolated_and_reported_with_its_name(style, when):
    class FailingWrapper:
        @hookimpl(**{style: True})
        def extra_infotext(self, request):
            if when == "before":
                raise RuntimeError("wrapper boom")
            yield
            raise RuntimeError("wrapper boom")

    plugins = _bare(("a", _infotext_plugin("A", [])), ("bad-wrapper", FailingWrapper()))
    assert plugins.hooks.extra_infotext(REQUEST) == {"A": 1}
    assert _failures(plugins) == [("bad-wrapper", "extra_infotext: RuntimeError: wrapper boom")]


def test_a_wrapper_that_does_not_yield_is_reported():
    class NoYield:
        @hookimpl(wrapper=True)
        def extra_infotext(self, request):
            return
            yield

    plugins = _bare(("a", _infotext_plugin("A", [])), ("no-yield", NoYield()))
    assert plugins.hooks.extra_infotext(REQUEST) == {"A": 1}
    assert [name for name, _ in _failures(plugins)] == ["no-yield"] and "did not yield" in _failures(plugins)[0][1]


def test_interrupted_passes_through_every_hook():
    class Stops:
        @hookimpl
        def on_step_end(self, state):
            raise Interrupted()

    plugins = _bare(("stops", Stops()))
    with pytest.raises(Interrupted):
        plugins.hooks.on_step_end(SimpleNamespace())
    assert _failures(plugins) == []


def test_other_hooks_do_not_let_request_errors_through():
    class Refuses:
        @hookimpl
        def extra_infotext(self, request):
            raise RequestError("prompt", "bad")

    plugins = _bare(("refuses", Refuses()))
    assert plugins.hooks.extra_infotext(REQUEST) == {}
    assert [name for name, _ in _failures(plugins)] == ["refuses"]


def test_an_unknown_hook_is_refused_before_registration():
    class P:
        @hookimpl
        def startup(self, ctx):
            raise AssertionError("a refused plugin must not be called (historic replay)")

        @hookimpl
        def no_such_hook(self):
            pass

    plugins = _bare()
    plugins.hooks.startup(object())
    assert not plugins.register(P(), "unknown")
    assert plugins.pm.get_plugin("unknown") is None
    assert any(r.name == "unknown" and "no_such_hook" in r.error for r in plugins.reports)
    assert _failures(plugins) == []


def test_an_argument_with_a_default_gets_the_hooks_value():
    class P:
        @hookimpl
        def ui_sections(self, ctx, mode="not given"):
            return [mode]

    assert _bare(("p", P())).hooks.ui_sections(None, "img2img") == ["img2img"]


# --- the facade is typed as the hookspecs -----------------------------------------------------------

HOOKSPECS = [(name, fn) for name, fn in vars(hookspecs).items() if hasattr(fn, hookspecs.PROJECT + "_spec")]


@pytest.mark.parametrize(("name", "spec"), HOOKSPECS, ids=[name for name, _ in HOOKSPECS])
def test_the_facade_takes_the_hookspecs_arguments_and_types(name, spec):
    facade = list(inspect.signature(getattr(Hooks, name)).parameters.values())[1:]  # without self
    expected = list(inspect.signature(spec).parameters.values())
    assert [(p.name, p.annotation) for p in facade] == [(p.name, p.annotation) for p in expected]
    assert "Any" not in {p.annotation for p in facade}


# --- the documentation is checked against the hookspecs ----------------------------------------------


def _hooks_doc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hooks_doc", ROOT / "tools" / "hooks_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs() -> str:
    return (ROOT / "docs" / "extensions.md").read_text(encoding="utf-8")


def test_the_docs_match_the_hookspecs():
    assert _hooks_doc().check(_docs(), hookspecs) == []


def test_the_docs_check_finds_a_documented_signature_that_is_not_the_hookspecs():
    doctored = _docs().replace("### `image_saved(path, infotext, image)`", "### `image_saved(path, image)`")
    problems = _hooks_doc().check(doctored, hookspecs)
    assert "hook image_saved is documented as image_saved(path, image) but its hookspec takes (path, infotext, image)" \
        in problems


def test_the_docs_check_finds_a_hookspec_that_changed_under_the_docs():
    fake = ModuleType("fake_hookspecs")
    fake.PROJECT, fake.HOOKS_VERSION = hookspecs.PROJECT, hookspecs.HOOKS_VERSION
    for name, fn in HOOKSPECS:
        setattr(fake, name, fn)

    @hookspec
    def image_saved(path, infotext, image, size):
        """Called after an image file was written."""

    @hookspec
    def brand_new(ctx):
        """Not in the docs."""

    fake.image_saved, fake.brand_new = image_saved, brand_new
    problems = _hooks_doc().check(_docs(), fake)
    assert "hook image_saved is documented as image_saved(path, infotext, image) but its hookspec takes " \
           "(path, infotext, image, size)" in problems
    assert "hook brand_new(ctx) is not documented" in problems
    assert any("differs from the hookspecs' docstrings" in p for p in problems)


def test_the_docs_check_finds_a_stale_reference_and_a_wrong_version():
    module = _hooks_doc()
    doctored = _docs().replace("Called after an image file was written.", "Called sometimes.")
    doctored = doctored.replace(f"Hook API version `{hookspecs.HOOKS_VERSION}`", "Hook API version `0.9`")
    problems = module.check(doctored, hookspecs)
    assert any("differs from the hookspecs' docstrings" in p for p in problems)
    assert any(hookspecs.HOOKS_VERSION in p and "version" in p for p in problems)
    assert module.check(module.replace_reference(doctored, module.render(hookspecs)), hookspecs) == [
        p for p in problems if "version" in p]


def test_pluggy_is_the_version_the_isolation_was_written_for():
    # the isolation wraps PluginManager._inner_hookexec (see webui/plugins.py); a new pluggy must be re-checked
    assert pluggy.__version__.split(".")[:2] == ["1", "7"]
    assert hasattr(pluggy.PluginManager(hookspecs.PROJECT), "_inner_hookexec")
