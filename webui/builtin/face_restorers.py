"""Built-in plugin: the GFPGAN and CodeFormer face restorers (A1111's "Restore faces" and Extras).

Both are always listed (as in A1111); their weights are loaded on first use (the restorer network when a picture
has a face), from local files only:

* GFPGAN: a file in ``models/GFPGAN`` whose name starts with ``GFPGAN`` (``GFPGANv1.4.pth`` is preferred
  over ``GFPGANv1.3.pth``); the v1.3/v1.4 "clean" architecture (spandrel's ``GFPGANv1Clean``).
* CodeFormer: a ``.pth`` / ``.safetensors`` file in ``models/Codeformer`` whose name contains
  ``codeformer`` (``codeformer.pth`` or A1111's ``codeformer-v0.1.0.pth``); spandrel_extra_arches'
  ``CodeFormer``, run with the ``code_former_weight`` option (0 = maximum effect, 1 = minimum).
* Both need the face detection and parsing weights described in :mod:`webui.restoration.faces`.

A missing file raises :class:`webui.restoration.faces.MissingWeights` naming the file and the folder;
nothing is ever downloaded. Loaded networks live in an object made per registration (a refresh makes a
new one), shared by both restorers for the face helpers.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from webui.devices import choose_device
from webui.errors import ModelError
from webui.hookspecs import hookimpl
from webui.restoration.faces import (
    FaceHelpers,
    MissingFile,
    MissingWeights,
    find_helper_weights,
    load_weights,
    restore_faces,
    state_dict_from,
)
from webui.restoration.registry import FaceRestorerDef
from webui.settings import Settings

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
GFPGAN_FILE = "GFPGANv1.4.pth"
GFPGAN_URL = "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth"
CODEFORMER_FILE = "codeformer-v0.1.0.pth"
CODEFORMER_URL = "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth"
DEFAULT_CODEFORMER_WEIGHT = 0.5


def _weight_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)


def find_gfpgan_model(folder: Path) -> Path | None:
    """The GFPGAN weights in ``folder``: a name starting with "GFPGAN", v1.4 before v1.3 before others."""
    found = [p for p in _weight_files(folder) if p.name.lower().startswith("gfpgan")]
    found.sort(key=lambda p: ("1.4" not in p.name, "1.3" not in p.name, p.name.lower()))
    return found[0] if found else None


def find_codeformer_model(folder: Path) -> Path | None:
    """The CodeFormer weights in ``folder``: a name containing "codeformer"."""
    found = [p for p in _weight_files(folder) if "codeformer" in p.name.lower()]
    return found[0] if found else None


def load_gfpgan(path: Path) -> torch.nn.Module:
    """GFPGAN v1.3/v1.4 (clean architecture, 512 px) with the weights of ``path`` (``params_ema`` first)."""
    from spandrel.architectures.GFPGAN import GFPGAN, GFPGANArch

    state_dict = state_dict_from(path)
    if not GFPGANArch().detect(state_dict):
        raise ModelError(path, "it is not a GFPGAN v1.3/v1.4 model (the clean architecture). "
                               f"Use {GFPGAN_FILE} from {GFPGAN_URL}.")
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                 fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    load_weights(net, state_dict, path, "GFPGAN v1.3/v1.4")
    return net.eval().requires_grad_(False)


def load_codeformer(path: Path) -> torch.nn.Module:
    """CodeFormer with the weights of ``path`` (its sizes read from the weights)."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormerArch

    state_dict = state_dict_from(path)
    arch = CodeFormerArch()
    if not arch.detect(state_dict):
        raise ModelError(path, f"it is not a CodeFormer model. Use codeformer.pth from {CODEFORMER_URL}.")
    try:
        net = arch.load(state_dict).model  # builds the network and loads the weights with strict=True
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(path, f"its weights do not fit the CodeFormer network ({type(exc).__name__}: "
                               f"{str(exc).strip()[:300]}). Use codeformer.pth from {CODEFORMER_URL}.") from exc
    return net.eval().requires_grad_(False)


