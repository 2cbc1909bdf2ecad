"""Built-in plugin: VAE swapping (A1111's ``sd_vae``).

Choices: "Automatic" (a ``<checkpoint>.vae.*`` file beside the checkpoint or in the VAE folders,
else the checkpoint's own VAE), "None" (the checkpoint's own), or a file from ``models/VAE``. The
option is read per request, so ``override_settings: {"sd_vae": ...}`` applies to one request and the
next request puts its own choice back. The checkpoint's own VAE weights are kept on the CPU the first
time another VAE replaces them, so "None" restores them exactly. That copy, and which file is in the VAE
now, belong to the model's VAE module (weak keys): a model that is dropped takes them along, and a model
loaded later never finds another one's. Infotext: ``VAE hash``, ``VAE``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui.errors import ModelError, UnknownChoice
from webui.hookspecs import hookimpl
from webui.models.vae_files import VaeFile, automatic_vae, list_vae_files, vae_weights
from webui.settings import OptionDef

log = logging.getLogger(__name__)
AUTOMATIC, NONE = "Automatic", "None"


@dataclass
class _VaeState:
    """What the plugin knows of one model's VAE module."""

    own: dict[str, torch.Tensor] | None = None  # the checkpoint's own VAE weights (CPU), once replaced
    applied: Path | None = None  # the VAE file now in it (None: its own)


class VaePlugin:
    def __init__(self) -> None:
        self.ctx: Any = None
        self.files: list[VaeFile] = []
        #: per VAE module, weakly: gone with the model, so neither memory nor a reused id outlives it
        self._states: weakref.WeakKeyDictionary[torch.nn.Module, _VaeState] = weakref.WeakKeyDictionary()
        self._cache: OrderedDict[tuple[Path, str], dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[str]:
        """The option's choices (the folders are scanned again: a cheap directory listing)."""
        self.refresh()
        return [AUTOMATIC, NONE, *[f.name for f in self.files]]

    def check(self, key: str, value: Any) -> None:
        """A new value must name a VAE that is there (saved values are read before the folders are
        scanned, so they pass and an unknown one falls back to the checkpoint's own VAE with a warning)."""
        if self.ctx is None or value in (AUTOMATIC, NONE):
            return
        names = self.choices()
        if value not in names and not any(value == f.path.stem for f in self.files):
            raise UnknownChoice(key, "VAE", value, names)

    @hookimpl
    def register_settings(self) -> list[OptionDef]:
        return [OptionDef("sd_vae", AUTOMATIC, "SD VAE", "VAE", choices_fn=self.choices, check=self.check,
                          help="Automatic: a VAE file named after the checkpoint, else the checkpoint's own VAE."),
                OptionDef("sd_vae_checkpoint_cache", 0, "VAE files kept in RAM", "VAE", minimum=0, maximum=10,
                          help="Switching back to a VAE kept in RAM skips reading it from disk.")]

    @hookimpl
    def startup(self, ctx: Any) -> None:
        self.ctx = ctx
        self.refresh()

    def refresh(self) -> list[VaeFile]:
        self.files = list_vae_files(self.ctx.settings.vae_dirs()) if self.ctx is not None else []
        return self.files

    def _choose(self, request: Any, model: Any, opts: Any) -> VaeFile | None:
        name = str(opts.get("sd_vae", AUTOMATIC) or AUTOMATIC)
        if name == AUTOMATIC:
            return automatic_vae(model.info.path, self.files)
        if name == NONE:
            return None
        for f in self.files:
            if name in (f.name, f.path.stem):
                return f
        if "sd_vae" in (request.override_settings or {}):
            raise UnknownChoice("override_settings.sd_vae", "VAE", name, self.choices())
        log.warning("The saved VAE %r is not in models/VAE any more; using the checkpoint's own", name)
        return None

    def _weights(self, vae_file: VaeFile, config: Any) -> dict[str, torch.Tensor]:
        key = (vae_file.path, str(dict(config)))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        weights = vae_weights(vae_file.path, config)
        size = int(self.ctx.options.current.get("sd_vae_checkpoint_cache", 0)) if self.ctx is not None else 0
        if size > 0:
            self._cache[key] = weights
            while len(self._cache) > size:
                self._cache.popitem(last=False)
        return weights

    def apply(self, model: Any, vae_file: VaeFile | None) -> None:
        """Put ``vae_file``'s weights (None: the checkpoint's own) into ``model``'s VAE."""
        vae = model.components.vae
        with self._lock:
            state = self._states.setdefault(vae, _VaeState())
            wanted = vae_file.path if vae_file is not None else None
            if state.applied == wanted:
                return
            if state.own is None:
                state.own = {k: v.detach().to("cpu", copy=True) for k, v in vae.state_dict().items()}
            weights = state.own if vae_file is None else self._weights(vae_file, vae.config)
            try:
                missing, unexpected = vae.load_state_dict(weights, strict=False)
                if missing or unexpected:
                    raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
            except RuntimeError as exc:
                vae.load_state_dict(state.own)
                state.applied = None
                raise ModelError(vae_file.path if vae_file else model.info.path,
                                 f"this VAE does not fit the checkpoint's VAE ({model.spec.label}): {exc}") from exc
            state.applied = wanted
            log.info("VAE: %s", vae_file.name if vae_file else f"the checkpoint's own ({model.info.name})")

    @hookimpl
    def prepare_model(self, request: Any, model: Any, opts: Any) -> dict[str, Any] | None:
        vae_file = self._choose(request, model, opts)
        if vae_file is not None and model.spec.family == "sdxl" and "xl" not in vae_file.name.lower() \
                and "sd_vae" in (request.override_settings or {}):
            log.warning("VAE %s does not look like an SDXL VAE (no 'xl' in its name)", vae_file.name)
        self.apply(model, vae_file)
        if vae_file is None:
            return None
        info = {"VAE": vae_file.name}
        if vae_file.path.is_file():
            info = {"VAE hash": self.ctx.models.hashes.sha256(vae_file.path)[:10], **info}
        return info

    @hookimpl
    def api_routes(self, router: Any, ctx: Any) -> None:
        plugin = self

        @router.get("/sdapi/v1/sd-vae", tags=["sdapi"])
        def sd_vae() -> list[dict]:
            return [{"model_name": f.name, "filename": str(f.path)} for f in plugin.files]

        @router.post("/sdapi/v1/refresh-vae", tags=["sdapi"])
        def refresh_vae() -> dict:
            plugin.refresh()
            return {}


def make_plugin() -> VaePlugin:
    return VaePlugin()
