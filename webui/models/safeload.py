"""Read model weight files safely, choosing the reader by file content.

Only two readers are ever used:

* safetensors (after checking that the header is sane), and
* ``torch.load(..., weights_only=True)`` for zip-based and legacy torch pickles.

A pickle is never unpickled with ``weights_only=False`` and there is no
fallback to it: a file that needs arbitrary Python objects is refused with a
:class:`~webui.models.errors.ModelError`, and nothing in it is executed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from webui.errors import ModelError

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # bytes; real headers are a few MB at most
_ZIP_MAGIC = b"PK\x03\x04"
_SNIFF_BYTES = 512
_REDOWNLOAD = "Download it again (check that the download finished) or pick another file."


class _InertStandIn:
    """Harmless stand-in for classes that old training checkpoints reference.

    Lightning-era ``.ckpt`` files mention e.g. ``ModelCheckpoint`` (as a dict
    key in their callback state).  The restricted unpickler maps that name to
    this empty class instead of importing anything, so such files load with
    ``weights_only=True``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - inert
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_STAND_IN_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
)


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks (never whole)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(path, f"it cannot be read ({exc.strerror or exc}). "
                               "Check that it exists and is readable.") from exc
    return digest.hexdigest()


def read_state_dict(path: Path, *, dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file and return ``(tensors, metadata)``.

    The format is chosen from the file's first bytes, not its extension:
    safetensors, zip-based torch pickle (``.ckpt``/``.pt``/``.pth``) or legacy
    torch pickle.  A top-level ``{"state_dict": {...}}`` wrapper (Stable
    Diffusion ``.ckpt`` files) is unwrapped; non-tensor entries are dropped.
    ``metadata`` is the safetensors ``__metadata__`` (empty for pickles).

    ``dtype``: float16 / bfloat16 / float32 tensors of another of these dtypes come back converted to it.
    A safetensors file that needs converting is read one tensor at a time and each one converted as it is
    read, so the file's copy and the converted copy never both sit in memory (a float16 SDXL file read as
    float32 peaks at ~14 GB instead of ~21 GB); one that does not is memory-mapped (no copy at all).

    Raises:
        ModelError: for a missing, empty, truncated, damaged, non-model (HTML
            page, Git LFS pointer, random bytes) or unsafe (code-executing
            pickle) file. Nothing from the file is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "the file does not exist (or is not a regular file). Check the path.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise ModelError(path, f"it cannot be read ({exc.strerror or exc}). Check file permissions.") from exc
    if size == 0:
        raise ModelError(path, f"the file is empty (0 bytes), probably an interrupted download. {_REDOWNLOAD}")

    if head.startswith(_ZIP_MAGIC):
        return _cast(*_torch_load(path, mmap=True), dtype)
    if len(head) >= 9 and head[8:9] == b"{":
        return _read_safetensors(path, size, dtype)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return _cast(*_torch_load(path, mmap=False), dtype)
    raise ModelError(path, _describe_unknown(head))


def safetensors_names(path: Path) -> list[str]:
    """The tensor names of a ``.safetensors`` file, from its header alone (no tensor is read)."""
    path = Path(path)
    return [name for name in _safetensors_header(path, path.stat().st_size) if name != "__metadata__"]


