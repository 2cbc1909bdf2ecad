"""A1111 1.10's backward-compatibility options, with expected values derived by hand from A1111's rules.

Sources (AUTOMATIC1111/stable-diffusion-webui, 1.10):

* ``modules/prompt_parser.py`` ``get_learned_conditioning_prompt_schedules(prompts, base_steps,
  hires_steps, use_old_scheduling)``: old rule ``v*steps if v < 1 else v`` over the first pass's steps
  (the hires pass too); new rule: a decimal point means a fraction (hires: ``(v - 1) * hires_steps``),
  an integer a step (hires: ``v - base_steps``); ``min(steps, int(v))``.
* ``modules/processing.py`` ``get_conds_with_caching``: with ``use_old_scheduling`` on it compares both
  rules and writes ``Old prompt editing timelines: True`` only when they differ.
* ``modules/sd_hijack_clip_old.py`` ``process_text_old`` and ``sd_hijack_clip.py``
  ``FrozenCLIPEmbedderWithCustomWords.__init__`` (``token_mults``): the whole text is tokenized, bracket
  tokens change a running multiplier and are dropped, embeddings become placeholders, one chunk of the
  first 75 tokens. ``sd_hijack_open_clip.py`` asserts the old implementation is not used with OpenCLIP.
  ``use_old_emphasis_implementation`` has no ``infotext=`` in ``shared_options.py``: no infotext key.
* ``modules/sd_models.py`` ``apply_alpha_schedule_override``: ``alphas_cumprod.half()`` and
  ``Downcast alphas_cumprod: True``; k-diffusion's ``CompVisDenoiser`` computes the sigmas from it.
* ``modules/infotext_versions.py`` ``backcompat`` / ``parse_version`` and A1111's own
  ``test/test_infotext_versions.py`` (``v1.7.0-225-gabc123`` reads as 1.7.0.post225; 1.7.0-225 sets
  nothing); ``modules/infotext_utils.py``: ``backcompat`` runs at the end of
  ``parse_generation_parameters``, and ``get_override_settings`` turns infotext keys of options declared
  with ``infotext=`` into ``override_settings``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import StepRecorder, registered
from webui.api import models as m
from webui.api.routes import apply_infotext
from webui.errors import RequestError
from webui.infotext import backcompat, infotext_to_request, parse_infotext, parse_version
from webui.models.components import scaled_linear_alphas_cumprod
from webui.models.tiny import build_tiny_components
from webui.pipeline.conditioning import CHUNK, EncodeOptions, encode_prompt, tokenize_prompt
from webui.pipeline.prompt_schedule import build_job_conditioning, compat_infotext
from webui.pipeline.request import GenerationRequest
from webui.sampling.denoiser import DiscreteSchedule
from webui.ui.sendto import override_settings_from_pairs, values_from_infotext

OLD = EncodeOptions(old_emphasis=True)
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def sd1():
    return build_tiny_components("sd1", seed=2)


def _ids(tok, *tokens: str) -> list[int]:
    """Vocabulary ids of BPE tokens written out by hand (``"red</w>"``)."""
    ids = tok.convert_tokens_to_ids(list(tokens))
    assert tok.unk_token_id not in ids
    return ids


def _ends(job) -> list[int]:
    return [end for end, _ in job.positives[0][0].entries]


# --------------------------------------------------------------------------- use_old_scheduling


@pytest.mark.parametrize(
    ("prompt", "old_ends", "new_ends"),
    [
        # "1.0" >= 1: old rule step int(1.0) = 1; new rule: a decimal point, 1.0 * 20 = step 20
        ("[a:b:1.0]", [1, 20], [20]),
        # old: int(1.5) = 1; new: 1.5 * 20 = 30, clamped to 20
        ("[a:b:1.5]", [1, 20], [20]),
        # both: 0.25 * 20 = 5, and an integer 5 is step 5 under both rules
        ("[a:b:0.25]", [5, 20], [5, 20]),
        ("[a:b:5]", [5, 20], [5, 20]),
    ],
)
def test_first_pass_switch_steps_old_and_new(sd1, prompt, old_ends, new_ends):
    old = build_job_conditioning(sd1, prompt, "", 20, EncodeOptions(), use_old_scheduling=True)
    new = build_job_conditioning(sd1, prompt, "", 20, EncodeOptions())
    assert _ends(old) == old_ends and _ends(new) == new_ends
    assert old.old_timelines is (old_ends != new_ends)
    assert new.old_timelines is False  # compared only when the option is on


@pytest.mark.parametrize(
    ("prompt", "old_ends", "new_ends"),
    [
        # hires pass, 20 first-pass steps, 10 hires steps. New: an integer counts from the end of the first
        # pass (25 - 20 = 5), a fraction from 1.0 ((1.5 - 1) * 10 = 5). Old: over the 20 first-pass steps.
        ("[a:b:25]", [20], [5, 10]),
        ("[a:b:1.5]", [1, 20], [5, 10]),
        ("[a:b:0.5]", [10, 20], [10]),  # new: (0.5 - 1) * 10 < 1, "b" from the start; old: 0.5 * 20 = 10
    ],
)
def test_hires_pass_switch_steps_old_and_new(sd1, prompt, old_ends, new_ends):
    old = build_job_conditioning(sd1, prompt, "", 20, EncodeOptions(), hires_steps=10, use_old_scheduling=True)
    new = build_job_conditioning(sd1, prompt, "", 20, EncodeOptions(), hires_steps=10)
    assert _ends(old) == old_ends and _ends(new) == new_ends
    texts = [encode_prompt(sd1, t).context for t in ("a", "b")]
    # new rule for [a:b:0.5]: the hires pass uses "b" at every step
    if prompt == "[a:b:0.5]":
        assert torch.equal(new.at(1)[0][0][0].context, texts[1])
        assert torch.equal(old.at(1)[0][0][0].context, texts[0])


def test_compat_infotext_keys():
    class Job:
        def __init__(self, flag):
            self.old_timelines = flag

    assert compat_infotext({}, Job(False), None) == {}
    assert compat_infotext({"use_old_scheduling": True}, Job(True), None) == {"Old prompt editing timelines": True}
    assert compat_infotext({"use_downcasted_alpha_bar": True}, None, Job(True)) == {
        "Old prompt editing timelines": True, "Downcast alphas_cumprod": True}


def test_pipeline_writes_old_timelines_only_when_a_schedule_changes(ctx):
    base = dict(steps=2, width=64, height=64, seed=1, sampler_name="Euler", save_images=False)
    on = {"use_old_scheduling": True}
    # 2 steps: [red:blue:1.0] is step 1 under the old rule, 1.0 * 2 = 2 under the new one
    changed = ctx.generate(GenerationRequest(prompt="[red:blue:1.0]", override_settings=on, **base))
    assert "Old prompt editing timelines: True" in changed.infotexts[0]
    same = ctx.generate(GenerationRequest(prompt="[red:blue:1]", override_settings=on, **base))
    assert "Old prompt editing timelines" not in same.infotexts[0]
    # hires only: first pass 2 steps, hires 2 steps; [red:blue:3] is step 2 (clamped) under both rules in the
    # first pass, but 3 - 2 = 1 (new) against min(2, 3) = 2 (old) in the hires pass
    hires = dict(enable_hr=True, hr_scale=1.0, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5)
    hr = ctx.generate(GenerationRequest(prompt="[red:blue:3]", override_settings=on, **base, **hires))
    assert "Old prompt editing timelines: True" in hr.infotexts[0]


# --------------------------------------------------------------------------- use_old_emphasis_implementation


def test_old_emphasis_tokens_and_multipliers(sd1):
    tok = sd1.tokenizers[0]
    chunks, count = tokenize_prompt(tok, "a (red) cat, ((fluffy)) [dog]", OLD)
    # CLIP tokens: a ( red ) cat , (( fluffy )) [ dog ]; the bracket tokens only change the running
    # multiplier: ( x1.1 -> 1.1, ) /1.1 -> 1.0, (( x1.1x1.1 -> 1.2100000000000002, )) /1.1/1.1 -> 1.0,
    # [ /1.1 -> 0.9090909090909091, ] x1.1
    kept = _ids(tok, "a</w>", "red</w>", "cat</w>", ",</w>", "fluffy</w>", "dog</w>")
    assert len(chunks) == 1 and count == 6
    assert chunks[0].tokens == [BOS, *kept, *[EOS] * (CHUNK - 6), EOS]
    assert chunks[0].multipliers == [1.0, 1.0, 1.1, 1.0, 1.0, 1.2100000000000002, 0.9090909090909091,
                                     *[1.0] * (CHUNK - 6), 1.0]
    assert chunks[0].fixes == []


def test_old_emphasis_bracket_tokens_swallow_attached_punctuation(sd1):
    tok = sd1.tokenizers[0]
    chunks, count = tokenize_prompt(tok, "a ((( b ))), c ]] d", OLD)
    # BPE gives a ((( b )) ), c ] ] d: "),</w>" holds a bracket, so the comma goes with it. Multipliers:
    # ((( x1.1^3; )) /1.1^2 -> 1.1; ), /1.1 -> 1.0; ] (no </w>) and ]</w> x1.1 each -> 1.21
    assert tok.convert_ids_to_tokens(tok("a ((( b ))), c ]] d", add_special_tokens=False)["input_ids"]) == [
        "a</w>", "(((</w>", "b</w>", "))", "),</w>", "c</w>", "]", "]</w>", "d</w>"]
    assert count == 4
    assert chunks[0].tokens[:6] == [BOS, *_ids(tok, "a</w>", "b</w>", "c</w>", "d</w>"), EOS]
    assert chunks[0].multipliers[1:5] == pytest.approx([1.0, 1.331, 1.0, 1.21], rel=1e-12)


def test_old_emphasis_has_no_weights_escapes_or_break(sd1):
    tok = sd1.tokenizers[0]
    chunks, _ = tokenize_prompt(tok, "(cat:1.5) \\(x\\) y BREAK z", OLD)
    # ":1.5" stays as tokens inside the x1.1 bracket; "\\" is a plain token and "\\(" still opens a bracket
    expected = _ids(tok, "cat</w>", ":</w>", "1</w>", ".</w>", "5</w>", "\\", "x</w>", "\\", "y</w>",
                    "break</w>", "z</w>")
    assert chunks[0].tokens[1:12] == expected and chunks[0].tokens[12] == EOS
    assert chunks[0].multipliers[1:12] == [1.1] * 5 + [1.0, 1.1, 1.1, 1.0, 1.0, 1.0]


def test_old_emphasis_mode_none_keeps_brackets_as_tokens(sd1):
    tok = sd1.tokenizers[0]
    chunks, _ = tokenize_prompt(tok, "a (red) cat", EncodeOptions(old_emphasis=True, emphasis="None"))
    assert chunks[0].tokens[1:7] == [*_ids(tok, "a</w>", "(</w>", "red</w>", ")</w>", "cat</w>"), EOS]
    assert set(chunks[0].multipliers) == {1.0}


def test_old_emphasis_truncates_at_75_tokens(sd1):
    tok = sd1.tokenizers[0]
    cat = _ids(tok, "cat</w>")[0]
    chunks, count = tokenize_prompt(tok, " ".join(["cat"] * 80), OLD)
    assert count == 80 and len(chunks) == 1  # the new implementation makes two chunks of this
    assert chunks[0].tokens == [BOS, *[cat] * 75, EOS]
    new_chunks, _ = tokenize_prompt(tok, " ".join(["cat"] * 80), EncodeOptions())
    assert len(new_chunks) == 2


class _Emb:
    def __init__(self, n: int, width: int = 32):
        self.num_vectors = n
        self.name = "emb"
        self.vec = torch.arange(n * width, dtype=torch.float32).reshape(n, width) / 100

    def for_encoder(self, index, n_encoders):
        return self.vec


class _Lookup:
    """An embedding named "dog" (one token) with ``n`` vectors."""

    def __init__(self, tok, n: int):
        self.dog = _ids(tok, "dog</w>")[0]
        self.emb = _Emb(n)
        self.used = {}

    def match(self, ids, pos):
        if ids[pos] == self.dog:
            self.used["dog"] = self.emb
            return self.emb, 1
        return None


def test_old_emphasis_embeddings_become_placeholders(sd1):
    tok = sd1.tokenizers[0]
    lookup = _Lookup(tok, 3)
    chunks, count = tokenize_prompt(tok, "(a dog) cat", OLD, lookup)
    a, cat = _ids(tok, "a</w>", "cat</w>")
    assert count == 5
    assert chunks[0].tokens[:7] == [BOS, a, 0, 0, 0, cat, EOS]
    assert chunks[0].multipliers[:7] == [1.0, 1.1, 1.1, 1.1, 1.1, 1.0, 1.0]
    assert chunks[0].fixes == [(1, lookup.emb)]
    # a fix starting at the 75th token (offset 74) is kept: A1111 writes min(77 - 74 - 1, 3) = 2 vectors,
    # the second over the end token; one starting at offset 76 writes nothing and is dropped
    kept, _ = tokenize_prompt(tok, " ".join(["cat"] * 74 + ["dog"]), OLD, lookup)
    assert kept[0].fixes == [(74, lookup.emb)] and kept[0].tokens[-2:] == [0, EOS]
    last, _ = tokenize_prompt(tok, " ".join(["cat"] * 75 + ["dog"]), OLD, lookup)
    assert last[0].fixes == [(75, lookup.emb)]  # min(77 - 75 - 1, 3) = 1 vector, over the end token
    dropped, _ = tokenize_prompt(tok, " ".join(["cat"] * 76 + ["dog"]), OLD, lookup)
    assert dropped[0].fixes == []


def test_old_emphasis_embedding_clipped_at_the_end_token(sd1):
    tok = sd1.tokenizers[0]
    lookup = _Lookup(tok, 3)
    encoder = sd1.text_encoders[0]
    embeddings = getattr(encoder, "embeddings", None) or encoder.text_model.embeddings  # token + position
    seen = {}
    handle = embeddings.register_forward_hook(lambda _m, _i, out: seen.setdefault("x", out.detach().clone()))
    try:
        encode_prompt(sd1, " ".join(["cat"] * 74 + ["dog"]), OLD, embeddings=lookup)
    finally:
        handle.remove()
    pos = embeddings.position_embedding.weight.detach()
    cat = embeddings.token_embedding.weight.detach()[_ids(tok, "cat</w>")[0]]
    x = seen["x"][0]
    # A1111's EmbeddingsWithFixes: min(77 - 74 - 1, 3) = 2 vectors at positions 75 and 76 (over the end token)
    assert torch.allclose(x[74], cat + pos[74])
    assert torch.allclose(x[75], lookup.emb.vec[0] + pos[75]) and torch.allclose(x[76], lookup.emb.vec[1] + pos[76])


def test_old_emphasis_encoding(sd1):
    # "a (cat) on a mat" gives the same tokens and weights under both implementations
    old = encode_prompt(sd1, "a (cat) on a mat", OLD).context
    new = encode_prompt(sd1, "a (cat) on a mat").context
    assert old.shape == (1, 77, 32) and torch.equal(old, new)
    assert not torch.allclose(encode_prompt(sd1, "(cat:1.5) on a mat", OLD).context,
                              encode_prompt(sd1, "(cat:1.5) on a mat").context)
    long_negative = build_job_conditioning(sd1, "a cat", " ".join(["ugly"] * 90), 2, OLD)
    assert long_negative.at(0)[1].context.shape == (1, 77, 32)


def test_old_emphasis_rejected_for_openclip_models():
    sd2 = build_tiny_components("sd2", prediction_type="v_prediction", seed=2)
    with pytest.raises(RequestError) as err:
        encode_prompt(sd2, "a cat", OLD)
    assert err.value.field == "use_old_emphasis_implementation"


def test_pipeline_old_emphasis_changes_the_image_and_writes_no_key(ctx):
    base = dict(prompt="a (red:1.5) circle", steps=2, width=64, height=64, seed=3, sampler_name="Euler",
                save_images=False)
    old = ctx.generate(GenerationRequest(override_settings={"use_old_emphasis_implementation": True}, **base))
    new = ctx.generate(GenerationRequest(**base))
    assert np.asarray(old.images[0]).tobytes() != np.asarray(new.images[0]).tobytes()
    assert old.infotexts[0] == new.infotexts[0]  # A1111 writes no infotext key for this option


# --------------------------------------------------------------------------- use_downcasted_alpha_bar


def _half_schedule() -> tuple[np.ndarray, np.ndarray]:
    """sigmas and log sigmas computed in float16 from float16 alphas_cumprod, every operation rounded to
    float16 (as torch and k-diffusion do on a float16 tensor)."""
    a16 = scaled_linear_alphas_cumprod().numpy().astype(np.float16)
    s16 = np.sqrt((np.float16(1) - a16) / a16)
    return s16, np.log(s16)


def test_downcast_sigmas_are_float16_values():
    ac = scaled_linear_alphas_cumprod()
    s16, l16 = _half_schedule()
    down, full = DiscreteSchedule(ac, downcast=True), DiscreteSchedule(ac)
    assert np.array_equal(down.sigmas.numpy(), s16) and np.array_equal(down.log_sigmas.numpy(), l16)
    # alphas_cumprod[0] = 0.99915 becomes 0.999 in float16: sigma_min 0.03125 instead of 0.0291675
    assert float(down.sigma_min) == 0.03125 and float(full.sigma_min) == pytest.approx(0.0291675, abs=1e-7)
    assert float(down.sigma_max) == 14.609375 and float(full.sigma_max) == pytest.approx(14.614642, abs=1e-5)
    assert down.sigma_min.dtype == torch.float32


def test_downcast_sigma_to_t_keeps_k_diffusions_float16_difference():
    s16, l16 = _half_schedule()
    down = DiscreteSchedule(scaled_linear_alphas_cumprod(), downcast=True)
    for sigma in (1.0, 5.0, 0.5):
        log_sigma = np.float32(np.log(np.float32(sigma)))
        low = int(np.sum(l16.astype(np.float32) <= log_sigma)) - 1  # last training log sigma <= log_sigma
        lo, hi = l16[low], l16[low + 1]
        w = (np.float32(lo) - log_sigma) / np.float32(lo - hi)  # low - high in float16, as k-diffusion
        expected = (1 - w) * low + w * (low + 1)
        assert float(down.sigma_to_t(torch.tensor([sigma]))[0]) == pytest.approx(float(expected), abs=2e-4)
    # t 999 -> exp of the float16 log sigma
    assert float(down.t_to_sigma(torch.tensor([999.0]))[0]) == pytest.approx(
        float(np.exp(np.float32(l16[999]))), rel=1e-6)


def test_pipeline_downcast_uses_float16_sigmas_and_writes_the_key(ctx):
    s16, l16 = _half_schedule()
    full = DiscreteSchedule(scaled_linear_alphas_cumprod())
    sigmas = StepRecorder(lambda state: float(state.sigma if not torch.is_tensor(state.sigma)
                                              else state.sigma.flatten()[0]))
    with registered(ctx, sigmas, "compat-sigmas") as rec:
        base = dict(prompt="a red circle", steps=2, width=64, height=64, seed=3, sampler_name="Euler",
                    scheduler="Uniform", save_images=False)
        down = ctx.generate(GenerationRequest(override_settings={"use_downcasted_alpha_bar": True}, **base))
        first_down = rec.seen[0]
        rec.seen.clear()
        plain = ctx.generate(GenerationRequest(**base))
        first_plain = rec.seen[0]
        rec.seen.clear()
        # hires: 2 steps at strength 0.5 run the last 2 steps of a 4-step Uniform schedule (t 999, 666, 333, 0;
        # HiresPlan.sigmas), from t = 333
        ctx.generate(GenerationRequest(override_settings={"use_downcasted_alpha_bar": True}, enable_hr=True,
                                      hr_scale=1.0, hr_upscaler="Latent", hr_second_pass_steps=2,
                                      denoising_strength=0.5, **base))
        first_hires = rec.seen[2]
    # Uniform starts at t = 999: exp(log sigma) of the float16 table against the float32 one
    assert first_down == pytest.approx(float(np.exp(np.float32(l16[999]))), rel=1e-6)
    assert first_plain == pytest.approx(float(full.sigmas[999]), rel=1e-6)
    assert first_down != pytest.approx(first_plain, rel=1e-5)
    assert first_hires == pytest.approx(float(np.exp(np.float32(l16[333]))), rel=1e-6)
    assert first_hires != pytest.approx(float(full.sigmas[333]), rel=1e-5)
    assert "Downcast alphas_cumprod: True" in down.infotexts[0]
    assert "Downcast alphas_cumprod" not in plain.infotexts[0]


# --------------------------------------------------------------------------- auto_backcompat


def test_parse_version_like_a1111():
    assert str(parse_version("v1.7.0-225-gabc123")) == "1.7.0.post225"  # A1111's own test
    assert str(parse_version("1.8.0")) == "1.8.0"
    assert parse_version("not a version") is None and parse_version(None) is None
    assert parse_version("webui-1.2.3") is None and parse_version("webui-1.2.3-dev") is None


@pytest.mark.parametrize(
    ("version", "prompt", "expected"),
    [
        ("v1.5.1", "a [b:c:1]", {"Old prompt editing timelines": True, "Downcast alphas_cumprod": True}),
        ("v1.5.1", "plain", {"Downcast alphas_cumprod": True}),  # the timelines need a "[" in the prompt
        ("v1.6.0", "a [b:c:1]", {"Downcast alphas_cumprod": True}),  # 1.6.0 < v1.7.0-225
        ("v1.6.0-RC-28-gabc", "a [b:c:1]", {"Old prompt editing timelines": True,
                                            "Downcast alphas_cumprod": True}),  # 1.6.0rc0 < 1.6.0
        ("v1.7.0-224-g0123", "a [b]", {"Downcast alphas_cumprod": True}),
        ("v1.7.0-225", "a [b]", {}),  # A1111's own test: nothing from 1.7.0-225 on
        ("v1.10.1", "a [b]", {}),
        (None, "a [b]", {}),
        ("webui-0.1.0", "a [b]", {}),  # this web UI's own infotexts
    ],
)
def test_backcompat_keys(version, prompt, expected):
    parsed = {"Prompt": prompt, "Sampler": "DDIM", "Refiner": "sd_xl_refiner"}
    if version is not None:
        parsed["Version"] = version
    out = backcompat(parsed, True)
    # A1111's "Pad conds v0" (DDIM/PLMS) and "Refiner switch by sampling steps" are not honoured here
    assert {k: v for k, v in out.items() if k not in parsed} == expected
    assert backcompat(parsed, False) == parsed


COMPAT = ("use_old_scheduling", "use_downcasted_alpha_bar", "auto_backcompat")


def _compat(overrides) -> dict:
    """The compatibility options among ``override_settings`` (other infotext keys map there too)."""
    return {k: v for k, v in (overrides or {}).items() if k in COMPAT}


def test_backcompat_keys_map_to_override_settings():
    text = "a [b:c:1]\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64, Version: v1.5.1"
    req = infotext_to_request(backcompat(parse_infotext(text), True))
    assert _compat(req["override_settings"]) == {"use_old_scheduling": True, "use_downcasted_alpha_bar": True}
    assert _compat(infotext_to_request(parse_infotext(text)).get("override_settings")) == {}
    # written by this web UI when on, read back
    own = "x\nSteps: 4, Seed: 1, Old prompt editing timelines: True, Downcast alphas_cumprod: True, Version: webui-9"
    assert _compat(infotext_to_request(parse_infotext(own))["override_settings"]) == {
        "use_old_scheduling": True, "use_downcasted_alpha_bar": True}


OLD_TEXT = "a [red:blue:1.0]\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Version: v1.5.1"


def _applied(ctx, **body):
    return _compat(apply_infotext(ctx, m.Txt2ImgRequest(**body), "txt2img").override_settings)


def test_api_infotext_field_applies_backcompat(ctx):
    assert _applied(ctx, infotext=OLD_TEXT) == {"use_old_scheduling": True, "use_downcasted_alpha_bar": True}
    newer = OLD_TEXT.replace("v1.5.1", "v1.6.0")
    assert _applied(ctx, infotext=newer) == {"use_downcasted_alpha_bar": True}
    for text in (OLD_TEXT.replace(", Version: v1.5.1", ""), OLD_TEXT.replace("v1.5.1", "webui-0.1.0")):
        assert _applied(ctx, infotext=text) == {}
    # the option off (here for this request), and settings the client sets win
    assert _applied(ctx, infotext=OLD_TEXT, override_settings={"auto_backcompat": False}) == {
        "auto_backcompat": False}
    assert _applied(ctx, infotext=OLD_TEXT, override_settings={"use_old_scheduling": False}) == {
        "use_old_scheduling": False, "use_downcasted_alpha_bar": True}


def test_api_infotext_field_end_to_end(api_client):
    r = api_client.post("/sdapi/v1/txt2img", json={"infotext": OLD_TEXT, "steps": 2})
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert "Old prompt editing timelines: True" in info and "Downcast alphas_cumprod: True" in info


def test_api_png_info_parameters_include_backcompat_keys(api_client):
    from PIL import Image

    from webui.image_codec import encode_png_base64

    png = encode_png_base64(Image.new("RGB", (8, 8)), OLD_TEXT)
    params = api_client.post("/sdapi/v1/png-info", json={"image": png}).json()["parameters"]
    assert params["Old prompt editing timelines"] is True and params["Downcast alphas_cumprod"] is True


def test_api_auto_backcompat_option_off(ctx):
    off = dataclasses.replace(ctx, options=_FixedOptions(ctx.options, {"auto_backcompat": False}))
    assert _applied(off, infotext=OLD_TEXT) == {}


class _FixedOptions:
    """The context's options with some values replaced (the session context's options stay as they are)."""

    def __init__(self, options, changes):
        self._options, self._changes = options, changes

    @property
    def current(self):
        return {**self._options.current.as_dict(), **self._changes}

    def __getattr__(self, name):
        return getattr(self._options, name)


def test_ui_paste_fills_override_settings():
    defaults = {"CLIP_stop_at_last_layers": 1, "use_old_scheduling": False, "use_downcasted_alpha_bar": False}
    v = values_from_infotext(OLD_TEXT, ["prompt", "override_settings"], auto_backcompat=True, current=defaults)
    assert v["prompt"] == "a [red:blue:1.0]"
    # Clip skip 1 equals the current option and is left out, as A1111's get_override_settings does
    assert "Clip skip: 1" not in v["override_settings"]
    pairs = [p for p in v["override_settings"] if p.startswith(("Old prompt", "Downcast"))]
    assert pairs == ["Old prompt editing timelines: True", "Downcast alphas_cumprod: True"]
    assert override_settings_from_pairs(pairs) == {"use_old_scheduling": True, "use_downcasted_alpha_bar": True}
    off = values_from_infotext(OLD_TEXT, ["override_settings"], auto_backcompat=False, current=defaults)
    assert not [p for p in off["override_settings"] if p.startswith(("Old prompt", "Downcast"))]
    assert override_settings_from_pairs(["Clip skip: 2", "Nope: 1", "Downcast alphas_cumprod: maybe"]) == {
        "CLIP_stop_at_last_layers": 2}


def test_ui_paste_then_generate_with_override_settings(ctx):
    """PNG Info -> txt2img fills A1111's "Override settings" (shown only when not empty); Generate applies it."""
    from gradio_client import Client

    from tests.live_server import LiveServer
    from webui.server import create_app

    with LiveServer(create_app(ctx)) as server:
        client = Client(server.url, verbose=False)
        api = client.view_api(return_format="dict", print_info=False)
        names = [p["parameter_name"] for p in api["named_endpoints"]["/txt2img"]["parameters"]]
        updates = dict(zip(names, client.predict(OLD_TEXT, api_name="/pnginfo_send_to_txt2img")))
        pairs = ["Old prompt editing timelines: True", "Downcast alphas_cumprod: True"]
        shown = updates["override_settings"]["value"]
        assert [p for p in shown if p in pairs] == pairs and updates["override_settings"]["visible"] is True
        plain = dict(zip(names, client.predict(OLD_TEXT.replace("v1.5.1", "v1.10.1"),
                                               api_name="/pnginfo_send_to_txt2img")))
        assert plain["override_settings"]["value"] == [] and plain["override_settings"]["visible"] is False
        _, info = client.predict(prompt="a [red:blue:1.0]", steps=2, sampler_name="Euler", width=64, height=64,
                                 seed=5, override_settings=pairs, api_name="/txt2img")
    assert "Old prompt editing timelines: True" in info and "Downcast alphas_cumprod: True" in info
