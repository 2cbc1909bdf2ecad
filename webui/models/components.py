"""The loaded modules of one Stable Diffusion model, plus a plain diffusers view."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTokenizer

from webui.models.spec import ModelSpec

TOKENIZER_DIR = Path(__file__).resolve().parent / "configs" / "clip_tokenizer"
#: Google's T5 v1.1 SentencePiece vocabulary (Apache-2.0, NOTICE.md beside it): FLUX.1's and SD 3.5's T5-XXL.
T5_TOKENIZER_DIR = Path(__file__).resolve().parent / "configs" / "t5_tokenizer"
CLIP_PAD, OPENCLIP_PAD = "<|endoftext|>", "!"
TOKENIZER_PADS = {"sd1": (CLIP_PAD,), "sd2": (OPENCLIP_PAD,), "sdxl": (CLIP_PAD, OPENCLIP_PAD),
                  "sd3": (CLIP_PAD, OPENCLIP_PAD), "flux": (CLIP_PAD,)}
BETA_START, BETA_END, TRAIN_STEPS = 0.00085, 0.012, 1000

#: A linear latent->RGB preview map: 4x3 factors (one row per latent channel) and an RGB bias.
Coefficients = tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]
#: Checkpoint metadata key with a model's own fitted map: JSON ``{"factors": 4x3, "bias": 3}``.
METADATA_KEY = "webui.latent_rgb"


def parse_metadata(metadata: dict[str, str]) -> Coefficients | None:
    """A model's own preview map from its checkpoint metadata, or None when absent or malformed."""
    try:
        raw = json.loads(metadata[METADATA_KEY])
        factors = tuple(tuple(float(v) for v in row) for row in raw["factors"])
        bias = tuple(float(v) for v in raw["bias"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(factors) != 4 or any(len(row) != 3 for row in factors) or len(bias) != 3:
        return None
    return factors, bias  # type: ignore[return-value]


def shipped_tokenizer(pad_token: str = CLIP_PAD) -> CLIPTokenizer:
    """The CLIP BPE tokenizer shipped in ``configs/clip_tokenizer`` (77 tokens).

    SD1 and SDXL's first encoder pad with ``<|endoftext|>``; SD2 and SDXL's
    second encoder pad with ``!``.
    """
    return CLIPTokenizer(
        vocab=str(TOKENIZER_DIR / "vocab.json"),
        merges=str(TOKENIZER_DIR / "merges.txt"),
        model_max_length=77,
        pad_token=pad_token,
    )


def shipped_t5_tokenizer(max_length: int = 256):
    """The T5 tokenizer shipped in ``configs/t5_tokenizer``, read offline (``max_length`` tokens: 256 for
    SD 3.5 and FLUX.1 schnell, 512 for FLUX.1 dev)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(T5_TOKENIZER_DIR), model_max_length=max_length, local_files_only=True)


def shipped_tokenizers(family: str) -> list[CLIPTokenizer]:
    """The shipped tokenizers a family needs, in text-encoder order."""
    return [shipped_tokenizer(pad) for pad in TOKENIZER_PADS[family]]


def scaled_linear_alphas_cumprod() -> torch.Tensor:
    """``alphas_cumprod`` of the SD training schedule, float32 ``[1000]``.

    ``betas = linspace(0.00085**0.5, 0.012**0.5, 1000)**2`` ("scaled_linear"),
    computed in float64 then rounded once to float32, as the original LDM code
    stores it in checkpoints.
    """
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_STEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def scheduler_config(prediction_type: str = "epsilon") -> dict[str, Any]:
    """Local EulerDiscreteScheduler config of the SD training schedule (no hub)."""
    return {
        "num_train_timesteps": TRAIN_STEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "timestep_spacing": "leading",
        "steps_offset": 1,
    }


@dataclass
class SDComponents:
    """Everything needed to run one Stable Diffusion model.

    ``text_encoders`` is ``[CLIPTextModel]`` for sd1/sd2 and
    ``[CLIPTextModel, CLIPTextModelWithProjection]`` for sdxl, ``tokenizers``
    the matching ``CLIPTokenizer`` list.  SD2 text encoders keep ALL OpenCLIP
    layers: the original SD2 conditioning is the penultimate layer followed by
    the final layer norm.
    """

    spec: ModelSpec
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list
    tokenizers: list
    alphas_cumprod: torch.Tensor
    vae_scaling_factor: float
    #: SD2 diffusers folders ship the OpenCLIP encoder without its last layer (diffusers' convention),
    #: so their conditioning is the encoder's last layer instead of the penultimate one.
    sd2_last_layer_dropped: bool = False
    #: The checkpoint's own linear latent->RGB preview map (metadata ``webui.latent_rgb``), if any.
    latent_rgb: Coefficients | None = None
    #: SD 3.x / FLUX.1: the latents are ``(z - vae_shift_factor) * vae_scaling_factor``.
    vae_shift_factor: float = 0.0
    #: SD 3.x / FLUX.1: the T5-XXL encoder (None: SD 3.x without T5, conditioned with zeros) and its tokenizer.
    t5: Any = None
    t5_tokenizer: Any = None
    #: Where each separately loaded part came from (``{"VAE": path, "T5-XXL": path, ...}``), for the log and
    #: the infotext's ``Module N`` keys.
    module_files: dict[str, Path] | None = None

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules: UNet (SD 3.x / FLUX.1: the transformer), VAE, then the text encoders."""
        return [self.unet, self.vae, *self.text_encoders, *([self.t5] if self.t5 is not None else [])]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SDComponents:
        """Move (and/or cast) every module in place; ``alphas_cumprod`` only moves. Returns self."""
        for module in self.modules():
            module.to(device=device, dtype=dtype)
        if device is not None:
            self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    def diffusers_pipeline(self) -> DiffusionPipeline:
        """A plain diffusers pipeline sharing these modules (the reference implementation).

        StableDiffusion(XL)Pipeline, or the Inpaint variant for inpainting
        models, with an ``EulerDiscreteScheduler`` built from a local config,
        no safety checker and no watermarker.  For SD2 pass ``clip_skip=1`` to
        the call to reproduce the original penultimate-layer conditioning
        (the text encoder keeps all layers, see the class docstring).
        """
        import diffusers

        if self.spec.is_flow:
            return self._flow_pipeline()
        scheduler = EulerDiscreteScheduler.from_config(scheduler_config(self.spec.prediction_type))
        common = dict(vae=self.vae, unet=self.unet, scheduler=scheduler)
        if self.spec.family == "sdxl":
            cls = diffusers.StableDiffusionXLInpaintPipeline if self.spec.inpainting \
                else diffusers.StableDiffusionXLPipeline
            extra = {"requires_aesthetics_score": False} if self.spec.inpainting else {}
            pipe = cls(text_encoder=self.text_encoders[0], text_encoder_2=self.text_encoders[1],
                       tokenizer=self.tokenizers[0], tokenizer_2=self.tokenizers[1],
                       add_watermarker=False, **common, **extra)
        else:
            cls = diffusers.StableDiffusionInpaintPipeline if self.spec.inpainting \
                else diffusers.StableDiffusionPipeline
            pipe = cls(text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0],
                       safety_checker=None, feature_extractor=None, requires_safety_checker=False, **common)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _flow_pipeline(self) -> DiffusionPipeline:
        """``StableDiffusion3Pipeline`` / ``FluxPipeline`` on these modules with a flow-matching Euler
        scheduler of shift 1 (pass the run's shifted sigmas to the call)."""
        import diffusers

        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
        if self.spec.family == "sd3":
            pipe = diffusers.StableDiffusion3Pipeline(
                transformer=self.unet, scheduler=scheduler, vae=self.vae,
                text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0],
                text_encoder_2=self.text_encoders[1], tokenizer_2=self.tokenizers[1],
                text_encoder_3=self.t5, tokenizer_3=self.t5_tokenizer if self.t5 is not None else None)
        else:
            pipe = diffusers.FluxPipeline(transformer=self.unet, scheduler=scheduler, vae=self.vae,
                                          text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0],
                                          text_encoder_2=self.t5, tokenizer_2=self.t5_tokenizer)
        pipe.set_progress_bar_config(disable=True)
        return pipe
