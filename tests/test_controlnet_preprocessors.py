"""ControlNet preprocessors: sd-webui-controlnet semantics, caching, names, and local-only safe weights."""

from __future__ import annotations

import dataclasses
import pickle
import socket
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import CodeRunningPickle
from webui.controlnet import preprocessors as pp
from webui.controlnet.preprocessors import (
    MissingAnnotator,
    Preprocessor,
    PreprocessorRegistry,
    Slider,
    annotator_url,
    builtin_preprocessors,
    control_types,
    module_detail,
)
from webui.errors import ModelError, UnknownChoice

H, W = 64, 80
WEIGHT_FREE = [p for p in builtin_preprocessors() if not p.weights]
WEIGHTED = [p for p in builtin_preprocessors() if p.weights]


def _picture(h: int = H, w: int = W) -> np.ndarray:
    """A deterministic RGB test picture with edges, flat areas, a gradient and dark lines."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[:, :, 1] = 230
    img[h // 6: h // 2, w // 5: w // 2] = (200, 40, 90)
    cv2.circle(img, (3 * w // 4, 2 * h // 3), h // 5, (20, 20, 240), -1)
    cv2.line(img, (0, h - 8), (w - 1, h // 3), (0, 0, 0), 2)
    return img


def _resize_like_webui(img: np.ndarray, res: int) -> np.ndarray:
    h, w = img.shape[:2]
    k = res / min(h, w)
    size = (int(np.round(w * k)), int(np.round(h * k)))
    return cv2.resize(img, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


@pytest.fixture
def registry(tmp_path) -> PreprocessorRegistry:
    return PreprocessorRegistry(builtin_preprocessors(), annotator_dir=tmp_path / "annotators")


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to download (hub, torch.hub, or any socket connection)."""
    import huggingface_hub
    import torch.hub

    pp._aux("hed")  # import controlnet-aux first, so its bound hf_hub_download names can be patched and restored
    calls: list[str] = []

    def deny(what: str):
        def refuse(*args, **kwargs):
            calls.append(what)
            raise RuntimeError(f"network access attempted: {what}")

        return refuse

    for attr in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, attr, deny(f"huggingface_hub.{attr}"))
    for attr in ("download_url_to_file", "load_state_dict_from_url"):
        monkeypatch.setattr(torch.hub, attr, deny(f"torch.hub.{attr}"))
    for name, module in list(sys.modules.items()):
        if name.startswith("controlnet_aux") and hasattr(module, "hf_hub_download"):
            monkeypatch.setattr(module, "hf_hub_download", deny(f"{name}.hf_hub_download"))
    monkeypatch.setattr(socket.socket, "connect", deny("socket.connect"))
    yield calls
    assert calls == [], f"network access attempted: {calls}"


# --------------------------------------------------------------------------------------------------
# Weight-free modules


def test_canny_equals_cv2_canny_at_processing_size(registry):
    img = _picture()
    # 256 -> 256x320: multiples of 64, no padding: exactly cv2.Canny on the resized picture
    resized = _resize_like_webui(img, 256)
    assert resized.shape[:2] == (256, 320)
    out = registry.detect(img, "canny", 256, 50, 150)
    expected = cv2.Canny(resized, 50, 150)
    assert out.shape == (256, 320, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.stack([expected] * 3, axis=2))
    assert not np.array_equal(out, registry.detect(img, "canny", 256, 100, 200))  # thresholds matter
    # 128 -> 128x160, padded (edge) to 128x192, Canny, padding cropped: as sd-webui-controlnet
    out = registry.detect(img, "canny", 128, None, None)
    padded = np.pad(_resize_like_webui(img, 128), [[0, 0], [0, 32], [0, 0]], mode="edge")
    expected = cv2.Canny(padded, 100, 200)[:, :160]
    np.testing.assert_array_equal(out, np.stack([expected] * 3, axis=2))
    assert out.any()


@pytest.mark.parametrize(("shape", "res", "expected"), [
    ((64, 80), 128, (128, 160)), ((80, 64), 128, (160, 128)), ((64, 80), 96, (96, 120)),
    ((100, 60), 64, (107, 64)), ((64, 80), 64, (64, 80)),
])
def test_resolution_sets_the_short_side_and_keeps_aspect(registry, shape, res, expected):
    out = registry.detect(_picture(*shape), "canny", res)
    assert out.shape == (*expected, 3)
    assert pp.processing_size(*shape, res) == expected