def _describe_unknown(head: bytes) -> str:
    """Explain what a file of unknown format most likely is."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        text.startswith(b"<") and b"<html" in text
    ):
        return (
            "it is an HTML web page, not model weights (the site returned a login, "
            f"error or download page instead of the file). {_REDOWNLOAD}"
        )
    if text.startswith(b"version https://git-lfs"):
        return (
            "it is a Git LFS pointer file, not the weights themselves. Download the real file "
            "(e.g. with 'git lfs pull' or the site's download button)."
        )
    if text.startswith((b"{", b"[")):
        return "it is a JSON/text file, not model weights. Pick the .safetensors or .ckpt weights file."
    return (
        "it is not a recognised model format (expected safetensors or a PyTorch .ckpt/.pt/.pth file). "
        f"The file is damaged or of another kind. {_REDOWNLOAD}"
    )


_CONVERTIBLE = (torch.float16, torch.bfloat16, torch.float32)
_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool,
                       **{name: getattr(torch, attr) for name, attr in (("F8_E4M3", "float8_e4m3fn"),
                                                                        ("F8_E5M2", "float8_e5m2"))
                          if hasattr(torch, attr)}}


def _cast(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
          dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if dtype is not None:
        for key, value in tensors.items():
            if value.dtype in _CONVERTIBLE and value.dtype != dtype:
                tensors[key] = value.to(dtype)
    return tensors, metadata


def _read_safetensors(path: Path, size: int,
                      dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validate a safetensors header, then load the tensors: memory-mapped by safetensors, or read and
    converted one by one when ``dtype`` asks for a conversion."""
    header = _safetensors_header(path, size)
    raw_meta = header.get("__metadata__") or {}
    metadata = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if dtype is not None and any(_SAFETENSORS_DTYPES.get(e.get("dtype")) in _CONVERTIBLE
                                 and _SAFETENSORS_DTYPES[e["dtype"]] != dtype for e in entries.values()):
        return _read_converting(path, entries, dtype), metadata
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelError(path, f"the safetensors data is damaged ({exc}). {_REDOWNLOAD}") from exc
    if not tensors:
        raise ModelError(path, "the safetensors file contains no tensors. Pick a model weights file.")
    return tensors, metadata


def _read_converting(path: Path, entries: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file read with plain file reads in file order, each float16 / bfloat16 /
    float32 one converted to ``dtype`` at once (its read buffer is freed before the next is read)."""
    import math

    tensors: dict[str, torch.Tensor] = {}
    largest = max((e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values()), default=0)
    buffer = torch.empty(largest, dtype=torch.uint8)  # one read buffer for all: no fresh pages per tensor
    with open(path, "rb") as handle:
        start = 8 + int.from_bytes(handle.read(8), "little")
        for name, entry in sorted(entries.items(), key=lambda item: item[1]["data_offsets"][0]):
            kind = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
            shape = entry.get("shape")
            begin, end = entry["data_offsets"]
            if kind is None or not isinstance(shape, list):
                raise ModelError(path, f"its tensor {name!r} has an unsupported dtype {entry.get('dtype')!r}. "
                                       f"{_REDOWNLOAD}")
            width = kind.itemsize
            if math.prod(shape) * width != end - begin:
                raise ModelError(path, f"its tensor {name!r} does not match its stated size; the file is damaged. "
                                       f"{_REDOWNLOAD}")
            raw = buffer[: end - begin]
            handle.seek(start + begin)
            if end > begin and handle.readinto(raw.numpy()) != end - begin:
                raise ModelError(path, f"the file ends inside tensor {name!r}. {_REDOWNLOAD}")
            value = raw.view(kind).reshape(shape)
            tensors[name] = _own_memory(shape, dtype if kind in _CONVERTIBLE else kind).copy_(value)
    if not tensors:
        raise ModelError(path, "the safetensors file contains no tensors. Pick a model weights file.")
    return tensors


def _own_memory(shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor; one of 64 KiB or more in an anonymous memory map of its own, so that the system gets it
    back the moment the model is dropped (from the heap, the weights of checkpoint after checkpoint leave holes
    that glibc keeps: RSS grew ~0.35 GB per SD 1.5 switch, ``benchmarks/real_size.py``)."""
    import math
    import mmap

    count = math.prod(shape)
    size = count * dtype.itemsize
    if size < 1 << 16:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=count).view(shape)


