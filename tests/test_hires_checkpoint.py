"""``hr_checkpoint_name`` (A1111 1.6+: the hires pass on another checkpoint): only the checkpoint in use may be named.

A1111 (processing.py, StableDiffusionProcessingTxt2Img.init) looks the name up with get_closet_checkpoint_match,
writes "Hires checkpoint: <short title>" and reloads that checkpoint for the hires pass; "Use same checkpoint",
empty or None mean no switch. The web UI does not switch models inside a job: naming the checkpoint in use is
accepted (and written as A1111 writes it), any other checkpoint is refused with 422 naming the field, rather than
silently running the hires pass on a model the request did not ask for.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from webui.image_codec import decode_base64_image

BASE = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
        "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 1,
        "denoising_strength": 0.5}


def pixels(response) -> list[np.ndarray]:
    return [np.asarray(decode_base64_image(b, "image")) for b in response.json()["images"]]


@pytest.fixture(scope="module")
def current(api_client):
    return api_client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]


@pytest.fixture(scope="module")
def plain(api_client):
    return api_client.post("/sdapi/v1/txt2img", json=BASE)


@pytest.mark.parametrize("value", [None, "", "Use same checkpoint"])
def test_same_checkpoint_forms_change_nothing(api_client, plain, value):
    r = api_client.post("/sdapi/v1/txt2img", json={**BASE, "hr_checkpoint_name": value})
    assert r.status_code == 200, r.text
    assert r.json()["images"] == plain.json()["images"]
    assert "Hires checkpoint" not in json.loads(r.json()["info"])["infotexts"][0]


def test_the_checkpoint_in_use_is_accepted_and_written_with_its_title(api_client, current, plain):
    for name in (current, current.split(" [")[0]):  # its title, its file name
        r = api_client.post("/sdapi/v1/txt2img", json={**BASE, "hr_checkpoint_name": name})
        assert r.status_code == 200, r.text
        assert all(np.array_equal(a, b) for a, b in zip(pixels(r), pixels(plain), strict=True))
        assert f"Hires checkpoint: {current}," in json.loads(r.json()["info"])["infotexts"][0]


@pytest.mark.parametrize("name", ["other_model.safetensors", "nope [0123456789]"])
def test_another_checkpoint_is_refused_naming_the_field(api_client, name):
    r = api_client.post("/sdapi/v1/txt2img", json={**BASE, "hr_checkpoint_name": name})
    assert r.status_code == 422 and "hr_checkpoint_name" in r.text and name in r.text


def test_without_hires_the_field_is_ignored_as_in_a1111(api_client):
    body = {**BASE, "enable_hr": False, "hr_checkpoint_name": "other_model.safetensors"}
    assert api_client.post("/sdapi/v1/txt2img", json=body).status_code == 200
