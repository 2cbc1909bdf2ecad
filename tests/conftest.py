"""Shared fixtures: tiny checkpoints saved the way users have them, and an app context on them."""

from __future__ import annotations

import contextlib
import os
import shlex

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from webui.hookspecs import hookimpl  # noqa: E402

# under pytest-xdist every worker gets an equal share of the cores (oversubscribed torch threads only
# make the workers wait for each other)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


# --- what the machine must have ------------------------------------------------------------------------

#: under CI (the ``CI`` environment variable, set by .ci/run and by CI services) everything the tests need is
#: installed (``python launch.py --tests``), so a missing piece fails the run instead of skipping tests silently
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(why: str) -> None:
    """Something this test needs is missing on this machine: skip it here, fail under CI."""
    if IN_CI:
        pytest.fail(f"{why} (CI installs it: python launch.py --tests)", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def require(module: str, why: str = ""):
    """``import module`` for a test (or at a test module's top); missing: :func:`missing`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(f"{module} is not installed{': ' + why if why else ''} ({exc})")


def needs(ok: bool, why: str) -> pytest.MarkDecorator:
    """A mark (on a test, or as a module's ``pytestmark``) for something the machine must have: nothing when
    ``ok``; else the test is skipped here and fails under CI (see :func:`missing`)."""
    return pytest.mark.machine_needs(why, ok=bool(ok))


def pytest_configure(config):
    config.addinivalue_line("markers", "machine_needs(why, ok): see tests/conftest.py needs()")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("machine_needs"):
        if not mark.kwargs.get("ok", True):
            missing(mark.args[0])


@pytest.fixture(scope="session")
def tiny_sd1_file(tmp_path_factory) -> Path:
    """A tiny SD 1.x checkpoint in the original single-file layout (.safetensors)."""
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components

    folder = tmp_path_factory.mktemp("ckpt")
    return save_single_file(build_tiny_components("sd1", seed=1), folder / "tiny-sd1.safetensors")


@pytest.fixture(scope="session")
def models_root(tmp_path_factory, tiny_sd1_file) -> Path:
    """A models/ folder with the tiny SD 1.x checkpoint in Stable-diffusion/."""
    return own_models_root(tmp_path_factory, tiny_sd1_file)


def own_models_root(tmp_path_factory, tiny_sd1_file) -> Path:
    """A new models/ folder with a copy of the tiny SD 1.x checkpoint, for a module that adds its own files."""
    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    (root / "Stable-diffusion" / tiny_sd1_file.name).write_bytes(tiny_sd1_file.read_bytes())
    return root


def square_pictures(folder: Path, corners, colour, caption: str, background: int = 245) -> Path:
    """Training pictures: a 28-pixel square of ``colour`` at each top-left corner of ``corners`` on a grey
    ``background`` (64 x 64 PNGs), each with a same-stem ``.txt`` ``caption``."""
    import numpy as np
    from PIL import Image

    for i, (x, y) in enumerate(corners):
        arr = np.full((64, 64, 3), background, np.uint8)
        arr[y:y + 28, x:x + 28] = colour
        Image.fromarray(arr).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(caption)
    return folder


def wait_for_run(ctx, client, run_id: str, timeout: float = 180) -> dict:
    """Wait until the training run ``run_id`` of ``ctx`` ends (``TrainingRun.wait``; ``timeout`` is only a
    safety net); its last state from ``GET /webui/v1/train/{run_id}``."""
    run = ctx.training_runs.get(run_id)
    assert run is not None, f"no training run {run_id}"
    assert run.wait(timeout), f"run {run_id} did not finish in {timeout:.0f} s: {run.describe(False)}"
    return client.get(f"/webui/v1/train/{run_id}").json()


def make_settings(data_dir: Path, models_root: Path | None = None, **kw):
    from webui.settings import Settings

    kw = {"disable_extensions": True, "use_cpu": True, **kw}
    return Settings(data_dir=data_dir, models_dir=models_root, **kw)


@pytest.fixture(scope="session")
def ctx(tmp_path_factory, models_root):
    """An application context on the tiny model (session-wide; tests must not change global options)."""
    from webui.context import build_context

    data = tmp_path_factory.mktemp("data")
    return build_context(make_settings(data, models_root), load_model=True)


@pytest.fixture
def fresh_ctx(tmp_path, models_root):
    """A context with its own data folder (for tests that change options or plugins)."""
    from webui.context import build_context

    return build_context(make_settings(tmp_path, models_root), load_model=True)


class CodeRunningPickle:
    """Pickles to ``os.system("touch <marker>")``: a file holding it runs code when unpickled unsafely, so
    the marker file exists afterwards only if the code under test did so."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class StepRecorder:
    """An ``on_step_end`` plugin that appends ``what(state)`` to ``seen`` at every sampling step."""

    def __init__(self, what):
        self.what = what
        self.seen = []

    @hookimpl
    def on_step_end(self, state):
        self.seen.append(self.what(state))


@contextlib.contextmanager
def registered(ctx, plugin, name: str):
    """``plugin`` registered on ``ctx`` (as ``name``) for the ``with`` block only."""
    ctx.plugins.register(plugin, name)
    try:
        yield plugin
    finally:
        ctx.plugins.unregister(name)


@pytest.fixture
def counter(ctx):
    """``(step, total_steps)`` of every sampling step, in ``counter.seen``."""
    with registered(ctx, StepRecorder(lambda state: (state.step, state.total_steps)), "step-counter") as plugin:
        yield plugin


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (``item.reports["call"]``), so fixtures can see whether their
    test failed (the browser tests save screenshots then, see tests/browser_helpers.py)."""
    report = yield
    if not hasattr(item, "reports"):
        item.reports = {}
    item.reports[report.when] = report
    return report


def api_only(ctx):
    """``ctx`` as with ``--nowebui``: ``create_app(api_only(ctx))`` builds the API and the plugins' routes
    without the Gradio UI (for tests that check no UI; building the UI costs about a second each time)."""
    import dataclasses

    return dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, nowebui=True))


@pytest.fixture(scope="session")
def api_client(ctx):
    """An HTTP client for the API alone (``--nowebui``: no Gradio UI is built) on the session context."""
    from fastapi.testclient import TestClient

    from webui.server import create_app

    with TestClient(create_app(api_only(ctx))) as client:
        yield client