def _expected_size(p: Preprocessor, res: int) -> tuple[int, int]:
    if p.name == "tile_resample":
        return H, W  # default rate 1.0: unchanged
    if not p.uses_resolution:
        return H, W
    return res, int(round(W * res / H))


@pytest.mark.parametrize("p", WEIGHT_FREE, ids=lambda p: p.name)
def test_weight_free_modules_run_out_of_the_box(p, tmp_path):
    img = _picture()
    out = p.run(img, 96, None, None, tmp_path)  # empty annotator folder: nothing needed
    # the inpaint modules give RGBA (alpha = the mask; an RGB input has nothing masked)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == (4 if p.rgba else 3)
    assert out.shape[:2] == _expected_size(p, 96)
    assert out.flags["C_CONTIGUOUS"]


def test_invert_none_binary_threshold(registry):
    img = _picture()
    np.testing.assert_array_equal(registry.detect(img, "invert"), 255 - img)
    np.testing.assert_array_equal(registry.detect(img, "none"), img)
    for thr in (None, 0, 128, 200):  # 0 = Otsu
        out = registry.detect(img, "binary", 64, thr)
        assert set(np.unique(out)) == {0, 255}
    assert not np.array_equal(registry.detect(img, "binary", 64, 60), registry.detect(img, "binary", 64, 200))
    out = registry.detect(img, "threshold", 64, 127)
    np.testing.assert_array_equal(out[:, :, 0], np.where(img.min(axis=2) > 127, 255, 0))


