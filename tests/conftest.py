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


# --- real-architecture upscalers and face restorers (random weights) -------------------------------------------
# The Extras, "Restore faces", hires and img2img tests run the real networks: basicsr's RRDBNet (ESRGAN /
# Real-ESRGAN), realesrgan's SRVGGNetCompact, spandrel's GFPGAN v1.4 and spandrel_extra_arches' CodeFormer, with
# facexlib's RetinaFace detector and ParseNet parser -- random weights, saved the way the official files are.


def brighten(net: torch.nn.Module) -> torch.nn.Module:
    """Random-init RRDB outputs sit near 0 and would clamp to black in uint8; a larger last conv and a 0.5
    bias spread them over [0, 1] so image comparisons mean something."""
    last = net.conv_last if hasattr(net, "conv_last") else net.body[-1]
    with torch.no_grad():
        last.weight.mul_(8)
        last.bias.fill_(0.5 if hasattr(net, "conv_last") else 0.0)
    return net.eval()


def rrdb(scale: int = 4, num_feat: int = 16, num_block: int = 2, grow: int = 8, seed: int = 0):
    """basicsr's RRDBNet (the ESRGAN / Real-ESRGAN x4plus architecture), small, random, brightened."""
    from webui.upscaling.gan import RRDBNet

    torch.manual_seed(seed)
    return brighten(RRDBNet(3, 3, scale, num_feat, num_block, grow))


def compact(num_feat: int = 16, num_conv: int = 4, scale: int = 4, seed: int = 0):
    """realesrgan's SRVGGNetCompact (realesr-general-x4v3's architecture), small, random."""
    from webui.upscaling.gan import SRVGGNetCompact

    torch.manual_seed(seed)
    return SRVGGNetCompact(3, 3, num_feat, num_conv, scale, "prelu").eval()


