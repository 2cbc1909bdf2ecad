"""A1111 prompt encoding on the tiny models: chunks, BREAK, comma back-off, emphasis, schedules, AND."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.models.tiny import build_tiny_components
from webui.pipeline.conditioning import (
    CHUNK,
    EncodeOptions,
    count_tokens,
    encode_prompt,
    tokenize_prompt,
)
from webui.pipeline.prompt_schedule import build_job_conditioning
from webui.pipeline.request import GenerationRequest


@pytest.fixture(scope="module")
def sd1():
    return build_tiny_components("sd1", seed=2)


@pytest.fixture(scope="module")
def sd2():
    return build_tiny_components("sd2", prediction_type="v_prediction", seed=2)


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny_components("sdxl", seed=2)


def test_chunk_layout(sd1):
    tok = sd1.tokenizers[0]
    chunks, count = tokenize_prompt(tok, "a photo of a cat", EncodeOptions())
    assert len(chunks) == 1 and count == 5
    c = chunks[0]
    assert len(c.tokens) == CHUNK + 2 and c.tokens[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert c.tokens[-1] == 49407 and set(c.tokens[6:]) == {49407}
    assert count_tokens(sd1, "a photo of a cat") == (5, 75)


def test_long_prompt_makes_two_chunks(sd1):
    text = " ".join(["cat"] * 80)
    chunks, count = tokenize_prompt(sd1.tokenizers[0], text, EncodeOptions())
    assert len(chunks) == 2 and count == 80
    assert encode_prompt(sd1, text).context.shape == (1, 154, 32)
    assert count_tokens(sd1, text) == (80, 150)


def test_break_starts_a_new_chunk(sd1):
    chunks, _ = tokenize_prompt(sd1.tokenizers[0], "a cat BREAK a dog", EncodeOptions())
    assert len(chunks) == 2
    assert chunks[0].tokens[:4] == [49406, 320, 2368, 49407]
    assert chunks[1].tokens[:4] == [49406, 320, 1929, 49407]


def test_comma_backtrack_moves_the_tail_to_the_next_chunk(sd1):
    words = ["cat"] * 70 + [","] + ["dog"] * 10  # the comma is the 71st token; 75 is reached 4 tokens later
    chunks, _ = tokenize_prompt(sd1.tokenizers[0], " ".join(words), EncodeOptions(comma_padding_backtrack=20))
    assert chunks[0].tokens[1:72] == [2368] * 70 + [267] and set(chunks[0].tokens[72:]) == {49407}
    assert chunks[1].tokens[1:11] == [1929] * 10
    plain, _ = tokenize_prompt(sd1.tokenizers[0], " ".join(words), EncodeOptions(comma_padding_backtrack=0))
    assert plain[0].tokens[72:76] == [1929] * 4


def test_emphasis_one_equals_plain(sd1):
    a = encode_prompt(sd1, "a (cat:1.0) on a mat").context
    b = encode_prompt(sd1, "a cat on a mat").context
    assert torch.equal(a, b)


def test_original_emphasis_restores_the_mean(sd1):
    plain = encode_prompt(sd1, "a cat on a mat").context
    weighted = encode_prompt(sd1, "a (cat:1.5) on a mat").context
    assert not torch.allclose(plain, weighted)
    assert torch.allclose(plain.mean(), weighted.mean(), atol=1e-6)


def test_no_norm_only_multiplies(sd1):
    plain = encode_prompt(sd1, "a cat on a mat", EncodeOptions(emphasis="No norm")).context
    weighted = encode_prompt(sd1, "a (cat:1.5) on a mat", EncodeOptions(emphasis="No norm")).context
    assert torch.allclose(weighted[0, 2], plain[0, 2] * 1.5) and torch.equal(weighted[0, 1], plain[0, 1])


def test_emphasis_none_keeps_brackets_as_text(sd1):
    chunks, _ = tokenize_prompt(sd1.tokenizers[0], "(cat:1.5)", EncodeOptions(emphasis="None"))
    raw = sd1.tokenizers[0]("(cat:1.5)", add_special_tokens=False)["input_ids"]
    assert set(chunks[0].multipliers) == {1.0} and chunks[0].tokens[1:1 + len(raw)] == raw


def test_clip_skip_changes_sd1_only(sd1, sd2):
    assert not torch.equal(encode_prompt(sd1, "cat").context,
                           encode_prompt(sd1, "cat", EncodeOptions(clip_skip=2)).context)
    assert torch.equal(encode_prompt(sd2, "cat").context, encode_prompt(sd2, "cat", EncodeOptions(clip_skip=2)).context)


def test_sd2_pads_with_zero_after_the_end_token(sd2):
    tok = sd2.tokenizers[0]
    assert tok.pad_token_id == 0
    # the encoding equals a direct call with the padded ids
    ids = [49406, 2368, 49407] + [0] * 74
    out = sd2.text_encoders[0](torch.tensor([ids]), output_hidden_states=True)
    expect = sd2.text_encoders[0].final_layer_norm(out.hidden_states[-2])
    assert torch.allclose(encode_prompt(sd2, "cat").context, expect)


def test_sdxl_shapes_and_empty_negative_is_zero(sdxl):
    cond = encode_prompt(sdxl, "a cat")
    assert cond.context.shape == (1, 77, 32 + 64) and cond.pooled.shape == (1, 16)
    job = build_job_conditioning(sdxl, "a cat", "", 4, EncodeOptions())
    _, neg = job.at(0)
    assert torch.count_nonzero(neg.context) == 0 and torch.count_nonzero(neg.pooled) == 0


def test_negative_padded_to_positive_length(sd1):
    job = build_job_conditioning(sd1, " ".join(["cat"] * 80), "ugly", 4, EncodeOptions())
    parts, neg = job.at(0)
    assert parts[0][0].context.shape == neg.context.shape == (1, 154, 32)


def test_schedule_is_encoded_once_per_distinct_text(sd1):
    job = build_job_conditioning(sd1, "a [cat|dog] [on:under:2] a mat", "", 6, EncodeOptions())
    texts = {id(c) for p, _ in job.positives for _, c in p.entries}
    assert job.distinct_texts == len(texts) + 1  # + the negative ""
    # A1111 looks entries up with a 0-based call counter against 1-based end steps:
    # the first alternative covers calls 0 and 1, then they switch on every call.
    at = [job.at(i)[0][0][0] for i in range(4)]
    assert at[0] is at[1] and at[2] is not at[1] and at[3] is not at[2]
    entries = job.positives[0][0].entries
    assert entries[2][1] is entries[4][1] and len(texts) == 4  # "a cat under a mat" encoded once


def test_and_parts_with_weights(sd1):
    job = build_job_conditioning(sd1, "a cat AND a dog :1.2", "", 4, EncodeOptions())
    assert [w for _, w in job.positives] == [1.0, 1.2]


def test_schedule_beyond_steps_equals_plain_prompt(ctx):
    base = dict(steps=4, width=64, height=64, seed=3, sampler_name="Euler", save_images=False)
    a = ctx.generate(GenerationRequest(prompt="[a cat:a dog:10]", **base)).images[0]
    b = ctx.generate(GenerationRequest(prompt="a cat", **base)).images[0]
    c = ctx.generate(GenerationRequest(prompt="[a cat:a dog:2]", **base)).images[0]
    assert a.tobytes() == b.tobytes() and c.tobytes() != b.tobytes()


def test_and_halves_equal_the_whole(ctx):
    base = dict(steps=4, width=64, height=64, seed=3, sampler_name="Euler", save_images=False)
    a = np.asarray(ctx.generate(GenerationRequest(prompt="a cat :0.5 AND a cat :0.5", **base)).images[0], int)
    b = np.asarray(ctx.generate(GenerationRequest(prompt="a cat", **base)).images[0], int)
    assert np.abs(a - b).max() <= 2
