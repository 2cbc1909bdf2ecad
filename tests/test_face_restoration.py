"""GFPGAN / CodeFormer face restoration: local weights only, paste-back, safety (alignment on the 512 px template:
"Restore faces" in tests/test_extras.py).

The networks are the real architectures with random weights, saved the way the official files are
(``{"params_ema": ...}`` for the restorers, bare state dicts for the detector and parser): the session fixtures
``face_models`` / ``face_restorers`` of tests/conftest.py, shared with the Extras and "Restore faces" tests.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CODEFORMER_NAME, GFPGAN_NAME, CodeRunningPickle, force_one_face, make_settings
from webui.errors import ModelError
from webui.restoration.faces import (
    DETECTION_FILE,
    FACE_TEMPLATE,
    PARSING_FILE,
    FaceHelpers,
    MissingWeights,
    find_helper_weights,
)

# The forced face: the 512x512 aligned crop maps onto a 200x200 square centred here (picture pixels).
IMAGE_SIZE = (960, 480)  # short side 480: detection runs on a picture scaled by 4/3
FACE_CENTER = np.array([250.0, 240.0], dtype=np.float32)
FACE_SCALE = 200.0 / 512.0
FACE_LANDMARKS = (FACE_TEMPLATE - 256.0) * FACE_SCALE + FACE_CENTER
FACE_BOX = (140, 130, 360, 350)  # left, top, right, bottom: the crop (and a margin) lies inside


@pytest.fixture(scope="module")
def restorers(face_restorers):
    """The built-in plugin's restorers on the session's ``face_models`` (conftest: networks load once)."""
    return face_restorers


@pytest.fixture(autouse=True)
def _no_downloads(no_downloads):
    """Every test here fails if anything tries to download weights."""


@pytest.fixture
def forced_face(monkeypatch):
    """Make RetinaFace report exactly one face at FACE_LANDMARKS; records the pictures it was given."""
    return force_one_face(monkeypatch, FACE_LANDMARKS, IMAGE_SIZE[0])


def _spy_forward(monkeypatch, cls, inputs: list[torch.Tensor] | None = None) -> list[tuple[tuple[int, ...], dict]]:
    """Record (input shape, keyword arguments) of every call of ``cls.forward`` (and the inputs in
    ``inputs``); the real forward still runs."""
    calls: list[tuple[tuple[int, ...], dict]] = []
    original = cls.forward

    def forward(self, x, *args, **kwargs):
        calls.append((tuple(x.shape), dict(kwargs)))
        if inputs is not None:
            inputs.append(x.detach().clone())
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", forward)
    return calls


def _noise_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8), "RGB")


def _assert_only_face_changed(before: Image.Image, after: Image.Image) -> None:
    assert after.size == before.size
    a, b = np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB"))
    left, top, right, bottom = FACE_BOX
    outside = np.ones(a.shape[:2], dtype=bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(a[outside], b[outside]), "pixels far from the face changed"
    inner = (slice(200, 280), slice(210, 290))  # the middle of the face
    assert np.abs(a[inner].astype(int) - b[inner].astype(int)).mean() > 1.0, "the face was not restored"


# --- missing weights ----------------------------------------------------------------------------------


def _dummy_models(root: Path, leave_out: str) -> Path:
    """All four files as placeholder bytes except ``leave_out``: finding them must not open them."""
    files = {DETECTION_FILE: "GFPGAN", PARSING_FILE: "GFPGAN", GFPGAN_NAME: "GFPGAN", CODEFORMER_NAME: "Codeformer"}
    for name, folder in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        if name != leave_out:
            (root / folder / name).write_bytes(b"not weights")
    return root


@pytest.mark.parametrize(
    ("restorer", "missing", "folder"),
    [
        ("GFPGAN", DETECTION_FILE, "GFPGAN"),
        ("GFPGAN", PARSING_FILE, "GFPGAN"),
        ("GFPGAN", GFPGAN_NAME, "GFPGAN"),
        ("CodeFormer", DETECTION_FILE, "GFPGAN"),
        ("CodeFormer", PARSING_FILE, "GFPGAN"),
        ("CodeFormer", CODEFORMER_NAME, "Codeformer"),
    ],
)
def test_missing_weights_name_file_and_folder(tmp_path, monkeypatch, restorer, missing, folder):
    from webui.builtin import face_restorers

    monkeypatch.chdir(tmp_path)  # gfpgan/facexlib would download into ./gfpgan/weights, ./facexlib/weights
    root = _dummy_models(tmp_path / "models", missing)
    settings = make_settings(tmp_path / "data", root)
    defs = {d.name: d for d in face_restorers.register_face_restorers(settings)}
    with pytest.raises(MissingWeights) as info:
        defs[restorer].restore(_noise_image(), {})
    text = str(info.value)
    assert f"needs {missing}: put it in {(root / folder).absolute()} " in text
    assert "https://github.com/" in text  # where to get it
    assert info.value.path == (root / folder / missing).absolute()
    present = {DETECTION_FILE, PARSING_FILE, GFPGAN_NAME, CODEFORMER_NAME} - {missing}
    assert not any(f"needs {name}" in text for name in present)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no weights folder was made


def test_all_missing_files_named_at_once(tmp_path):
    from webui.builtin import face_restorers

    root = tmp_path / "models"  # the folders do not even exist
    defs = {d.name: d for d in face_restorers.register_face_restorers(make_settings(tmp_path / "data", root))}
    assert [d.model_path for d in defs.values()] == [None, None]
    with pytest.raises(MissingWeights) as info:
        defs["CodeFormer"].restore(_noise_image(), {"code_former_weight": 0.5})
    text = str(info.value)
    for name in (CODEFORMER_NAME, DETECTION_FILE, PARSING_FILE):
        assert f"needs {name}: put it in" in text
    assert isinstance(info.value, ModelError)


def test_helper_weights_also_found_in_codeformer_folder(tmp_path):
    gfpgan_dir, codeformer_dir = tmp_path / "GFPGAN", tmp_path / "Codeformer"
    codeformer_dir.mkdir()
    (codeformer_dir / DETECTION_FILE).write_bytes(b"x")
    (codeformer_dir / PARSING_FILE).write_bytes(b"x")
    detection, parsing, missing = find_helper_weights([gfpgan_dir, codeformer_dir])
    assert (detection, parsing, missing) == (codeformer_dir / DETECTION_FILE, codeformer_dir / PARSING_FILE, [])


# --- unsafe files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused(tmp_path, writer):
    from webui.builtin import face_restorers

    marker = tmp_path / "pwned"
    root = _dummy_models(tmp_path / "models", leave_out="")
    bad = root / "GFPGAN" / GFPGAN_NAME
    payload = {"params_ema": CodeRunningPickle(marker)}
    if writer == "torch.save":
        torch.save(payload, bad)
    else:
        with open(bad, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    # the restorer network loads on first use, when a picture has a face: its loader reads the file safely
    with pytest.raises(ModelError) as info:
        face_restorers.load_gfpgan(bad)
    assert not isinstance(info.value, MissingWeights)
    assert GFPGAN_NAME in str(info.value) and "refused" in str(info.value)
    assert info.value.path == bad
    assert not marker.exists()

    # the detector file goes through the same safe reader
    torch.save(payload, root / "GFPGAN" / DETECTION_FILE)
    with pytest.raises(ModelError, match="refused") as info:
        FaceHelpers.from_files(root / "GFPGAN" / DETECTION_FILE, root / "GFPGAN" / PARSING_FILE,
                               torch.device("cpu"))
    assert DETECTION_FILE in str(info.value)
    assert not marker.exists()


# --- restoring ----------------------------------------------------------------------------------------------


def test_no_face_returns_image_unchanged(restorers, monkeypatch):
    """The real detector network runs (its class head says "no face" everywhere, see _no_face_detector)."""
    from spandrel.architectures.GFPGAN import GFPGAN

    calls = _spy_forward(monkeypatch, GFPGAN)
    image = _noise_image(1).crop((0, 0, 480, 480))  # square: detection runs on 640x640
    pixels = np.asarray(image).copy()
    out = restorers["GFPGAN"].restore(image, {})
    assert out is image
    assert np.array_equal(np.asarray(out), pixels)
    assert calls == []  # the restorer was never run


def test_codeformer_gets_weight_option_and_keeps_alpha(restorers, forced_face, monkeypatch):
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    calls = _spy_forward(monkeypatch, CodeFormer)
    image = _noise_image(3).convert("RGBA")
    alpha = Image.fromarray(np.full((IMAGE_SIZE[1], IMAGE_SIZE[0]), 77, dtype=np.uint8), "L")
    image.putalpha(alpha)
    out = restorers["CodeFormer"].restore(image, {"code_former_weight": 0.2})
    assert calls == [((1, 3, 512, 512), {"weight": 0.2})]
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    _assert_only_face_changed(image, out)


# --- plugin ------------------------------------------------------------------------------------------------


def test_plugin_lists_restorers_and_options(tmp_path):
    from webui.context import build_context

    models = tmp_path / "models"
    (models / "GFPGAN").mkdir(parents=True)
    (models / "GFPGAN" / "GFPGANv1.3.pth").write_bytes(b"x")
    (models / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"x")
    ctx = build_context(make_settings(tmp_path / "data", models), load_model=False)
    assert ctx.face_restorers.names() == ["GFPGAN", "CodeFormer"]
    assert ctx.face_restorers.get("GFPGAN").model_path == str(models / "GFPGAN" / "GFPGANv1.4.pth")
    assert ctx.face_restorers.get("CodeFormer").model_path is None
    options = ctx.options.current
    assert options["face_restoration_model"] == "CodeFormer"
    assert options["code_former_weight"] == 0.5
    defs = ctx.options.defs
    assert (defs["code_former_weight"].minimum, defs["code_former_weight"].maximum) == (0.0, 1.0)
