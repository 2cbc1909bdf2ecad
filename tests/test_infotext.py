"""Tests for webui.infotext: writing, parsing and mapping A1111 infotexts."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from webui.infotext import (
    LEGACY_SCHEDULE_SUFFIXES,
    format_infotext,
    infotext_to_request,
    parse_infotext,
    quote,
    unquote,
)

# --------------------------------------------------------------------------- fixtures

EXAMPLE_PARAMS: dict[str, object] = {
    "Steps": 20,
    "Sampler": "Euler a",
    "Schedule type": "Karras",
    "CFG scale": 7.0,
    "Seed": 1234,
    "Size": "512x512",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "VAE hash": None,
    "VAE": None,
    "Denoising strength": 0.75,
    "Clip skip": 2,
    "Hires upscale": 2.0,
    "Hires steps": 10,
    "Hires upscaler": "Latent",
    "Lora hashes": "name: abc123",
    "Version": "v1.10.1",
}

EXAMPLE_TEXT = (
    "a photo of a cat, sitting\n"
    "masterpiece\n"
    "Negative prompt: blurry, lowres\n"
    "ugly\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
    "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    "Denoising strength: 0.75, Clip skip: 2, Hires upscale: 2, Hires steps: 10, "
    'Hires upscaler: Latent, Lora hashes: "name: abc123", Version: v1.10.1'
)

SAMPLE_HIRES_LORA = (
    "masterpiece, best quality, 1girl, <lora:add_detail:0.8>, (detailed face:1.2)\n"
    "Negative prompt: (worst quality, low quality:1.4), EasyNegative\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3398406297, "
    "Size: 512x768, Model hash: 7f96a1a9ca, Model: AnythingV5Ink_ink, Denoising strength: 0.45, "
    "Clip skip: 2, Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
    'Lora hashes: "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef", '
    'TI hashes: "EasyNegative: c74b4e810b03", Version: v1.10.1'
)

SAMPLE_LEGACY_CONTROLNET = (
    "a cozy cabin in the woods, snow, warm light\n"
    "Negative prompt: blurry\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 42, Size: 768x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, '
    "Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, "
    'Threshold B: 200, Guidance Start: 0, Guidance End: 1, Pixel Perfect: True, Control Mode: Balanced", '
    "Version: v1.6.0"
)

SAMPLE_INPAINT_SDXL = (
    "portrait of an old sailor, oil painting\n"
    "Steps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5, Seed: 123456789, "
    "Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, "
    "VAE: sdxl_vae.safetensors, Denoising strength: 0.6, Mask blur: 4, Inpaint area: Only masked, "
    "Masked area padding: 64, Variation seed: 987, Variation seed strength: 0.3, "
    "Seed resize from: 768x768, RNG: CPU, Version: v1.10.1"
)

SAMPLE_HIRES_PROMPTS = (
    "a castle on a hill,\n"
    "sunset\n"
    "BREAK dramatic sky\n"
    "Negative prompt: lowres\n"
    "bad anatomy\n"
    "Steps: 20, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 8, Seed: 7, Size: 512x512, "
    "Model hash: 879db523c3, Model: dreamshaper_8, Denoising strength: 0.5, "
    'Hires prompt: "a castle on a hill,\\nhighly detailed", Hires negative prompt: "lowres, blurry", '
    "Hires sampler: Euler, Hires resize: 1024x1024, Hires steps: 12, Hires upscaler: Latent, "
    "Emphasis: Original, Version: v1.10.1"
)


# A1111 1.10's defaults for absent keys (modules/infotext_utils.py, parse_generation_parameters), written out
A1111_DEFAULTS: dict[str, object] = {
    "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint", "Hires prompt": "",
    "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
    "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic",
    "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0, "VAE Encoder": "Full", "VAE Decoder": "Full",
    "FP8 weight": "Disable", "Refiner switch by sampling steps": False,
}
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # infotext_utils.re_param
A1111_SIZE = re.compile(r"^(\d+)x(\d+)$")  # infotext_utils.re_imagesize


def a1111_parse(text: str) -> dict[str, object]:
    """A1111 1.10's ``parse_generation_parameters`` restated (no styles, hypernets, emphasis or version
    back-compatibility: inputs here name none of them): the oracle for the parser."""
    res: dict[str, object] = {}
    prompt = negative = ""
    in_negative = False
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for key, value in A1111_PARAM.findall(last):
        if not value:  # A1111: value[0] raises, the pair is skipped
            continue
        if value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        size = A1111_SIZE.match(value)
        if size is not None:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    res.update({"Prompt": prompt, "Negative prompt": negative})  # set after the pairs: they win over a "Prompt" pair
    return {**res, **{k: v for k, v in A1111_DEFAULTS.items() if k not in res}}


# --------------------------------------------------------------------------- quote / unquote


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7.0, "7"),
        (7.5, "7.5"),
        (0.75, "0.75"),
        (-2.0, "-2"),
        (20, "20"),
        (True, "True"),
        (False, "False"),
        ("Euler a", "Euler a"),
        ("a, b", '"a, b"'),
        ("name: abc", '"name: abc"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("ünïcode: ✓", '"ünïcode: ✓"'),
    ],
)
def test_quote(value: object, expected: str) -> None:
    assert quote(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"a, b"', "a, b"),
        ('"two\\nlines"', "two\nlines"),
        ("plain", "plain"),
        ('"broken\\"', '"broken\\"'),
        ('"', '"'),
        ("", ""),
        ('"1"x', '"1"x'),
    ],
)
def test_unquote(text: str, expected: str) -> None:
    assert unquote(text) == expected


# --------------------------------------------------------------------------- format


def test_format_example_exactly() -> None:
    text = format_infotext("a photo of a cat, sitting\nmasterpiece", "blurry, lowres\nugly", EXAMPLE_PARAMS)
    assert text == EXAMPLE_TEXT


def test_format_without_negative_prompt_has_no_negative_line() -> None:
    text = format_infotext("cat", "", {"Steps": 20, "Seed": 1, "CFG scale": 7.5})
    assert text == "cat\nSteps: 20, Seed: 1, CFG scale: 7.5"


def test_format_quotes_comma_and_colon_values_and_omits_none() -> None:
    text = format_infotext("p", "n", {"A": "x, y: z", "B": None, "C": 1, "D": 2})
    assert text == 'p\nNegative prompt: n\nA: "x, y: z", C: 1, D: 2'


def test_format_keeps_caller_key_order() -> None:
    text = format_infotext("p", "", {"Zeta": 1, "Alpha": 2, "Mid": 3})
    assert text.splitlines()[-1] == "Zeta: 1, Alpha: 2, Mid: 3"


# --------------------------------------------------------------------------- parse


def test_parse_example() -> None:
    parsed = parse_infotext(EXAMPLE_TEXT)
    assert parsed["Prompt"] == "a photo of a cat, sitting\nmasterpiece"
    assert parsed["Negative prompt"] == "blurry, lowres\nugly"
    assert parsed["Steps"] == "20"
    assert parsed["Sampler"] == "Euler a"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["CFG scale"] == "7"
    assert parsed["Size-1"] == "512"
    assert parsed["Size-2"] == "512"
    assert "Size" not in parsed
    assert parsed["Lora hashes"] == "name: abc123"
    assert parsed["Clip skip"] == "2"
    assert "VAE hash" not in parsed


def test_format_parse_round_trip_of_example() -> None:
    # What A1111's parse_generation_parameters gives for this text, written out by hand: every value a string
    # (7.0 was written "7"), Size split in two, None values never written, then its defaults for absent keys
    parsed = parse_infotext(format_infotext("p\nq", "n\nm", EXAMPLE_PARAMS))
    assert parsed == {
        "Prompt": "p\nq", "Negative prompt": "n\nm", "Steps": "20", "Sampler": "Euler a", "Schedule type": "Karras",
        "CFG scale": "7", "Seed": "1234", "Size-1": "512", "Size-2": "512", "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly", "Denoising strength": "0.75", "Clip skip": "2", "Hires upscale": "2",
        "Hires steps": "10", "Hires upscaler": "Latent", "Lora hashes": "name: abc123", "Version": "v1.10.1",
        **{k: v for k, v in A1111_DEFAULTS.items() if k not in ("Clip skip", "Schedule type")},
    }


def test_last_line_with_fewer_than_three_pairs_stays_in_prompt() -> None:
    parsed = parse_infotext("a cat\nstyle: anime, mood: happy")
    assert parsed["Prompt"] == "a cat\nstyle: anime, mood: happy"
    assert parsed["Negative prompt"] == ""
    assert "style" not in parsed


def test_prompt_ending_in_pair_like_line_round_trips() -> None:
    prompt = "a cat\nstyle: anime, mood: happy"
    parsed = parse_infotext(format_infotext(prompt, "", {"Steps": 20, "Seed": 1, "CFG scale": 7}))
    assert parsed["Prompt"] == prompt
    assert parsed["Steps"] == "20"
    assert "style" not in parsed


def test_negative_only_text_without_params() -> None:
    parsed = parse_infotext("cat\nNegative prompt: dog\nbird")
    assert parsed["Prompt"] == "cat"
    assert parsed["Negative prompt"] == "dog\nbird"


def test_empty_text_gives_empty_prompts_and_defaults() -> None:
    assert parse_infotext("") == {"Prompt": "", "Negative prompt": "", **A1111_DEFAULTS}


def test_every_negative_prefix_is_removed_as_in_a1111() -> None:
    # A1111 strips the prefix from each line that starts with it (the first one starts the negative prompt)
    text = "p\nNegative prompt: a\nNegative prompt: b\nSteps: 1, Seed: 2, CFG scale: 3"
    assert parse_infotext(text)["Negative prompt"] == "a\nb"
    # a line is joined with "\n" only to a non-empty text: an empty first negative line vanishes
    assert parse_infotext("p\nNegative prompt:\n\nfoo\nbar")["Negative prompt"] == "foo\nbar"


def test_a_pair_with_an_empty_value_is_skipped_as_in_a1111() -> None:
    # A1111 reads v[0] of the empty value, fails, prints an error and skips the pair: the default applies
    parsed = parse_infotext("p\nSteps: 1, RNG: , Seed: 2, Model: ")
    assert "Model" not in parsed and parsed["RNG"] == "GPU" and parsed["Seed"] == "2"


def test_defaults_do_not_override_given_values() -> None:
    parsed = parse_infotext("p\nSteps: 1, Clip skip: 2, RNG: CPU, Schedule type: Karras")
    assert parsed["Clip skip"] == "2"
    assert parsed["RNG"] == "CPU"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["Hires sampler"] == "Use same sampler"
    assert parsed["Masked area padding"] == 32
    assert "Cache FP16 weight for LoRA" not in parsed


def test_fp8_enabled_adds_cache_default() -> None:
    parsed = parse_infotext("p\nSteps: 1, Seed: 2, FP8 weight: Enable for SDXL")
    assert parsed["Cache FP16 weight for LoRA"] is False


def test_param_keys_cannot_replace_prompts() -> None:
    parsed = parse_infotext("real\nPrompt: fake, Steps: 1, Seed: 2")
    assert parsed["Prompt"] == "real"


def test_crlf_text_is_parsed() -> None:
    parsed = parse_infotext("cat\r\nNegative prompt: dog\r\nSteps: 20, Seed: 1, CFG scale: 7\r\n")
    assert parsed["Prompt"] == "cat"
    assert parsed["Negative prompt"] == "dog"
    assert parsed["CFG scale"] == "7"


# --------------------------------------------------------------------------- legacy sampler


@pytest.mark.parametrize(
    ("sampler", "expected_sampler", "expected_schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("DPM2 a Karras", "DPM2 a", "Karras"),
        ("Euler SGM Uniform", "Euler", "SGM Uniform"),
        ("Euler Uniform", "Euler", "Uniform"),
        ("DPM++ 3M SDE Polyexponential", "DPM++ 3M SDE", "Polyexponential"),
        ("Euler a", "Euler a", "Automatic"),
        ("DPM adaptive", "DPM adaptive", "Automatic"),
        ("Karras", "Karras", "Automatic"),
    ],
)
def test_legacy_sampler_split(sampler: str, expected_sampler: str, expected_schedule: str) -> None:
    parsed = parse_infotext(f"p\nSteps: 20, Sampler: {sampler}, CFG scale: 7")
    assert parsed["Sampler"] == expected_sampler
    assert parsed["Schedule type"] == expected_schedule


def test_legacy_split_skipped_when_schedule_type_present() -> None:
    parsed = parse_infotext("p\nSteps: 20, Sampler: DPM++ 2M Karras, Schedule type: Exponential")
    assert parsed["Sampler"] == "DPM++ 2M Karras"
    assert parsed["Schedule type"] == "Exponential"


def test_longest_suffix_listed_first() -> None:
    assert LEGACY_SCHEDULE_SUFFIXES.index("SGM Uniform") < LEGACY_SCHEDULE_SUFFIXES.index("Uniform")


# --------------------------------------------------------------------------- real-world samples


def test_sample_hires_lora() -> None:
    parsed = parse_infotext(SAMPLE_HIRES_LORA)
    assert parsed["Prompt"] == "masterpiece, best quality, 1girl, <lora:add_detail:0.8>, (detailed face:1.2)"
    assert parsed["Negative prompt"] == "(worst quality, low quality:1.4), EasyNegative"
    expected = {
        "Steps": "28",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "3398406297",
        "Size-1": "512",
        "Size-2": "768",
        "Model hash": "7f96a1a9ca",
        "Model": "AnythingV5Ink_ink",
        "Denoising strength": "0.45",
        "Clip skip": "2",
        "Hires upscale": "2",
        "Hires steps": "15",
        "Hires upscaler": "R-ESRGAN 4x+ Anime6B",
        "Lora hashes": "add_detail: 7c6bad76eb54, more_details: 3b8aa1d351ef",
        "TI hashes": "EasyNegative: c74b4e810b03",
        "Version": "v1.10.1",
    }
    assert {key: parsed[key] for key in expected} == expected


def test_sample_legacy_controlnet() -> None:
    parsed = parse_infotext(SAMPLE_LEGACY_CONTROLNET)
    assert parsed["Prompt"] == "a cozy cabin in the woods, snow, warm light"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["CFG scale"] == "6.5"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("768", "512")
    assert parsed["ControlNet 0"] == (
        "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1.0, "
        "Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, "
        "Threshold B: 200, Guidance Start: 0, Guidance End: 1, Pixel Perfect: True, Control Mode: Balanced"
    )
    assert parsed["Version"] == "v1.6.0"
    assert parsed["Clip skip"] == "1"
    assert "Module" not in parsed and "Weight" not in parsed


def test_sample_inpaint_sdxl() -> None:
    parsed = parse_infotext(SAMPLE_INPAINT_SDXL)
    assert parsed["Prompt"] == "portrait of an old sailor, oil painting"
    assert parsed["Negative prompt"] == ""
    expected = {
        "Sampler": "Euler a",
        "Schedule type": "Automatic",
        "VAE hash": "235745af8d",
        "VAE": "sdxl_vae.safetensors",
        "Mask blur": "4",
        "Inpaint area": "Only masked",
        "Masked area padding": "64",
        "Variation seed": "987",
        "Variation seed strength": "0.3",
        "Seed resize from-1": "768",
        "Seed resize from-2": "768",
        "RNG": "CPU",
        "Mask mode": "Inpaint masked",
        "Masked content": "original",
    }
    assert {key: parsed[key] for key in expected} == expected


def test_sample_hires_prompts() -> None:
    parsed = parse_infotext(SAMPLE_HIRES_PROMPTS)
    assert parsed["Prompt"] == "a castle on a hill,\nsunset\nBREAK dramatic sky"
    assert parsed["Negative prompt"] == "lowres\nbad anatomy"
    assert parsed["Hires prompt"] == "a castle on a hill,\nhighly detailed"
    assert parsed["Hires negative prompt"] == "lowres, blurry"
    assert parsed["Hires sampler"] == "Euler"
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == ("1024", "1024")
    assert parsed["Hires checkpoint"] == "Use same checkpoint"
    assert parsed["Emphasis"] == "Original"


# --------------------------------------------------------------------------- infotext_to_request


def test_request_from_hires_lora_sample() -> None:
    request = infotext_to_request(parse_infotext(SAMPLE_HIRES_LORA))
    expected = {
        "prompt": "masterpiece, best quality, 1girl, <lora:add_detail:0.8>, (detailed face:1.2)",
        "negative_prompt": "(worst quality, low quality:1.4), EasyNegative",
        "steps": 28,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "cfg_scale": 7.0,
        "seed": 3398406297,
        "width": 512,
        "height": 768,
        "denoising_strength": 0.45,
        "enable_hr": True,
        "hr_scale": 2.0,
        "hr_upscaler": "R-ESRGAN 4x+ Anime6B",
        "hr_second_pass_steps": 15,
        "hr_prompt": "",
        "hr_negative_prompt": "",
        "override_settings": {"CLIP_stop_at_last_layers": 2},
    }
    assert {key: request[key] for key in expected} == expected
    assert type(request["cfg_scale"]) is float
    assert "hr_sampler_name" not in request
    assert "hr_checkpoint_name" not in request


def test_request_from_inpaint_sample() -> None:
    request = infotext_to_request(parse_infotext(SAMPLE_INPAINT_SDXL))
    assert request["subseed"] == 987
    assert request["subseed_strength"] == 0.3
    assert (request["seed_resize_from_w"], request["seed_resize_from_h"]) == (768, 768)
    assert (request["width"], request["height"]) == (1024, 1024)
    assert request["enable_hr"] is False
    assert request["override_settings"] == {"CLIP_stop_at_last_layers": 1, "sd_vae": "sdxl_vae.safetensors"}


def test_request_from_hires_prompts_sample() -> None:
    request = infotext_to_request(parse_infotext(SAMPLE_HIRES_PROMPTS))
    assert request["enable_hr"] is True
    assert request["hr_sampler_name"] == "Euler"
    assert (request["hr_resize_x"], request["hr_resize_y"]) == (1024, 1024)
    assert request["hr_prompt"] == "a castle on a hill,\nhighly detailed"


def test_request_enable_hr_from_resize_only() -> None:
    request = infotext_to_request({"Hires resize-1": "1024", "Hires resize-2": "768"})
    assert request["enable_hr"] is True
    assert request["hr_resize_x"] == 1024


def test_request_skips_unconvertible_values() -> None:
    request = infotext_to_request(
        {"Steps": "many", "Seed": "-1", "CFG scale": "nan", "Size-1": "12.5", "Denoising strength": "0.4",
         "Clip skip": "x"}
    )
    assert request == {"seed": -1, "denoising_strength": 0.4, "enable_hr": False}


def test_request_accepts_integral_float_text_for_ints() -> None:
    assert infotext_to_request({"Steps": "20.0"})["steps"] == 20


def test_request_from_empty_mapping() -> None:
    assert infotext_to_request({}) == {"enable_hr": False}


# --------------------------------------------------------------------------- properties

INTERESTING_CHARS = st.sampled_from(list('abcXYZ019 ,:"\\\n\r\t-/x=<>()[]{}|') + ["Negative prompt:", "Steps: 1, "])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(INTERESTING_CHARS).map("".join)))
def test_parse_never_raises(text: str) -> None:
    parsed = parse_infotext(text)
    assert isinstance(parsed["Prompt"], str)
    assert isinstance(parsed["Negative prompt"], str)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.lists(INTERESTING_CHARS).map("".join)), max_size=6).map(" ".join))
def test_parse_equals_a1111_on_joined_fragments(text: str) -> None:
    ours, theirs = parse_infotext(text), a1111_parse(text)
    if "Sampler" in theirs and "Schedule type" not in theirs:
        # deliberate: a pre-1.9 "DPM++ 2M Karras" is split at parse time (A1111 splits it when pasting)
        for key in ("Sampler", "Schedule type"):
            ours.pop(key, None), theirs.pop(key, None)
    assert ours == theirs


def _clean_line(line: str) -> str:
    """A prompt line as the parser gives it back: no outer whitespace."""
    return line.strip()


PROMPT_LINES = st.lists(st.text(st.characters(blacklist_characters="\n")).map(_clean_line), max_size=4)
PROMPTS = PROMPT_LINES.filter(lambda lines: not any(line.startswith("Negative prompt:") for line in lines)).map(
    "\n".join
)
NEGATIVE_PROMPTS = PROMPT_LINES.filter(
    # A1111 strips the prefix from every line and drops empty lines before the first non-empty one
    lambda lines: not any(line.startswith("Negative prompt:") for line in lines) and (not lines or lines[0])
).map("\n".join)

PARAM_KEYS = st.one_of(
    st.sampled_from(["Steps", "Seed", "CFG scale", "Size", "Model hash", "Lora hashes", "Hires upscale", "Version"]),
    st.from_regex(r"[a-z][a-z /-]{0,10}[a-z]", fullmatch=True),
)
SIMPLE_VALUES = st.one_of(
    st.integers(),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.booleans(),
    st.sampled_from(["512x768", "Euler a", "name: abc, other: def", 'say "hi"', "back\\slash", ""]),
    st.text().map(str.strip),
)
PARAMS = st.dictionaries(PARAM_KEYS, SIMPLE_VALUES, min_size=3, max_size=8)

SIZE = re.compile(r"(\d+)x(\d+)")


def _expected_entries(key: str, value: object) -> dict[str, str]:
    """What parsing should give for one written parameter (an empty value: nothing, as in A1111)."""
    text = str(value)
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if text == "":
        return {}
    size = SIZE.fullmatch(text)
    if size:
        return {f"{key}-1": size.group(1), f"{key}-2": size.group(2)}
    return {key: text}


@settings(max_examples=300, deadline=None)
@given(PROMPTS, NEGATIVE_PROMPTS, PARAMS)
def test_format_parse_round_trip(prompt: str, negative: str, params: dict[str, object]) -> None:
    assume(prompt == prompt.lstrip())
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in params.items():
        for expected_key, expected_value in _expected_entries(key, value).items():
            assert parsed[expected_key] == expected_value


def test_every_public_name_exists() -> None:
    """``__all__`` is what extensions import with ``from webui.infotext import *``: every name must be there."""
    import webui.infotext as module

    assert module.__all__ and all(hasattr(module, name) for name in module.__all__)


def test_every_request_key_as_a1111_writes_it() -> None:
    """One infotext with every key the request mapping knows, written the way A1111 1.10 writes them
    (processing.py create_infotext; hires and inpaint keys from its scripts), and the API fields A1111's paste
    wiring fills from them (infotext_utils.py: Size / Seed resize from / Hires resize split in two; choice radios
    by their label's index; "Face restoration" present = on)."""
    text = ("a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, "
            "CFG Rescale φ: 0.7, Distilled CFG Scale: 3.5, Seed: 42, Size: 512x768, Variation seed: 7, "
            "Variation seed strength: 0.25, Seed resize from: 256x384, Denoising strength: 0.5, Hires upscale: 2, "
            "Hires upscaler: Latent, Hires steps: 10, Hires resize: 1024x1536, Hires sampler: DPM++ 2M, "
            "Hires schedule type: Exponential, Hires checkpoint: other.safetensors, Hires prompt: \"hp, x\", "
            "Hires negative prompt: hn, Clip skip: 2, Old prompt editing timelines: True, "
            "Downcast alphas_cumprod: True, Noise Schedule: Zero Terminal SNR, VAE: x.safetensors, "
            "Refiner: ref.safetensors, Refiner switch at: 0.8, Face restoration: CodeFormer, Tiling: True, "
            "Mask blur: 4, Mask mode: Inpaint not masked, Masked content: latent noise, Inpaint area: Only masked, "
            "Masked area padding: 32")
    expected = {
        "prompt": "a cat", "negative_prompt": "dog", "steps": 20, "sampler_name": "Euler a", "scheduler": "Karras",
        "cfg_scale": 7.0, "cfg_rescale": 0.7, "distilled_cfg_scale": 3.5, "seed": 42, "width": 512, "height": 768,
        "subseed": 7, "subseed_strength": 0.25, "seed_resize_from_w": 256, "seed_resize_from_h": 384,
        "denoising_strength": 0.5, "enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent",
        "hr_second_pass_steps": 10, "hr_resize_x": 1024, "hr_resize_y": 1536, "hr_sampler_name": "DPM++ 2M",
        "hr_scheduler": "Exponential", "hr_checkpoint_name": "other.safetensors", "hr_prompt": "hp, x",
        "hr_negative_prompt": "hn", "refiner_checkpoint": "ref.safetensors", "refiner_switch_at": 0.8,
        "restore_faces": True, "tiling": True, "mask_blur": 4, "inpainting_mask_invert": 1, "inpainting_fill": 2,
        "inpaint_full_res": True, "inpaint_full_res_padding": 32,
        "override_settings": {"CLIP_stop_at_last_layers": 2, "use_old_scheduling": True,
                              "use_downcasted_alpha_bar": True, "sd_noise_schedule": "Zero Terminal SNR",
                              "sd_vae": "x.safetensors"},
    }
    assert infotext_to_request(parse_infotext(text)) == expected
    other = infotext_to_request(parse_infotext(
        "x\nSteps: 2, Tiling: False, Mask mode: Inpaint masked, Masked content: fill, Inpaint area: Whole picture, "
        "Old prompt editing timelines: False"))
    assert (other["tiling"], other["inpainting_mask_invert"], other["inpainting_fill"], other["inpaint_full_res"],
            other["override_settings"]) == (False, 0, 0, False, {"use_old_scheduling": False,
                                                                 "CLIP_stop_at_last_layers": 1})  # A1111: missing = 1
    assert "restore_faces" not in infotext_to_request(parse_infotext("x\nSteps: 2"))


@pytest.mark.parametrize("text,expected", [('"a, b"', "a, b"), (' "a" ', ' "a" '), ('"', '"'), ('"a', '"a'),
                                           ('"1"', "1"), ("12", "12"), ('"\\u00e9"', "é"), ('"bad\\"', '"bad\\"'),
                                           ('""', ""), (' "a"', ' "a"'), ('"a" ', '"a" ')])
def test_unquote_only_decodes_a_whole_quoted_json_string(text, expected) -> None:
    # A1111 infotext_utils.unquote: unchanged unless the text starts and ends with '"'; then json.loads, or unchanged
    from webui.infotext import unquote

    assert unquote(text) == expected


def test_parse_takes_any_object_and_odd_values():
    from webui.infotext import infotext_to_request, parse_infotext

    # a missing parameters chunk (None) reads as empty text; other objects as their text
    assert parse_infotext(None) == parse_infotext("")
    assert parse_infotext(12345)["Prompt"] == "12345"
    # "True" where a number belongs is no number: the field is left out, as A1111's float() would refuse it
    assert "cfg_scale" not in infotext_to_request(parse_infotext("x\nSteps: 2, CFG scale: True, Seed: 1"))
    assert "cfg_scale" not in infotext_to_request({**parse_infotext("x\nSteps: 2"), "CFG scale": True})  # nor a bool
    # A1111 ui.py txt2img paste fields: the hires fix is on when any hires key is there, "Hires upscaler" alone too
    for key in ("Hires upscaler: Latent", "Hires upscale: 2"):
        request = infotext_to_request(parse_infotext(f"x\nSteps: 2, Denoising strength: 0.5, {key}, Seed: 1"))
        assert request["enable_hr"] is True
