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
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui.cli_flags import add_ignored_flags, ignored_flag_notes, unknown_flags_message
from webui.errors import UnknownChoice
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
        "text_encoder": "text_encoder",
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
    bf16: bool = False  # --precision bf16: bfloat16 instead of float16 on the GPU
    channels_last: bool = False  # --opt-channelslast: U-Net and VAE weights in channels-last layout
    compile: bool = False  # --compile: torch.compile the U-Net (webui.models.speedups)
    compile_backend: str = "inductor"  # torch.compile's backend (tests use "aot_eager": no C++ build)
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
    model_wait: float = 120.0  # seconds a generation waits for a checkpoint that is loading (then 503)
    localizations_dir: Path | None = None  # extra folder with localization files (A1111's --localizations-dir)
    localization: str | None = None  # --localization NAME: sets the option ``localization`` at start
    theme: str | None = None  # --theme light|dark: sets the option ``theme_mode`` at start (A1111's flag)
    workers: int = 0  # --workers N: generations run on N Ray workers started on this machine (0: in this process)
    ray_address: str | None = None  # --ray-address: the Ray cluster whose GPUs run the generations
    flag_notes: tuple[str, ...] = ()  # one line per A1111 flag given that has no effect here (logged at start)

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
    p = argparse.ArgumentParser(prog="launch.py", description="Stable Diffusion web UI", allow_abbrev=False)
    p.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 instead of 127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint to load at start")
    p.add_argument("--ckpt-dir", type=Path, default=None, help="extra folder with checkpoints")
    p.add_argument("--lora-dir", type=Path, default=None, help="extra folder with LoRA files")
    p.add_argument("--data-dir", type=Path, default=None, help="folder for outputs, config, cache")
    p.add_argument("--models-dir", type=Path, default=None, help="folder holding the model folders")
    p.add_argument("--api", action="store_true", help="serve /sdapi/v1 beside the UI (always on)")
    p.add_argument("--nowebui", action="store_true", help="serve the API only")
    p.add_argument("--use-cpu", nargs="*", default=None, metavar="MODULE",
                   help="run on the CPU even if a GPU is present (A1111's module names, e.g. 'all', are accepted)")
    p.add_argument("--no-half", action="store_true", help="use float32 on the GPU")
    p.add_argument("--no-half-vae", action="store_true", help="keep the VAE in float32 (no NaN retries needed)")
    p.add_argument("--precision", choices=("autocast", "half", "full", "bf16"), default="autocast",
                   help="full: float32 everywhere (same as --no-half); bf16: bfloat16 on the GPU instead of float16")
    p.add_argument("--medvram", action="store_true",
                   help="move model parts to the GPU only while they run (CPU: keep U-Net weights in float16)")
    p.add_argument("--lowvram", action="store_true",
                   help="move weights to the GPU layer by layer, slowest (CPU: text encoders in float16 too)")
    p.add_argument("--opt-channelslast", action="store_true",
                   help="U-Net and VAE weights in channels-last memory layout (faster convolutions on many GPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net: faster steps after a compile at each new size (cached on disk)")
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
    p.add_argument("--model-wait", type=float, default=120.0,
                   help="seconds a generation waits for a checkpoint that is still loading (then 503 with Retry-After)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="run generations on N Ray workers on this machine, one per GPU (with --use-cpu: N CPU "
                        "workers); installs requirements-ray.txt on first use")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join the Ray cluster at ADDR (started with 'ray start --head') and run generations on "
                        "its GPUs (one worker each, or --workers N)")
    p.add_argument("--localizations-dir", type=Path, default=None, metavar="DIR",
                   help="extra folder with localization files (A1111's JSON format; the file name is the name)")
    p.add_argument("--localization", default=None, metavar="NAME",
                   help="UI language to use from now on, e.g. zh_CN (sets the option 'localization'; None: English)")
    p.add_argument("--theme", choices=("light", "dark"), default=None,
                   help="colour theme to use from now on (sets the option 'theme_mode')")
    add_ignored_flags(p)
    return p


#: A1111's ``--use-cpu`` names that move the model to the CPU ("sd" is the Stable Diffusion model).
USE_CPU_MODEL = ("all", "sd", "stable-diffusion")


def _use_cpu(names: list[str] | None) -> bool:
    """``--use-cpu`` alone (ours) or with A1111's ``all`` / ``sd``: everything runs on the CPU."""
    return names is not None and (not names or any(n.lower() in USE_CPU_MODEL for n in names))


