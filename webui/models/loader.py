"""Load a Stable Diffusion model (single file or diffusers folder) into :class:`SDComponents`.

Single files are read with :mod:`webui.models.safeload`, their configs are
inferred from tensor shapes (:mod:`webui.models.infer_config`), the modules
are created without allocating weights (accelerate's ``init_empty_weights``),
keys are converted with diffusers' public ``single_file_utils`` helpers and
loaded strictly.  Every failure is a :class:`ModelError` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from webui.errors import ModelError
from webui.models.components import (
    SDComponents,
    parse_metadata,
    scaled_linear_alphas_cumprod,
    shipped_tokenizers,
)
from webui.models.fp8 import dequantize_scaled
from webui.models.infer_config import (
    STATE_DICT,
    VAE_SCALING,
    clip_config_from_ldm,
    unet_config_from_ldm,
    vae_config_from_ldm,
)
from webui.models.safeload import read_state_dict
from webui.models.spec import (
    MARKER_KEYS,
    ModelSpec,
    PredictionType,
    classify_prediction,
    detect_spec,
    detect_spec_diffusers,
    flow_spec,
)
from webui.models.strict_load import _fit_text_keys, _folder_tokenizer, _load_strict, _variant

SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
_OPENCLIP_TMP = "openclip."  # neutral prefix: keeps diffusers' SD2 "drop layer 23" list from applying
_SHOWN_KEYS = 5
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def load_components(path: Path, *, dtype: torch.dtype = torch.float32, modules=None) -> SDComponents:
    """Load a model from a single file or a diffusers folder.

    Args:
        path: ``.safetensors``/``.ckpt``/``.pt`` in the original layout (an
            optional ``{"state_dict": ...}`` wrapper and extra keys such as
            ``model_ema.*`` are ignored; a same-stem ``.yaml`` next to it is
            read for ``parameterization``), or a folder with ``model_index.json``.
        dtype: floating dtype of the returned modules.
        modules: a :class:`~webui.models.flow_loader.ModuleChoice`: separate VAE / text-encoder files that
            complete (or replace parts of) an SD 3.x / FLUX.1 checkpoint.

    Raises:
        ModelError: for any problem, naming ``path``.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return _load_diffusers_folder(path, dtype)
        state_dict, metadata = read_state_dict(path, dtype=dtype)  # converted while read: no double copy
        flow = flow_spec(state_dict)
        if flow is not None:
            from webui.models.flow_loader import load_flow_file

            return load_flow_file(dequantize_scaled(state_dict), flow, dtype=dtype, modules=modules)
        sidecar = path.with_suffix(".yaml")
        spec = detect_spec(state_dict, metadata, sidecar if sidecar.is_file() else None,
                           probe=behavioural_prediction_type)
        components = components_from_original(state_dict, spec, dtype=dtype)
        components.latent_rgb = parse_metadata(metadata)
        return components
    except ModelError as exc:
        if exc.path == STATE_DICT:
            raise ModelError(path, exc.message) from exc
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # anything unforeseen still names the file
        raise ModelError(path, f"loading failed unexpectedly ({type(exc).__name__}: {exc}). "
                               "The file may be damaged or of an unsupported variant.") from exc


def components_from_original(state_dict: Mapping[str, torch.Tensor], spec: ModelSpec, *,
                             dtype: torch.dtype = torch.float32) -> SDComponents:
    """Build :class:`SDComponents` from an original-layout state dict whose spec is known."""
    sd = normalise_original_keys(state_dict)
    return SDComponents(
        spec=spec,
        unet=build_unet(sd, spec, dtype=dtype),
        vae=build_vae(sd, spec, dtype=dtype),
        text_encoders=build_text_encoders(sd, spec, dtype=dtype),
        tokenizers=shipped_tokenizers(spec.family),
        alphas_cumprod=scaled_linear_alphas_cumprod(),
        vae_scaling_factor=VAE_SCALING[spec.family],
    )


