"""SD 3.x and FLUX.1: single files in Stability's / Black Forest Labs' layouts (transformer-only, or with the
VAE and text encoders inside), parts from separate files (``models/VAE``, ``models/text_encoder``), and
diffusers folders.

A part the checkpoint lacks comes from the files chosen in "VAE / Text encoder" (option
``forge_additional_modules``, as Forge names it), or, when none is chosen for that part, from the one
compatible file found in the module folders. Every part's kind is read from the file's weights (never its
name): a 16-channel VAE, a CLIP text encoder (the narrower of two is CLIP-L, the wider CLIP-G), a T5 encoder.
Without a T5 file SD 3.x runs on zeros in its place (as diffusers allows), FLUX.1 cannot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_vae_checkpoint,
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from webui.errors import ModelError
from webui.models.components import SDComponents, shipped_t5_tokenizer, shipped_tokenizers
from webui.models.flow_config import flux_to_diffusers, flux_transformer_config, sd3_transformer_config, t5_config
from webui.models.infer_config import STATE_DICT, VAE_SCALING, VAE_SHIFT, clip_config_from_ldm, vae_config_from_ldm
from webui.models.safeload import _safetensors_header, read_state_dict
from webui.models.spec import UNET_PREFIX, ModelSpec
from webui.models.strict_load import _fit_text_keys, _folder_tokenizer, _load_strict, _variant

log = logging.getLogger(__name__)

VAE_KEY_PREFIXES = ("first_stage_model.", "vae.")
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
#: T5 sequence lengths of the reference pipelines: SD 3.x and FLUX.1 schnell 256, FLUX.1 dev 512.
T5_LENGTH = {"sd3": 256, "flux_schnell": 256, "flux_dev": 512}
PART_FOLDERS = {"VAE": "models/VAE", "CLIP-L": "models/text_encoder", "CLIP-G": "models/text_encoder",
                "T5-XXL": "models/text_encoder"}


@dataclass(frozen=True)
class ModuleChoice:
    """The separate files a flow checkpoint may take parts from: ``chosen`` (the "VAE / Text encoder"
    selection, used first) and ``candidates`` (every file of the module folders, for automatic matching)."""

    chosen: Sequence[Path] = ()
    candidates: Sequence[Path] = ()


@dataclass
class _Parts:
    transformer: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor] | None = None
    clip_l: dict[str, torch.Tensor] | None = None
    clip_g: dict[str, torch.Tensor] | None = None
    t5: dict[str, torch.Tensor] | None = None
    files: dict[str, Path] = field(default_factory=dict)


def module_kind(path: Path) -> tuple[str, int] | None:
    """``("vae", latent channels)``, ``("clip", width)`` or ``("t5", width)`` of a module file, read from its
    safetensors header (no tensor is loaded); None for anything else or unreadable files."""
    try:
        path = Path(path)
        if path.is_dir() or path.suffix.lower() != ".safetensors":
            return None
        header = _safetensors_header(path, path.stat().st_size)
    except (ModelError, OSError):
        return None
    shapes = {k: v.get("shape") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    for prefix in ("", *VAE_KEY_PREFIXES):
        conv = shapes.get(prefix + "decoder.conv_in.weight")
        if conv and prefix + "encoder.conv_in.weight" in shapes:
            return "vae", int(conv[1])
    for prefix in ("", CLIP_L_PREFIX, CLIP_G_PREFIX):
        tok = shapes.get(prefix + "text_model.embeddings.token_embedding.weight")
        if tok:
            return "clip", int(tok[1])
    for prefix in ("", T5_PREFIX):
        shared = shapes.get(prefix + "shared.weight") or shapes.get(prefix + "encoder.embed_tokens.weight")
        if shared and prefix + "encoder.block.0.layer.0.SelfAttention.q.weight" in shapes:
            return "t5", int(shared[1])
    return None


def load_flow_file(state_dict: Mapping[str, torch.Tensor], spec: ModelSpec, *, dtype: torch.dtype,
                   modules: ModuleChoice | None = None) -> SDComponents:
    """Components of an SD 3.x / FLUX.1 single file (``state_dict``), completed from ``modules``."""
    parts = _split(state_dict)
    _complete(parts, spec, modules or ModuleChoice())
    return _build(parts, spec, dtype)


def _under(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _split(sd: Mapping[str, torch.Tensor]) -> _Parts:
    transformer = _under(sd, UNET_PREFIX)
    if not transformer:  # a transformer-only file: everything that is not another part
        transformer = {k: v for k, v in sd.items()
                       if not k.startswith((*VAE_KEY_PREFIXES, "text_encoders.", "conditioner.", "cond_stage_model."))}
    vae = next((sub for p in VAE_KEY_PREFIXES if (sub := _under(sd, p))), None)
    return _Parts(transformer, vae=vae, clip_l=_under(sd, CLIP_L_PREFIX) or None,
                  clip_g=_under(sd, CLIP_G_PREFIX) or None, t5=_under(sd, T5_PREFIX) or None)


def _needed(spec: ModelSpec) -> tuple[str, ...]:
    return ("VAE", "CLIP-L", "CLIP-G", "T5-XXL") if spec.family == "sd3" else ("VAE", "CLIP-L", "T5-XXL")


def _complete(parts: _Parts, spec: ModelSpec, modules: ModuleChoice) -> None:
    """Fill the parts the file lacks (and replace those chosen explicitly) from the module files."""
    attr = {"VAE": "vae", "CLIP-L": "clip_l", "CLIP-G": "clip_g", "T5-XXL": "t5"}
    chosen = _assign([Path(p) for p in modules.chosen], spec, explicit=True)
    for part, path in chosen.items():
        setattr(parts, attr[part], _read_module(path, part))
        parts.files[part] = path
    missing = [p for p in _needed(spec) if getattr(parts, attr[p]) is None]
    if not missing:
        return
    auto = _assign([Path(p) for p in modules.candidates if Path(p) not in chosen.values()], spec, explicit=False)
    for part in missing:
        path = auto.get(part)
        if path is None:
            if part == "T5-XXL" and spec.family == "sd3":
                log.warning("No T5-XXL text encoder for this SD 3 checkpoint: it runs without T5 (zeros in its "
                            "place, as diffusers allows). For full prompt following put t5xxl_fp16.safetensors "
                            "into models/text_encoder and choose it in 'VAE / Text encoder'.")
                continue
            raise ModelError(STATE_DICT, f"this {spec.label} checkpoint has no {part} and no single compatible "
                                         f"{part} file was found. Put the {part} file into {PART_FOLDERS[part]} "
                                         "and choose it in 'VAE / Text encoder' (forge_additional_modules).")
        setattr(parts, attr[part], _read_module(path, part))
        parts.files[part] = path
        log.info("%s from %s", part, path.name)


def _assign(paths: list[Path], spec: ModelSpec, *, explicit: bool) -> dict[str, Path]:
    """Which file serves which part. Explicit choices must all fit; automatic matching keeps a part only
    when exactly one file fits it."""
    kinds = {p: module_kind(p) for p in paths}
    if explicit:
        for path, kind in kinds.items():
            if kind is None:
                raise ModelError(path, "it is not a VAE, CLIP or T5 text encoder file (.safetensors) and cannot "
                                       f"complete a {spec.label} checkpoint. Remove it from 'VAE / Text encoder'.")
            if kind[0] == "vae" and kind[1] != 16:
                raise ModelError(path, f"it is a {kind[1]}-channel VAE (SD 1.x/2.x/SDXL), but {spec.label} needs "
                                       "its 16-channel VAE (ae.safetensors for FLUX.1, the SD 3 VAE for SD 3.x).")
    vaes = [p for p, k in kinds.items() if k is not None and k[0] == "vae" and k[1] == 16]
    t5s = [p for p, k in kinds.items() if k is not None and k[0] == "t5"]
    clips = sorted((k[1], p) for p, k in kinds.items() if k is not None and k[0] == "clip")
    out: dict[str, Path] = {}
    if len(vaes) == 1:
        out["VAE"] = vaes[0]
    if len(t5s) == 1:
        out["T5-XXL"] = t5s[0]
    if spec.family == "flux" and len(clips) == 1:
        out["CLIP-L"] = clips[0][1]
    if spec.family == "sd3":
        widths = sorted({w for w, _ in clips})
        if len(clips) == 2 and len(widths) == 2:
            out["CLIP-L"], out["CLIP-G"] = clips[0][1], clips[1][1]
        elif explicit and len(clips) == 1:
            out["CLIP-L" if clips[0][0] <= 768 else "CLIP-G"] = clips[0][1]
    if explicit and len(out) < sum(1 for k in kinds.values() if k is not None):
        raise ModelError(paths[0], "the files chosen in 'VAE / Text encoder' are ambiguous (two of the same kind); "
                                   "choose one VAE, one T5 and the CLIP encoders the model needs.")
    return out


def _read_module(path: Path, part: str) -> dict[str, torch.Tensor]:
    sd, _ = read_state_dict(path)
    if part == "VAE":
        return next((sub for p in VAE_KEY_PREFIXES if (sub := _under(sd, p))), sd)
    for prefix in (CLIP_L_PREFIX, CLIP_G_PREFIX, T5_PREFIX):
        if any(k.startswith(prefix) for k in sd):
            return _under(sd, prefix)
    return sd


def _build(parts: _Parts, spec: ModelSpec, dtype: torch.dtype) -> SDComponents:
    if spec.family == "sd3":
        config = sd3_transformer_config(parts.transformer)
        weights = convert_sd3_transformer_checkpoint_to_diffusers(dict(parts.transformer))
        with init_empty_weights():
            transformer = SD3Transformer2DModel.from_config(config)
    else:
        config = flux_transformer_config(parts.transformer)
        weights = flux_to_diffusers(parts.transformer)
        with init_empty_weights():
            transformer = FluxTransformer2DModel.from_config(config)
    transformer = _load_strict(transformer, weights, dtype, f"{spec.label} transformer")
    vae = _build_vae(parts.vae, spec, dtype)
    if spec.family == "sd3":
        encoders = [_build_clip(parts.clip_l, "quick_gelu", True, dtype, _fit_text_keys, _load_strict),
                    _build_clip(parts.clip_g, "gelu", True, dtype, _fit_text_keys, _load_strict)]
        t5_length = T5_LENGTH["sd3"]
    else:
        encoders = [_build_clip(parts.clip_l, "quick_gelu", False, dtype, _fit_text_keys, _load_strict)]
        t5_length = T5_LENGTH["flux_dev" if spec.distilled_guidance else "flux_schnell"]
    t5 = _build_t5(parts.t5, dtype, _load_strict) if parts.t5 is not None else None
    return SDComponents(spec=spec, unet=transformer, vae=vae, text_encoders=encoders,
                        tokenizers=shipped_tokenizers(spec.family), alphas_cumprod=torch.zeros(1000),
                        vae_scaling_factor=VAE_SCALING[spec.family], vae_shift_factor=VAE_SHIFT[spec.family],
                        t5=t5, t5_tokenizer=shipped_t5_tokenizer(t5_length),
                        module_files={p: parts.files[p] for p in PART_FOLDERS if p in parts.files} or None)


def _build_vae(sd: Mapping[str, torch.Tensor], spec: ModelSpec, dtype: torch.dtype) -> AutoencoderKL:
    config = vae_config_from_ldm(sd, spec)
    if config["latent_channels"] != 16:
        raise ModelError(STATE_DICT, f"its VAE has {config['latent_channels']} latent channels; {spec.label} needs "
                                     "the 16-channel VAE of its family (choose it in 'VAE / Text encoder').")
    weights = convert_ldm_vae_checkpoint({"first_stage_model." + k: v for k, v in sd.items()}, config)
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    return _load_strict(vae, weights, dtype, "VAE")


def _build_clip(sd: Mapping[str, torch.Tensor], act: str, projection: bool, dtype: torch.dtype, fit, load):
    """A CLIP text encoder from transformers-layout keys; SD 3.x uses the projected pooled output (identity
    when the file has no ``text_projection``, as separate ``clip_l`` files do)."""
    config = clip_config_from_ldm(sd, "", "clip")
    config.hidden_act = act
    weights = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    if projection:
        if "text_projection.weight" not in weights:
            weights["text_projection.weight"] = torch.eye(config.hidden_size)
        config.projection_dim = int(weights["text_projection.weight"].shape[0])
    else:
        weights.pop("text_projection.weight", None)
    with init_empty_weights():
        model = cls(config)
    return load(model, fit(model, weights), dtype, "CLIP text encoder")


def _build_t5(sd: Mapping[str, torch.Tensor], dtype: torch.dtype, load) -> T5EncoderModel:
    config = t5_config(sd)
    weights = dict(sd)
    shared = weights.get("shared.weight", weights.get("encoder.embed_tokens.weight"))
    weights["shared.weight"] = weights["encoder.embed_tokens.weight"] = shared
    with init_empty_weights():
        model = T5EncoderModel(config)
    expected = model.state_dict()
    weights = {k: v for k, v in weights.items() if k in expected or not k.startswith(("shared", "encoder.embed"))}
    return load(model, weights, dtype, "T5 text encoder")


def load_flow_folder(folder: Path, spec: ModelSpec, dtype: torch.dtype) -> SDComponents:
    """An SD 3.x / FLUX.1 diffusers folder (``from_pretrained``, local files only)."""
    def part(name: str, cls, **kw):
        return cls.from_pretrained(folder / name, local_files_only=True, variant=_variant(folder / name), **kw)

    try:
        model_cls = SD3Transformer2DModel if spec.family == "sd3" else FluxTransformer2DModel
        transformer = part("transformer", model_cls, torch_dtype=dtype)
        vae = part("vae", AutoencoderKL, torch_dtype=dtype)
        if spec.family == "sd3":
            encoders = [part("text_encoder", CLIPTextModelWithProjection, dtype=dtype),
                        part("text_encoder_2", CLIPTextModelWithProjection, dtype=dtype)]
            t5_dir = "text_encoder_3"
        else:
            encoders = [part("text_encoder", CLIPTextModel, dtype=dtype)]
            t5_dir = "text_encoder_2"
        t5 = part(t5_dir, T5EncoderModel, dtype=dtype) if (folder / t5_dir / "config.json").is_file() else None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(folder, f"a diffusers component could not be loaded ({type(exc).__name__}: {first}). "
                                 "Download the folder again.") from exc
    if t5 is None and spec.family == "flux":
        raise ModelError(folder, "the FLUX.1 folder has no text_encoder_2 (T5-XXL). Download the whole folder.")
    defaults = shipped_tokenizers(spec.family)
    tokenizers = [_folder_tokenizer(folder / name) or default
                  for name, default in zip(("tokenizer", "tokenizer_2"), defaults)]
    length = T5_LENGTH["sd3" if spec.family == "sd3" else ("flux_dev" if spec.distilled_guidance else "flux_schnell")]
    return SDComponents(spec=spec, unet=transformer.eval(), vae=vae.eval(), text_encoders=[e.eval() for e in encoders],
                        tokenizers=tokenizers, alphas_cumprod=torch.zeros(1000),
                        vae_scaling_factor=float(vae.config.scaling_factor),
                        vae_shift_factor=float(vae.config.shift_factor or 0.0),
                        t5=t5.eval() if t5 is not None else None, t5_tokenizer=shipped_t5_tokenizer(length))
