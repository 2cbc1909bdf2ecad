"""Prompt encoding with A1111's rules (``FrozenCLIPEmbedderWithCustomWords``).

* The prompt is parsed for emphasis (:func:`webui.prompts.parser.parse_prompt_attention`), the
  pieces are tokenized without truncation and packed into chunks of 75 tokens; when a chunk is
  full and a comma was seen within the last ``comma_padding_backtrack`` tokens, the text after
  the comma moves to the next chunk. ``BREAK`` closes the current chunk. Each chunk is
  ``[start] + 75 tokens (padded with end) + [end]``; encoders whose padding token differs from
  the end token (OpenCLIP: SD 2.x and SDXL's second encoder) get it after the first end token.
* Chunks are encoded separately and concatenated along the sequence.
* Emphasis: "Original" multiplies each token's embedding by its weight and restores the mean;
  "No norm" only multiplies; "None" ignores the syntax.
* Layers: SD 1.x the last layer minus clip skip (then the final norm), SD 2.x the penultimate
  OpenCLIP layer (then the final norm), SDXL the penultimate layer of both encoders (no norm)
  plus the second encoder's pooled projection of the first chunk.
* ``old_emphasis`` (A1111's option ``use_old_emphasis_implementation``, its code before 1.0):
  see :func:`tokenize_prompt_old`. The emphasis mode still applies to the multipliers afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from webui.errors import RequestError
from webui.prompts.parser import parse_prompt_attention

CHUNK = 75
COMMA_TOKEN = ",</w>"


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

    @property
    def tokens(self) -> int:
        return self.context.shape[1]

    def zeros_like(self) -> Conditioning:
        return Conditioning(torch.zeros_like(self.context),
                            None if self.pooled is None else torch.zeros_like(self.pooled))


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    #: textual-inversion vectors: (offset in ``tokens`` before the start token, embedding)
    fixes: list[tuple[int, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class EncodeOptions:
    clip_skip: int = 1
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    #: A1111's ``use_old_emphasis_implementation`` (SD 1.x text encoders only)
    old_emphasis: bool = False


_BRACKETS = frozenset("()[]")


def _old_bracket_multiplier(token_text: str) -> float | None:
    """The multiplier change a token stands for in A1111's old emphasis (``token_mults``), or None.

    A1111 (``FrozenCLIPEmbedderWithCustomWords.__init__``) walks the characters of every vocabulary
    entry containing a bracket: ``[`` divides by 1.1, ``]`` multiplies, ``(`` multiplies, ``)`` divides;
    entries whose product is not exactly 1.0 are multiplier tokens. Computing it for the tokens of the
    prompt gives the same values as A1111's table without copying the 49408-entry vocabulary.
    """
    if not any(ch in _BRACKETS for ch in token_text):
        return None
    mult = 1.0
    for ch in token_text:
        if ch == "[" or ch == ")":
            mult /= 1.1
        elif ch == "]" or ch == "(":
            mult *= 1.1
    return None if mult == 1.0 else mult


def tokenize_prompt_old(tokenizer, text: str, opts: EncodeOptions, embeddings=None) -> tuple[list[PromptChunk], int]:
    """A1111's emphasis implementation from before 1.0 (``sd_hijack_clip_old.process_text_old``).

    The whole text is tokenized at once (no emphasis parsing: ``(a:1.5)``, escapes and ``BREAK`` are plain
    text). Walking the tokens, a token made of brackets (``(``, ``))``, ``[`` ...) is dropped and multiplies
    the running multiplier by its factor (:func:`_old_bracket_multiplier`; not when the emphasis mode is
    "None"); an embedding's name becomes its placeholders; any other token is kept with the running
    multiplier. The result is a single chunk: the first 75 tokens, padded with the end token, between the
    start and end tokens -- the rest is cut off. The token count is the count before the cut.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    tokens: list[int] = []
    multipliers: list[float] = []
    fixes: list[tuple[int, Any]] = []
    mult = 1.0
    pos = 0
    while pos < len(ids):
        token = ids[pos]
        change = None
        if opts.emphasis != "None":
            change = _old_bracket_multiplier(tokenizer.convert_ids_to_tokens(token))
        if change is not None:
            mult *= change
            pos += 1
            continue
        found = embeddings.match(ids, pos) if embeddings is not None else None
        if found is None:
            tokens.append(token)
            multipliers.append(mult)
            pos += 1
            continue
        emb, name_len = found
        n = emb.num_vectors
        # A1111 keeps every fix and clips its vectors at the end of the 77 tokens (even over the end
        # token); a fix starting after the last position would break its encoder, here it is dropped
        if len(tokens) + 1 < CHUNK + 2:
            fixes.append((len(tokens), emb))
        tokens += [0] * n
        multipliers += [mult] * n
        pos += name_len
    token_count = len(tokens)
    pad = max(CHUNK - len(tokens), 0)
    chunk = PromptChunk([bos, *tokens[:CHUNK], *([eos] * pad), eos],
                        [1.0, *multipliers[:CHUNK], *([1.0] * pad), 1.0], fixes)
    return [chunk], token_count