def normalise_original_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept old SD1 files whose CLIP keys lack ``text_model.`` (pre-4.x transformers layout); drop the
    ``v_pred``/``ztsnr`` marker tensors (read by :func:`~webui.models.spec.detect_spec`, no weights); turn
    scaled fp8 weights into real ones (:func:`~webui.models.fp8.dequantize_scaled`)."""
    sd = {k: v for k, v in dequantize_scaled(state_dict).items() if k not in MARKER_KEYS}
    old = [k for k in sd if k.startswith(SD1_CLIP_PREFIX) and not k.startswith(SD1_CLIP_PREFIX + "text_model.")]
    if old and not any(k.startswith(SD1_CLIP_PREFIX + "text_model.") for k in sd):
        for key in old:
            sd[SD1_CLIP_PREFIX + "text_model." + key[len(SD1_CLIP_PREFIX):]] = sd.pop(key)
    return sd


def behavioural_prediction_type(state_dict: Mapping[str, torch.Tensor],
                                spec: ModelSpec) -> PredictionType | None:
    """Run the UNet at t=999 on fixed inputs and classify with :func:`~webui.models.spec.classify_prediction`.

    Returns ``None`` when the UNet cannot be built or the result is not
    conclusive (e.g. random test weights).
    """
    try:
        unet = build_unet(state_dict, spec, dtype=torch.float32)
    except ModelError:
        return None
    in_ch = int(unet.config.in_channels)
    context_dim = int(unet.config.cross_attention_dim)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((1, 4, 8, 8), generator=generator)
    context = torch.randn((1, 77, context_dim), generator=generator) * 0.5
    const = torch.full((1, 4, 8, 8), 0.5)
    timestep = torch.tensor([999])

    def run(latent: torch.Tensor) -> torch.Tensor:
        if in_ch > 4:  # inpainting: mask everything, blank masked image
            extra = torch.zeros((1, in_ch - 4, 8, 8))
            extra[:, 0] = 1.0
            latent = torch.cat([latent, extra], dim=1)
        return unet(latent, timestep, encoder_hidden_states=context).sample[:, :4]

    with torch.no_grad():
        result = classify_prediction(noise, run(noise), const, run(const))
    return result


def build_unet(sd: Mapping[str, torch.Tensor], spec: ModelSpec, *,
               dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """UNet from ``model.diffusion_model.*`` keys (config inferred, strict load)."""
    config = unet_config_from_ldm(sd, spec)
    weights = convert_ldm_unet_checkpoint(sd, config)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return _load_strict(unet, weights, dtype, "UNet")


def build_vae(sd: Mapping[str, torch.Tensor], spec: ModelSpec, *,
              dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """VAE from ``first_stage_model.*`` keys (config inferred, strict load)."""
    config = vae_config_from_ldm(sd, spec)
    weights = convert_ldm_vae_checkpoint(sd, config)
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    return _load_strict(vae, weights, dtype, "VAE")


def build_text_encoders(sd: Mapping[str, torch.Tensor], spec: ModelSpec, *,
                        dtype: torch.dtype = torch.float32) -> list:
    """Text encoder(s): CLIP-L (sd1), OpenCLIP-H (sd2), CLIP-L + OpenCLIP-bigG (sdxl)."""
    if spec.family == "sd1":
        return [_build_clip(sd, SD1_CLIP_PREFIX, dtype)]
    if spec.family == "sd2":
        return [_build_openclip(sd, SD2_OPENCLIP_PREFIX, CLIPTextModel, dtype)]
    return [_build_clip(sd, SDXL_CLIP_PREFIX, dtype),
            _build_openclip(sd, SDXL_OPENCLIP_PREFIX, CLIPTextModelWithProjection, dtype)]


def _build_clip(sd: Mapping[str, torch.Tensor], prefix: str, dtype: torch.dtype) -> CLIPTextModel:
    """CLIPTextModel from keys stored in transformers layout under ``prefix``."""
    config = clip_config_from_ldm(sd, prefix, "clip")
    sub = {k: v for k, v in sd.items() if k.startswith(prefix) and not k.endswith("position_ids")}
    weights = convert_ldm_clip_checkpoint(sub, remove_prefix=prefix)
    with init_empty_weights():
        model = CLIPTextModel(config)
    return _load_strict(model, _fit_text_keys(model, weights), dtype, "text encoder")


def _build_openclip(sd: Mapping[str, torch.Tensor], prefix: str, cls: type[CLIPTextModel], dtype: torch.dtype,
                    ) -> CLIPTextModel:
    """CLIPTextModel(WithProjection) from OpenCLIP keys under ``prefix``; keeps every layer."""
    config = clip_config_from_ldm(sd, prefix, "openclip")
    sub = {_OPENCLIP_TMP + k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    with init_empty_weights():
        model = cls(config)
    weights = convert_open_clip_checkpoint(model, sub, prefix=_OPENCLIP_TMP)
    if cls is CLIPTextModel:
        weights.pop("text_projection.weight", None)  # SD2 does not use OpenCLIP's projection
    return _load_strict(model, _fit_text_keys(model, weights), dtype, "OpenCLIP text encoder")


def _load_diffusers_folder(folder: Path, dtype: torch.dtype) -> SDComponents:
    """Load a diffusers folder with ``from_pretrained(local_files_only=True)``."""
    spec = detect_spec_diffusers(folder)
    if spec.is_flow:
        from webui.models.flow_loader import load_flow_folder

        return load_flow_folder(folder, spec, dtype)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True,
                                                    torch_dtype=dtype, variant=_variant(folder / "unet"))
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, torch_dtype=dtype,
                                            variant=_variant(folder / "vae"))
        encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True, dtype=dtype,
                                                  variant=_variant(folder / "text_encoder"))]
        if spec.family == "sdxl":
            encoders.append(CLIPTextModelWithProjection.from_pretrained(
                folder / "text_encoder_2", local_files_only=True, dtype=dtype,
                variant=_variant(folder / "text_encoder_2")))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(folder, f"a diffusers component could not be loaded ({type(exc).__name__}: {first}). "
                                 "Download the folder again.") from exc
    defaults = shipped_tokenizers(spec.family)
    names = ["tokenizer", "tokenizer_2"][: len(encoders)]
    tokenizers = [_folder_tokenizer(folder / name) or default for name, default in zip(names, defaults, strict=True)]
    return SDComponents(
        spec=spec,
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoders=[e.eval() for e in encoders],
        tokenizers=tokenizers,
        alphas_cumprod=scaled_linear_alphas_cumprod(),
        vae_scaling_factor=float(vae.config.scaling_factor),
        sd2_last_layer_dropped=spec.family == "sd2",
    )


