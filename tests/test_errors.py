"""webui.errors: one unknown-choice error for every registry, reported like any request error."""

from __future__ import annotations

import pickle

import pytest

from webui.errors import ModelError, RequestError, UnknownChoice
from webui.restoration.registry import FaceRestorerRegistry
from webui.sampling.registry import SamplerRegistry
from webui.scripts import ScriptRegistry
from webui.upscaling.registry import UpscalerDef, UpscalerRegistry


def test_unknown_choice_is_a_request_error_listing_the_valid_names():
    e = UnknownChoice("sampler_name", "sampler", "Nope", ["Euler", "Euler a"])
    assert isinstance(e, RequestError) and isinstance(e, KeyError) and isinstance(e, ValueError)
    assert (e.field, e.what, e.value, e.choices) == ("sampler_name", "sampler", "Nope", ["Euler", "Euler a"])
    assert e.message == "unknown sampler 'Nope'; valid: Euler, Euler a"
    assert str(e) == "sampler_name: unknown sampler 'Nope'; valid: Euler, Euler a"  # not KeyError's repr
    moved = e.for_field("hr_sampler_name")
    assert moved.field == "hr_sampler_name" and moved.message == e.message
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is UnknownChoice and str(again) == str(e) and again.choices == e.choices
    assert UnknownChoice("styles", "style", "x", []).message == "unknown style 'x'; valid: none"


def test_request_and_model_errors_survive_pickling():
    r = pickle.loads(pickle.dumps(RequestError("steps", "must be an integer")))
    assert (r.field, r.message, str(r)) == ("steps", "must be an integer", "steps: must be an integer")
    m = pickle.loads(pickle.dumps(ModelError("/x/model.safetensors", "damaged")))
    assert m.path.name == "model.safetensors" and "damaged" in str(m)


@pytest.mark.parametrize("lookup, field, what", [
    (lambda: UpscalerRegistry([UpscalerDef("Lanczos", lambda i, s, o: i)]).get("nope"), "upscaler", "upscaler"),
    (lambda: UpscalerRegistry().get("nope", "hr_upscaler"), "hr_upscaler", "upscaler"),
    (lambda: FaceRestorerRegistry().get("nope"), "face_restoration_model", "face restorer"),
    (lambda: ScriptRegistry().get("nope", "txt2img"), "script_name", "script"),
    (lambda: SamplerRegistry([], []).sampler("nope"), "sampler_name", "sampler"),
    (lambda: SamplerRegistry([], []).schedule("nope"), "scheduler", "scheduler"),
])
def test_every_registry_raises_the_one_unknown_choice(lookup, field, what):
    with pytest.raises(UnknownChoice) as info:
        lookup()
    assert info.value.field == field and info.value.what == what and info.value.value == "nope"


def test_registry_lookup_ignores_case_and_keeps_the_first_of_a_name():
    first, second = UpscalerDef("Lanczos", lambda i, s, o: i), UpscalerDef("Lanczos", lambda i, s, o: i)
    registry = UpscalerRegistry([first, second])
    assert registry.names() == ["Lanczos"] and registry.get("lanczos") is first and registry.all() == [first]
