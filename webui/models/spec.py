"""What kind of Stable Diffusion model a checkpoint is.

:func:`detect_spec` works on the ORIGINAL (CompVis/LDM/SGM) key layout that
single-file checkpoints (e.g. from Civitai) use; :func:`detect_spec_diffusers`
works on a diffusers folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import torch

from webui.errors import ModelError
from webui.models.safeload import safetensors_names

Family = Literal["sd1", "sd2", "sdxl", "sd3", "flux"]
#: ``flow``: rectified-flow models (SD 3.x, FLUX.1) predict the velocity ``noise - x0``.
PredictionType = Literal["epsilon", "v_prediction", "flow"]
#: Families whose denoiser is a flow-matching transformer (MMDiT) instead of a UNet.
FLOW_FAMILIES = frozenset({"sd3", "flux"})

UNET_PREFIX = "model.diffusion_model."
SD1_TEXT_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD1_TEXT_KEY_OLD = "cond_stage_model.transformer.embeddings.token_embedding.weight"
SD2_TEXT_KEY = "cond_stage_model.model.ln_final.weight"
SDXL_TEXT_KEY = "conditioner.embedders.1.model.ln_final.weight"
SDXL_REFINER_KEY = "conditioner.embedders.0.model.ln_final.weight"
UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
SIDECAR_METADATA_KEY = "modelspec.prediction_type"
#: Empty marker tensors some SDXL derivatives carry (NoobAI-XL v-pred and others; ComfyUI and reForge read
#: them): ``v_pred`` = v-prediction, ``ztsnr`` = trained on a zero-terminal-SNR schedule.
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
MARKER_KEYS = (V_PRED_KEY, ZTSNR_KEY)
#: Stability's SD 3.x MMDiT (single files keep it under ``model.diffusion_model.``).
SD3_KEY = "joint_blocks.0.x_block.attn.qkv.weight"
#: Black Forest Labs' FLUX.1 transformer (transformer-only files have no prefix; all-in-one files use
#: ``model.diffusion_model.``); dev has a guidance embedder, schnell does not.
FLUX_KEY = "double_blocks.0.img_attn.qkv.weight"
FLUX_GUIDANCE_KEY = "guidance_in.in_layer.weight"

#: How the UI, the infotext and error messages name each family.
FAMILY_LABELS: Mapping[str, str] = MappingProxyType({"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL",
                                                    "sd3": "SD 3.x", "flux": "FLUX.1"})


@dataclass(frozen=True)
class ModelSpec:
    """The architecture family and conditioning variant of a checkpoint."""

    family: Family
    prediction_type: PredictionType = "epsilon"
    inpainting: bool = False  # UNet has 9 input channels (4 latent + 1 mask + 4 masked-image latent)
    zero_terminal_snr: bool = False  # trained on the zero-terminal-SNR schedule (sampling rescales alphas_cumprod)
    #: FLUX.1 dev: guidance-distilled (the guidance strength is an input of the model, "Distilled CFG Scale")
    distilled_guidance: bool = False

    @property
    def is_flow(self) -> bool:
        """A flow-matching transformer (SD 3.x, FLUX.1): different samplers, schedule and latents."""
        return self.family in FLOW_FAMILIES

    @property
    def label(self) -> str:
        """Human readable name, e.g. ``"SD 2.x (v-prediction)"``, ``"SD 1.x inpainting"`` or
        ``"SDXL (v-prediction, zero terminal SNR)"``."""
        text = FAMILY_LABELS[self.family]
        if self.family == "flux":
            return text + (" dev" if self.distilled_guidance else " schnell")
        if self.inpainting:
            text += " inpainting"
        notes = (["v-prediction"] if self.prediction_type == "v_prediction" else []) + (
            ["zero terminal SNR"] if self.zero_terminal_snr else [])
        if notes:
            text += f" ({', '.join(notes)})"
        return text


#: ``probe(state_dict, spec) -> prediction type or None`` (inconclusive): a check that runs the model.
PredictionProbe = Callable[[Mapping[str, torch.Tensor], ModelSpec], "PredictionType | None"]


def detect_spec(
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    sidecar_yaml: Path | None = None,
    probe: PredictionProbe | None = None,
) -> ModelSpec:
    """Detect the :class:`ModelSpec` of an original-layout checkpoint.

    Family comes from the text-encoder keys (SDXL: ``conditioner.embedders.1.model.*``;
    SD2: OpenCLIP ``cond_stage_model.model.*``; SD1: CLIP-L
    ``cond_stage_model.transformer.*``), inpainting from the 9 input channels
    of ``input_blocks.0.0``.  The prediction type is decided, in order, by
    the safetensors metadata ``modelspec.prediction_type``, then by a sidecar
    YAML (``parameterization: "v"`` or ``"eps"``), then by the ``v_pred`` marker
    key, then (SD2 only) by ``probe`` (the loader
    passes :func:`webui.models.loader.behavioural_prediction_type`, which runs
    the UNet); when there is none or it is inconclusive, SD2 with a 1024-wide
    UNet context and no inpainting defaults to v-prediction.
    Everything else defaults to epsilon. The zero-terminal-SNR schedule comes
    from the ``ztsnr`` marker key, unless the sidecar YAML says otherwise
    (``zero_terminal_snr: true`` / ``false``).

    Raises:
        ModelError: when the layout is not one of the three families (the
            error's path is ``"<state dict>"``; loaders re-raise with the file).
    """
    flow = flow_spec(state_dict)
    if flow is not None:
        return flow
    family = _detect_family(state_dict)
    conv_in = state_dict.get(UNET_CONV_IN)
    if conv_in is None or conv_in.ndim != 4:
        raise ModelError(Path("<state dict>"), f"it has a {FAMILY_LABELS[family]} text encoder but no UNet "
                                               f"({UNET_CONV_IN} is missing). Use a full checkpoint.")
    inpainting = int(conv_in.shape[1]) == 9
    prediction = prediction_type_from_metadata(metadata)
    if prediction is None and sidecar_yaml is not None:
        prediction = prediction_type_from_yaml(sidecar_yaml)
    if prediction is None and V_PRED_KEY in state_dict:
        prediction = "v_prediction"
    ztsnr = zero_terminal_snr_from_yaml(sidecar_yaml) if sidecar_yaml is not None else None
    if ztsnr is None:
        ztsnr = ZTSNR_KEY in state_dict
    if prediction is None and family == "sd2":
        if probe is not None:
            prediction = probe(state_dict, ModelSpec("sd2", "epsilon", inpainting))
        if prediction is None:
            context = _unet_context_dim(state_dict)
            prediction = "v_prediction" if context == 1024 and not inpainting else "epsilon"
    return ModelSpec(family, prediction or "epsilon", inpainting, ztsnr)


def family_of_file(path: Path) -> Family | None:
    """The family of a checkpoint without loading it: from a ``.safetensors`` header's tensor names or a
    diffusers folder's configs; None for pickled files (they must be unpickled to be read) and unreadable or
    unknown ones."""
    path = Path(path)
    try:
        if path.is_dir():
            return detect_spec_diffusers(path).family
        if path.suffix.lower() != ".safetensors":
            return None
        return _detect_family(dict.fromkeys(safetensors_names(path)))
    except (ModelError, OSError):
        return None


def flow_spec(state_dict: Mapping[str, object]) -> ModelSpec | None:
    """The spec of an SD 3.x or FLUX.1 state dict (from the transformer's own keys, with or without the
    ``model.diffusion_model.`` prefix); None for anything else."""
    if SD3_KEY in state_dict or UNET_PREFIX + SD3_KEY in state_dict:
        return ModelSpec("sd3", "flow")
    if FLUX_KEY in state_dict or UNET_PREFIX + FLUX_KEY in state_dict:
        dev = FLUX_GUIDANCE_KEY in state_dict or UNET_PREFIX + FLUX_GUIDANCE_KEY in state_dict
        return ModelSpec("flux", "flow", distilled_guidance=dev)
    return None


def _detect_family(state_dict: Mapping[str, object]) -> Family:
    """Family from text-encoder keys; ModelError listing expectations otherwise."""
    flow = flow_spec(state_dict)
    if flow is not None:
        return flow.family
    if SDXL_TEXT_KEY in state_dict or any(k.startswith("conditioner.embedders.1.") for k in state_dict):
        return "sdxl"
    if SDXL_REFINER_KEY in state_dict:
        raise ModelError(Path("<state dict>"), "it is an SDXL refiner (only an OpenCLIP-bigG text encoder), "
                                               "which is not supported. Use an SDXL base, SD 2.x or SD 1.x model.")
    if SD2_TEXT_KEY in state_dict or any(k.startswith("cond_stage_model.model.") for k in state_dict):
        return "sd2"
    if SD1_TEXT_KEY in state_dict or SD1_TEXT_KEY_OLD in state_dict or any(
        k.startswith("cond_stage_model.transformer.") for k in state_dict
    ):
        return "sd1"
    sample = ", ".join(sorted(state_dict)[:5]) or "no keys"
    raise ModelError(
        Path("<state dict>"),
        "unknown model layout: expected a Stable Diffusion checkpoint with "
        f"'{SD1_TEXT_KEY}' (SD 1.x), '{SD2_TEXT_KEY}' (SD 2.x) or '{SDXL_TEXT_KEY}' (SDXL) "
        f"plus '{UNET_PREFIX}*' and 'first_stage_model.*' keys, an SD 3.x MMDiT ('{UNET_PREFIX}{SD3_KEY}') or a "
        f"FLUX.1 transformer ('{FLUX_KEY}'), but found e.g. {sample}. "
        "This may be a LoRA, VAE, embedding or another model type: put it in its own folder.",
    )


def _unet_context_dim(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Width of the cross-attention context (``attn2.to_k`` input), if any."""
    for key, value in state_dict.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return int(value.shape[1])
    return None


def prediction_type_from_metadata(metadata: Mapping[str, str] | None) -> PredictionType | None:
    """Read ``modelspec.prediction_type`` ('v'/'v_prediction' or 'epsilon'/'eps')."""
    if not metadata:
        return None
    return _normalise_prediction(str(metadata.get(SIDECAR_METADATA_KEY, "")))


def prediction_type_from_yaml(yaml_path: Path) -> PredictionType | None:
    """Read ``parameterization: "v"`` (or ``"eps"``) from an LDM sidecar YAML config."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        return None
    try:
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ModelError(yaml_path, f"the sidecar config cannot be read ({exc}). Fix or remove it.") from exc
    match = re.search(r"^\s*parameterization\s*:\s*[\"']?([A-Za-z_\-]+)", text, flags=re.MULTILINE)
    return _normalise_prediction(match.group(1)) if match else None


def zero_terminal_snr_from_yaml(yaml_path: Path) -> bool | None:
    """Read ``zero_terminal_snr: true`` / ``false`` from a checkpoint's sidecar YAML (this project's key: the
    per-checkpoint override of the ``ztsnr`` marker); None when the file or the key is absent."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        return None
    try:
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ModelError(yaml_path, f"the sidecar config cannot be read ({exc}). Fix or remove it.") from exc
    match = re.search(r"^\s*zero_terminal_snr\s*:\s*[\"']?([A-Za-z]+)", text, flags=re.MULTILINE)
    if not match:
        return None
    return {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}.get(
        match.group(1).lower())


