"""GFPGAN / CodeFormer face restoration: local weights only, alignment at 512x512, paste-back, safety.

The networks are the real architectures with random weights, saved the way the official files are
(``{"params_ema": ...}`` for the restorers, bare state dicts for the detector and parser).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CodeRunningPickle, make_settings
from webui.errors import ModelError
from webui.restoration.faces import (
    DETECTION_FILE,
    FACE_TEMPLATE,
    PARSING_FILE,
    FaceHelpers,
    MissingWeights,
    find_helper_weights,
)

GFPGAN_NAME = "GFPGANv1.4.pth"
CODEFORMER_NAME = "codeformer-v0.1.0.pth"

# The forced face: the 512x512 aligned crop maps onto a 200x200 square centred here (picture pixels).
IMAGE_SIZE = (960, 480)  # short side 480: detection runs on a picture scaled by 4/3
FACE_CENTER = np.array([250.0, 240.0], dtype=np.float32)
FACE_SCALE = 200.0 / 512.0
FACE_LANDMARKS = (FACE_TEMPLATE - 256.0) * FACE_SCALE + FACE_CENTER
FACE_BOX = (140, 130, 360, 350)  # left, top, right, bottom: the crop (and a margin) lies inside


def _no_face_detector():
    """RetinaFace (ResNet-50) with random weights, except a class head that always says "background".

    A detector with purely random weights "finds" faces in noise at random; with the face logit
    pushed 20 below the background logit, every anchor scores ~2e-9 (< 0.97), so the real network
    runs end to end and deterministically finds no face.
    """
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


def _skin_parser():
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


@pytest.fixture(scope="module")
def face_models(tmp_path_factory) -> Path:
    """A models/ root with all four weight files (random weights, real architectures)."""
    from spandrel.architectures.GFPGAN import GFPGAN
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    root = tmp_path_factory.mktemp("face_models")
    gfpgan_dir, codeformer_dir = root / "GFPGAN", root / "Codeformer"
    gfpgan_dir.mkdir()
    codeformer_dir.mkdir()

    detector = {"module." + k: v for k, v in _no_face_detector().state_dict().items()}  # DataParallel keys
    torch.save(detector, gfpgan_dir / DETECTION_FILE, _use_new_zipfile_serialization=False)  # legacy format
    torch.save(_skin_parser().state_dict(), gfpgan_dir / PARSING_FILE)

    torch.manual_seed(2)
    gfpgan = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                    fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    # "params" is junk: loading it instead of params_ema would fail the strict load
    torch.save({"params_ema": gfpgan.state_dict(), "params": {"junk": torch.zeros(1)}}, gfpgan_dir / GFPGAN_NAME)
    del gfpgan
    torch.manual_seed(3)
    torch.save({"params_ema": CodeFormer().state_dict()}, codeformer_dir / CODEFORMER_NAME)
    return root


@pytest.fixture(scope="module")
def restorers(face_models, tmp_path_factory):
    """The built-in plugin's restorers on ``face_models`` (one registration: networks load once)."""
    from webui.builtin import face_restorers

    settings = make_settings(tmp_path_factory.mktemp("face_data"), face_models)
    return {d.name: d for d in face_restorers.register_face_restorers(settings)}


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Fail the test if anything tries to download weights."""
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


@pytest.fixture
def forced_face(monkeypatch):
    """Make RetinaFace report exactly one face at FACE_LANDMARKS; records the pictures it was given."""
    from facexlib.detection.retinaface import RetinaFace

    seen: list[tuple[int, ...]] = []

    def detect_faces(self, image, conf_threshold=0.8, *args, **kwargs):
        seen.append(image.shape)
        factor = image.shape[1] / IMAGE_SIZE[0]  # the detector sees the picture scaled to short side 640
        marks = FACE_LANDMARKS * factor
        box = np.array([*(marks.min(axis=0) - 40), *(marks.max(axis=0) + 40), 0.999], dtype=np.float32)
        return np.concatenate([box, marks.reshape(-1)])[None, :]

    monkeypatch.setattr(RetinaFace, "detect_faces", detect_faces)
    return seen


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
    defs = {d.name: d for d in face_restorers.register_face_restorers(make_settings(tmp_path / "data", root))}
    with pytest.raises(ModelError) as info:
        defs["GFPGAN"].restore(_noise_image(), {})
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


def test_gfpgan_restores_aligned_512_crop_and_pastes_it_back(restorers, forced_face, monkeypatch):
    from spandrel.architectures.GFPGAN import GFPGAN

    inputs: list[torch.Tensor] = []
    calls = _spy_forward(monkeypatch, GFPGAN, inputs)
    image = _noise_image(2)
    out = restorers["GFPGAN"].restore(image, {})
    assert forced_face == [(640, 1280, 3)]  # detection on the picture scaled to short side 640
    assert [shape for shape, _ in calls] == [(1, 3, 512, 512)]
    # The crop is the face aligned on the template: crop pixel (256 + 128i, 256 + 128j) shows picture
    # pixel FACE_CENTER + 50 * (i, j) (noise: any misalignment gives other values).
    crop = ((inputs[0][0].permute(1, 2, 0) + 1.0) * 127.5).round().to(torch.int64).numpy()
    picture = np.asarray(image).astype(np.int64)
    assert float(inputs[0].min()) >= -1.0 and float(inputs[0].max()) <= 1.0
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            x, y = int(FACE_CENTER[0]) + 50 * i, int(FACE_CENTER[1]) + 50 * j
            assert np.abs(crop[256 + 128 * j, 256 + 128 * i] - picture[y, x]).max() <= 2, (i, j)
    assert out.mode == "RGB"
    _assert_only_face_changed(image, out)


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