def test_shuffle_is_deterministic_per_seed(registry):
    img = _picture()
    a = registry.get("shuffle").run(img, 128, 7, None, Path("unused"))
    b = registry.get("shuffle").run(img, 128, 7, None, Path("unused"))
    c = registry.get("shuffle").run(img, 128, 8, None, Path("unused"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (128, 160, 3)


def test_tile_resample_blur_color_xdog(registry):
    img = _picture()
    assert registry.detect(img, "tile_resample", None, 2.0).shape == (32, 40, 3)
    np.testing.assert_array_equal(registry.detect(img, "tile_resample", None, 1.0), img)
    blurred = registry.detect(img, "blur_gaussian", 64, 3.0)
    np.testing.assert_array_equal(blurred, cv2.GaussianBlur(img, (0, 0), 3.0))
    grid = registry.detect(img, "color", 128)  # 2x2 cells of 64 pixels
    assert grid.shape == (128, 160, 3)
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) <= 4
    xdog = registry.detect(img, "scribble_xdog", 64)
    assert set(np.unique(xdog)) <= {0, 255} and xdog.any()


def test_defaults_none_and_a1111_minus_one_are_the_same(registry):
    img = _picture()
    explicit = registry.detect(img, "canny", 512, 100, 200)
    np.testing.assert_array_equal(registry.detect(img, "canny", None, None, None), explicit)
    np.testing.assert_array_equal(registry.detect(img, "canny", -1, -1, -1), explicit)
    assert registry.get("mlsd").resolve_params(4096, 64, 0.5) == (2048, 2.0, 0.5)  # clamped to the sliders


# --------------------------------------------------------------------------------------------------
# Cache, names, API shapes


def test_detect_caches_results(tmp_path):
    calls = []

    def fn(image, *, resolution, threshold_a, threshold_b, models):
        calls.append((resolution, threshold_a, threshold_b))
        return pp._resize_short_side(image, resolution)

    spy = Preprocessor("spy", fn, "All", aliases=("spy_alias",), threshold_a=Slider("A", 0, 10, 5))
    reg = PreprocessorRegistry([spy, *builtin_preprocessors()], annotator_dir=tmp_path)
    img = _picture()
    first = reg.detect(img, "spy", 64, 3)
    assert len(calls) == 1
    first[:] = 0  # callers cannot damage the cache
    again = reg.detect(img.copy(), "spy_alias", 64, 3)
    assert len(calls) == 1 and again.any()
    reg.detect(img, "spy", 64, 4)
    assert len(calls) == 2
    reg.detect(img, "spy", 96, 4)
    assert len(calls) == 3
    reg.detect(img[::-1].copy(), "spy", 64, 3)  # other picture
    assert len(calls) == 4
    reg.detect(img, "spy", 64, None)  # default 5 -> a new entry, then hit
    reg.detect(img, "spy", 64, 5)
    assert len(calls) == 5
    for i in range(16):  # LRU of 16: the first entry falls out
        reg.detect(img, "canny", 64, 10 + i)
    reg.detect(img, "spy", 64, 3)
    assert len(calls) == 6

    # the real canny fn behind a spy
    real = reg.get("canny")
    counted = []
    spied = dataclasses.replace(real, fn=lambda *a, **k: counted.append(1) or real.fn(*a, **k))
    reg2 = PreprocessorRegistry([spied], annotator_dir=tmp_path)
    np.testing.assert_array_equal(reg2.detect(img, "canny", 64), reg2.detect(img, "canny", 64, 100, 200))
    assert len(counted) == 1
    reg2.detect(img, "canny", 64, 101, 200)
    assert len(counted) == 2


@pytest.mark.parametrize(("alias", "name"), [
    ("depth", "depth_midas"), ("hed", "softedge_hed"), ("pidinet", "softedge_pidinet"),
    ("lineart", "lineart_realistic"), ("normal_map", "normal_midas"), ("normal_bae", "normal_bae"),
    ("openpose_full", "openpose_full"), ("mlsd", "mlsd"), ("hed_safe", "softedge_hedsafe"),
    ("pidinet_scribble", "scribble_pidinet"), ("pidinet_sketch", "t2ia_sketch_pidi"),
    ("fake_scribble", "scribble_hed"), ("invert (from white bg & black line)", "invert"),
    ("lineart_standard (from white bg & black line)", "lineart_standard"), ("t2ia_color_grid", "color"),
    ("None", "none"), ("Canny", "canny"),
])
def test_aliases_and_legacy_names(registry, alias, name):
    assert registry.get(alias).name == name
    assert alias in registry


def test_unknown_name(registry):
    with pytest.raises(UnknownChoice) as info:
        registry.get("seg_ufade20k")
    assert info.value.field == "module" and info.value.value == "seg_ufade20k"
    assert "canny" in info.value.choices and "depth_midas" in info.value.choices
    assert "seg_ufade20k" in str(info.value) and "canny" in str(info.value)
    with pytest.raises(UnknownChoice):
        registry.detect(_picture(), "nope")


def test_control_types_and_module_detail_shapes(registry):
    types_ = control_types()["control_types"]
    assert types_ == registry.control_types()["control_types"]
    assert {"All", "Canny", "Depth", "NormalMap", "OpenPose", "MLSD", "Lineart", "SoftEdge", "Scribble/Sketch",
            "Shuffle", "Tile/Blur", "Recolor"} <= set(types_)
    for entry in types_.values():
        assert set(entry) == {"module_list", "model_list", "default_option", "default_model"}
        assert entry["module_list"][0] == "none" and entry["model_list"] == [] and entry["default_model"] == "None"
        assert entry["default_option"] in entry["module_list"]
    assert types_["Canny"]["default_option"] == "canny"
    assert "invert (from white bg & black line)" in types_["Canny"]["module_list"]
    assert types_["Depth"]["default_option"] == "depth_midas"
    assert types_["T2I-Adapter"]["default_option"] == "none"
    assert "t2ia_color_grid" in types_["T2I-Adapter"]["module_list"]
    assert types_["Lineart"]["default_option"] == "lineart_standard (from white bg & black line)"
    assert set(types_["OpenPose"]["module_list"]) >= {"openpose", "openpose_full", "openpose_face"}
    assert len(types_["All"]["module_list"]) == len(registry.names())

    assert module_detail(registry.get("canny")) == {"model_free": False, "sliders": [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
    ]}
    assert module_detail(registry.get("none")) == {"model_free": False, "sliders": []}
    assert [s["name"] for s in module_detail(registry.get("tile_resample"))["sliders"]] == ["Down Sampling Rate"]
    assert [s["name"] for s in module_detail(registry.get("mlsd"))["sliders"]] == [
        "Resolution", "MLSD Value Threshold", "MLSD Distance Threshold"]


# --------------------------------------------------------------------------------------------------
# Weights: missing files, local loading, safety


@pytest.mark.parametrize("p", WEIGHTED, ids=lambda p: p.name)
def test_missing_weights_raise_before_any_network_access(p, tmp_path, no_network):
    folder = tmp_path / "annotators"
    folder.mkdir()
    reg = PreprocessorRegistry(builtin_preprocessors(), annotator_dir=folder)
    for call in (lambda: reg.detect(_picture(), p.name, 64), lambda: p.run(_picture(), 64, None, None, folder)):
        with pytest.raises(MissingAnnotator) as info:
            call()
        err = info.value
        assert isinstance(err, ModelError)
        assert err.filename == p.weights[0] and err.folder == folder.absolute()
        message = str(err)
        for file in p.weights:
            assert f"'{file}'" in message and annotator_url(file) in message
        assert str(folder.absolute()) in message and p.name in message
    assert reg.annotators.loaded() == []


def test_missing_folder_is_named(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(MissingAnnotator, match="create it") as info:
        PreprocessorRegistry(annotator_dir=folder).detect(_picture(), "softedge_hed", 64)
    assert "ControlNetHED.pth" in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).filename == "ControlNetHED.pth"


def _random_state(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * 0.02 if v.is_floating_point() else v.clone())
            for k, v in net.state_dict().items()}


