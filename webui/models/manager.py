"""Checkpoint registry (listing, hashes) and the currently loaded model.

Checkpoints are single files (``.safetensors``; ``.ckpt``/``.pt`` read only with
``torch.load(weights_only=True)``) or diffusers folders (holding
``model_index.json``), found recursively in ``models/Stable-diffusion`` and
``--ckpt-dir``.  The short hash is the first 10 hex digits of the file's
SHA-256 (A1111), computed once and cached in ``cache/hashes.json``.

A failed load raises :class:`webui.models.errors.ModelError` and leaves the
previous model loaded and serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.errors import ModelError, UnknownChoice
from webui.fileio import atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint on disk, with A1111's naming."""

    path: Path
    name: str  # path relative to its models folder, e.g. "sd15/v1-5.safetensors"
    is_folder: bool = False
    builtin: bool = False  # the embedded default model

    @property
    def model_name(self) -> str:
        """File name without extension (A1111 ``model_name``)."""
        n = self.name[: -len(self.path.suffix)] if not self.is_folder and self.path.suffix else self.name
        return n.replace("\\", "/").rsplit("/", 1)[-1] if "/" in n else n

    def title(self, short_hash: str | None) -> str:
        return f"{self.name} [{short_hash}]" if short_hash else self.name


class HashCache:
    """SHA-256 of files, cached by (path, size, mtime) in a JSON file."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._data: dict[str, dict] = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(self._data, dict):
                self._data = {}
        except (OSError, ValueError):
            self._data = {}

    @staticmethod
    def _stamp(path: Path) -> list:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]

    def cached(self, path: Path) -> str | None:
        entry = self._data.get(str(path))
        try:
            if entry and entry.get("stamp") == self._stamp(path):
                return entry["sha256"]
        except OSError:
            return None
        return None

    def sha256(self, path: Path) -> str:
        hit = self.cached(path)
        if hit:
            return hit
        digest = _sha256_path(path)
        with self._lock:
            self._data[str(path)] = {"stamp": self._stamp(path), "sha256": digest}
            try:
                atomic_write_text(self.path, json.dumps(self._data, indent=1))
            except OSError as exc:
                log.warning("Could not write hash cache %s: %s", self.path, exc)
        return digest


def _sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def list_checkpoints(dirs: Iterable[Path]) -> list[CheckpointInfo]:
    """All checkpoints under ``dirs`` (recursive), sorted by name."""
    found: dict[Path, CheckpointInfo] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        folders = {p.parent for p in root.rglob("model_index.json")}
        for folder in folders:
            found[folder.resolve()] = CheckpointInfo(folder, folder.relative_to(root).as_posix(), is_folder=True)
        for p in root.rglob("*"):
            if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file():
                if any(parent in folders for parent in p.parents):
                    continue
                found.setdefault(p.resolve(), CheckpointInfo(p, p.relative_to(root).as_posix()))
    return sorted(found.values(), key=lambda c: c.name.lower())


@dataclass
class LoadedModel:
    """A checkpoint loaded onto the device."""

    info: CheckpointInfo
    sha256: str
    components: object  # webui.models.components.SDComponents
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    fp8: bool = False  # the U-Net's Linear/Conv weights are kept in fp8 (option fp8_storage)
    modules: tuple[Path, ...] = ()  # SD 3.x / FLUX.1: the "VAE / Text encoder" files chosen when it was loaded

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return self.info.title(self.short_hash)

    @property
    def spec(self):
        return self.components.spec


class ModelManager:
    """Lists checkpoints and owns the current model; loads are serialised by a lock."""

    def __init__(
        self,
        dirs: list[Path],
        hash_cache: HashCache,
        device: torch.device,
        dtype: torch.dtype,
        default_checkpoint: Callable[[], Path] | None = None,
        on_loaded: Callable[[LoadedModel], None] | None = None,
        vae_dtype: torch.dtype | None = None,
        cache_size: Callable[[], int] | None = None,
        memory_mode: str = "none",
        attention: str = "sdpa",
        fp8_storage: Callable[[], str] | None = None,
        extra_checkpoints: Iterable[Path] = (),
        module_files: Callable[[], list] | None = None,
        t5_on_cpu: Callable[[], bool] | None = None,
        channels_last: bool = False,
        compile_backend: str | None = None,
    ):
        self.dirs = dirs
        self.extra_checkpoints = [Path(p) for p in extra_checkpoints]  # --ckpt: a file kept outside the folders
        self.hashes = hash_cache
        self.device = device
        self.dtype = dtype
        self._default_checkpoint = default_checkpoint
        self._on_loaded = on_loaded
        self.vae_dtype = vae_dtype
        self.memory_mode = memory_mode
        self.attention = attention
        self._cache_size = cache_size or (lambda: 0)
        self._fp8_storage = fp8_storage or (lambda: "Disable")  # A1111's option: Disable / Enable for SDXL / Enable
        self._cache: OrderedDict[Path, LoadedModel] = OrderedDict()  # recently used models, kept in RAM
        self._aux: LoadedModel | None = None  # the refiner
        self._lock = threading.RLock()
        self._current: LoadedModel | None = None
        self.loading: CheckpointInfo | None = None  # the checkpoint being read now, if any
        self._families: dict[tuple[Path, int], str | None] = {}  # (path, mtime) -> family, read from headers
        self._checkpoints: list[CheckpointInfo] = []
        self._module_files = module_files or (lambda: [])  # VAE and text-encoder files (webui.models.modules)
        self._t5_on_cpu = t5_on_cpu or (lambda: False)  # option t5_on_cpu, read at each load
        self.channels_last = channels_last  # --opt-channelslast
        self.compile_backend = compile_backend  # --compile: torch.compile's backend, None = off
        self.refresh()

    # --- registry ---------------------------------------------------------------
    def refresh(self) -> list[CheckpointInfo]:
        """Scan the checkpoint folders again; ``extra_checkpoints`` (``--ckpt``) are listed with them under
        their file name, as A1111 lists its ``--ckpt`` file."""
        found = list_checkpoints(self.dirs)
        known = {info.path.resolve() for info in found}
        for path in self.extra_checkpoints:
            if path.exists() and path.resolve() not in known:
                found.append(CheckpointInfo(path, path.name, is_folder=path.is_dir()))
                known.add(path.resolve())
        self._checkpoints = sorted(found, key=lambda c: c.name.lower())
        return self.checkpoints()

    def family(self, info: CheckpointInfo) -> str | None:
        """The checkpoint's family ("sd1", "sd2", "sdxl") read from its header (cached by modification
        time); the loaded model's own for pickled files; None when unknown."""
        from webui.models.spec import family_of_file

        current = self._current
        if current is not None and current.info.path == info.path:
            return current.components.spec.family
        try:
            key = (info.path, info.path.stat().st_mtime_ns)
        except OSError:
            return None
        if key not in self._families:
            self._families[key] = family_of_file(info.path)
        return self._families[key]

    def info_for(self, path: Path) -> CheckpointInfo:
        """The listed checkpoint at ``path`` (or a new entry named after the file)."""
        resolved = Path(path).resolve()
        for info in self.checkpoints():
            if info.path.resolve() == resolved:
                return info
        return CheckpointInfo(Path(path), Path(path).name, is_folder=Path(path).is_dir())

    def checkpoints(self) -> list[CheckpointInfo]:
        """User checkpoints, or the built-in default if there are none."""
        if self._checkpoints or self._default_checkpoint is None:
            return list(self._checkpoints)
        path = self._default_checkpoint()
        return [CheckpointInfo(path, path.name, builtin=True)]

    @property
    def using_builtin_default(self) -> bool:
        return not self._checkpoints

    def short_hash(self, info: CheckpointInfo) -> str | None:
        """The cached short hash, or None if not computed yet (titles then omit it)."""
        digest = self.hashes.cached(info.path)
        return digest[:10] if digest else None

    def title(self, info: CheckpointInfo) -> str:
        return info.title(self.short_hash(info))

    def find(self, name: str, field: str = "sd_model_checkpoint") -> CheckpointInfo:
        """Find a checkpoint by title, name, model name, short hash or full hash (A1111 rules);
        :class:`~webui.errors.UnknownChoice` on ``field`` (a KeyError) listing the titles otherwise."""
        name = name.strip()
        infos = self.checkpoints()
        for info in infos:
            digest = self.hashes.cached(info.path)
            keys = {info.name, info.model_name, info.path.name}
            if digest:
                keys |= {info.title(digest[:10]), digest[:10], digest, digest[:8]}
            if name in keys:
                return info
        base = name.split(" [", 1)[0]
        for info in infos:
            if base in (info.name, info.model_name):
                return info
        raise UnknownChoice(field, "checkpoint", name, [self.title(i) for i in infos])

    # --- loading ----------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def module_choice_files(self) -> list:
        """The VAE and text-encoder files (:class:`~webui.models.modules.ModuleFile`) a choice can name."""
        return list(self._module_files())

    def module_choice(self, names: Iterable[str] = ()):
        """The :class:`~webui.models.flow_loader.ModuleChoice` for the "VAE / Text encoder" selection ``names``
        (file names as ``/sd-modules`` lists them, or their full paths, as Forge stores them); an unknown
        name is an :class:`~webui.errors.UnknownChoice` of ``forge_additional_modules``."""
        from webui.models.flow_loader import ModuleChoice

        files = list(self._module_files())
        chosen = []
        for name in names:
            match = next((f.path for f in files if name in (f.model_name, str(f.path))), None)
            if match is None:
                raise UnknownChoice("forge_additional_modules", "module", name, [f.model_name for f in files])
            chosen.append(match)
        return ModuleChoice(tuple(chosen), tuple(f.path for f in files))

    def _fits(self, model: LoadedModel, modules) -> bool:
        """Whether a loaded model can serve as it is: same fp8 storage wish, and (flow models) the same module
        files chosen."""
        if model.fp8 != self._wants_fp8(model.components.spec.family):
            return False
        return not model.components.spec.is_flow or modules is None or model.modules == tuple(modules.chosen)

    def load(self, info: CheckpointInfo, *, force: bool = False, modules: Iterable[str] | None = None) -> LoadedModel:
        """Load ``info`` and make it current. On failure the previous model stays current.

        Up to ``sd_checkpoint_cache`` previously used models stay in RAM (moved off the GPU) and come
        back without reading the file again; ``force`` reads the file again anyway. ``modules``: the
        "VAE / Text encoder" selection (option ``forge_additional_modules``) for SD 3.x / FLUX.1 files; a
        flow model loaded with another selection is loaded again."""

        with self._lock:
            choice = self.module_choice(modules or ())
            current = self._current
            if not force and current is not None and current.info.path == info.path \
                    and self._fits(current, choice if modules is not None else None):
                return current  # else (fp8_storage or the modules changed) the file is read again, as A1111 reloads
            cached = None if force else self._cache.pop(info.path, None)
            if cached is not None and not self._fits(cached, choice if modules is not None else None):
                cached = None
            if cached is not None:
                if self.memory_mode == "none":  # offloaded models move by their hooks
                    cached.components = cached.components.to(device=self.device)
                self._switch(cached)
                log.info("Switched to %s (from the checkpoint cache)", cached.title)
                return cached
            start = time.perf_counter()
            log.info("Loading checkpoint %s", info.path)
            self.loading = info
            try:
                sha, components = self._read(info, choice)
            finally:
                self.loading = None
            fp8 = self._prepare(components)
            model = LoadedModel(info, sha, components, self.device, self.dtype, time.perf_counter() - start, fp8,
                                tuple(choice.chosen) if components.spec.is_flow else ())
            self._switch(model)
            log.info("Loaded %s (%s%s) in %.1f s", model.title, components.spec.label,
                     ", U-Net weights stored in fp8" if fp8 else "", model.load_seconds)
            if self._on_loaded is not None:
                self._on_loaded(model)
            return model

    def _read(self, info: CheckpointInfo, modules=None):
        """``(sha256, components)`` of a checkpoint: the SHA-256 (A1111's hash; cached by path, size and
        modification time) is computed in a second thread while the file loads, so it never adds to the load
        time, and it is ready before the first infotext is written."""
        from concurrent.futures import ThreadPoolExecutor

        from webui.models.loader import load_components

        with ThreadPoolExecutor(1, thread_name_prefix="hash") as pool:
            digest = pool.submit(self.hashes.sha256, info.path)
            try:
                dtype = torch.float16 if self._stores_half() else self.dtype  # read without an upcast copy
                components = self._to_device(load_components(info.path, dtype=dtype,
                                                              modules=modules or self.module_choice()))
                return digest.result(), components
            except ModelError:
                raise
            except OSError as exc:
                raise ModelError(info.path, f"cannot read the file: {exc}") from exc

    def wait_while_loading(self, timeout: float) -> None:
        """Return once no checkpoint is being loaded by another thread (at once when none is); after
        ``timeout`` seconds raise :class:`ModelStillLoading` (the API answers 503 with ``Retry-After``)."""
        loading = self.loading
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            raise ModelStillLoading(loading or self.loading, timeout)
        self._lock.release()

    def _to_device(self, components):
        """All modules to the device, or (memory modes) only the schedule: the hooks move the modules."""
        if self.memory_mode == "none" or self.device.type == "cpu":
            return components.to(device=self.device)
        components.alphas_cumprod = components.alphas_cumprod.to(self.device)
        return components

    def _stores_half(self) -> bool:
        """``--medvram`` / ``--lowvram`` on the CPU: weights are kept in float16 in RAM and computed in float32
        (:func:`~webui.models.offload.store_half_on_cpu`)."""
        return self.device.type == "cpu" and self.memory_mode != "none" and self.dtype == torch.float32

    def _wants_fp8(self, family: str) -> bool:
        mode = str(self._fp8_storage())
        return mode == "Enable" or (mode == "Enable for SDXL" and family == "sdxl")

    def _prepare(self, components) -> bool:
        """Precision of the VAE, attention kernel, fp8 storage and memory mode of freshly loaded components;
        returns whether the U-Net's weights are stored in fp8."""
        from webui.models.fp8 import store_fp8
        from webui.models.offload import apply_memory_mode, store_half_on_cpu

        fp8 = self._wants_fp8(components.spec.family)
        has_t5 = getattr(components, "t5", None) is not None
        if fp8:
            store_fp8(components.unet, self.dtype)
            if has_t5:
                store_fp8(components.t5, self.dtype)  # T5-XXL is most of a FLUX.1 / SD 3.x model's memory
        if self._stores_half():
            store_half_on_cpu(components, self.memory_mode, self.dtype)
        t5_on_cpu = has_t5 and self.device.type != "cpu" and bool(self._t5_on_cpu())
        if t5_on_cpu:
            # bfloat16 where the model runs in float16 (the CPU has no fast float16 matmul)
            components.t5.to("cpu", dtype=torch.bfloat16 if self.dtype == torch.float16 else None)
            log.info("T5-XXL runs on the CPU (option t5_on_cpu)")

        if self.vae_dtype is not None:
            components.vae.to(dtype=self.vae_dtype)
        if self.attention == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            components.unet.set_attn_processor(AttnProcessor())
            components.vae.set_attn_processor(AttnProcessor())
        apply_memory_mode(components, self.memory_mode, self.device, t5_on_cpu=t5_on_cpu)
        if self.channels_last or self.compile_backend:
            from webui.models.speedups import apply_speedups

            reason = (f"--{self.memory_mode} moves weights during the call" if self.memory_mode != "none" else
                      "fp8 storage" if fp8 else "")
            applied = apply_speedups(components, channels_last=self.channels_last,
                                     compile_backend=self.compile_backend, reason_not=reason)
            if applied:
                log.info("Speed-ups: %s", ", ".join(applied))
        return fp8

    def _switch(self, model: LoadedModel) -> None:
        previous, self._current = self._current, model
        size = max(0, int(self._cache_size()))
        dropped = previous is not None and previous is not model
        if previous is not None and size > 0 and previous.info.path != model.info.path:
            if self.device.type != "cpu" and self.memory_mode == "none":
                previous.components = previous.components.to(device=torch.device("cpu"))
            self._cache[previous.info.path] = previous
            dropped = False
        while len(self._cache) > size:
            self._cache.popitem(last=False)
            dropped = True
        del previous
        if dropped:  # a model left memory: give its pages back (RSS stays flat over many switches)
            from webui.devices import free_memory

            free_memory()

    def load_aux(self, name: str) -> LoadedModel:
        """A second model used beside the current one (the refiner); kept until another is asked for."""

        with self._lock:
            info = self.find(name)
            if self._current is not None and self._current.info.path == info.path:
                return self._current
            aux = getattr(self, "_aux", None)
            if aux is not None and aux.info.path == info.path:
                return aux
            self._aux = None
            start = time.perf_counter()
            log.info("Loading refiner checkpoint %s", info.path)
            sha, components = self._read(info)
            fp8 = self._prepare(components)
            self._aux = LoadedModel(info, sha, components, self.device, self.dtype, time.perf_counter() - start,
                                    fp8)
            return self._aux

    def cached(self) -> list[LoadedModel]:
        """Models kept in RAM besides the current one (most recent last)."""
        return list(self._cache.values())

    def ensure_loaded(self, name: str | None = None, modules: Iterable[str] | None = None) -> LoadedModel:
        """The model named ``name`` (or the current / first one), loading it if needed; ``modules`` as in
        :meth:`load`."""
        with self._lock:
            if name:
                return self.load(self.find(name), modules=modules)
            if self._current is not None:
                if modules is None or self._fits(self._current, self.module_choice(modules)):
                    return self._current
                return self.load(self._current.info, modules=modules)
            infos = self.checkpoints()
            if not infos:
                raise NoCheckpoint(self.dirs)
            return self.load(infos[0], modules=modules)

    def unload(self) -> None:
        """Drop the current model and the cache (A1111's unload-checkpoint); the next job loads again."""
        with self._lock:
            self._current = None
            self._aux = None
            self._cache.clear()
            from webui.devices import free_memory

            free_memory()


class ModelStillLoading(RuntimeError):
    """A generation waited ``timeout`` seconds for a checkpoint that is still loading."""

    retry_after = 10

    def __init__(self, info: CheckpointInfo | None, timeout: float):
        what = info.name if info is not None else "the checkpoint"
        super().__init__(f"{what} is still loading (waited {timeout:.0f} s); try again in a few seconds")


class NoCheckpoint(RuntimeError):
    def __init__(self, dirs: list[Path]):
        super().__init__(
            "No checkpoint found. Put a Stable Diffusion checkpoint (.safetensors) into "
            + " or ".join(str(d) for d in dirs)
        )
