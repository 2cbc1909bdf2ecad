"""The training step both textual inversion and LoRA take: encode the prompts (with gradients), noise the
latents at a uniform random timestep, and compare the U-Net's prediction with its target."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from webui.errors import RequestError
from webui.pipeline.conditioning import EncodeOptions, chunk_count, encode_prompt


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by ``key`` (e.g. seed, step): a run's randomness per step, so resuming repeats it."""
    return torch.Generator().manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """A short hash of the VAE encoder's first and last weights: another VAE (or its weights changed) gives
    another fingerprint, so cached latents of the old one are never used."""
    digest = hashlib.sha256()
    params = list(vae.encoder.parameters())
    for p in (params[0], params[-1], *(getattr(vae, "quant_conv", None) or torch.nn.Identity()).parameters()):
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def posterior_latents(model, dataset, method: str, seed: int,
                      cache_dir: Path | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image of ``dataset``: (mean, std) of the VAE posterior, scaled. A1111's latent sampling methods:
    ``once`` -- one sample, kept (as the mean, std 0); ``deterministic`` -- the mean (std 0); ``random`` --
    mean and std, sampled again at every use.

    ``cache_dir`` (a run folder's ``latents``): each image's posterior is kept on disk under the VAE's
    fingerprint and a hash of the image's pixels at its bucket size, so a resumed or repeated run skips the
    VAE, and a changed picture, bucket or VAE is encoded again (folders of other VAEs are removed)."""
    c = model.components
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / vae_fingerprint(c.vae)
        if Path(cache_dir).is_dir():
            for other in Path(cache_dir).iterdir():
                if other.is_dir() and other != folder:
                    shutil.rmtree(other, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, item in enumerate(dataset.items):
        cached = None
        if folder is not None:
            key = hashlib.sha256(item.pixels.tobytes() + str(item.pixels.shape).encode()).hexdigest()[:24]
            cached = folder / f"{key}.safetensors"
        if cached is not None and cached.is_file():
            stored = load_file(str(cached))
            mean, std = stored["mean"].to(model.device), stored["std"].to(model.device)
        else:
            pixels = torch.from_numpy(item.pixels.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            dist = c.vae.encode(pixels.to(model.device, c.vae.dtype)).latent_dist
            shift = float(getattr(c, "vae_shift_factor", 0.0) or 0.0)  # SD 3.x / FLUX.1: (z - shift) * scale
            mean, std = (dist.mean.float() - shift) * c.vae_scaling_factor, dist.std.float() * c.vae_scaling_factor
            if cached is not None:
                tmp = cached.with_suffix(".tmp")
                save_file({"mean": mean.cpu().contiguous(), "std": std.cpu().contiguous()}, str(tmp))
                tmp.replace(cached)
        if method == "once":
            noise = torch.randn(mean.shape, generator=seeded_generator(seed, -1, i)).to(mean.device)
            mean, std = mean + std * noise, torch.zeros_like(std)
        elif method == "deterministic":
            std = torch.zeros_like(std)
        out.append((mean[0], std[0]))
    return out


def check_min_snr(components, gamma: float) -> None:
    """Min-SNR weighting (``min_snr_gamma``) is for the noise-prediction families: a RequestError naming the field
    when it is asked for on SD 3.x / FLUX.1 (their rectified-flow loss has no such weighting)."""
    if gamma and components.spec.is_flow:
        raise RequestError("min_snr_gamma", f"{components.spec.label} trains with the rectified-flow loss, which "
                                            "min-SNR weighting does not apply to; use min_snr_gamma 0")


def denoising_loss(model, x0: torch.Tensor, prompts: list[str], gen: torch.Generator,
                   embeddings=None, *, min_snr_gamma: float = 0.0, noise_offset: float = 0.0,
                   sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of the U-Net's noise (epsilon models) or v (v-prediction) prediction for latents
    ``x0`` noised at ``t ~ U{0..999}`` by the training schedule, under ``prompts`` (one per latent; a prompt
    that names an embedding in ``embeddings`` uses its vectors, with their gradients). SDXL gets A1111's size
    conditioning (original = target = the latents' size, no crop).

    kohya's options: ``min_snr_gamma`` > 0 weighs each sample by ``min(SNR, gamma) / SNR`` (v-prediction:
    ``/ (SNR + 1)``; Hang et al. 2023); ``noise_offset`` adds ``offset * N(0, 1)`` per image and channel to the
    noise (Guttenberg's offset noise: whole-image colour and brightness become learnable). ``sample_weights``
    (one per latent; kohya's loss weights, e.g. ``prior_loss_weight`` for regularization pictures) multiply each
    sample's mean squared error before the batch mean."""
    c = model.components
    opts = EncodeOptions()
    chunks = max(chunk_count(c, p, opts, embeddings) for p in prompts)
    with torch.enable_grad():
        conds = [encode_prompt.__wrapped__(c, p, opts, n_chunks=chunks, embeddings=embeddings) for p in prompts]
        context = torch.cat([cond.context for cond in conds]).to(model.dtype)
        t = torch.randint(0, 1000, (len(prompts),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        if noise_offset:
            noise = noise + noise_offset * torch.randn((*x0.shape[:2], 1, 1), generator=gen).to(x0.device)
        alpha = c.alphas_cumprod.to(x0.device)[t.to(x0.device)].float().view(-1, 1, 1, 1)
        x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
        added = None
        if c.spec.family == "sdxl":
            h, w = x0.shape[-2] * 8, x0.shape[-1] * 8
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=x0.device, dtype=model.dtype).expand(len(prompts), -1)
            added = {"text_embeds": torch.cat([cond.pooled for cond in conds]).to(model.dtype), "time_ids": time_ids}
        out = c.unet(x_t.to(model.dtype), t.to(x0.device), encoder_hidden_states=context, added_cond_kwargs=added,
                     return_dict=False)[0].float()
        target = noise if c.spec.prediction_type == "epsilon" else alpha.sqrt() * noise - (1 - alpha).sqrt() * x0
        if not min_snr_gamma and sample_weights is None:
            return torch.nn.functional.mse_loss(out, target)
        per_sample = ((out - target) ** 2).mean(dim=tuple(range(1, out.ndim)))
        if sample_weights is not None:
            per_sample = per_sample * sample_weights
        if min_snr_gamma:
            snr = (alpha / (1 - alpha)).view(-1)
            per_sample = per_sample * torch.clamp(snr, max=min_snr_gamma) / (
                snr if c.spec.prediction_type == "epsilon" else snr + 1)
        return per_sample.mean()


def flow_loss(model, x0: torch.Tensor, prompts: list[str], gen: torch.Generator, guidance: float = 1.0,
              embeddings=None, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The rectified-flow training loss of SD 3.x / FLUX.1 (as kohya's ``flux_train_network`` /
    ``sd3_train_network`` with their default sampling): ``sigma = sigmoid(N(0, 1))`` (logit-normal, as in the
    SD 3 paper), ``x_t = (1 - sigma) x0 + sigma noise``, and the mean squared error between the transformer's
    velocity and ``noise - x0``. FLUX.1 dev gets ``guidance`` as its distilled-guidance input (kohya trains
    with 1.0). ``sample_weights`` as in :func:`denoising_loss`."""
    from webui.pipeline.conditioning import Conditioning
    from webui.pipeline.flow_model import velocity_fn

    c = model.components
    opts = EncodeOptions()
    chunks = max(chunk_count(c, p, opts, embeddings) for p in prompts)
    with torch.enable_grad():
        conds = [encode_prompt.__wrapped__(c, p, opts, n_chunks=chunks, embeddings=embeddings) for p in prompts]
        ctx = Conditioning(torch.cat([cond.context for cond in conds]).to(model.dtype),
                           torch.cat([cond.pooled for cond in conds]).to(model.dtype))
        sigma = torch.sigmoid(torch.randn(len(prompts), generator=gen)).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        velocity = velocity_fn(model, guidance)(x_t, sigma, ctx)
        if sample_weights is None:
            return torch.nn.functional.mse_loss(velocity.float(), noise - x0)
        per_sample = ((velocity.float() - (noise - x0)) ** 2).mean(dim=tuple(range(1, x0.ndim)))
        return (per_sample * sample_weights).mean()