def _normalise_prediction(value: str) -> PredictionType | None:
    """Map the spellings used in the wild to the two prediction types."""
    value = value.strip().strip("\"'").lower().replace("-", "_")
    if value in ("v", "v_prediction", "vpred", "v_pred"):
        return "v_prediction"
    if value in ("eps", "epsilon", "noise"):
        return "epsilon"
    return None


def classify_prediction(noise: torch.Tensor, output: torch.Tensor, const_input: torch.Tensor,
                        const_output: torch.Tensor) -> PredictionType | None:
    """Decide eps vs v from UNet outputs at a high-noise timestep (t=999).

    At t=999 the latent is almost pure noise (sqrt(alpha_bar) ~ 0.07), so a
    trained epsilon model returns (nearly) its input: ``cos(output, noise)``
    is close to 1.  A v model predicts ``v = sqrt(a)*eps - sqrt(1-a)*x0 ~ -x0``,
    which is nearly uncorrelated with the noise; on a constant 0.5 input its
    mean output minus the input is strongly negative (< -1), the empirical
    signature also used by A1111.  Requiring that positive signature keeps
    untrained/random models (both cues weak) inconclusive (``None``).
    """
    cosine = torch.nn.functional.cosine_similarity(output.flatten().double(), noise.flatten().double(), dim=0)
    shift = float((const_output.double() - const_input.double()).mean())
    if float(cosine) > 0.8 and abs(shift) < 1.0:
        return "epsilon"
    if float(cosine) < 0.5 and shift < -1.0:
        return "v_prediction"
    return None


