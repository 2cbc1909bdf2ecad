"""ControlNet preprocessors ("modules") with sd-webui-controlnet's names, sliders and behaviour.

A preprocessor turns an input picture into a control image (edges, depth, pose...). The names, the
slider labels/ranges/defaults and the image handling follow sd-webui-controlnet, so A1111 API clients
can send the same ``module`` / ``processor_res`` / ``threshold_a`` / ``threshold_b`` values:

* modules that use the resolution resize the picture so that its SHORT side equals ``resolution``
  (aspect ratio kept; cubic when enlarging, area when shrinking), pad it with edge pixels to a
  multiple of 64 where sd-webui-controlnet does, run, and crop the padding away again. The result
  is returned at that processing size; the caller resizes it to the generation size;
* ``None`` or a negative threshold (A1111 clients send ``-1``) means the slider's default; values are
  clamped to the slider range.

Weight-free modules work out of the box. The others run networks from ``controlnet-aux`` whose
weights must be in the annotator folder (``<models>/ControlNet/annotators``) under the file names
of the ``lllyasviel/Annotators`` repository. Nothing is ever downloaded: a missing file raises
:class:`MissingAnnotator` (telling the user what to download and where to put it) before any
network code is touched, and the weights are read with
:func:`~webui.models.safeload.read_state_dict` (``torch.load(weights_only=True)`` or safetensors)
and put into networks that are built here, never through controlnet-aux's own loaders.

Not provided: segmentation (``seg_ufade20k`` needs mmcv, ``seg_ofade20k``/``seg_ofcoco`` need
detectron2/OneFormer), ``dw_openpose_full`` (mmpose/onnxruntime), ``mediapipe_face`` (mediapipe),
``depth_leres++`` (its pix2pix stage parses ``sys.argv`` and loads weights itself),
``softedge_teed``/anyline (weights not in ``lllyasviel/Annotators``), ``lineart_anime_denoise``.
The inpaint modules (``inpaint`` / "inpaint_global_harmonious", ``inpaint_only``, ``inpaint_only+lama``) read and
give an RGBA picture whose alpha is the mask (:mod:`webui.controlnet.inpaint`; LaMa: :mod:`webui.controlnet.lama`,
``ControlNetLama.pth``). The reference modules (:mod:`webui.controlnet.reference`) and the IP-Adapter modules pass
the image on as it is: the reference pass and the CLIP image encoder run in the unit
(:mod:`webui.controlnet.ip_adapter`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
import torch

from webui.errors import ModelError, UnknownChoice
from webui.models.safeload import read_state_dict

log = logging.getLogger(__name__)

ANNOTATORS_URL = "https://huggingface.co/lllyasviel/Annotators/resolve/main/"
RESULT_CACHE_SIZE = 16
MAX_LOADED_ANNOTATORS = 2


# --------------------------------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class Slider:
    """A preprocessor parameter as sd-webui-controlnet shows it (label, range, default, step)."""

    label: str
    minimum: float
    maximum: float
    default: float
    step: float = 1

    def resolve(self, value: float | None) -> float:
        """The value to use: the default for ``None``/negative (A1111's ``-1``), else clamped."""
        if value is None or value < 0:
            return self.default
        return min(max(value, self.minimum), self.maximum)

    def api_json(self) -> dict[str, Any]:
        """sd-webui-controlnet's ``/controlnet/module_list`` slider entry."""
        return {"name": self.label, "value": self.default, "min": self.minimum, "max": self.maximum,
                "step": self.step}


RESOLUTION = Slider("Resolution", 64, 2048, 512, 8)


@dataclass(frozen=True)
class Preprocessor:
    """One ControlNet preprocessor.

    ``fn(image, *, resolution, threshold_a, threshold_b, models)`` gets the H×W×3 uint8 RGB input as
    given, the resolved parameters (``None`` for a parameter the module does not have) and an
    :class:`AnnotatorModels` to get its networks from; it does its own resizing and returns an
    H'×W'(×3) uint8 image.

    Attributes:
        name: canonical name (sd-webui-controlnet's UI name without decorations, e.g. ``depth_midas``).
        control_type: sd-webui-controlnet control type ("Canny", "Depth", ...; "All" = no specific one).
        aliases: other accepted names (legacy A1111 names...).
        resolution / threshold_a / threshold_b: the sliders, ``None`` where the module has none.
        weights: file names needed in the annotator folder.
        uses_resolution: whether ``resolution`` is used (then ``resolution`` must be a slider).
        label: sd-webui-controlnet's display name where it differs from ``name``
            (``invert (from white bg & black line)``).
        legacy_name: sd-webui-controlnet's internal module key where it differs (``depth`` for
            ``depth_midas``), as ``/controlnet/module_list`` lists it without ``alias_names``.
        also_listed_under: further control types whose module list shows this module.
        rgba: the module reads and returns H×W×4 pictures whose alpha is the inpaint mask (the inpaint
            modules); the others get H×W×3 (RGBA composited on white).
    """

    name: str
    fn: Callable[..., np.ndarray]
    control_type: str
    aliases: tuple[str, ...] = ()
    resolution: Slider | None = RESOLUTION
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None
    weights: tuple[str, ...] = ()
    uses_resolution: bool = True
    label: str = ""
    legacy_name: str = ""
    also_listed_under: tuple[str, ...] = ()
    rgba: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a preprocessor needs a name")
        if self.uses_resolution and self.resolution is None:
            raise ValueError(f"preprocessor {self.name!r} uses the resolution but has no resolution slider")

    @property
    def display_name(self) -> str:
        """The name sd-webui-controlnet shows (and lists in ``/controlnet/control_types``)."""
        return self.label or self.name

    @property
    def internal_name(self) -> str:
        """sd-webui-controlnet's internal module key."""
        return self.legacy_name or self.name

    @property
    def all_names(self) -> tuple[str, ...]:
        names = (self.name, self.label, self.legacy_name, *self.aliases)
        return tuple(dict.fromkeys(n for n in names if n))

    def resolve_params(self, resolution: int | None, threshold_a: float | None,
                       threshold_b: float | None) -> tuple[int | None, float | None, float | None]:
        """Defaults for ``None``/negative values, clamped to the slider ranges; ``None`` if unused."""
        res = int(round(self.resolution.resolve(resolution))) if self.uses_resolution and self.resolution else None
        a = self.threshold_a.resolve(threshold_a) if self.threshold_a else None
        b = self.threshold_b.resolve(threshold_b) if self.threshold_b else None
        return res, a, b

    def run(self, image: np.ndarray, resolution: int | None, threshold_a: float | None,
            threshold_b: float | None, annotator_dir: Path) -> np.ndarray:
        """Run once, loading any networks from ``annotator_dir`` on the CPU (nothing is kept)."""
        return self._call(image, resolution, threshold_a, threshold_b,
                          AnnotatorModels(annotator_dir, max_loaded=0))

    def _call(self, image: np.ndarray, resolution: int | None, threshold_a: float | None,
              threshold_b: float | None, models: AnnotatorModels) -> np.ndarray:
        models.require(self.weights, module=self.name)  # before anything else may run
        res, a, b = self.resolve_params(resolution, threshold_a, threshold_b)
        with torch.no_grad():
            out = self.fn(self.input(image), resolution=res, threshold_a=a, threshold_b=b, models=models)
        return np.ascontiguousarray(np.asarray(out) if self.rgba else _hwc3(np.asarray(out)))

    def input(self, image: np.ndarray) -> np.ndarray:
        """The picture as the module reads it: H×W×4 (no alpha: nothing masked) for RGBA modules, else H×W×3."""
        if not self.rgba:
            return _hwc3(image)
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 4 and image.dtype == np.uint8:
            return np.ascontiguousarray(image)
        color = _hwc3(image)
        return np.ascontiguousarray(np.concatenate([color, np.zeros_like(color[:, :, :1])], axis=2))


class MissingAnnotator(ModelError):
    """An annotator weights file is not in the annotator folder (nothing is downloaded)."""

    def __init__(self, filename: str, folder: Path | str, module: str = "", also_missing: Iterable[str] = ()):
        self.filename = filename
        self.folder = Path(folder)
        self.module = module
        self.also_missing = tuple(also_missing)
        self.url = annotator_url(filename)
        needed_by = f" needed by the preprocessor '{module}'" if module else ""
        where = f"the folder {self.folder}"
        if not self.folder.is_dir():
            where += " (create it)"
        message = (f"the ControlNet annotator file '{filename}'{needed_by} is missing. Download it from "
                   f"{self.url} and put it in {where}.")
        if self.also_missing:
            message += " Also missing there: " + ", ".join(f"'{f}' ({annotator_url(f)})" for f in self.also_missing)
        super().__init__(self.folder / filename, message)

    def __reduce__(self):
        return (type(self), (self.filename, self.folder, self.module, self.also_missing))


def annotator_url(filename: str) -> str:
    """Where users get an annotator file."""
    return ANNOTATORS_URL + filename


def annotator_dir_for(models_root: Path) -> Path:
    """The annotator folder of a models folder: ``<models>/ControlNet/annotators``."""
    return Path(models_root) / "ControlNet" / "annotators"


def processing_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) after resizing so that the short side is ``resolution`` (aspect ratio kept)."""
    k = float(resolution) / float(min(height, width))
    return int(np.round(height * k)), int(np.round(width * k))


# --------------------------------------------------------------------------------------------------
# Image helpers


def _hwc3(image: np.ndarray) -> np.ndarray:
    """H×W×3 uint8: grey is repeated, RGBA is composited on white (like sd-webui-controlnet)."""
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape[:2]:
        raise ValueError(f"expected an H×W, H×W×1, H×W×3 or H×W×4 image, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.concatenate([image] * 3, axis=2)
    if image.shape[2] == 4:
        color = image[:, :, :3].astype(np.float32)
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return image


def _resize_short_side(image: np.ndarray, resolution: int, interpolation: int | None = None) -> np.ndarray:
    h, w = image.shape[:2]
    th, tw = processing_size(h, w, resolution)
    if interpolation is None:
        interpolation = cv2.INTER_CUBIC if resolution > min(h, w) else cv2.INTER_AREA
    return cv2.resize(image, (tw, th), interpolation=interpolation)


def _pad64(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    ph, pw = -h % 64, -w % 64
    if not (ph or pw):
        return image
    return np.pad(image, [[0, ph], [0, pw], [0, 0]], mode="edge")


def _on_padded(image: np.ndarray, resolution: int, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Resize (short side = resolution), pad to multiples of 64, compute, crop the padding off."""
    resized = _resize_short_side(image, resolution)
    h, w = resized.shape[:2]
    out = np.asarray(compute(np.ascontiguousarray(_pad64(resized))))
    return np.ascontiguousarray(out[:h, :w])


