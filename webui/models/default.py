"""The embedded default model used when ``models/Stable-diffusion`` holds no checkpoint.

For now it is a tiny SD 1.x-shaped model with random weights, created locally on
first use and cached as a single-file checkpoint in the original layout (it
produces noise-like images, not pictures). A later issue replaces it with a
small trained model. The UI says plainly how to add a real checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_NAME = "builtin-tiny-sd1.safetensors"
DEFAULT_SEED = 20261127

HOW_TO_ADD = (
    "No checkpoint found, so the built-in tiny demo model is used (it makes abstract noise, not pictures). "
    "To generate real images, put a Stable Diffusion checkpoint such as v1-5-pruned-emaonly.safetensors "
    "(SD 1.5), a SD 2.x or an SDXL .safetensors file into models/Stable-diffusion and press the refresh button."
)


def ensure_default_checkpoint(cache_dir: Path) -> Path:
    """Path of the default checkpoint, building it on first use."""
    path = cache_dir / "default-model" / DEFAULT_NAME
    if path.exists():
        return path
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components

    log.info("Creating the built-in tiny default model at %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    components = build_tiny_components("sd1", seed=DEFAULT_SEED)
    tmp = path.with_suffix(".tmp.safetensors")
    save_single_file(components, tmp, metadata={"webui.builtin": "tiny-random"})
    tmp.replace(path)
    return path
