"""Built-in plugin: ESRGAN / Real-ESRGAN upscalers for the model files in models/ESRGAN and models/RealESRGAN.

Each ``.pth`` / ``.safetensors`` file becomes an upscaler named after its file stem (as in A1111, e.g.
``RealESRGAN_x4plus``). Files are not opened when listed: a model is loaded on first use (safely, see
:mod:`webui.upscaling.gan`) and kept in a small per-registration cache. Options ``ESRGAN_tile`` and
``ESRGAN_tile_overlap`` set the tiling.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from webui.devices import DevicePolicy, choose_device
from webui.hookspecs import hookimpl
from webui.settings import OptionDef, Settings
from webui.upscaling.registry import UpscalerDef

if TYPE_CHECKING:  # pragma: no cover - gan imports basicsr, loaded on first use only
    from webui.upscaling.gan import LoadedGan

MODEL_KINDS = ("ESRGAN", "RealESRGAN")
EXTENSIONS = (".pth", ".safetensors")
DEFAULT_TILE = 192
DEFAULT_OVERLAP = 8
MAX_LOADED = 2
_SCALE_IN_NAME = re.compile(r"(?<![a-z0-9])(?:x(\d{1,2})|(\d{1,2})x)", re.IGNORECASE)


def guess_scale(stem: str) -> int:
    """The scale a file name announces (``RealESRGAN_x2plus`` -> 2, ``4x_foo`` -> 4); 4 if none."""
    match = _SCALE_IN_NAME.search(stem)
    value = int(match[1] or match[2]) if match else 4
    return value if value in (1, 2, 3, 4, 8, 16) else 4


class ModelCache:
    """Loaded models by path, least recently used dropped beyond ``limit``; safe across job threads."""

    def __init__(self, policy: DevicePolicy, limit: int = MAX_LOADED):
        self.policy = policy
        self.limit = limit
        self._models: OrderedDict[Path, LoadedGan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> LoadedGan:
        from webui.upscaling.gan import load_gan  # imports basicsr: only when a GAN upscaler is used

        with self._lock:
            if path in self._models:
                self._models.move_to_end(path)
                return self._models[path]
            loaded = load_gan(path, self.policy.device, self.policy.dtype)
            self._models[path] = loaded
            while len(self._models) > self.limit:
                self._models.popitem(last=False)
            return loaded

    def loaded(self) -> list[Path]:
        """Paths of the models held now, least recently used first."""
        with self._lock:
            return list(self._models)


def _int_option(opts: Mapping[str, Any], key: str, default: int) -> int:
    try:
        return max(0, int(opts.get(key, default)))
    except (TypeError, ValueError):
        return default


class GanUpscale:
    """``upscale(image, scale, opts)`` for one model file: loads it through ``cache`` on first use and runs
    it once at its native scale (:func:`~webui.upscaling.registry.upscale_to` fits the exact size)."""

    def __init__(self, path: Path, cache: ModelCache):
        self.path = path
        self.cache = cache

    def __call__(self, image: Image.Image, scale: float, opts: Mapping[str, Any]) -> Image.Image:
        from webui.upscaling.gan import upscale_tiled

        model = self.cache.get(self.path)
        tile = _int_option(opts, "ESRGAN_tile", DEFAULT_TILE)
        overlap = _int_option(opts, "ESRGAN_tile_overlap", DEFAULT_OVERLAP)
        return upscale_tiled(model, image, tile, overlap)


def _model_files(settings: Settings) -> list[tuple[str, Path]]:
    found = []
    for kind in MODEL_KINDS:
        folder = settings.model_dir(kind)
        try:
            files = [p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file()]
        except OSError:  # missing or unreadable folder: no models
            continue
        found += [(kind, p) for p in sorted(files, key=lambda p: p.name.lower())]
    return found


@hookimpl
def register_settings() -> list[OptionDef]:
    return [
        OptionDef("ESRGAN_tile", DEFAULT_TILE, "Tile size for ESRGAN upscalers (0 = no tiling)", "Upscaling",
                  minimum=0, maximum=2048, help="Large pictures are upscaled in tiles of this size to save memory."),
        OptionDef("ESRGAN_tile_overlap", DEFAULT_OVERLAP, "Tile overlap for ESRGAN upscalers, in pixels",
                  "Upscaling", minimum=0, maximum=256, help="Tiles overlap by this much so that no seams show."),
    ]


@hookimpl
def register_upscalers(settings: Settings) -> list[UpscalerDef]:
    cache = ModelCache(choose_device(settings))
    return [UpscalerDef(path.stem, GanUpscale(path, cache), scale=float(guess_scale(path.stem)),
                        model_name=kind, model_path=str(path))
            for kind, path in _model_files(settings)]
