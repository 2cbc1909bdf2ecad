"""Checkpoint merger: A1111's weighted sum / add difference of two or three checkpoints.

* ``Weighted sum``:    ``A * (1 - M) + B * M``
* ``Add difference``:  ``A + (B - C) * M``
* ``No interpolation``: ``A`` only (to bake in a VAE, drop weights or convert to float16).

Every floating tensor of A is merged (in float32, then cast to the output dtype key by key); keys
that B or C lack keep A's value; keys only B or C have are dropped.  An inpainting (9 input channels)
or instruct-pix2pix (8) A merged with a normal B (4) has only its first 4 UNet input channels merged,
the rest are A's, like A1111.  The result is always a ``.safetensors`` file (pickles are never
written), saved atomically into the checkpoint folder with A1111's ``sd_merge_recipe`` /
``sd_merge_models`` metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from webui.errors import ModelError, RequestError, UnknownChoice
from webui.models.safeload import read_state_dict
from webui.models.vae_files import list_vae_files

METHODS = ("Weighted sum", "Add difference", "No interpolation")
VAE_PREFIX = "first_stage_model."
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
# A1111 never merges these (integer position ids; some checkpoints hold them as floats)
SKIP_ON_MERGE = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
_VAE_IGNORED = frozenset({"model_ema.decay", "model_ema.num_updates"})


@dataclass(frozen=True)
class MergeRequest:
    """What to merge; field names match the merger tab's inputs (and A1111's)."""

    primary: str = ""
    secondary: str = ""
    tertiary: str = ""
    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    bake_in_vae: str | None = None  # a VAE as Settings lists it (file name); None or "None": keep the merged VAE
    discard_weights: str = ""  # regex; matching keys are left out of the result
    overwrite: bool = False
    checkpoint_format: str = "safetensors"  # only safetensors is written


class Hashes(Protocol):
    def sha256(self, path: Path) -> str: ...


#: name -> a CheckpointInfo (``.path``, ``.name``, ``.model_name``, ``.is_folder``) or a Path; KeyError if unknown
Resolver = Callable[[str], Any]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Source:
    field: str
    path: Path
    name: str  # as listed (relative to its folder)
    model_name: str  # file name without extension


def legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: SHA-256 of the 64 KiB at offset 1 MiB."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0x100000)
            return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
    except OSError:
        return "NOFILE"


def default_name(method: str, a: str, b: str | None, c: str | None, multiplier: float) -> str:
    """``<A>_<B>_<M>-merged`` (add difference: ``<A>_<B>_<C>_<M>-merged``; no interpolation: ``<A>-merged``)."""
    m = round(float(multiplier), 2)
    if method == "Weighted sum":
        return f"{a}_{b}_{m}-merged"
    if method == "Add difference":
        return f"{a}_{b}_{c}_{m}-merged"
    return f"{a}-merged"


def merge_checkpoints(request: MergeRequest, *, checkpoint_paths: Resolver, vae_dirs: Iterable[Path], out_dir: Path,
                      hashes: Hashes, progress: Progress | None = None) -> Path:
    """Merge according to ``request`` and save into ``out_dir``; returns the new file's path. ``bake_in_vae``
    names one of :func:`~webui.models.vae_files.list_vae_files` in ``vae_dirs`` (the list Settings shows).

    Raises:
        RequestError: a bad or unknown input (``field`` is the MergeRequest field), an existing output
            file without ``overwrite``, tensors that cannot be merged (the message names the key).
        ModelError: an input file that cannot be read.
    """
    # 1. check every input before anything is loaded
    method, multiplier, discard = _check_request(request)
    a = _resolve(checkpoint_paths, "primary", request.primary)
    b = _resolve(checkpoint_paths, "secondary", request.secondary) if method != "No interpolation" else None
    c = _resolve(checkpoint_paths, "tertiary", request.tertiary) if method == "Add difference" else None
    vae_name = _vae_choice(request.bake_in_vae)
    vae_path = _resolve_vae([Path(d) for d in vae_dirs], vae_name) if vae_name else None
    out_dir = Path(out_dir)
    base = (request.custom_name or "").strip() or default_name(
        method, a.model_name, b.model_name if b else None, c.model_name if c else None, multiplier)
    _output_path(out_dir, base, "", overwrite=True)  # a bad name fails before anything is loaded

    # 2. read the inputs
    vae = _read_vae(vae_path) if vae_path else {}
    theta_a, meta_a = read_state_dict(a.path)
    theta_b, meta_b = read_state_dict(b.path) if b else ({}, {})
    theta_c, meta_c = read_state_dict(c.path) if c else ({}, {})
    if vae and not {VAE_PREFIX + k for k in vae} & theta_a.keys():
        raise RequestError("bake_in_vae", f"{vae_name!r} holds no weights of the checkpoint's VAE "
                                          f"({VAE_PREFIX}* keys); is it a VAE in the original layout?")

    # 3. the output's name: an inpainting / instruct-pix2pix input gives the merge that suffix
    extra_channels = 0
    conv_a, conv_b = theta_a.get(CONV_IN), theta_b.get(CONV_IN)
    if conv_a is not None and conv_b is not None and conv_a.shape != conv_b.shape and not (
            discard is not None and discard.search(CONV_IN)):
        extra_channels = _partial_channels(CONV_IN, conv_a, conv_b)
    suffix = {9: ".inpainting", 8: ".instruct-pix2pix"}.get(extra_channels, "")
    path = _output_path(out_dir, base, suffix, request.overwrite)

    # 4. merge key by key, 5. save with A1111's recipe metadata
    out = _merged(theta_a, theta_b, theta_c, vae, vae_name, method, multiplier, discard, request.save_as_half,
                  progress)
    del theta_b, theta_c, vae
    recipe = {
        "type": "webui",
        "primary_model_hash": hashes.sha256(a.path),
        "secondary_model_hash": hashes.sha256(b.path) if b else None,
        "tertiary_model_hash": hashes.sha256(c.path) if c else None,
        "interp_method": method,
        "multiplier": multiplier,
        "save_as_half": bool(request.save_as_half),
        "custom_name": request.custom_name or "",
        "config_source": 0,
        "bake_in_vae": vae_name or "None",
        "discard_weights": request.discard_weights or "",
        "is_inpainting": extra_channels == 9,
        "is_instruct_pix2pix": extra_channels == 8,
        "output_name": path.relative_to(out_dir).as_posix(),
    }
    metadata = {"format": "pt", "sd_merge_recipe": json.dumps(recipe),
                "sd_merge_models": json.dumps(_source_models(hashes, ((a, meta_a), (b, meta_b), (c, meta_c))))}
    _save_atomic(_unshared(out), path, metadata, request.overwrite)
    return path


def _check_request(request: MergeRequest) -> tuple[str, float, re.Pattern | None]:
    """The method, the multiplier and the compiled ``discard_weights`` pattern, or a RequestError."""
    method = request.interp_method
    if method not in METHODS:
        raise RequestError("interp_method", f"must be one of {', '.join(METHODS)}, not {method!r}")
    try:
        multiplier = float(request.multiplier)
    except (TypeError, ValueError):
        raise RequestError("multiplier", f"must be a number, not {request.multiplier!r}") from None
    if multiplier != multiplier or multiplier in (float("inf"), float("-inf")):
        raise RequestError("multiplier", "must be a finite number")
    fmt = (request.checkpoint_format or "safetensors").lower().lstrip(".")
    if fmt != "safetensors":
        raise RequestError("checkpoint_format", "only safetensors is written (pickled .ckpt files can run code "
                                                "when loaded elsewhere)")
    return method, multiplier, _compile_discard(request.discard_weights)


def _merged(theta_a: dict[str, torch.Tensor], theta_b: dict[str, torch.Tensor], theta_c: dict[str, torch.Tensor],
            vae: dict[str, torch.Tensor], vae_name: str | None, method: str, multiplier: float,
            discard: re.Pattern | None, half: bool, progress: Progress | None) -> dict[str, torch.Tensor]:
    """A's keys merged with B's (and C's), the VAE baked in, discarded keys left out. The inputs are
    emptied as the merge goes, so at most one copy of each tensor is held."""
    out: dict[str, torch.Tensor] = {}
    keys = list(theta_a)
    for i, key in enumerate(keys):
        value = theta_a.pop(key)
        other_b = theta_b.pop(key, None)
        other_c = theta_c.pop(key, None)
        if discard is not None and discard.search(key):
            continue
        if key.startswith(VAE_PREFIX) and key[len(VAE_PREFIX):] in vae:
            value = _fit_vae_tensor(key, vae[key[len(VAE_PREFIX):]], value, vae_name)
        elif method != "No interpolation" and other_b is not None and key not in SKIP_ON_MERGE \
                and value.is_floating_point():
            value = _merge_one(key, method, value, other_b, other_c, multiplier)
        out[key] = _cast(value, half)
        if progress is not None:
            progress(i + 1, len(keys))
    if not out:
        raise RequestError("discard_weights", "the pattern discards every weight; nothing would be saved")
    return out


def _source_models(hashes: Hashes, sources) -> dict[str, Any]:
    """A1111's ``sd_merge_models``: each input by hash (name, legacy hash, its own recipe), plus the
    inputs' own ``sd_merge_models`` (a merge of merges keeps its whole family)."""
    models: dict[str, Any] = {}
    for src, meta in sources:
        if src is None:
            continue
        models[hashes.sha256(src.path)] = {"name": src.name, "legacy_hash": legacy_hash(src.path),
                                           "sd_merge_recipe": _json_or_none(meta.get("sd_merge_recipe"))}
        earlier = _json_or_none(meta.get("sd_merge_models"))
        if isinstance(earlier, dict):
            models.update(earlier)
    return models


# --- validation -----------------------------------------------------------------------------------
def _compile_discard(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RequestError("discard_weights", f"is not a valid regular expression ({exc})") from None


def _resolve(resolver: Resolver, field: str, name: str | None) -> _Source:
    label = {"primary": "A", "secondary": "B", "tertiary": "C"}[field]
    if not name or not str(name).strip():
        raise RequestError(field, f"choose the {field} model ({label})")
    try:
        found = resolver(str(name))
    except UnknownChoice as exc:  # the manager's: it lists the checkpoints
        raise exc.for_field(field) from None
    except KeyError:
        found = None
    if found is None:
        raise RequestError(field, f"unknown checkpoint {name!r}")
    if isinstance(found, (str, os.PathLike)):
        path = Path(found)
        src = _Source(field, path, path.name, path.stem)
    else:
        if getattr(found, "is_folder", False):
            raise RequestError(field, f"{name!r} is a diffusers folder; merging needs single-file checkpoints")
        src = _Source(field, Path(found.path), str(found.name), str(found.model_name))
    if not src.path.is_file():
        raise RequestError(field, f"{name!r} is not a checkpoint file ({src.path})")
    return src


def _vae_choice(value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return None if value in ("", "None") else value


def _resolve_vae(vae_dirs: list[Path], name: str) -> Path:
    """The listed VAE named ``name`` (its file name, or its path inside one of ``vae_dirs``)."""
    files = list_vae_files(vae_dirs)
    found = next((f.path for f in files if f.name == name or any(f.path == d / name for d in vae_dirs)), None)
    if found is None:
        raise UnknownChoice("bake_in_vae", "VAE", name, [f.name for f in files])
    if found.is_dir():
        raise RequestError("bake_in_vae", f"{name!r} is a diffusers VAE folder; baking in needs a single-file VAE "
                                          "in the original layout")
    return found


def _read_vae(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_state_dict(path)
    out = {}
    for key, value in tensors.items():
        if key.startswith("loss") or key in _VAE_IGNORED:
            continue
        out[key[len(VAE_PREFIX):] if key.startswith(VAE_PREFIX) else key] = value
    return out


def _output_path(out_dir: Path, base: str, suffix: str, overwrite: bool) -> Path:
    name = base
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    elif Path(name).suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise RequestError("custom_name", "only .safetensors files are written; leave out the extension")
    rel = Path(name + suffix + ".safetensors")
    if rel.is_absolute() or ".." in rel.parts or not name.strip(" ./\\"):
        raise RequestError("custom_name", f"{base!r} is not a valid file name inside {out_dir}")
    path = out_dir / rel
    if path.exists() and not overwrite:
        raise RequestError("custom_name", f"{path.name} already exists in {path.parent}; choose another name "
                                          "or allow overwriting")
    return path


# --- merging --------------------------------------------------------------------------------------
def _merge_one(key: str, method: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None,
               m: float) -> torch.Tensor:
    """One merged tensor, computed in float32, returned in the promoted dtype of the inputs (like A1111)."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    if method == "Add difference":
        if c is None:
            return a  # A1111: B - C is zero where C lacks the key
        if b.shape != c.shape:
            raise RequestError("tertiary", f"cannot subtract: {key} has shape {tuple(b.shape)} in B but "
                                           f"{tuple(c.shape)} in C")
        delta = b.float() - c.float()
        dtype = torch.promote_types(dtype, c.dtype)
    else:
        delta = None
    a32 = a.float()
    if a.shape != b.shape:  # inpainting / instruct-pix2pix A: merge the 4 channels B has, keep the rest
        _partial_channels(key, a, b)
        merged = a32.clone()
        part = a32[:, :4]
        merged[:, :4] = part + delta * m if delta is not None else part * (1 - m) + b.float() * m
    elif delta is not None:
        merged = a32 + delta * m
    else:
        merged = a32 * (1 - m) + b.float() * m
    return merged.to(dtype)


def _partial_channels(key: str, a: torch.Tensor, b: torch.Tensor) -> int:
    same_rest = a.dim() == 4 and b.dim() == 4 and a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:]
    if key == CONV_IN and same_rest:
        if a.shape[1] in (8, 9) and b.shape[1] == 4:
            return int(a.shape[1])
        if a.shape[1] == 4 and b.shape[1] in (8, 9):
            kind = "inpainting" if b.shape[1] == 9 else "instruct-pix2pix"
            raise RequestError("primary", f"when merging an {kind} model with a normal one, A must be the "
                                          f"{kind} model ({key}: A has 4 input channels, B {b.shape[1]})")
    raise RequestError("secondary", f"cannot merge {key}: shape {tuple(a.shape)} in A but {tuple(b.shape)} in B "
                                    "(models of different families or sizes)")


def _fit_vae_tensor(key: str, vae: torch.Tensor, a: torch.Tensor, vae_name: str | None) -> torch.Tensor:
    if vae.shape == a.shape:
        return vae
    # mid-block attention q/k/v/proj_out: 1x1 conv ([C, C, 1, 1]) vs linear ([C, C]) layouts
    if vae.numel() == a.numel() and [s for s in vae.shape if s != 1] == [s for s in a.shape if s != 1]:
        return vae.reshape(a.shape)
    raise RequestError("bake_in_vae", f"{vae_name!r} does not fit the checkpoint: {key} has shape "
                                      f"{tuple(vae.shape)} in the VAE but {tuple(a.shape)} in A")


def _cast(value: torch.Tensor, half: bool) -> torch.Tensor:
    if half and value.is_floating_point():
        return value.to(torch.float16)
    return value


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- saving ---------------------------------------------------------------------------------------
def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, no two sharing storage (safetensors refuses shared memory)."""
    seen: set[int] = set()
    out = {}
    for key, value in sd.items():
        value = value.detach()
        ptr = value.untyped_storage().data_ptr() if value.numel() else None
        if ptr is not None and ptr in seen:
            value = value.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = value.contiguous()
    return out


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], overwrite: bool) -> None:
    """Write to a temporary file in the same folder, then rename (never clobbering without ``overwrite``)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, fails if the name was taken meanwhile
            except FileExistsError:
                raise RequestError("custom_name", f"{path.name} already exists in {path.parent}") from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise RequestError("custom_name", f"{path.name} already exists in {path.parent}") from None
                os.replace(tmp, path)
    except OSError as exc:
        raise ModelError(path, f"the merged checkpoint could not be written ({exc.strerror or exc}). "
                               "Check free disk space and permissions.") from exc
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
