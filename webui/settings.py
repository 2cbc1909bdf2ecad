"""Command-line settings and persisted options.

Two kinds of configuration, both immutable snapshots passed down explicitly:

* :class:`Settings` -- the process-wide, frozen result of the command line
  (A1111 flag names where they exist).  Built by :func:`parse_args`; nothing
  parses arguments at import time.
* :class:`Options` -- the user-editable options (A1111 option keys such as
  ``sd_model_checkpoint``) persisted in ``config.json`` in the data folder.
  :class:`OptionsStore` owns the file and hands out frozen snapshots; a change
  produces a new snapshot and is written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui.fileio import atomic_write_text

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Model kinds and the A1111 folder names under ``models/``.
MODEL_FOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "Stable-diffusion": "Stable-diffusion",
        "VAE": "VAE",
        "Lora": "Lora",
        "embeddings": "embeddings",
        "ControlNet": "ControlNet",
        "ESRGAN": "ESRGAN",
        "RealESRGAN": "RealESRGAN",
        "GFPGAN": "GFPGAN",
        "Codeformer": "Codeformer",
        "VAE-approx": "VAE-approx",
    }
)


@dataclass(frozen=True)
class Settings:
    """Frozen process settings from the command line."""

    listen: bool = False
    port: int = 7860
    ckpt: Path | None = None
    ckpt_dir: Path | None = None
    lora_dir: Path | None = None
    data_dir: Path = REPO_ROOT
    models_dir: Path | None = None
    api: bool = False
    nowebui: bool = False
    use_cpu: bool = False
    no_half: bool = False
    no_half_vae: bool = False
    memory_mode: str = "none"  # "medvram" | "lowvram"
    enable_insecure_extension_access: bool = False
    attention: str = "sdpa"  # "sdpa" (PyTorch scaled_dot_product_attention) | "eager"
    vae_dir: Path | None = None
    device_id: int | None = None
    gradio_auth: str | None = None
    api_auth: str | None = None
    cors_allow_origins: tuple[str, ...] = ()
    api_log: bool = False
    disable_extensions: bool = False
    extensions: tuple[str, ...] | None = None  # None = all enabled
    max_queue_size: int = 16
    concurrency: int = 1
    max_body_mb: int = 64
    allow_image_urls: bool = False  # API image fields may be http(s) URLs (public addresses only)
    shutdown_grace: float = 10.0  # seconds running jobs may finish after SIGTERM before they are interrupted

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def auth_enabled(self) -> bool:
        """Any of ``--gradio-auth`` / ``--api-auth`` given: then every route (UI, API, docs, files) needs it."""
        return bool((self.gradio_auth or "").strip() or (self.api_auth or "").strip())

    @property
    def models_root(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    def model_dir(self, kind: str) -> Path:
        """Folder for a model kind (``"Stable-diffusion"``, ``"VAE"``, ...)."""
        if kind not in MODEL_FOLDERS:
            raise KeyError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_FOLDERS)}")
        return self.models_root / MODEL_FOLDERS[kind]

    def vae_dirs(self) -> list[Path]:
        return [self.model_dir("VAE")] + ([self.vae_dir] if self.vae_dir is not None else [])

    def lora_dirs(self) -> list[Path]:
        return [self.model_dir("Lora")] + ([self.lora_dir] if self.lora_dir is not None else [])

    def checkpoint_dirs(self) -> list[Path]:
        dirs = [self.model_dir("Stable-diffusion")]
        if self.ckpt_dir is not None:
            dirs.append(self.ckpt_dir)
        return dirs

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def extensions_dir(self) -> Path:
        return self.data_dir / "extensions"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py", description="Stable Diffusion web UI")
    p.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 instead of 127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint to load at start")
    p.add_argument("--ckpt-dir", type=Path, default=None, help="extra folder with checkpoints")
    p.add_argument("--lora-dir", type=Path, default=None, help="extra folder with LoRA files")
    p.add_argument("--data-dir", type=Path, default=None, help="folder for outputs, config, cache")
    p.add_argument("--models-dir", type=Path, default=None, help="folder holding the model folders")
    p.add_argument("--api", action="store_true", help="serve /sdapi/v1 beside the UI (always on)")
    p.add_argument("--nowebui", action="store_true", help="serve the API only")
    p.add_argument("--use-cpu", action="store_true", help="run on the CPU even if a GPU is present")
    p.add_argument("--no-half", action="store_true", help="use float32 on the GPU")
    p.add_argument("--no-half-vae", action="store_true", help="keep the VAE in float32 (no NaN retries needed)")
    p.add_argument("--precision", choices=("autocast", "half", "full"), default="autocast",
                   help="full: float32 everywhere (same as --no-half)")
    p.add_argument("--medvram", action="store_true", help="move model parts to the GPU only while they run")
    p.add_argument("--lowvram", action="store_true", help="move weights to the GPU layer by layer (slowest)")
    p.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa",
                   help="attention kernel: PyTorch SDPA (default) or the plain eager implementation")
    p.add_argument("--vae-dir", type=Path, default=None, help="extra folder with VAE files")
    p.add_argument("--device-id", type=int, default=None, help="CUDA device index")
    p.add_argument("--gradio-auth", default=None, help="user:pass[,user2:pass2] for the UI")
    p.add_argument("--api-auth", default=None, help="user:pass[,user2:pass2] for the API")
    p.add_argument("--cors-allow-origins", default="", help="comma-separated allowed origins")
    p.add_argument("--api-log", action="store_true", help="log every API request")
    p.add_argument("--disable-extensions", action="store_true", help="load no third-party extension")
    p.add_argument("--enable-insecure-extension-access", action="store_true",
                   help="allow installing extensions from the UI even with --listen")
    p.add_argument("--extensions", default=None, help="comma-separated extension names to load")
    p.add_argument("--max-queue-size", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=1, help="GPU jobs run at once")
    p.add_argument("--max-body-mb", type=int, default=64, help="largest request body accepted (413 beyond)")
    p.add_argument("--allow-image-urls", action="store_true",
                   help="let API image fields be http(s) URLs the server fetches (public addresses only)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds running jobs may finish after SIGTERM/Ctrl+C before they are interrupted")
    return p


def parse_args(argv: Iterable[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from command-line arguments (and ``WEBUI_EXTENSIONS``)."""
    env = os.environ if env is None else env
    ns, _unknown = build_parser().parse_known_args(list(argv) if argv is not None else None)
    data_dir = (ns.data_dir or REPO_ROOT).resolve()
    ext_names = ns.extensions if ns.extensions is not None else env.get("WEBUI_EXTENSIONS")
    return Settings(
        listen=ns.listen,
        port=ns.port,
        ckpt=ns.ckpt,
        ckpt_dir=ns.ckpt_dir,
        lora_dir=ns.lora_dir,
        data_dir=data_dir,
        models_dir=ns.models_dir.resolve() if ns.models_dir else None,
        api=ns.api,
        nowebui=ns.nowebui,
        use_cpu=ns.use_cpu,
        no_half=ns.no_half or ns.precision == "full",
        no_half_vae=ns.no_half_vae,
        memory_mode="lowvram" if ns.lowvram else "medvram" if ns.medvram else "none",
        attention=ns.attention,
        vae_dir=ns.vae_dir,
        device_id=ns.device_id,
        gradio_auth=ns.gradio_auth,
        api_auth=ns.api_auth,
        cors_allow_origins=tuple(o.strip() for o in ns.cors_allow_origins.split(",") if o.strip()),
        api_log=ns.api_log,
        disable_extensions=ns.disable_extensions,
        enable_insecure_extension_access=ns.enable_insecure_extension_access,
        extensions=None if ext_names is None else tuple(n.strip() for n in ext_names.split(",") if n.strip()),
        max_queue_size=ns.max_queue_size,
        concurrency=max(1, ns.concurrency),
        max_body_mb=max(1, ns.max_body_mb),
        allow_image_urls=ns.allow_image_urls,
        shutdown_grace=max(0.0, ns.shutdown_grace),
    )


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class OptionDef:
    """One user option: its A1111 key, default, label and allowed values."""

    key: str
    default: Any
    label: str
    section: str = "General"
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: choices offered in the UI when they change at run time (e.g. files); not used to validate
    choices_fn: Callable[[], list[Any]] | None = field(default=None, compare=False)
    #: an extra check of the coerced value (raises ValueError), e.g. :func:`inside_data_folder`
    check: Callable[[str, Any], None] | None = field(default=None, compare=False)

    def coerce(self, value: Any) -> Any:
        """Return ``value`` converted to this option's type, or raise ValueError."""
        kind = type(self.default)
        if kind is bool:
            if isinstance(value, bool):
                out: Any = value
            elif isinstance(value, str) and value.lower() in ("true", "false"):
                out = value.lower() == "true"
            else:
                raise ValueError(f"{self.key}: expected true/false, got {value!r}")
        elif kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(f"{self.key}: expected a number, got {value!r}")
            try:
                out = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{self.key}: expected a number, got {value!r}") from None
            if isinstance(out, float) and not math.isfinite(out):
                raise ValueError(f"{self.key}: must be finite")
            if self.minimum is not None and out < self.minimum:
                raise ValueError(f"{self.key}: must be >= {self.minimum}")
            if self.maximum is not None and out > self.maximum:
                raise ValueError(f"{self.key}: must be <= {self.maximum}")
        elif kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{self.key}: expected a list of strings, got {value!r}")
            out = list(value)
        elif kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{self.key}: expected a string, got {value!r}")
            out = value
        else:
            out = value
        if self.choices is not None and out not in self.choices:
            raise ValueError(f"{self.key}: {out!r} is not one of {list(self.choices)}")
        if self.check is not None:
            self.check(self.key, out)
        return out