def tokenize_prompt(tokenizer, text: str, opts: EncodeOptions, embeddings=None) -> tuple[list[PromptChunk], int]:
    """Split ``text`` into A1111 chunks of 77 token ids with per-token multipliers; also the token count.

    ``embeddings`` (an :class:`~webui.networks.embeddings.EmbeddingLookup`) replaces the tokens of an
    embedding's name by placeholders whose vectors are substituted at encoding time. With
    ``opts.old_emphasis`` the old implementation is used (:func:`tokenize_prompt_old`).
    """
    if opts.old_emphasis:
        return tokenize_prompt_old(tokenizer, text, opts, embeddings)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.convert_tokens_to_ids(COMMA_TOKEN)  # a lookup; get_vocab() copies 49408 entries
    if comma == tokenizer.unk_token_id:
        comma = None
    parsed = parse_prompt_attention(text) if opts.emphasis != "None" else [[text, 1.0]]
    pieces = tokenizer([t for t, _ in parsed], add_special_tokens=False, truncation=False)["input_ids"]
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def close(is_last: bool = False) -> None:
        nonlocal chunk, token_count, last_comma
        token_count += len(chunk.tokens) if is_last else CHUNK
        pad = CHUNK - len(chunk.tokens)
        chunk.tokens = [bos, *chunk.tokens, *([eos] * pad), eos]
        chunk.multipliers = [1.0, *chunk.multipliers, *([1.0] * pad), 1.0]
        last_comma = -1
        chunks.append(chunk)
        chunk = PromptChunk()

    for ids, (piece, weight) in zip(pieces, parsed):
        if piece == "BREAK" and weight == -1:
            close()
            continue
        pos = 0
        while pos < len(ids):
            token = ids[pos]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (opts.comma_padding_backtrack and len(chunk.tokens) == CHUNK and last_comma != -1
                  and len(chunk.tokens) - last_comma <= opts.comma_padding_backtrack):
                cut = last_comma + 1
                moved, moved_w = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                close()
                chunk.tokens, chunk.multipliers = moved, moved_w
            if len(chunk.tokens) == CHUNK:
                close()
            found = embeddings.match(ids, pos) if embeddings is not None else None
            if found is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                pos += 1
                continue
            emb, name_len = found
            n = emb.num_vectors
            if len(chunk.tokens) + n > CHUNK:
                close()
            chunk.fixes.append((len(chunk.tokens), emb))
            chunk.tokens += [0] * n
            chunk.multipliers += [weight] * n
            pos += name_len
    if chunk.tokens or not chunks:
        close(is_last=True)
    return chunks, token_count


def empty_chunk(tokenizer) -> PromptChunk:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return PromptChunk([bos] + [eos] * (CHUNK + 1), [1.0] * (CHUNK + 2))


def _final_layer_norm(encoder) -> torch.nn.Module:
    # transformers 5 puts it on the model; older versions under .text_model
    norm = getattr(encoder, "final_layer_norm", None)
    return norm if norm is not None else encoder.text_model.final_layer_norm


def _token_embedding(encoder) -> torch.nn.Module:
    emb = getattr(encoder, "embeddings", None) or encoder.text_model.embeddings
    return emb.token_embedding


