"""The training step both textual inversion and LoRA take: encode the prompts (with gradients), noise the
latents at a uniform random timestep, and compare the U-Net's prediction with its target."""

from __future__ import annotations

import numpy as np
import torch

from webui.pipeline.conditioning import EncodeOptions, chunk_count, encode_prompt


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by ``key`` (e.g. seed, step): a run's randomness per step, so resuming repeats it."""
    return torch.Generator().manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)


@torch.no_grad()
def posterior_latents(model, dataset, method: str, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image of ``dataset``: (mean, std) of the VAE posterior, scaled. A1111's latent sampling methods:
    ``once`` -- one sample, kept (as the mean, std 0); ``deterministic`` -- the mean (std 0); ``random`` --
    mean and std, sampled again at every use."""
    c = model.components
    out = []
    for i, item in enumerate(dataset.items):
        pixels = torch.from_numpy(item.pixels.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        dist = c.vae.encode(pixels.to(model.device, c.vae.dtype)).latent_dist
        mean, std = dist.mean.float() * c.vae_scaling_factor, dist.std.float() * c.vae_scaling_factor
        if method == "once":
            noise = torch.randn(mean.shape, generator=seeded_generator(seed, -1, i)).to(mean.device)
            mean, std = mean + std * noise, torch.zeros_like(std)
        elif method == "deterministic":
            std = torch.zeros_like(std)
        out.append((mean[0], std[0]))
    return out


def denoising_loss(model, x0: torch.Tensor, prompts: list[str], gen: torch.Generator,
                   embeddings=None) -> torch.Tensor:
    """Mean squared error of the U-Net's noise (epsilon models) or v (v-prediction) prediction for latents
    ``x0`` noised at ``t ~ U{0..999}`` by the training schedule, under ``prompts`` (one per latent; a prompt
    that names an embedding in ``embeddings`` uses its vectors, with their gradients). SDXL gets A1111's size
    conditioning (original = target = the latents' size, no crop)."""
    c = model.components
    opts = EncodeOptions()
    chunks = max(chunk_count(c, p, opts, embeddings) for p in prompts)
    with torch.enable_grad():
        conds = [encode_prompt.__wrapped__(c, p, opts, n_chunks=chunks, embeddings=embeddings) for p in prompts]
        context = torch.cat([cond.context for cond in conds]).to(model.dtype)
        t = torch.randint(0, 1000, (len(prompts),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
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
        return torch.nn.functional.mse_loss(out, target)