def _assert_same_weights(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = net.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key].cpu(), value), key


def test_hed_loads_local_random_weights(tmp_path, no_network):
    hed = pp._aux("hed")
    net = hed.ControlNetHED_Apache2()
    state = _random_state(net, 1)
    net.load_state_dict(state)
    torch.save(state, tmp_path / "ControlNetHED.pth")
    reg = PreprocessorRegistry(builtin_preprocessors(), annotator_dir=tmp_path)
    img = _picture()

    out = reg.detect(img, "softedge_hed", 64)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    _assert_same_weights(reg.annotators.get("hed").netNetwork, state)
    assert next(reg.annotators.get("hed").netNetwork.parameters()).device == reg.device == torch.device("cpu")
    # same as controlnet-aux's detector on the edge-padded picture, padding cropped off
    padded = np.pad(img, [[0, 0], [0, 48], [0, 0]], mode="edge")
    expected = hed.HEDdetector(net.eval())(padded, detect_resolution=64, image_resolution=64, output_type="np")
    np.testing.assert_array_equal(out, expected[:H, :W])

    scribble = reg.detect(img, "hed", 128)  # legacy name, same network, bigger
    assert scribble.shape == (128, 160, 3)
    assert set(np.unique(reg.detect(img, "scribble_hed", 64))) <= {0, 255}
    assert reg.annotators.loaded() == ["hed"]


def test_lineart_mlsd_pidinet_load_local_random_weights(tmp_path, no_network):
    lineart_net = pp._aux("lineart").Generator(3, 1, 3)
    mlsd_net = pp._aux("mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large()
    pidi_net = pp._aux("pidi").pidinet()
    states = {"lineart": _random_state(lineart_net, 2), "mlsd": _random_state(mlsd_net, 3),
              "pidinet": _random_state(pidi_net, 4)}
    torch.save(states["lineart"], tmp_path / "sk_model.pth")
    torch.save(states["mlsd"], tmp_path / "mlsd_large_512_fp32.pth")
    # the official pidinet file is a training checkpoint of a DataParallel model
    torch.save({"state_dict": {f"module.{k}": v for k, v in states["pidinet"].items()}, "epoch": 14},
               tmp_path / "table5_pidinet.pth")
    reg = PreprocessorRegistry(builtin_preprocessors(), annotator_dir=tmp_path)
    img = _picture()

    for name in ("lineart_realistic", "mlsd", "softedge_pidinet"):
        out = reg.detect(img, name, 64)
        assert out.shape == (H, W, 3) and out.dtype == np.uint8, name
    assert reg.annotators.loaded() == ["mlsd", "pidinet"]  # at most 2 kept
    _assert_same_weights(reg.annotators.get("mlsd").model, states["mlsd"])
    _assert_same_weights(reg.annotators.get("pidinet").netNetwork, states["pidinet"])
    _assert_same_weights(reg.annotators.get("lineart").model, states["lineart"])
    assert reg.annotators.loaded() == ["pidinet", "lineart"]
    with pytest.raises(MissingAnnotator, match="sk_model2.pth"):
        reg.detect(img, "lineart_coarse", 64)


def test_weights_of_another_network_are_refused(tmp_path, no_network):
    net = pp._aux("lineart").Generator(3, 1, 3)
    torch.save(net.state_dict(), tmp_path / "ControlNetHED.pth")
    with pytest.raises(ModelError, match="ControlNetHED"):
        PreprocessorRegistry(annotator_dir=tmp_path).detect(_picture(), "softedge_hed", 64)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, no_network, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / "ControlNetHED.pth"
    if fmt == "zip":
        torch.save({"norm": CodeRunningPickle(marker)}, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump({"norm": CodeRunningPickle(marker)}, handle, protocol=2)
    reg = PreprocessorRegistry(annotator_dir=tmp_path)
    with pytest.raises(ModelError) as info:
        reg.detect(_picture(), "softedge_hed", 64)
    assert not isinstance(info.value, MissingAnnotator)
    assert "ControlNetHED.pth" in str(info.value)
    assert not marker.exists()
    assert reg.annotators.loaded() == []
