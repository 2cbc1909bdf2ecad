"""The default model used when ``models/Stable-diffusion`` holds no checkpoint.

It is the project's own "shapes" model (``models/default/shapes-128.safetensors``,
17 MB): an SD 1.x-architecture checkpoint in the original single-file layout,
trained by ``python -m webui.training`` on the synthetic shapes data set.  It
draws 128x128 pictures of a circle, square or triangle in a named colour at a
named place on a coloured background ("a red circle on the left, blue
background").  It is loaded through the same registry and pipeline as any
user checkpoint.

If the shipped file is missing (a damaged checkout), a tiny random-weight
model is built in the cache instead so the server still starts, with a log
line saying how to get the real one back.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = REPO_ROOT / "models" / "default" / "shapes-128.safetensors"
DEFAULT_SIZE = 64  # when the checkpoint does not say (its ``webui.native_size`` metadata)
FALLBACK_NAME = "builtin-tiny-sd1.safetensors"
FALLBACK_SEED = 20261127
EXAMPLE_PROMPT = "a large red circle on the left, blue background"

HOW_TO_ADD = (
    "No checkpoint found in models/Stable-diffusion, so the built-in shapes demo model is used: it draws 128x128 "
    f"pictures of simple shapes, e.g. \"{EXAMPLE_PROMPT}\" (colours: red, green, blue, yellow, purple, orange, "
    "white, black; shapes: circle, square, triangle; places: left, right, top, bottom, center). To generate real "
    "images, put a Stable Diffusion checkpoint such as v1-5-pruned-emaonly.safetensors (SD 1.5), a SD 2.x or an "
    "SDXL .safetensors file into models/Stable-diffusion and press the refresh button."
)


def default_checkpoint_path() -> Path:
    """Where the shipped default model lives."""
    return DEFAULT_FILE


def native_size(path: Path, fallback: int = DEFAULT_SIZE) -> int:
    """The picture size a built-in model was trained at (``webui.native_size`` in its metadata), else ``fallback``."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get("webui.native_size", "")
    except Exception:  # a missing or unreadable file: the caller's fallback is the answer
        return fallback
    return int(value) if value.isdigit() and 8 <= int(value) <= 4096 else fallback


def ensure_default_checkpoint(cache_dir: Path) -> Path:
    """Path of the default checkpoint: the shipped model, else a random fallback built once in ``cache_dir``."""
    if DEFAULT_FILE.exists():
        return DEFAULT_FILE
    path = cache_dir / "default-model" / FALLBACK_NAME
    log.warning("The shipped default model %s is missing (restore it with `git checkout -- %s`, or rebuild it "
                "with the command in README.md); using a random-weight stand-in that draws noise.",
                DEFAULT_FILE, DEFAULT_FILE.relative_to(REPO_ROOT))
    if path.exists():
        return path
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components

    path.parent.mkdir(parents=True, exist_ok=True)
    components = build_tiny_components("sd1", seed=FALLBACK_SEED)
    tmp = path.with_suffix(".tmp.safetensors")
    save_single_file(components, tmp, metadata={"webui.builtin": "tiny-random"})
    tmp.replace(path)
    return path
