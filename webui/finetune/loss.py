"""The training step both textual inversion and LoRA take: encode the prompts (with gradients), noise the
latents at a uniform random timestep, and compare the U-Net's prediction with its target."""

from __future__ import annotations

import torch

from webui.pipeline.conditioning import EncodeOptions, chunk_count, encode_prompt


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