def save_weights(sd: dict[str, torch.Tensor], path: Path, wrapper: str | None = None) -> Path:
    """A state dict as ``.safetensors`` or a torch pickle (inside ``{wrapper: ...}`` when given)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({wrapper: sd} if wrapper else sd, path)
    return path


def run_network(net: torch.nn.Module, image):
    """An upscaler network run directly on the whole ``image``, converted the obvious way (the reference)."""
    import numpy as np
    from PIL import Image

    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = net(x)[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(y, "RGB")


#: seeds and sizes of the upscaler files of ``upscaler_models`` (the networks are rebuilt from them in tests)
UPSCALER_FILES = {
    "RealESRGAN/RealESRGAN_x4plus.pth": dict(scale=4, num_feat=8, num_block=1, grow=4, seed=6),
    "RealESRGAN/RealESRGAN_x2plus.pth": dict(scale=2, num_feat=8, num_block=1, grow=4, seed=7),
}


@pytest.fixture(scope="session")
def upscaler_models(tmp_path_factory) -> Path:
    """A models/ folder with real-architecture upscalers: RealESRGAN_x4plus / x2plus (RRDBNet, in "params_ema" /
    "params") and realesr-general-x4v3 (SRVGGNetCompact, safetensors)."""
    root = tmp_path_factory.mktemp("upscaler-models")
    for (rel, kw), wrapper in zip(UPSCALER_FILES.items(), ("params_ema", "params"), strict=True):
        save_weights(rrdb(**kw).state_dict(), root / rel, wrapper)
    save_weights(compact().state_dict(), root / "RealESRGAN" / "realesr-general-x4v3.safetensors")
    return root


def no_face_detector():
    """RetinaFace (ResNet-50) with random weights, except a class head that always says "background".

    A detector with purely random weights "finds" faces in noise at random; with the face logit
    pushed 20 below the background logit, every anchor scores ~2e-9 (< 0.97), so the real network
    runs end to end and deterministically finds no face.
    """
    import warnings

    from webui.compat import patch_torchvision_functional_tensor

    patch_torchvision_functional_tensor()
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision: "'pretrained' is deprecated" (False: nothing downloaded)
        warnings.simplefilter("ignore")
        net = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    with torch.no_grad():
        for head in net.ClassHead:
            head.conv1x1.weight.zero_()
            head.conv1x1.bias.copy_(torch.tensor([10.0, -10.0]).repeat(head.num_anchors))
    return net


def skin_parser():
    """ParseNet with random weights whose mask head always answers class 1 (skin): the whole crop
    (less its blurred border) is pasted back, so a restored face visibly changes the picture."""
    from facexlib.parsing.parsenet import ParseNet

    torch.manual_seed(1)
    net = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    with torch.no_grad():
        net.out_mask_conv.conv2d.weight.zero_()
        net.out_mask_conv.conv2d.bias.zero_()
        net.out_mask_conv.conv2d.bias[1] = 10.0
    return net


GFPGAN_NAME = "GFPGANv1.4.pth"
CODEFORMER_NAME = "codeformer-v0.1.0.pth"


@pytest.fixture(scope="session")
def face_models(tmp_path_factory) -> Path:
    """A models/ folder with the four face-restoration files (random weights, real architectures): GFPGAN v1.4
    and CodeFormer as ``{"params_ema": ...}``, the detector with DataParallel keys in the legacy format, the
    parser as a bare state dict."""
    from spandrel.architectures.GFPGAN import GFPGAN
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    from webui.restoration.faces import DETECTION_FILE, PARSING_FILE

    root = tmp_path_factory.mktemp("face_models")
    gfpgan_dir, codeformer_dir = root / "GFPGAN", root / "Codeformer"
    gfpgan_dir.mkdir()
    codeformer_dir.mkdir()

    detector = {"module." + k: v for k, v in no_face_detector().state_dict().items()}  # DataParallel keys
    torch.save(detector, gfpgan_dir / DETECTION_FILE, _use_new_zipfile_serialization=False)  # legacy format
    torch.save(skin_parser().state_dict(), gfpgan_dir / PARSING_FILE)

    torch.manual_seed(2)
    gfpgan = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                    fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    # "params" is junk: loading it instead of params_ema would fail the strict load
    torch.save({"params_ema": gfpgan.state_dict(), "params": {"junk": torch.zeros(1)}}, gfpgan_dir / GFPGAN_NAME)
    del gfpgan
    torch.manual_seed(3)
    torch.save({"params_ema": CodeFormer().state_dict()}, codeformer_dir / CODEFORMER_NAME)
    return root


@pytest.fixture(scope="session")
def face_restorers(face_models, tmp_path_factory):
    """The built-in plugin's GFPGAN and CodeFormer on ``face_models``, by name: one registration for the session,
    so each network loads once (register them in a context with :class:`SharedFaceRestorers`)."""
    from webui.builtin import face_restorers as plugin

    settings = make_settings(tmp_path_factory.mktemp("face_data"), face_models)
    return {d.name: d for d in plugin.register_face_restorers(settings)}


class SharedFaceRestorers:
    """A plugin registering the session's real restorers (build the context with the built-in "face_restorers"
    plugin disabled)."""

    def __init__(self, restorers):
        self.restorers = restorers

    @hookimpl
    def register_face_restorers(self, settings):
        return list(self.restorers.values())


@pytest.fixture
def no_downloads(monkeypatch):
    """Fail the test if anything tries to download weights (facexlib, basicsr and torch.hub would)."""
    import torch.hub

    from webui.compat import patch_torchvision_functional_tensor

    patch_torchvision_functional_tensor()
    import basicsr.utils.download_util
    import facexlib.detection
    import facexlib.parsing
    import facexlib.utils
    import facexlib.utils.misc

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    for module in (facexlib.utils, facexlib.utils.misc, facexlib.detection, facexlib.parsing,
                   basicsr.utils.download_util):
        monkeypatch.setattr(module, "load_file_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def force_one_face(monkeypatch, landmarks, picture_width: int) -> list[tuple[int, ...]]:
    """Make RetinaFace report exactly one face with the 5 ``landmarks`` (picture pixels of a picture
    ``picture_width`` wide; the detector sees it rescaled); returns the shapes of the pictures it was given."""
    import numpy as np
    from facexlib.detection.retinaface import RetinaFace

    seen: list[tuple[int, ...]] = []

    def detect_faces(self, image, conf_threshold=0.8, *args, **kwargs):
        seen.append(image.shape)
        marks = np.asarray(landmarks, dtype=np.float32) * (image.shape[1] / picture_width)
        box = np.array([*(marks.min(axis=0) - 40), *(marks.max(axis=0) + 40), 0.999], dtype=np.float32)
        return np.concatenate([box, marks.reshape(-1)])[None, :]

    monkeypatch.setattr(RetinaFace, "detect_faces", detect_faces)
    return seen