def _run_encoder(encoder, ids: list[int], fixes, encoder_index: int, n_encoders: int, device: torch.device):
    """Run the text encoder, substituting textual-inversion vectors after the token embedding."""
    if not fixes:
        return encoder(torch.tensor([ids], device=device), output_hidden_states=True)

    def substitute(_module, _inputs, output):
        output = output.clone()
        for offset, emb in fixes:
            vec = emb.for_encoder(encoder_index, n_encoders).to(output.device, output.dtype)
            n = min(vec.shape[0], output.shape[1] - 1 - offset)  # clipped at the end (old emphasis)
            if n > 0:
                output[0, 1 + offset : 1 + offset + n] = vec[:n]
        return output

    handle = _token_embedding(encoder).register_forward_hook(substitute)
    try:
        return encoder(torch.tensor([ids], device=device), output_hidden_states=True)
    finally:
        handle.remove()


def _encode_chunks(encoder, tokenizer, chunks: list[PromptChunk], layer: int, final_norm: bool,
                   emphasis: str, device: torch.device, encoder_index: int = 0,
                   n_encoders: int = 1, unprojected_pool: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    zs, pooled = [], None
    for chunk in chunks:
        ids = list(chunk.tokens)
        if pad is not None and pad != eos:
            first_end = ids.index(eos, 1)  # embedding placeholders are 0, never the end token
            ids[first_end + 1:] = [pad] * (len(ids) - first_end - 1)
        out = _run_encoder(encoder, ids, chunk.fixes, encoder_index, n_encoders, device)
        z = out.hidden_states[layer]
        if final_norm:
            z = _final_layer_norm(encoder)(z)
        zs.append(_weighted(z, chunk.multipliers, emphasis))
        if pooled is None:
            pooled = getattr(out, "text_embeds", None)
            if pooled is None and unprojected_pool:
                pooled = out.pooler_output
    return torch.cat(zs, dim=1), pooled


@torch.no_grad()
def encode_prompt(components, text: str, opts: EncodeOptions = EncodeOptions(), *,
                  n_chunks: int | None = None, embeddings=None) -> Conditioning:
    """Encode one prompt. ``n_chunks`` pads the result with empty chunks to that many chunks."""
    spec = components.spec
    if opts.old_emphasis and spec.family != "sd1":
        # A1111's OpenCLIP wrappers (SD 2.x, SDXL's second encoder) assert "Old emphasis implementation
        # not supported for Open Clip"; the job fails there too
        raise RequestError("use_old_emphasis_implementation",
                           f"the old emphasis implementation works only with SD 1.x text encoders, not {spec.label}")
    encoders, tokenizers = components.text_encoders, components.tokenizers
    device = encoders[0].device

    def chunks_for(tok) -> list[PromptChunk]:
        chunks, _ = tokenize_prompt(tok, text, opts, embeddings)
        if n_chunks is not None and len(chunks) < n_chunks:
            chunks += [empty_chunk(tok)] * (n_chunks - len(chunks))
        return chunks

    if spec.is_flow:
        return _encode_flow(components, text, opts, chunks_for, device)
    if spec.family == "sdxl":
        # penultimate layer of both encoders; clip skip does not apply (as in A1111)
        ctx1, _ = _encode_chunks(encoders[0], tokenizers[0], chunks_for(tokenizers[0]), -2, False,
                                 opts.emphasis, device, 0, 2)
        ctx2, pooled = _encode_chunks(encoders[1], tokenizers[1], chunks_for(tokenizers[1]), -2, False,
                                      opts.emphasis, device, 1, 2)
        return Conditioning(torch.cat([ctx1, ctx2], dim=-1), pooled)
    if spec.family == "sd2":
        layer = -1 if components.sd2_last_layer_dropped else -2
    else:
        layer = -max(1, opts.clip_skip)
    ctx, _ = _encode_chunks(encoders[0], tokenizers[0], chunks_for(tokenizers[0]), layer, True, opts.emphasis,
                            device)
    return Conditioning(ctx)


def _weighted(z: torch.Tensor, multipliers: list[float], emphasis: str) -> torch.Tensor:
    """A1111's emphasis on one encoded sequence: "Original" keeps the mean, "No norm" only multiplies."""
    if emphasis == "None" or all(m == 1.0 for m in multipliers):
        return z
    mult = torch.tensor(multipliers, device=z.device, dtype=z.dtype).reshape(1, -1, 1)
    if emphasis != "Original":
        return z * mult
    original_mean = z.mean()
    z = z * mult
    new_mean = z.mean()
    # a degenerate all-zero-mean embedding would give 0/0
    return z * (original_mean / new_mean) if new_mean != 0 else z


def encode_t5(components, text: str, opts: EncodeOptions) -> torch.Tensor:
    """T5-XXL's last hidden state of a prompt, ``[1, length, width]``: the emphasis pieces tokenized one after
    another, cut at the model's length (SD 3.x 256 tokens, FLUX.1 dev 512) with the end token, padded -- for
    a prompt without emphasis the reference pipelines' tokens exactly; weights as :func:`_weighted`."""
    tok, t5 = components.t5_tokenizer, components.t5
    length = int(tok.model_max_length)
    parsed = [[p, w] for p, w in parse_prompt_attention(text) if not (p == "BREAK" and w == -1)] \
        if opts.emphasis != "None" else [[text, 1.0]]
    ids: list[int] = []
    weights: list[float] = []
    for piece_ids, (_, weight) in zip(tok([p for p, _ in parsed], add_special_tokens=False)["input_ids"], parsed):
        ids += piece_ids
        weights += [weight] * len(piece_ids)
    ids, weights = ids[: length - 1] + [tok.eos_token_id], weights[: length - 1] + [1.0]
    pad = length - len(ids)
    ids, weights = ids + [tok.pad_token_id] * pad, weights + [1.0] * pad
    z = t5(torch.tensor([ids], device=t5.device), return_dict=False)[0]
    return _weighted(z, weights, opts.emphasis)


def _encode_flow(components, text: str, opts: EncodeOptions, chunks_for, device) -> Conditioning:
    """SD 3.x: CLIP-L and CLIP-G (penultimate layers, A1111's chunks and emphasis) side by side, padded to T5's
    width, followed by T5 (without a T5 file: zeros of T5's length, as diffusers does); pooled:
    both CLIPs' projections. FLUX.1: T5's sequence; pooled: CLIP-L's pooled output."""
    encoders, tokenizers = components.text_encoders, components.tokenizers
    width = int(components.unet.config.joint_attention_dim)
    if components.spec.family == "flux":
        _, pooled = _encode_chunks(encoders[0], tokenizers[0], chunks_for(tokenizers[0])[:1], -1, False, "None",
                                   device, unprojected_pool=True)
        # T5 may run elsewhere (option t5_on_cpu, offload hooks): its output joins the CLIP outputs' device
        return Conditioning(encode_t5(components, text, opts).to(pooled.device, pooled.dtype), pooled)
    ctx_l, pooled_l = _encode_chunks(encoders[0], tokenizers[0], chunks_for(tokenizers[0]), -2, False,
                                     opts.emphasis, device, 0, 2)
    ctx_g, pooled_g = _encode_chunks(encoders[1], tokenizers[1], chunks_for(tokenizers[1]), -2, False,
                                     opts.emphasis, device, 1, 2)
    clip = torch.cat([ctx_l, ctx_g], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
    if components.t5 is not None:
        t5 = encode_t5(components, text, opts).to(clip.device, clip.dtype)
    else:
        t5 = torch.zeros(1, int(components.t5_tokenizer.model_max_length), width, device=clip.device, dtype=clip.dtype)
    return Conditioning(torch.cat([clip, t5], dim=1), torch.cat([pooled_l, pooled_g], dim=-1))


def count_tokens(components, text: str, opts: EncodeOptions = EncodeOptions(), embeddings=None) -> tuple[int, int]:
    """(tokens used, tokens available in the chunks used) -- the UI's "n/75" counter."""
    chunks, count = tokenize_prompt(components.tokenizers[0], text, opts, embeddings)
    return count, max(len(chunks), 1) * CHUNK


def chunk_count(components, text: str, opts: EncodeOptions = EncodeOptions(), embeddings=None) -> int:
    return len(tokenize_prompt(components.tokenizers[0], text, opts, embeddings)[0])