class _Restorers:
    """Loaded face helpers and restorer networks for one registration; safe across job threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.gfpgan_dir = settings.model_dir("GFPGAN")
        self.codeformer_dir = settings.model_dir("Codeformer")
        self._lock = threading.Lock()
        self._device: torch.device | None = None
        self._helpers: FaceHelpers | None = None
        self._nets: dict[str, tuple[Path, torch.nn.Module]] = {}  # kind -> (file, network)

    def _prepare(self, kind: str, model_path: Path | None, missing_model: MissingFile,
                 load: Callable[[Path], torch.nn.Module]) -> tuple[Callable[[], torch.nn.Module], FaceHelpers]:
        """Check every file first (one error naming all missing ones) and load the face helpers; the restorer
        network is loaded by the returned function, on first use -- a picture without a face never loads it."""
        detection, parsing, missing = find_helper_weights([self.gfpgan_dir, self.codeformer_dir])
        if model_path is None:
            missing.insert(0, missing_model)
        if missing:
            raise MissingWeights.of(missing)
        assert model_path is not None and detection is not None and parsing is not None
        with self._lock:
            if self._device is None:
                self._device = choose_device(self.settings).device
            if self._helpers is None:
                self._helpers = FaceHelpers.from_files(detection, parsing, self._device)
            helpers = self._helpers

        def network() -> torch.nn.Module:
            with self._lock:
                loaded = self._nets.get(kind)
                if loaded is None or loaded[0] != model_path:
                    self._nets.pop(kind, None)  # a newly preferred file replaces the old one
                    # float32 even on the GPU: spandrel marks both architectures as not fp16-safe
                    loaded = (model_path, load(model_path).to(self._device, torch.float32))
                    self._nets[kind] = loaded
                return loaded[1]

        return network, helpers

    def restore_gfpgan(self, image: Image.Image, opts: Mapping[str, Any]) -> Image.Image:
        missing = MissingFile(GFPGAN_FILE, self.gfpgan_dir, GFPGAN_URL, "Face restoration with GFPGAN",
                              "GFPGANv1.3.pth also works")
        net, helpers = self._prepare("GFPGAN", find_gfpgan_model(self.gfpgan_dir), missing, load_gfpgan)
        return restore_faces(image, lambda face: net()(face, return_rgb=False)[0], helpers)

    def restore_codeformer(self, image: Image.Image, opts: Mapping[str, Any]) -> Image.Image:
        missing = MissingFile(CODEFORMER_FILE, self.codeformer_dir, CODEFORMER_URL,
                              "Face restoration with CodeFormer",
                              'any .pth or .safetensors file with "codeformer" in its name is used')
        model = find_codeformer_model(self.codeformer_dir)
        net, helpers = self._prepare("CodeFormer", model, missing, load_codeformer)
        weight = _weight_option(opts)
        return restore_faces(image, lambda face: net()(face, weight=weight)[0], helpers)


def _weight_option(opts: Mapping[str, Any]) -> float:
    try:
        value = float(opts.get("code_former_weight", DEFAULT_CODEFORMER_WEIGHT))
    except (TypeError, ValueError):
        return DEFAULT_CODEFORMER_WEIGHT
    return min(1.0, max(0.0, value)) if math.isfinite(value) else DEFAULT_CODEFORMER_WEIGHT


@hookimpl
def register_face_restorers(settings: Settings) -> list[FaceRestorerDef]:
    restorers = _Restorers(settings)
    gfpgan = find_gfpgan_model(restorers.gfpgan_dir)
    codeformer = find_codeformer_model(restorers.codeformer_dir)
    return [
        FaceRestorerDef("GFPGAN", restorers.restore_gfpgan, str(gfpgan) if gfpgan else None),
        FaceRestorerDef("CodeFormer", restorers.restore_codeformer, str(codeformer) if codeformer else None),
    ]
