"""Prompt encoding into the UNet's conditioning.

Prompts are tokenized without truncation and encoded in chunks of 75 tokens
(plus start/end tokens), concatenated along the sequence -- so long prompts
work as in A1111.  The negative prompt is padded with empty-prompt chunks to the
positive one's length.  SD 1.x uses the last CLIP layer (minus clip skip), SD 2.x
the penultimate OpenCLIP layer, SDXL the penultimate layer of both encoders plus
the pooled projection of the second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 75


@dataclass
class Conditioning:
    """Cross-attention context ``[B, T, D]`` and, for SDXL, pooled embeddings ``[B, P]``."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def repeat(self, n: int) -> Conditioning:
        return Conditioning(
            self.context.expand(n, -1, -1),
            None if self.pooled is None else self.pooled.expand(n, -1),
        )


def _chunks(tokenizer, text: str) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    chunks = [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out = []
    for c in chunks:
        row = [bos, *c, eos]
        row += [pad] * (CHUNK + 2 - len(row))
        out.append(row)
    return out


def _final_layer_norm(encoder) -> torch.nn.Module:
    # transformers 5 puts it on the model; older versions under .text_model
    norm = getattr(encoder, "final_layer_norm", None)
    return norm if norm is not None else encoder.text_model.final_layer_norm


def _encode_one(encoder, tokenizer, text: str, layer: int, final_norm: bool, n_chunks: int | None,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    chunks = _chunks(tokenizer, text)
    if n_chunks is not None:
        empty = _chunks(tokenizer, "")[0]
        chunks = chunks + [empty] * (n_chunks - len(chunks))
    ids = torch.tensor(chunks, device=device)
    out = encoder(ids, output_hidden_states=True)
    hidden = out.hidden_states[layer]
    if final_norm:
        hidden = _final_layer_norm(encoder)(hidden)
    context = hidden.reshape(1, -1, hidden.shape[-1])
    pooled = getattr(out, "text_embeds", None)
    return context, (pooled[:1] if pooled is not None else None)


@torch.no_grad()
def encode_prompt(components, text: str, *, clip_skip: int = 1, n_chunks: int | None = None) -> Conditioning:
    """Encode one prompt. ``n_chunks`` pads the result to that many 75-token chunks."""
    spec = components.spec
    encoders, tokenizers = components.text_encoders, components.tokenizers
    device = encoders[0].device
    if spec.family == "sdxl":
        layer = -2  # penultimate layer of both encoders; clip skip does not apply (as in A1111)
        ctx1, _ = _encode_one(encoders[0], tokenizers[0], text, layer, False, n_chunks, device)
        ctx2, pooled = _encode_one(encoders[1], tokenizers[1], text, layer, False, n_chunks, device)
        return Conditioning(torch.cat([ctx1, ctx2], dim=-1), pooled)
    # SD 2.x always uses the penultimate OpenCLIP layer; SD 1.x the last minus clip skip.
    if spec.family == "sd2":
        layer = -1 if components.sd2_last_layer_dropped else -2
    else:
        layer = -max(1, clip_skip)
    ctx, _ = _encode_one(encoders[0], tokenizers[0], text, layer, True, n_chunks, device)
    return Conditioning(ctx)


def count_chunks(components, text: str) -> int:
    return len(_chunks(components.tokenizers[0], text))


def encode_pair(components, prompt: str, negative: str, *, clip_skip: int = 1) -> tuple[Conditioning, Conditioning]:
    """Encode positive and negative prompts padded to the same number of chunks."""
    n = max(count_chunks(components, prompt), count_chunks(components, negative))
    return (
        encode_prompt(components, prompt, clip_skip=clip_skip, n_chunks=n),
        encode_prompt(components, negative, clip_skip=clip_skip, n_chunks=n),
    )