def _side(x: np.ndarray) -> int:
    """The detect/image resolution that makes controlnet-aux's own resize a no-op on ``x``."""
    return min(x.shape[:2])


def _scribble(edges: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's scribble post-processing of a soft-edge map."""
    from controlnet_aux.util import nms

    edge = edges[:, :, 0] if edges.ndim == 3 else edges
    result = nms(edge, 127, 3.0)
    result = cv2.GaussianBlur(result, (0, 0), 3.0)
    result[result > 4] = 255
    result[result < 255] = 0
    return result


def _noise_disk(rng: np.random.Generator, h: int, w: int, f: int) -> np.ndarray:
    """Smooth noise in [0, 1] of shape h×w×1 (controlnet-aux's noise disk, from a local generator)."""
    noise = rng.uniform(0.0, 1.0, size=(h // f + 2, w // f + 2))
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
    noise = noise - noise.min()
    noise = noise / max(float(noise.max()), 1e-12)
    return noise[:, :, None]


# --------------------------------------------------------------------------------------------------
# Weight-free modules


def _none(image, **_):
    return image


def _lama(image, *, models, **_):
    from webui.controlnet.lama import lama_fill

    return lama_fill(image, models.get("lama"))


def _invert(image, **_):
    return 255 - image


def _canny(image, *, resolution, threshold_a, threshold_b, **_):
    return _on_padded(image, resolution, lambda x: cv2.Canny(x, threshold_a, threshold_b))


def _binary(image, *, resolution, threshold_a, **_):
    gray = cv2.cvtColor(_resize_short_side(image, resolution), cv2.COLOR_RGB2GRAY)
    if threshold_a in (0, 255):  # Otsu, as the original annotator
        _, out = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    else:
        _, out = cv2.threshold(gray, threshold_a, 255, cv2.THRESH_BINARY_INV)
    return out


def _threshold(image, *, resolution, threshold_a, **_):
    resized = _resize_short_side(image, resolution)
    out = np.zeros(resized.shape[:2], dtype=np.uint8)
    out[resized.min(axis=2) > threshold_a] = 255
    return out


def _scribble_xdog(image, *, resolution, threshold_a, **_):
    def xdog(x: np.ndarray) -> np.ndarray:
        g1 = cv2.GaussianBlur(x.astype(np.float32), (0, 0), 0.5)
        g2 = cv2.GaussianBlur(x.astype(np.float32), (0, 0), 5.0)
        dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
        out = np.zeros(x.shape[:2], dtype=np.uint8)
        # uint8 arithmetic (wrapping) on purpose: identical maps to sd-webui-controlnet's
        out[2 * (255 - dog) > threshold_a] = 255
        return out

    return _on_padded(image, resolution, xdog)


def _color(image, *, resolution, **_):
    img = _resize_short_side(image, resolution, cv2.INTER_AREA)
    h, w = img.shape[:2]
    grid = cv2.resize(img, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_NEAREST)


def _shuffle(image, *, resolution, threshold_a, **_):
    img = _resize_short_side(image, resolution)
    h, w = img.shape[:2]
    rng = np.random.default_rng(int(threshold_a))
    x = _noise_disk(rng, h, w, 256) * float(w - 1)
    y = _noise_disk(rng, h, w, 256) * float(h - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    return cv2.remap(img, flow, None, cv2.INTER_LINEAR)


def _tile_resample(image, *, threshold_a, **_):
    if threshold_a < 1.1:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(w / threshold_a)), max(1, int(h / threshold_a)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _blur_gaussian(image, *, resolution, threshold_a, **_):
    return cv2.GaussianBlur(_resize_short_side(image, resolution), (0, 0), float(threshold_a))


def _recolor(image, *, threshold_a, conversion: int, channel: int, **_):
    # sd-webui-controlnet converts the RGB picture with the BGR codes; kept for identical results
    value = cv2.cvtColor(image, conversion)[:, :, channel].astype(np.float32) / 255.0
    return (value ** threshold_a * 255.0).clip(0, 255).astype(np.uint8)


def _lineart_standard(image, *, resolution, **_):
    detector = _aux("lineart_standard").LineartStandardDetector()

    def compute(x: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # median of no pixels (flat picture)
            return detector(x, guassian_sigma=6.0, intensity_threshold=8, detect_resolution=_side(x),
                            output_type="np")

    return _on_padded(image, resolution, compute)


# --------------------------------------------------------------------------------------------------
# Modules with networks (controlnet-aux)


def _detect(kind: str, call: Callable[..., np.ndarray]):
    """A module fn that runs ``call(detector, padded_image)`` on the padded processing image."""

    def fn(image, *, resolution, threshold_a, threshold_b, models, **_):
        detector = models.get(kind)
        return _on_padded(image, resolution, lambda x: call(detector, x, threshold_a, threshold_b))

    return fn


def _res(x: np.ndarray) -> dict[str, Any]:
    return {"detect_resolution": _side(x), "image_resolution": _side(x), "output_type": "np"}


def _hed(safe: bool = False, scribble: bool = False):
    run = _detect("hed", lambda d, x, a, b: d(x, safe=safe, **_res(x)))
    return _then_scribble(run) if scribble else run


def _pidinet(safe: bool = False, apply_filter: bool = False, scribble: bool = False):
    run = _detect("pidinet", lambda d, x, a, b: d(x, safe=safe, apply_filter=apply_filter, **_res(x)))
    return _then_scribble(run) if scribble else run


def _then_scribble(run):
    def fn(image, **kwargs):
        return _scribble(run(image, **kwargs))

    return fn


def _lineart(kind: str):
    return _detect(kind, lambda d, x, a, b: d(x, **_res(x)))


def _midas_normal(d, x, a, b):
    _, normal = d(x, bg_th=a, depth_and_normal=True, **_res(x))
    return normal


def _openpose(kind: str, body: bool = True, hand: bool = False, face: bool = False):
    return _detect(kind, lambda d, x, a, b: d(x, include_body=body, include_hand=hand, include_face=face,
                                              **_res(x)))


# --------------------------------------------------------------------------------------------------
# Loading annotator networks from local files only


def _aux(module: str) -> types.ModuleType:
    """Import ``controlnet_aux.<module>`` (lazily: it is slow), without its import-time warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.{module}")


def _fit_state_dict(net: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: Path, *,
                    drop_first: bool = False) -> dict[str, torch.Tensor]:
    """Pick the layout of ``tensors`` that matches ``net``: as is, under ``model.`` /
    ``depth_model.``, without DataParallel's ``module.``, or (openpose) without the first key part."""
    want = set(net.state_dict())
    candidates: list[dict[str, torch.Tensor]] = [dict(tensors)]
    for prefix in ("model.", "depth_model."):
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if sub:
            candidates.append(sub)
    candidates += [{k.removeprefix("module."): v for k, v in c.items()} for c in list(candidates)]
    if drop_first:
        for c in list(candidates):
            candidates.append({k: c[k.split(".", 1)[1]] for k in want if "." in k and k.split(".", 1)[1] in c})
    best = max(candidates, key=lambda c: len(want.intersection(c)))
    if not want.intersection(best):
        raise ModelError(path, f"it does not contain the weights of the {type(net).__name__} network this "
                               f"preprocessor needs. Download the original file again from {annotator_url(path.name)}.")
    return best


def _load_weights(net: torch.nn.Module, path: Path, *, lenient: bool = False,
                  drop_first: bool = False) -> torch.nn.Module:
    """Read ``path`` safely and load it into ``net`` (strictly unless ``lenient``: then only
    buffers may be missing and unknown keys are ignored, as controlnet-aux does for ZoeDepth)."""
    tensors, _ = read_state_dict(path)
    state = _fit_state_dict(net, tensors, path, drop_first=drop_first)
    try:
        result = net.load_state_dict(state, strict=not lenient)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise ModelError(path, f"its weights do not fit the {type(net).__name__} network ({detail}). "
                               f"Download the original file again from {annotator_url(path.name)}.") from exc
    if lenient:
        params = dict(net.named_parameters())
        missing = [k for k in result.missing_keys if k in params]
        if missing:
            raise ModelError(path, f"it lacks {len(missing)} weights of the {type(net).__name__} network "
                                   f"(e.g. {missing[0]}). Download the original file again from "
                                   f"{annotator_url(path.name)}.")
    return net.float().eval()


@dataclass(frozen=True)
class _Loaded:
    detector: Any
    modules: tuple[torch.nn.Module, ...]


def _load_hed(paths):
    hed = _aux("hed")
    net = _load_weights(hed.ControlNetHED_Apache2(), paths[0])
    return _Loaded(hed.HEDdetector(net), (net,))


def _load_pidinet(paths):
    pidi = _aux("pidi")
    net = _load_weights(pidi.pidinet(), paths[0])
    return _Loaded(pidi.PidiNetDetector(net), (net,))


def _load_lineart(paths):
    lineart = _aux("lineart")
    net = _load_weights(lineart.Generator(3, 1, 3), paths[0])
    return _Loaded(lineart.LineartDetector(net, net), (net,))


def _load_lineart_anime(paths):
    anime = _aux("lineart_anime")
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    net = _load_weights(anime.UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False), paths[0])
    return _Loaded(anime.LineartAnimeDetector(net), (net,))


def _load_mlsd(paths):
    mlsd = _aux("mlsd")
    model_cls = _aux("mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large
    net = _load_weights(model_cls(), paths[0])
    return _Loaded(mlsd.MLSDdetector(net), (net,))


def _load_midas(paths):
    midas = _aux("midas")
    dpt = _aux("midas.midas.dpt_depth")
    net = _load_weights(dpt.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True), paths[0])
    return _Loaded(midas.MidasDetector(net), (net,))


def _load_zoe(paths):
    zoe = _aux("zoe")
    zoe_v1 = _aux("zoe.zoedepth.models.zoedepth.zoedepth_v1")
    config = _aux("zoe.zoedepth.utils.config").get_config("zoedepth", "infer")
    net = _load_weights(zoe_v1.ZoeDepth.build_from_config(config), paths[0], lenient=True)
    return _Loaded(zoe.ZoeDetector(net), (net,))


def _load_leres(paths):
    leres = _aux("leres")
    model_cls = _aux("leres.leres.multi_depth_model_woauxi").RelDepthModel
    net = _load_weights(model_cls(backbone="resnext101"), paths[0])
    return _Loaded(leres.LeresDetector(net, None), (net,))  # no pix2pix stage: depth_leres++ is not provided


def _load_lama(paths):
    from webui.controlnet.lama import load_lama

    net = load_lama(paths[0])
    return _Loaded(net, (net,))


def _load_normal_bae(paths):
    normalbae = _aux("normalbae")
    nnet = _aux("normalbae.nets.NNET")
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    net = _load_weights(nnet.NNET(args), paths[0])
    return _Loaded(normalbae.NormalBaeDetector(net), (net,))


def _openpose_loader(hand: bool, face: bool):
    def load(paths):
        open_pose = _aux("open_pose")
        model = _aux("open_pose.model")
        face_mod = _aux("open_pose.face")
        nets = []
        body_est = object.__new__(open_pose.Body)  # Body(path) would torch.load the file itself
        body_est.model = _load_weights(model.bodypose_model(), paths[0], drop_first=True)
        nets.append(body_est.model)
        hand_est = face_est = None
        rest = list(paths[1:])
        if hand:
            hand_est = object.__new__(open_pose.Hand)
            hand_est.model = _load_weights(model.handpose_model(), rest.pop(0), drop_first=True)
            nets.append(hand_est.model)
        if face:
            face_est = object.__new__(face_mod.Face)
            face_est.inference_size = face_mod.params["inference_img_size"]
            face_est.sigma = face_mod.params["gaussian_sigma"]
            face_est.threshold = face_mod.params["heatmap_peak_thresh"]
            face_est.model = _load_weights(face_mod.FaceNet(), rest.pop(0))
            nets.append(face_est.model)
        return _Loaded(open_pose.OpenposeDetector(body_est, hand_est, face_est), tuple(nets))

    return load


@dataclass(frozen=True)
class _Loader:
    files: tuple[str, ...]
    load: Callable[[tuple[Path, ...]], _Loaded]


_BODY, _HAND, _FACE = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"

#: Annotator networks by kind: the files (``lllyasviel/Annotators`` names) and how to build them.
ANNOTATORS: Mapping[str, _Loader] = MappingProxyType({
    "hed": _Loader(("ControlNetHED.pth",), _load_hed),
    "pidinet": _Loader(("table5_pidinet.pth",), _load_pidinet),
    "lineart": _Loader(("sk_model.pth",), _load_lineart),
    "lineart_coarse": _Loader(("sk_model2.pth",), _load_lineart),
    "lineart_anime": _Loader(("netG.pth",), _load_lineart_anime),
    "mlsd": _Loader(("mlsd_large_512_fp32.pth",), _load_mlsd),
    "midas": _Loader(("dpt_hybrid-midas-501f0c75.pt",), _load_midas),
    "zoe": _Loader(("ZoeD_M12_N.pt",), _load_zoe),
    "leres": _Loader(("res101.pth",), _load_leres),
    "normal_bae": _Loader(("scannet.pt",), _load_normal_bae),
    "lama": _Loader(("ControlNetLama.pth",), _load_lama),
    "openpose": _Loader((_BODY,), _openpose_loader(hand=False, face=False)),
    "openpose_hand": _Loader((_BODY, _HAND), _openpose_loader(hand=True, face=False)),
    "openpose_face": _Loader((_BODY, _FACE), _openpose_loader(hand=False, face=True)),
    "openpose_full": _Loader((_BODY, _HAND, _FACE), _openpose_loader(hand=True, face=True)),
})


class AnnotatorModels:
    """Annotator networks loaded from ``folder`` only, kept on ``device`` (the last ``max_loaded``;
    0 = load for every use and keep nothing)."""

    def __init__(self, folder: Path | str, device: torch.device | str | None = None,
                 max_loaded: int = MAX_LOADED_ANNOTATORS):
        self.folder = Path(folder).absolute()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.max_loaded = max(0, int(max_loaded))
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.RLock()

    def require(self, files: Iterable[str], module: str = "") -> tuple[Path, ...]:
        """The paths of ``files``; :class:`MissingAnnotator` if any is not there."""
        paths = tuple(self.folder / f for f in files)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise MissingAnnotator(missing[0], self.folder, module, missing[1:])
        return paths

    def get(self, kind: str) -> Any:
        """The controlnet-aux detector of ``kind`` (a key of :data:`ANNOTATORS`), loading it if needed."""
        loader = ANNOTATORS[kind]
        with self._lock:
            entry = self._loaded.get(kind)
            if entry is not None:
                self._loaded.move_to_end(kind)
                return entry.detector
            paths = self.require(loader.files)
            log.info("Loading ControlNet annotator %s from %s", kind, ", ".join(str(p) for p in paths))
            entry = loader.load(paths)
            for module in entry.modules:
                module.to(self.device)
            if self.max_loaded:
                self._loaded[kind] = entry
                while len(self._loaded) > self.max_loaded:
                    evicted, _ = self._loaded.popitem(last=False)
                    log.info("Unloaded ControlNet annotator %s", evicted)
            return entry.detector

    def loaded(self) -> list[str]:
        """Kinds currently kept, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def unload(self) -> None:
        with self._lock:
            self._loaded.clear()


# --------------------------------------------------------------------------------------------------
# The built-in modules


def _weighted(name: str, kind: str, fn, control_type: str, **kw) -> Preprocessor:
    return Preprocessor(name=name, fn=fn, control_type=control_type, weights=ANNOTATORS[kind].files, **kw)


def builtin_preprocessors() -> list[Preprocessor]:
    """All built-in preprocessors (weight-free first)."""
    no_res = {"resolution": None, "uses_resolution": False}
    gamma = Slider("Gamma Correction", 0.1, 2.0, 1.0, 0.001)
    near = Slider("Remove Near %", 0, 100, 0, 0.1)
    background = Slider("Remove Background %", 0, 100, 0, 0.1)
    return [
        Preprocessor("none", _none, "All", **no_res),
        # reference: no model, the image as given (webui.controlnet.reference); threshold A is the style fidelity
        *[Preprocessor(name, _none, "Reference", threshold_a=Slider('Style Fidelity (only for "Balanced" mode)', 0.0,
                                                                    1.0, 0.5, 0.01), **no_res)
          for name in ("reference_only", "reference_adain", "reference_adain+attn")],
        # IP-Adapter: the image as given; its CLIP image encoder runs in the unit (webui.controlnet.ip_adapter)
        Preprocessor("ip-adapter-auto", _none, "IP-Adapter", **no_res),
        Preprocessor("ip-adapter_clip_h", _none, "IP-Adapter",
                     aliases=("ip-adapter_clip_sd15", "ip-adapter_clip_sdxl_plus_vith"), **no_res),
        Preprocessor("ip-adapter_clip_g", _none, "IP-Adapter", aliases=("ip-adapter_clip_sdxl",), **no_res),
        # inpaint: the RGBA picture (alpha = mask) as given; the unit does the rest (webui.controlnet.inpaint)
        Preprocessor("inpaint", _none, "Inpaint", label="inpaint_global_harmonious", rgba=True, **no_res),
        Preprocessor("inpaint_only", _none, "Inpaint", rgba=True, **no_res),
        _weighted("inpaint_only+lama", "lama", _lama, "Inpaint", rgba=True, **no_res),
        Preprocessor("invert", _invert, "All", label="invert (from white bg & black line)",
                     also_listed_under=("Canny", "Lineart", "Scribble/Sketch", "MLSD"), **no_res),
        Preprocessor("canny", _canny, "Canny", threshold_a=Slider("Canny Low Threshold", 1, 255, 100),
                     threshold_b=Slider("Canny High Threshold", 1, 255, 200)),
        Preprocessor("binary", _binary, "Scribble/Sketch", threshold_a=Slider("Binary threshold", 0, 255, 0)),
        Preprocessor("threshold", _threshold, "All", threshold_a=Slider("Binarization Threshold", 0, 255, 127)),
        Preprocessor("scribble_xdog", _scribble_xdog, "Scribble/Sketch",
                     threshold_a=Slider("XDoG Threshold", 1, 64, 32)),
        Preprocessor("lineart_standard", _lineart_standard, "Lineart",
                     label="lineart_standard (from white bg & black line)"),
        Preprocessor("color", _color, "T2I-Adapter", label="t2ia_color_grid"),
        # the style T2I-Adapter's: the image as given; its CLIP ViT-L/14 encoder runs in the unit
        # (webui.controlnet.style_adapter)
        Preprocessor("clip_vision", _none, "T2I-Adapter", label="t2ia_style_clipvision", **no_res),
        Preprocessor("shuffle", _shuffle, "Shuffle", threshold_a=Slider("Seed", 0, 2**31 - 1, 0)),
        Preprocessor("tile_resample", _tile_resample, "Tile/Blur",
                     threshold_a=Slider("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01), **no_res),
        Preprocessor("blur_gaussian", _blur_gaussian, "Tile/Blur", threshold_a=Slider("Sigma", 0.01, 64.0, 9.0, 0.01)),
        Preprocessor("recolor_luminance", _with(_recolor, conversion=cv2.COLOR_BGR2LAB, channel=0), "Recolor",
                     threshold_a=gamma, **no_res),
        Preprocessor("recolor_intensity", _with(_recolor, conversion=cv2.COLOR_BGR2HSV, channel=2), "Recolor",
                     threshold_a=gamma, **no_res),
        # with networks
        _weighted("depth_midas", "midas", _detect("midas", lambda d, x, a, b: d(x, **_res(x))), "Depth",
                  legacy_name="depth"),
        _weighted("depth_zoe", "zoe", _detect("zoe", lambda d, x, a, b: d(x, **_res(x))), "Depth"),
        _weighted("depth_leres", "leres",
                  _detect("leres", lambda d, x, a, b: d(x, thr_a=a, thr_b=b, boost=False, **_res(x))), "Depth",
                  threshold_a=near, threshold_b=background),
        _weighted("normal_bae", "normal_bae", _detect("normal_bae", lambda d, x, a, b: d(x, **_res(x))),
                  "NormalMap"),
        _weighted("normal_midas", "midas", _detect("midas", _midas_normal), "NormalMap", legacy_name="normal_map",
                  threshold_a=Slider("Normal Background Threshold", 0.0, 1.0, 0.4, 0.01)),
        _weighted("openpose", "openpose", _openpose("openpose"), "OpenPose"),
        _weighted("openpose_hand", "openpose_hand", _openpose("openpose_hand", hand=True), "OpenPose"),
        _weighted("openpose_face", "openpose_face", _openpose("openpose_face", face=True), "OpenPose"),
        _weighted("openpose_faceonly", "openpose_face", _openpose("openpose_face", body=False, face=True),
                  "OpenPose"),
        _weighted("openpose_full", "openpose_full", _openpose("openpose_full", hand=True, face=True), "OpenPose"),
        _weighted("mlsd", "mlsd", _detect("mlsd", lambda d, x, a, b: d(x, thr_v=a, thr_d=b, **_res(x))), "MLSD",
                  threshold_a=Slider("MLSD Value Threshold", 0.01, 2.0, 0.1, 0.01),
                  threshold_b=Slider("MLSD Distance Threshold", 0.01, 20.0, 0.1, 0.01)),
        _weighted("lineart_realistic", "lineart", _lineart("lineart"), "Lineart", legacy_name="lineart"),
        _weighted("lineart_coarse", "lineart_coarse", _lineart("lineart_coarse"), "Lineart"),
        _weighted("lineart_anime", "lineart_anime", _lineart("lineart_anime"), "Lineart"),
        _weighted("softedge_hed", "hed", _hed(), "SoftEdge", legacy_name="hed"),
        _weighted("softedge_hedsafe", "hed", _hed(safe=True), "SoftEdge", legacy_name="hed_safe"),
        _weighted("softedge_pidinet", "pidinet", _pidinet(), "SoftEdge", legacy_name="pidinet"),
        _weighted("softedge_pidisafe", "pidinet", _pidinet(safe=True), "SoftEdge", legacy_name="pidinet_safe"),
        _weighted("scribble_hed", "hed", _hed(scribble=True), "Scribble/Sketch", aliases=("fake_scribble",)),
        _weighted("scribble_pidinet", "pidinet", _pidinet(scribble=True), "Scribble/Sketch",
                  legacy_name="pidinet_scribble"),
        _weighted("t2ia_sketch_pidi", "pidinet", _pidinet(apply_filter=True), "T2I-Adapter",
                  legacy_name="pidinet_sketch"),
    ]


def _with(fn, **bound):
    def call(image, **kwargs):
        return fn(image, **kwargs, **bound)

    return call


# --------------------------------------------------------------------------------------------------
# API shapes (sd-webui-controlnet)

#: sd-webui-controlnet's default module per control type.
DEFAULT_OPTIONS: Mapping[str, str] = MappingProxyType({
    "All": "none", "Canny": "canny", "Depth": "depth_midas", "NormalMap": "normal_bae",
    "OpenPose": "openpose_full", "MLSD": "mlsd", "Lineart": "lineart_standard", "SoftEdge": "softedge_pidinet",
    "Scribble/Sketch": "scribble_pidinet", "Shuffle": "shuffle", "Tile/Blur": "tile_resample",
    "Recolor": "recolor_luminance", "T2I-Adapter": "none", "IP-Adapter": "ip-adapter-auto",
    "Reference": "reference_only", "Inpaint": "inpaint_only",
})


def control_types(preprocessors: Iterable[Preprocessor] | None = None) -> dict:
    """``/controlnet/control_types``: module lists (display names) per control type; the model lists
    are left empty for the caller to fill."""
    procs = list(preprocessors) if preprocessors is not None else builtin_preprocessors()
    types_ = sorted({t for p in procs for t in (p.control_type, *p.also_listed_under)} - {"All"})
    by_name = {p.name: p for p in procs}
    none = by_name.get("none")
    result = {}
    for ctype in ["All", *types_]:
        members = [p for p in procs if ctype == "All" or ctype in (p.control_type, *p.also_listed_under)]
        default = by_name.get(DEFAULT_OPTIONS.get(ctype, ""))
        if default is None or (default not in members and default is not none):
            default = next((p for p in members if p is not none), none)
        ordered = list(dict.fromkeys(p for p in (none, default) if p is not None))
        ordered += sorted((p for p in members if p not in ordered), key=lambda p: p.display_name)
        result[ctype] = {
            "module_list": [p.display_name for p in ordered],
            "model_list": [],
            "default_option": default.display_name if default is not None else "none",
            "default_model": "None",
        }
    return {"control_types": result}


def module_detail(p: Preprocessor) -> dict:
    """``/controlnet/module_list`` ``module_detail`` entry: the visible sliders in order."""
    sliders = [p.resolution if p.uses_resolution else None, p.threshold_a, p.threshold_b]
    return {"model_free": False, "sliders": [s.api_json() for s in sliders if s is not None]}


# --------------------------------------------------------------------------------------------------
# The registry


class PreprocessorRegistry:
    """Preprocessors by name, with a small LRU of results and of loaded annotator networks.

    Args:
        preprocessors: the modules (default: :func:`builtin_preprocessors`).
        annotator_dir: folder with the annotator weights (default: ``<repo>/models/ControlNet/annotators``).
        device: where annotator networks run (default CPU).
        cache_size: results kept (LRU).
        max_loaded: annotator networks kept loaded (LRU).
    """

    def __init__(self, preprocessors: Iterable[Preprocessor] | None = None, annotator_dir: Path | str | None = None,
                 device: torch.device | str | None = None, *, cache_size: int = RESULT_CACHE_SIZE,
                 max_loaded: int = MAX_LOADED_ANNOTATORS):
        procs = list(preprocessors) if preprocessors is not None else builtin_preprocessors()
        if annotator_dir is None:
            from webui.settings import REPO_ROOT

            annotator_dir = annotator_dir_for(REPO_ROOT / "models")
        self._procs: dict[str, Preprocessor] = {}
        self._lookup: dict[str, Preprocessor] = {}
        for p in procs:
            if p.name in self._procs:
                raise ValueError(f"duplicate preprocessor name {p.name!r}")
            self._procs[p.name] = p
        for p in procs:  # canonical names win over aliases
            for n in p.all_names:
                self._lookup.setdefault(n, p)
        self._lower = {}
        for n, p in self._lookup.items():
            self._lower.setdefault(n.lower(), p)
        self.annotators = AnnotatorModels(annotator_dir, device, max_loaded)
        self.cache_size = max(0, int(cache_size))
        self._results: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.annotators.device

    @property
    def annotator_dir(self) -> Path:
        return self.annotators.folder

    def names(self) -> list[str]:
        return list(self._procs)

    def preprocessors(self) -> list[Preprocessor]:
        return list(self._procs.values())

    def get(self, name: str, field: str = "module") -> Preprocessor:
        """By canonical name, display name, legacy A1111 name or alias (case-insensitive last);
        :class:`~webui.errors.UnknownChoice` on ``field`` otherwise."""
        p = self._lookup.get(name) or self._lower.get(str(name).lower())
        if p is None:
            raise UnknownChoice(field, "ControlNet preprocessor", name, self.names())
        return p

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._lookup or name.lower() in self._lower)

    def control_types(self) -> dict:
        return control_types(self._procs.values())

    def detect(self, image: np.ndarray, name: str, resolution: int | None = None, threshold_a: float | None = None,
               threshold_b: float | None = None) -> np.ndarray:
        """Run a preprocessor (results of identical requests come from the cache)."""
        p = self.get(name)
        image = p.input(image)
        res, a, b = p.resolve_params(resolution, threshold_a, threshold_b)
        digest = hashlib.sha1(image.tobytes()).hexdigest()
        key = (digest, image.shape, p.name, res, a, b)
        with self._lock:
            hit = self._results.get(key)
            if hit is not None:
                self._results.move_to_end(key)
                return hit.copy()
        out = p._call(image, res, a, b, self.annotators)
        if self.cache_size:
            with self._lock:
                self._results[key] = out.copy()
                self._results.move_to_end(key)
                while len(self._results) > self.cache_size:
                    self._results.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        with self._lock:
            self._results.clear()

    def unload(self) -> None:
        """Drop the cached results and the loaded annotator networks."""
        self.clear_cache()
        self.annotators.unload()