def _safetensors_header(path: Path, size: int) -> dict[str, Any]:
    """Read and sanity-check the JSON header of a safetensors file."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > MAX_SAFETENSORS_HEADER:
            raise ModelError(
                path,
                f"its safetensors header claims {length} bytes (limit {MAX_SAFETENSORS_HEADER}); "
                f"the file is damaged or not a safetensors file. {_REDOWNLOAD}",
            )
        if 8 + length > size:
            raise ModelError(path, f"the file is truncated (its header alone needs {8 + length} bytes, "
                                   f"the file has {size}). {_REDOWNLOAD}")
        blob = handle.read(length)
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(path, f"its safetensors header is not valid JSON ({exc}); the file is damaged. "
                               f"{_REDOWNLOAD}") from exc
    if not isinstance(header, dict):
        raise ModelError(path, f"its safetensors header is malformed. {_REDOWNLOAD}")
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelError(path, f"its safetensors header entry {name!r} is malformed; the file is damaged. "
                                   f"{_REDOWNLOAD}")
        data_end = max(data_end, offsets[1])
    if 8 + length + data_end > size:
        raise ModelError(path, f"the file is truncated ({size} of {8 + length + data_end} bytes present), "
                               f"probably an interrupted download. {_REDOWNLOAD}")
    return header


def _torch_load(path: Path, *, mmap: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``torch.load`` with ``weights_only=True`` only; unwrap and filter tensors; top-level scalars
    (``global_step``, an embedding's ``step`` / ``sd_checkpoint_name``...) become metadata strings."""
    stand_ins = [(_InertStandIn, name) for name in _STAND_IN_NAMES]
    try:
        with torch.serialization.safe_globals(stand_ins):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = _unsafe_detail(str(exc))
        if detail.startswith(("unsupported GLOBAL", "Unsupported global")):
            raise ModelError(
                path,
                f"it is a pickle that wants to import or run Python code ({detail}); it was refused for "
                "safety and nothing in it was executed. Use a .safetensors version of this model from a "
                "trusted source.",
            ) from exc
        if detail:
            raise ModelError(
                path,
                f"it is a Python pickle that the safe weights-only loader cannot read ({detail}); it was "
                "refused and nothing in it was executed. Use a .safetensors version of this model.",
            ) from exc
        raise ModelError(path, f"the PyTorch file is damaged or truncated ({_first_line(exc)}). {_REDOWNLOAD}") from exc
    except Exception as exc:  # RuntimeError, EOFError, ValueError... from a damaged archive
        raise ModelError(path, f"the PyTorch file is damaged or truncated ({_first_line(exc)}). {_REDOWNLOAD}") from exc
    metadata = {}
    if isinstance(obj, dict):
        metadata = {k: str(v) for k, v in obj.items()
                    if isinstance(k, str) and isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return _tensors_from(path, obj), metadata


def _unsafe_detail(message: str) -> str:
    """Extract the refused global from a weights-only unpickling error, if any."""
    match = re.search(r"(unsupported GLOBAL [^\s]+|Unsupported global: GLOBAL [^\s]+|Unsupported operand \d+)",
                      message)
    if match:
        return match.group(1)
    return "refuses to load with weights_only=True" if "Weights only load failed" in message else ""


def _first_line(exc: BaseException) -> str:
    """A short, single-line description of an exception."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    sentence = lines[0].split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {sentence[:200]}"


def _flatten_tensors(obj: dict, prefix: str = "", depth: int = 0) -> dict[str, torch.Tensor]:
    """``str -> Tensor`` entries; nested dicts (e.g. A1111 embeddings' ``string_to_param``) become dotted keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value
        elif isinstance(value, dict) and depth < 3:
            out.update(_flatten_tensors(value, f"{prefix}{key}.", depth + 1))
    return out


def _tensors_from(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` and keep only tensors (nested dicts flattened to dotted keys)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(path, f"it holds a {type(obj).__name__}, not a dictionary of weights. "
                               "Pick a model checkpoint file.")
    tensors = _flatten_tensors(obj)
    if not tensors:
        raise ModelError(path, "it contains no weight tensors. Pick a model checkpoint file.")
    return tensors


def folder_class(folder: Path) -> str | None:
    """The ``_class_name`` a diffusers folder's ``config.json`` names, or None (no or unreadable config)."""
    try:
        name = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name) if name else None


def diffusers_class(folder: Path, expected: str, what: str) -> None:
    """Check that a diffusers folder's ``config.json`` is readable and names ``expected`` (or no class);
    ModelError naming the folder otherwise."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        raise ModelError(folder, f"a diffusers {what} folder needs a config.json.")
    try:
        cls = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(config, f"it is not valid JSON ({exc}).") from exc
    if cls not in (None, expected):
        raise ModelError(folder, f"this diffusers folder holds a {cls}, not a {expected}.")