def inside_data_folder(key: str, value: Any) -> None:
    """Output folders are relative paths that stay inside the data folder (``--data-dir``): no absolute
    path, drive, home (``~``) or ``..`` part, so neither the API nor the UI can make the server write files
    elsewhere (A1111 keeps these options out of the API for the same reason)."""
    text = str(value).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if (not parts or text.startswith("/") or text.startswith("~") or (len(text) > 1 and text[1] == ":")
            or ".." in parts):
        raise ValueError(f"{key}: {value!r} must be a relative folder inside the data folder (no absolute path, "
                         "'~' or '..')")


def core_option_defs() -> list[OptionDef]:
    """The options the core itself owns (A1111 keys)."""
    return [
        OptionDef("sd_model_checkpoint", "", "Stable Diffusion checkpoint", "Stable Diffusion"),
        OptionDef("sd_checkpoint_cache", 0, "Checkpoints to keep in RAM besides the current one",
                  "Stable Diffusion", minimum=0, maximum=10),
        OptionDef("CLIP_stop_at_last_layers", 1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12),
        OptionDef("emphasis", "Original", "Emphasis mode", "Stable Diffusion",
                  choices=("Original", "No norm", "None")),
        OptionDef("comma_padding_backtrack", 20, "Prompt word wrap length limit", "Stable Diffusion", minimum=0,
                  maximum=74),
        OptionDef("samples_save", True, "Always save all generated images", "Saving images"),
        OptionDef("samples_format", "png", "File format for images", "Saving images", choices=("png",)),
        OptionDef("outdir_txt2img_samples", "outputs/txt2img-images", "Output folder for txt2img", "Saving images",
                  check=inside_data_folder),
        OptionDef("outdir_img2img_samples", "outputs/img2img-images", "Output folder for img2img", "Saving images",
                  check=inside_data_folder),
        OptionDef("outdir_extras_samples", "outputs/extras-images", "Output folder for Extras", "Saving images",
                  check=inside_data_folder),
        OptionDef("outdir_txt2img_grids", "outputs/txt2img-grids", "Output folder for txt2img grids", "Saving images",
                  check=inside_data_folder),
        OptionDef("outdir_img2img_grids", "outputs/img2img-grids", "Output folder for img2img grids", "Saving images",
                  check=inside_data_folder),
        OptionDef("grid_save", True, "Save grids made by scripts", "Saving images"),
        OptionDef("disabled_extensions", [], "Extensions switched off (applied at the next start)", "Extensions"),
        OptionDef("save_images_add_number", True, "Add number to file names", "Saving images"),
        OptionDef("enable_pnginfo", True, "Save infotext in PNG files", "Saving images"),
        OptionDef("eta_ancestral", 1.0, "Eta for ancestral samplers", "Sampler parameters", minimum=0.0, maximum=1.0),
        OptionDef("eta_ddim", 0.0, "Eta for DDIM", "Sampler parameters", minimum=0.0, maximum=1.0),
        OptionDef("eta_noise_seed_delta", 0, "Eta noise seed delta (ENSD)", "Sampler parameters", minimum=0,
                  maximum=2**32 - 1),
        OptionDef("s_noise", 1.0, "Sigma noise", "Sampler parameters", minimum=0.0, maximum=1.1),
        OptionDef("randn_source", "GPU", "Random number generator source", "Stable Diffusion",
                  choices=("GPU", "CPU", "NV")),
        OptionDef("show_progress_every_n_steps", 0, "Live preview every N steps (0: off)", "Live previews", minimum=0),
        OptionDef("initial_noise_multiplier", 1.0, "Noise multiplier for img2img", "img2img", minimum=0.0,
                  maximum=1.5),
        OptionDef("img2img_background_color", "#ffffff", "Colour under transparent parts of init images", "img2img"),
        OptionDef("inpainting_mask_weight", 1.0, "Inpainting conditioning mask strength", "img2img", minimum=0.0,
                  maximum=1.0),
        OptionDef("vae_tiling_threshold", 1536, "Tiled VAE above this many pixels per side (0: never)", "VAE",
                  minimum=0, maximum=16384),
        OptionDef("vae_tiling_enabled", False, "Always use tiled VAE encode/decode", "VAE"),
        OptionDef("face_restoration_model", "CodeFormer", "Face restoration model (\"Restore faces\")",
                  "Face restoration"),
        OptionDef("code_former_weight", 0.5, "CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                  "Face restoration", minimum=0.0, maximum=1.0),
    ]


class Options(Mapping[str, Any]):
    """A frozen snapshot of option values."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def replaced(self, changes: Mapping[str, Any]) -> Options:
        merged = dict(self._values)
        merged.update(changes)
        return Options(merged)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


@dataclass
class OptionsStore:
    """Owns ``config.json``: validates changes, persists atomically, hands out snapshots.

    A corrupt file is moved aside (``config.json.corrupt-N``) and defaults are used, with a warning.
    """

    path: Path
    defs: dict[str, OptionDef] = field(default_factory=dict)
    _current: Options = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._current = Options({k: d.default for k, d in self.defs.items()})
        self._current = self._current.replaced(self._read_file())

    @classmethod
    def open(cls, path: Path, defs: Iterable[OptionDef]) -> OptionsStore:
        return cls(path=path, defs={d.key: d for d in defs})

    def _read_file(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (OSError, ValueError) as exc:
            n = 0
            while (backup := self.path.with_name(f"{self.path.name}.corrupt-{n}")).exists():
                n += 1
            try:
                self.path.replace(backup)
            except OSError:
                backup = None  # type: ignore[assignment]
            log.warning("Settings file %s is unreadable (%s); using defaults. Backup: %s", self.path, exc, backup)
            return {}
        out: dict[str, Any] = {}
        for key, value in data.items():
            d = self.defs.get(key)
            if d is None:
                out[key] = value  # keep values of options from extensions not loaded now
                continue
            try:
                out[key] = d.coerce(value)
            except ValueError as exc:
                log.warning("Ignoring invalid saved option %s", exc)
        return out

    @property
    def current(self) -> Options:
        return self._current

    def validate(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Coerce ``changes``; raise :class:`OptionError` naming each bad key."""
        errors: dict[str, str] = {}
        out: dict[str, Any] = {}
        for key, value in changes.items():
            d = self.defs.get(key)
            if d is None:
                errors[key] = f"unknown option {key!r}; valid options: {', '.join(sorted(self.defs))}"
                continue
            try:
                out[key] = d.coerce(value)
            except ValueError as exc:
                errors[key] = str(exc)
        if errors:
            raise OptionError(errors)
        return out

    def update(self, changes: Mapping[str, Any]) -> Options:
        """Validate, apply and persist ``changes``; returns the new snapshot."""
        clean = self.validate(changes)
        with self._lock:
            new = self._current.replaced(clean)
            # written first: a failed write (StorageError) leaves both the file and the options unchanged
            atomic_write_text(self.path, json.dumps(new.as_dict(), indent=2, sort_keys=True))
            self._current = new
            return new

    def add_defs(self, defs: Iterable[OptionDef]) -> None:
        with self._lock:
            for d in defs:
                self.defs[d.key] = d
                if d.key not in self._current:
                    self._current = self._current.replaced({d.key: d.default})


class OptionError(ValueError):
    """Invalid option values; ``errors`` maps each key to a message."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(self.errors.values()))


def settings_field_names() -> list[str]:
    return [f.name for f in fields(Settings)]
