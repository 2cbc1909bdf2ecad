"""fp8 weights: files stored in ``float8_e4m3fn`` / ``float8_e5m2`` (plain or "scaled"), and fp8 storage in
memory (A1111's option ``fp8_storage``).

* A plain fp8 file loads like any other: each tensor is upcast to the model's dtype when it is copied in.
* A **scaled** fp8 file (ComfyUI's ``scaled_fp8`` format, e.g. ``flux1-dev-fp8-scaled``, "fp8 scaled" SDXL
  merges) stores ``weight / scale`` in fp8 and the scale beside it as ``<layer>.scale_weight``; the real
  weight is ``weight.float() * scale_weight``. :func:`dequantize_scaled` does that and drops the format's extra
  tensors (``scale_weight``, ``scale_input``, the ``scaled_fp8`` marker).
* :func:`store_fp8` keeps the Linear/Conv weights of a module in fp8 and upcasts each one when it is used
  (half the memory of fp16 weights, at some speed); the results differ from full-precision weights by the
  fp8 rounding of the weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))
SCALE_WEIGHT = ".scale_weight"
SCALE_INPUT = ".scale_input"
SCALED_MARKER = "scaled_fp8"


def is_fp8(tensor: torch.Tensor) -> bool:
    return tensor.dtype in FP8_DTYPES


def dequantize_scaled(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with every ``<layer>.weight`` that has a ``<layer>.scale_weight`` multiplied by it (in
    float32), and without the scaled-fp8 format's extra tensors. A state dict without them comes back as a
    plain copy."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith((SCALE_WEIGHT, SCALE_INPUT)) or key.rsplit(".", 1)[-1] == SCALED_MARKER:
            continue
        scale = state_dict.get(key[: -len(".weight")] + SCALE_WEIGHT) if key.endswith(".weight") else None
        out[key] = value if scale is None else value.to(torch.float32) * scale.to(torch.float32)
    return out


class _Upcast(torch.nn.Module):
    """A parametrization: the stored (fp8) tensor, read in the compute dtype."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.dtype)


def store_fp8(module: torch.nn.Module, compute_dtype: torch.dtype, fp8: torch.dtype | None = None) -> int:
    """Keep the weights of ``module``'s Linear and Conv layers in fp8 (``float8_e4m3fn`` by default), read
    back in ``compute_dtype`` at each use. Returns how many weights were converted."""
    return store_weights(module, fp8 or FP8_DTYPES[0], compute_dtype)


def store_weights(module: torch.nn.Module, storage: torch.dtype, compute_dtype: torch.dtype,
                  layers: tuple[type[torch.nn.Module], ...] = (torch.nn.Linear, torch.nn.Conv2d)) -> int:
    """Keep the weights of ``module``'s ``layers`` (Linear and Conv) in ``storage`` (fp8, or float16 for the
    CPU's memory modes), read back in ``compute_dtype`` at each use; every other floating parameter and buffer
    (biases, norms: a small share of the model) is converted to ``compute_dtype`` for good. Returns how many
    weights are stored. Weights already stored are left as they are."""
    from torch.nn.utils import parametrize

    count = 0
    for layer in module.modules():
        if not isinstance(layer, layers) or parametrize.is_parametrized(layer, "weight"):
            continue
        layer.weight.data = layer.weight.data.to(storage)
        parametrize.register_parametrization(layer, "weight", _Upcast(compute_dtype), unsafe=True)
        count += 1
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if ".parametrizations." in f".{name}" or not tensor.is_floating_point() or tensor.dtype == compute_dtype:
            continue
        tensor.data = tensor.data.to(compute_dtype)
    return count


def stored_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The tensor that holds ``layer``'s weight: the stored one of a layer kept by :func:`store_weights` (writing
    to ``layer.weight`` there would change a temporary copy), else ``layer.weight``."""
    parametrizations = getattr(layer, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations.weight.original
    return layer.weight