def _use_cpu_notes(names: list[str] | None) -> tuple[str, ...]:
    other = [n for n in names or () if n.lower() not in USE_CPU_MODEL]
    if not other:
        return ()
    return (f"--use-cpu {' '.join(other)}: no effect here; upscalers, face restoration and the rest run on the "
            "model's device (give 'all' or 'sd' to use the CPU)",)


def parse_args(argv: Iterable[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from command-line arguments (and ``WEBUI_EXTENSIONS``).

    An unknown flag (or a stray value) exits with status 2 and a message naming it and the closest known
    flag, as A1111 does; A1111 flags with no effect here are accepted and listed in ``flag_notes``."""
    env = os.environ if env is None else env
    parser = build_parser()
    ns, unknown = parser.parse_known_args(list(argv) if argv is not None else None)
    if unknown:
        parser.error(unknown_flags_message(unknown, parser))
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
        use_cpu=_use_cpu(ns.use_cpu),
        no_half=ns.no_half or ns.precision == "full",
        bf16=ns.precision == "bf16",
        no_half_vae=ns.no_half_vae,
        memory_mode="lowvram" if ns.lowvram else "medvram" if ns.medvram else "none",
        attention=ns.attention,
        channels_last=ns.opt_channelslast,
        compile=ns.compile,
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
        model_wait=max(0.0, ns.model_wait),
        localizations_dir=ns.localizations_dir.resolve() if ns.localizations_dir else None,
        localization=ns.localization,
        theme=ns.theme,
        workers=max(0, ns.workers),
        ray_address=(ns.ray_address or "").strip() or None,
        flag_notes=ignored_flag_notes(ns) + _use_cpu_notes(ns.use_cpu),
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
    #: for an A1111 key that is accepted but changes nothing here: why (docs/api.md lists these; the
    #: Settings tab leaves them out). Empty for options that mean something.
    note: str = ""
    #: one line the Settings tab shows under the control: what the option does (plugins give their own)
    help: str = ""

    def coerce(self, value: Any) -> Any:
        """Return ``value`` converted to this option's type, or raise ValueError."""
        kind = type(self.default)
        if self.default is None:  # A1111's "no value yet" options (sd_model_checkpoint, upscaler_for_img2img)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{self.key}: expected a string or null, got {value!r}")
            out: Any = value
        elif kind is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.lower() in ("true", "false"):
                out = value.lower() == "true"
            else:
                raise ValueError(f"{self.key}: expected true/false, got {value!r}")
        elif kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(f"{self.key}: expected a number, got {value!r}")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{self.key}: expected a number, got {value!r}") from None
            if kind is int and math.isfinite(number) and not number.is_integer():
                raise ValueError(f"{self.key}: expected a whole number, got {value!r}")
            out = int(number) if kind is int and math.isfinite(number) else number
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
            raise UnknownChoice(self.key, "value", out, map(str, self.choices))
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


def inside_data_folder_or_empty(key: str, value: Any) -> None:
    """As :func:`inside_data_folder`, but empty means "use the per-mode folders" (A1111's outdir_samples)."""
    if str(value) != "":
        inside_data_folder(key, value)


#: choices of the option ``theme_mode``
THEME_MODES: tuple[str, ...] = ("Auto", "Light", "Dark")

#: image formats ``samples_format`` / ``grid_format`` accept (A1111 offers these in its dropdown)
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "avif")


#: The Settings tab's help line of each core option (:attr:`OptionDef.help`).
CORE_HELP: Mapping[str, str] = MappingProxyType({
    "samples_save": "Write every generated image to the output folder; off: images are only shown.",
    "samples_format": "png keeps the infotext in a text chunk; jpg, webp and avif carry it in EXIF.",
    "samples_filename_pattern": "Tags in square brackets ([seed], [prompt], [date], [model_name], ...) are "
                                "replaced for each image.",
    "save_images_add_number": "File names start with a running number (00012-...), as in A1111.",
    "save_images_replace_action": "What happens when a file of the same name exists already.",
    "grid_save": "Write the grids that scripts such as X/Y/Z plot make.",
    "grid_format": "The file type of saved grids.",
    "grid_extended_filename": "The grid's file name gets its seed and prompt.",
    "use_original_name_batch": "Each output of Extras' batch keeps the name of its input file.",
    "jpeg_quality": "1-100: higher is better quality and a larger file.",
    "webp_lossless": "WEBP files without compression losses (larger files).",
    "img_max_size_mp": "A script asking for a larger grid gets an error instead.",
    "save_init_img": "Keep a copy of each img2img input image in the init images folder.",
    "outdir_samples": "One folder for the images of every mode, inside the data folder.",
    "outdir_txt2img_samples": "Relative to the data folder; a folder outside it is refused.",
    "outdir_img2img_samples": "Relative to the data folder; a folder outside it is refused.",
    "outdir_extras_samples": "Relative to the data folder; a folder outside it is refused.",
    "outdir_grids": "One folder for the grids of every mode, inside the data folder.",
    "outdir_txt2img_grids": "Relative to the data folder; a folder outside it is refused.",
    "outdir_img2img_grids": "Relative to the data folder; a folder outside it is refused.",
    "outdir_init_images": "Relative to the data folder; a folder outside it is refused.",
    "save_to_dirs": "Images go into subfolders named by the subfolder name pattern (the date unless changed).",
    "grid_save_to_dirs": "Grids go into subfolders named by the subfolder name pattern.",
    "directories_filename_pattern": "Tags such as [date], [model_name] or [prompt_words] name the subfolder.",
    "directories_max_prompt_words": "How many words of the prompt [prompt_words] takes.",
    "enable_pnginfo": "The parameters travel with the picture: PNG Info and the paste button read them back.",
    "save_txt": "A .txt file beside each image holds its parameters.",
    "add_model_name_to_info": "The infotext names the checkpoint (Model: ...).",
    "add_model_hash_to_info": "The infotext carries the checkpoint's short hash (Model hash: ...).",
    "add_vae_name_to_info": "The infotext names a VAE chosen separately (VAE: ...).",
    "add_vae_hash_to_info": "The infotext carries that VAE's short hash (VAE hash: ...).",
    "add_version_to_infotext": "The infotext ends with the program's version (Version: ...).",
    "sd_model_checkpoint": "The checkpoint that generates: the same choice as at the top of the page.",
    "sd_checkpoint_cache": "Switching back to a checkpoint kept in RAM skips reading it from disk.",
    "forge_additional_modules": "Separate VAE and text encoder files for SD 3.x and FLUX.1 checkpoints.",
    "CLIP_stop_at_last_layers": "Use the text encoder's output this many layers before its end (2 suits many "
                                "anime models).",
    "training_queue_policy": "Refuse lets API clients try another server instead of waiting.",
    "t5_on_cpu": "For GPUs with little memory; prompts are encoded more slowly.",
    "fp8_storage": "Saves memory for a small loss of quality; the computations still run in 16 bits.",
    "emphasis": "How (word:1.2) weights apply: Original is A1111's, No norm skips the mean restore, None ignores "
                "them.",
    "comma_padding_backtrack": "A prompt over 75 tokens is split at a comma within this many tokens of the limit.",
    "randn_source": "Where seeds' noise is made: GPU (the device), CPU (the same pictures on every device) or NV "
                    "(NVIDIA's noise on any device).",
    "tiling": "Pictures that tile seamlessly, for requests that do not set tiling themselves.",
    "sdxl_crop_top": "SDXL's crop conditioning: 0 asks for a picture that is not cropped.",
    "sdxl_crop_left": "SDXL's crop conditioning: 0 asks for a picture that is not cropped.",
    "eta_ancestral": "The noise added at each step of ancestral and SDE samplers (1: the usual amount).",
    "eta_ddim": "The noise of DDIM's steps (0: none, the same picture every time).",
    "eta_noise_seed_delta": "Added to the seed of the samplers' extra noise; 31337 reproduces NovelAI's pictures.",
    "s_churn": "Noise added and removed again at each step (0: none).",
    "s_tmin": "Churn applies only at noise levels above this.",
    "s_tmax": "Churn applies only at noise levels below this.",
    "s_noise": "The scale of the churn noise (1: standard).",
    "sd_noise_schedule": "Zero Terminal SNR makes the first step pure noise, for models trained that way.",
    "auto_backcompat": "Pasting an older infotext sets the options its version used, so the picture comes out "
                       "the same.",
    "use_old_emphasis_implementation": "To reproduce pictures made with A1111 before 1.0.",
    "use_old_scheduling": "To reproduce prompt editing ([a:b:0.5]) of A1111 before 1.6.",
    "use_downcasted_alpha_bar": "To reproduce pictures made with A1111 before 1.7.",
    "show_progress_every_n_steps": "How often the picture being made is shown while it generates.",
    "initial_noise_multiplier": "Scales the noise added to the input image (below 1: closer to the input).",
    "img2img_extra_noise": "Noise added to the input image before sampling; can bring back detail.",
    "img2img_color_correction": "The result's colours are matched to the input image's (useful for loopback).",
    "img2img_fix_steps": "Off: img2img runs steps x denoising strength steps; on: the steps as set.",
    "img2img_background_color": "Transparent parts of an input image are filled with this colour.",
    "inpainting_mask_weight": "For inpainting models: 1 masks the original image fully (the default), 0 not at "
                              "all.",
    "upscaler_for_img2img": "Used when img2img must enlarge the input image to the size asked for.",
    "face_restoration": "Faces are restored in every generation whose request does not say.",
    "face_restoration_model": "The model that \"Restore faces\" uses.",
    "code_former_weight": "Lower values change the face more.",
    "vae_tiling_threshold": "Larger pictures are decoded in tiles to save memory.",
    "vae_tiling_enabled": "Saves memory on every picture; a little slower.",
    "disabled_extensions": "The Extensions tab switches them on and off.",
    "localization": "A translation of the UI; the files come from localizations/ and from extensions.",
    "theme_mode": "Light or Dark for everyone using this server.",
    "keyedit_precision_attention": "Ctrl+Up / Ctrl+Down in a prompt change a (word:weight) by this much.",
    "keyedit_precision_extra": "Ctrl+Up / Ctrl+Down in a prompt change a <lora:name:weight> by this much.",
    "keyedit_delimiters": "The characters that end the word Ctrl+Up / Ctrl+Down take when nothing is selected.",
    "keyedit_move": "Alt+Left / Alt+Right in a prompt move the comma-separated element at the caret.",
})


def core_option_defs() -> list[OptionDef]:
    """The options the core itself owns: A1111 keys with A1111's defaults, in A1111's sections, each with its help
    line (:data:`CORE_HELP`).

    Every other A1111 1.10 key is accepted too (:mod:`webui.a1111_options`) but changes nothing here."""
    return [replace(d, help=CORE_HELP.get(d.key, d.help)) for d in _core_defs()]


def _core_defs() -> list[OptionDef]:
    saving, paths, dirs = "Saving images/grids", "Paths for saving", "Saving to a directory"
    sd, samplers, compat, i2i = "Stable Diffusion", "Sampler parameters", "Compatibility", "img2img"

    def outdir(key: str, default: str, label: str, optional: bool = False) -> OptionDef:
        return OptionDef(key, default, label, paths,
                         check=inside_data_folder_or_empty if optional else inside_data_folder)

    return [
        # Saving images/grids
        OptionDef("samples_save", True, "Always save all generated images", saving),
        OptionDef("samples_format", "png", "File format for images", saving, choices=IMAGE_FORMATS),
        OptionDef("samples_filename_pattern", "", "Images filename pattern (empty: [seed], or [seed]-[prompt_spaces] "
                  "when not saving to subfolders)", saving),
        OptionDef("save_images_add_number", True, "Add number to file names", saving),
        OptionDef("save_images_replace_action", "Replace", "Saving the image to an existing file", saving,
                  choices=("Replace", "Add number suffix")),
        OptionDef("grid_save", True, "Save grids made by scripts", saving),
        OptionDef("grid_format", "png", "File format for grids", saving, choices=IMAGE_FORMATS),
        OptionDef("grid_extended_filename", False, "Add seed and prompt to grid file names", saving),
        OptionDef("use_original_name_batch", True, "Extras batch: keep the original file names", saving),
        OptionDef("jpeg_quality", 80, "Quality for saved JPEG, WEBP and AVIF images", saving, minimum=1, maximum=100),
        OptionDef("webp_lossless", False, "Lossless WEBP images", saving),
        OptionDef("img_max_size_mp", 200.0, "Largest grid a script may make, in megapixels", saving, minimum=0.0),
        OptionDef("save_init_img", False, "Save init images of img2img", saving),
        # Paths for saving (relative to the data folder)
        outdir("outdir_samples", "", "Output folder for images (empty: the per-mode folders below)", optional=True),
        outdir("outdir_txt2img_samples", "outputs/txt2img-images", "Output folder for txt2img"),
        outdir("outdir_img2img_samples", "outputs/img2img-images", "Output folder for img2img"),
        outdir("outdir_extras_samples", "outputs/extras-images", "Output folder for Extras"),
        outdir("outdir_grids", "", "Output folder for grids (empty: the per-mode folders below)", optional=True),
        outdir("outdir_txt2img_grids", "outputs/txt2img-grids", "Output folder for txt2img grids"),
        outdir("outdir_img2img_grids", "outputs/img2img-grids", "Output folder for img2img grids"),
        outdir("outdir_init_images", "outputs/init-images", "Output folder for img2img init images"),
        # Saving to a directory
        OptionDef("save_to_dirs", True, "Save images to a subfolder", dirs),
        OptionDef("grid_save_to_dirs", True, "Save grids to a subfolder", dirs),
        OptionDef("directories_filename_pattern", "[date]", "Subfolder name pattern", dirs),
        OptionDef("directories_max_prompt_words", 8, "Most prompt words for [prompt_words]", dirs, minimum=1,
                  maximum=20),
        # Infotext
        OptionDef("enable_pnginfo", True, "Write infotext into the image files", "Infotext"),
        OptionDef("save_txt", False, "Write a .txt file with the infotext next to every image", "Infotext"),
        OptionDef("add_model_name_to_info", True, "Add model name to infotext", "Infotext"),
        OptionDef("add_model_hash_to_info", True, "Add model hash to infotext", "Infotext"),
        OptionDef("add_vae_name_to_info", True, "Add VAE name to infotext", "Infotext"),
        OptionDef("add_vae_hash_to_info", True, "Add VAE hash to infotext", "Infotext"),
        OptionDef("add_version_to_infotext", True, "Add program version to infotext", "Infotext"),
        # Stable Diffusion
        OptionDef("sd_model_checkpoint", None, "Stable Diffusion checkpoint", sd),
        OptionDef("sd_checkpoint_cache", 0, "Checkpoints to keep in RAM besides the current one", sd, minimum=0,
                  maximum=10),
        OptionDef("forge_additional_modules", [], "VAE / Text encoder: separate files that complete an SD 3.x or "
                  "FLUX.1 checkpoint (Forge's key; a part without a choice is matched automatically when exactly "
                  "one file fits)", sd),
        OptionDef("CLIP_stop_at_last_layers", 1, "Clip skip", sd, minimum=1, maximum=12),
        OptionDef("training_queue_policy", "Wait", "While a training run holds the device, generations wait behind "
                  "it (Wait) or are refused at once with 503 (Refuse)", "Training", choices=("Wait", "Refuse")),
        OptionDef("t5_on_cpu", False, "Run T5-XXL (SD 3.x, FLUX.1) on the CPU while the rest is on the GPU (about "
                  "9 GB less VRAM, slower prompts; applied at the next model load)", "Optimizations"),
        OptionDef("fp8_storage", "Disable", "Keep the U-Net's weights in FP8 (half the memory of fp16; the checkpoint "
                  "is loaded again when this changes)", "Optimizations",
                  choices=("Disable", "Enable for SDXL", "Enable")),
        OptionDef("emphasis", "Original", "Emphasis mode", sd, choices=("Original", "No norm", "None")),
        OptionDef("comma_padding_backtrack", 20, "Prompt word wrap length limit", sd, minimum=0, maximum=74),
        OptionDef("randn_source", "GPU", "Random number generator source", sd, choices=("GPU", "CPU", "NV")),
        OptionDef("tiling", False, "Tiling (when a request does not say)", sd),
        OptionDef("sdxl_crop_top", 0, "SDXL crop top coordinate", "Stable Diffusion XL"),
        OptionDef("sdxl_crop_left", 0, "SDXL crop left coordinate", "Stable Diffusion XL"),
        # Sampler parameters
        OptionDef("eta_ancestral", 1.0, "Eta for ancestral and SDE samplers", samplers, minimum=0.0, maximum=1.0),
        OptionDef("eta_ddim", 0.0, "Eta for DDIM", samplers, minimum=0.0, maximum=1.0),
        OptionDef("eta_noise_seed_delta", 0, "Eta noise seed delta (ENSD)", samplers, minimum=0, maximum=2**32 - 1),
        OptionDef("s_churn", 0.0, "Sigma churn (Euler, Heun, DPM2)", samplers, minimum=0.0, maximum=100.0),
        OptionDef("s_tmin", 0.0, "Sigma tmin", samplers, minimum=0.0, maximum=10.0),
        OptionDef("s_tmax", 0.0, "Sigma tmax (0 = infinity)", samplers, minimum=0.0, maximum=999.0),
        OptionDef("s_noise", 1.0, "Sigma noise", samplers, minimum=0.0, maximum=1.1),
        OptionDef("sd_noise_schedule", "Default", "Noise schedule for sampling (Zero Terminal SNR: for models "
                  "trained on it; checkpoints marked ztsnr use it anyway)", samplers,
                  choices=("Default", "Zero Terminal SNR")),
        # Compatibility
        OptionDef("auto_backcompat", True, "Turn on compatibility options for infotext of older A1111 versions",
                  compat),
        OptionDef("use_old_emphasis_implementation", False, "Old emphasis implementation (A1111 before 1.0)",
                  compat),
        OptionDef("use_old_scheduling", False, "Old prompt editing timelines (A1111 before 1.6)", compat),
        OptionDef("use_downcasted_alpha_bar", False, "Downcast alphas_cumprod to float16 (A1111 before 1.7)",
                  compat),
        # Live previews
        OptionDef("show_progress_every_n_steps", 10, "Live preview every N steps (0: off, -1: after each batch)",
                  "Live previews", minimum=-1, maximum=32),
        # img2img
        OptionDef("initial_noise_multiplier", 1.0, "Noise multiplier for img2img", i2i, minimum=0.0, maximum=1.5),
        OptionDef("img2img_extra_noise", 0.0, "Extra noise multiplier for img2img and hires fix", i2i, minimum=0.0,
                  maximum=1.0),
        OptionDef("img2img_color_correction", False, "Colour-correct img2img results to the init image", i2i),
        OptionDef("img2img_fix_steps", False, "img2img runs exactly the steps asked for", i2i),
        OptionDef("img2img_background_color", "#ffffff", "Colour under transparent parts of init images", i2i),
        OptionDef("inpainting_mask_weight", 1.0, "Inpainting conditioning mask strength", i2i, minimum=0.0,
                  maximum=1.0),
        OptionDef("upscaler_for_img2img", None, "Upscaler for img2img (empty: Lanczos)", "Upscaling"),
        # Face restoration
        OptionDef("face_restoration", False, "Restore faces (when a request does not say)", "Face restoration"),
        OptionDef("face_restoration_model", "CodeFormer", "Face restoration model (\"Restore faces\")",
                  "Face restoration"),
        OptionDef("code_former_weight", 0.5, "CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                  "Face restoration", minimum=0.0, maximum=1.0),
        # ours
        OptionDef("vae_tiling_threshold", 1536, "Tiled VAE above this many pixels per side (0: never)", "VAE",
                  minimum=0, maximum=16384),
        OptionDef("vae_tiling_enabled", False, "Always use tiled VAE encode/decode", "VAE"),
        OptionDef("disabled_extensions", [], "Extensions switched off (applied at the next start)", "Extensions"),
        # User interface (both take effect at the next page load)
        OptionDef("localization", "None", "Localization (UI language; applied at the next page load)",
                  "User interface"),
        OptionDef("theme_mode", "Auto", "Colour theme (applied at the next page load; Auto follows the browser; "
                  "?__theme=dark in the address wins)", "User interface", choices=THEME_MODES),
        # Prompt editing (the page's keys, static/keys.js; applied at the next page load)
        OptionDef("keyedit_precision_attention", 0.1, "Ctrl+Up/Down step for (text:weight)", "Prompt editing",
                  minimum=0.01, maximum=0.2),
        OptionDef("keyedit_precision_extra", 0.05, "Ctrl+Up/Down step for an extra network's weight", "Prompt editing",
                  minimum=0.01, maximum=0.2),
        OptionDef("keyedit_delimiters", ".,\\/!?%^*;:{}=`~() ", "Word delimiters for Ctrl+Up/Down", "Prompt editing"),
        OptionDef("keyedit_delimiters_whitespace", ["Tab", "Carriage Return", "Line Feed"],
                  "Whitespace delimiters for Ctrl+Up/Down", "Prompt editing"),
        OptionDef("keyedit_move", True, "Alt+Left/Right moves prompt elements", "Prompt editing"),
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

    def follow(self, values: Mapping[str, Any]) -> Options:
        """Take ``values`` (another store's snapshot: a generation worker follows the server's options) as the
        current options, as they are: nothing is validated and the file is not written."""
        with self._lock:
            self._current = Options(values)
            return self._current


class OptionError(ValueError):
    """Invalid option values; ``errors`` maps each key to a message."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(self.errors.values()))