def detect_spec_diffusers(folder: Path) -> ModelSpec:
    """Detect the :class:`ModelSpec` of a diffusers folder.

    Uses ``model_index.json`` (pipeline class, presence of ``text_encoder_2``),
    ``unet/config.json`` (``in_channels`` 9 = inpainting, ``addition_embed_type``),
    ``text_encoder/config.json`` (OpenCLIP ``gelu`` = SD2) and the scheduler's
    ``prediction_type``.

    Raises:
        ModelError: when the folder is not a Stable Diffusion 1/2/XL pipeline.
    """
    folder = Path(folder)
    index = _read_json(folder, folder / "model_index.json")
    class_name = str(index.get("_class_name", ""))
    if class_name.startswith("StableDiffusion3") or class_name.startswith("Flux"):
        transformer_cfg = _read_json(folder, folder / "transformer" / "config.json")
        if class_name.startswith("Flux"):
            return ModelSpec("flux", "flow", distilled_guidance=bool(transformer_cfg.get("guidance_embeds")))
        return ModelSpec("sd3", "flow")
    unet_cfg = _read_json(folder, folder / "unet" / "config.json")
    if "text_encoder_2" in index or "XL" in class_name or unet_cfg.get("addition_embed_type") == "text_time":
        if not (folder / "text_encoder_2").is_dir() or not (folder / "text_encoder").is_dir():
            raise ModelError(folder, "it is an SDXL folder without both text encoders (refiner or incomplete "
                                     "download), which is not supported. Use a complete SDXL base folder.")
        family: Family = "sdxl"
    elif "StableDiffusion" in class_name or (folder / "text_encoder").is_dir():
        text_cfg = _read_json(folder, folder / "text_encoder" / "config.json")
        family = "sd2" if text_cfg.get("hidden_act") == "gelu" or unet_cfg.get("use_linear_projection") else "sd1"
    else:
        raise ModelError(folder, f"unknown pipeline '{class_name}'; expected a Stable Diffusion 1.x, 2.x or "
                                 "XL diffusers folder with unet/, vae/ and text_encoder/.")
    scheduler_cfg = folder / "scheduler" / "scheduler_config.json"
    prediction: PredictionType | None = None
    if scheduler_cfg.is_file():
        prediction = _normalise_prediction(str(_read_json(folder, scheduler_cfg).get("prediction_type", "")))
    inpainting = int(unet_cfg.get("in_channels", 4)) == 9
    ztsnr = scheduler_cfg.is_file() and bool(_read_json(folder, scheduler_cfg).get("rescale_betas_zero_snr", False))
    return ModelSpec(family, prediction or "epsilon", inpainting, ztsnr)


def _read_json(folder: Path, path: Path) -> dict:
    """Read a JSON config of a diffusers folder, as ModelError on any problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(folder, f"it is not a complete diffusers folder ({path.relative_to(folder)} is missing). "
                                 "Download the whole folder again.") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(folder, f"{path.relative_to(folder)} is unreadable or not valid JSON ({exc}). "
                                 "Download the folder again.") from exc
    if not isinstance(data, dict):
        raise ModelError(folder, f"{path.relative_to(folder)} is malformed. Download the folder again.")
    return data
