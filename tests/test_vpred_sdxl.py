"""v-prediction SDXL derivatives (NoobAI-XL v-pred and others): the ``v_pred`` / ``ztsnr`` marker keys, the
zero-terminal-SNR schedule, CFG rescale, and A1111's option ``sd_noise_schedule``.

Expected values come from diffusers (``rescale_zero_terminal_snr`` of its DDIM scheduler, ``rescale_noise_cfg``
of its pipelines: the paper's algorithms as diffusers implements them), not from this project's code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import make_settings
from webui.context import build_context
from webui.infotext import infotext_to_request, parse_infotext
from webui.models.components import scaled_linear_alphas_cumprod
from webui.models.original_layout import save_single_file
from webui.models.tiny import build_tiny_components
from webui.pipeline.guidance import rescale_cfg
from webui.pipeline.request import GenerationRequest, RequestError
from webui.sampling.denoiser import (
    DiscreteSchedule,
    rescale_zero_terminal_snr,
)

BASE = dict(prompt="a red circle", negative_prompt="blue", steps=4, width=64, height=64, seed=21,
            sampler_name="Euler", cfg_scale=6.0, save_images=False)


# --- the schedule -------------------------------------------------------------------------------------------


def test_zero_terminal_snr_schedule_matches_diffusers():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1.0 - diffusers_rescale(betas), dim=0)
    ours = rescale_zero_terminal_snr(torch.cumprod(1.0 - betas, dim=0))
    assert torch.allclose(ours[:-1], expected[:-1], rtol=1e-9, atol=1e-12)
    # A1111 1.10 sd_models.rescale_zero_terminal_snr_abar: alphas_bar[-1] = 4.8973451890853435e-08 (finite sigma_max)
    assert float(expected[-1]) == 0.0 and float(ours[-1]) == 4.8973451890853435e-08


def test_zero_terminal_snr_sigmas():
    plain = DiscreteSchedule(scaled_linear_alphas_cumprod())
    ztsnr = DiscreteSchedule(scaled_linear_alphas_cumprod(), zero_terminal_snr=True)
    assert float(ztsnr.sigma_min) == pytest.approx(float(plain.sigma_min), rel=1e-5)  # first alpha kept
    assert float(plain.sigma_max) == pytest.approx(14.6146, rel=1e-4)
    assert float(ztsnr.sigma_max) == pytest.approx(4518.76, rel=1e-5)  # sqrt((1 - a) / a) of A1111's last alpha bar
    assert bool((ztsnr.sigmas[1:] > ztsnr.sigmas[:-1]).all())  # still increasing


# --- CFG rescale --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_cfg_rescale_matches_diffusers(prediction, phi):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) * 3
    sigma = torch.tensor([2.5, 0.7], dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1)
    pos_out, neg_out = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(
        2, 4, 8, 8, generator=g, dtype=torch.float64) * 0.5
    cfg_out = neg_out + 7.0 * (pos_out - neg_out)  # CFG on the model's outputs, as diffusers does

    if prediction == "epsilon":
        def denoised(out):
            return x - out * s
    else:  # k-diffusion's CompVisVDenoiser
        def denoised(out):
            return out * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)

    expected = denoised(rescale_noise_cfg(cfg_out, pos_out, guidance_rescale=phi))
    ours = rescale_cfg(x, sigma, denoised(pos_out), denoised(cfg_out), phi, prediction)
    assert torch.allclose(ours, expected, atol=1e-9)


# --- marker keys, loading, generation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vpred_root(tmp_path_factory):
    """A models/ root with a tiny SDXL file carrying NoobAI-XL v-pred's marker keys (empty tensors, as
    ComfyUI writes them) and the same weights without them."""
    root = tmp_path_factory.mktemp("vpred")
    folder = root / "Stable-diffusion"
    plain = save_single_file(build_tiny_components("sdxl", seed=5), folder / "plain-xl.safetensors")
    state = load_file(plain)
    save_file({**state, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, folder / "noob-vpred.safetensors")
    return root


@pytest.fixture(scope="module")
def vpred_ctx(vpred_root, tmp_path_factory):
    ctx = build_context(make_settings(tmp_path_factory.mktemp("vpred-data"), vpred_root), load_model=False)
    ctx.models.ensure_loaded("noob-vpred")
    return ctx


def _run(ctx, **kw):
    return ctx.generate(GenerationRequest(**{**BASE, **kw}))


def test_markers_make_a_v_prediction_zero_terminal_snr_model(vpred_ctx):
    spec = vpred_ctx.models.current.components.spec
    assert (spec.family, spec.prediction_type, spec.zero_terminal_snr) == ("sdxl", "v_prediction", True)
    assert spec.label == "SDXL (v-prediction, zero terminal SNR)"


def test_generation_uses_cfg_rescale_0_7_by_default_and_says_so(vpred_ctx):
    auto = _run(vpred_ctx)
    again = _run(vpred_ctx)
    explicit = _run(vpred_ctx, cfg_rescale=0.7)
    off = _run(vpred_ctx, cfg_rescale=0.0)
    assert auto.images[0].tobytes() == again.images[0].tobytes() == explicit.images[0].tobytes()
    assert auto.images[0].tobytes() != off.images[0].tobytes()
    params = parse_infotext(auto.infotexts[0])
    assert params["CFG Rescale φ"] == "0.7" and params["Noise Schedule"] == "Zero Terminal SNR"
    assert "CFG Rescale φ" not in parse_infotext(off.infotexts[0])
    assert np.isfinite(np.asarray(auto.images[0], dtype=float)).all()
    request = infotext_to_request(params)  # PNG Info / send-to reproduce it
    assert request["cfg_rescale"] == 0.7
    assert request["override_settings"]["sd_noise_schedule"] == "Zero Terminal SNR"


def test_the_marker_schedule_is_used(vpred_ctx, monkeypatch):
    import webui.pipeline.guidance as guidance

    made = []
    original = guidance.DiscreteSchedule

    def spy(*args, **kwargs):
        made.append(kwargs.get("zero_terminal_snr"))
        return original(*args, **kwargs)

    monkeypatch.setattr(guidance, "DiscreteSchedule", spy)
    _run(vpred_ctx)
    assert made and all(made)


def test_sidecar_yaml_overrides_the_markers(vpred_root, tmp_path):
    (vpred_root / "Stable-diffusion" / "noob-vpred.yaml").write_text(
        'model:\n  params:\n    parameterization: "eps"\nzero_terminal_snr: false\n')
    try:
        ctx = build_context(make_settings(tmp_path, vpred_root), load_model=False)
        spec = ctx.models.ensure_loaded("noob-vpred").components.spec
        assert (spec.prediction_type, spec.zero_terminal_snr) == ("epsilon", False)
        assert "CFG Rescale φ" not in ctx.generate(GenerationRequest(**BASE)).infotexts[0]
    finally:
        (vpred_root / "Stable-diffusion" / "noob-vpred.yaml").unlink()


def test_option_sd_noise_schedule_rescales_any_model(ctx):
    default = ctx.generate(GenerationRequest(**{**BASE, "sampler_name": "Euler a"}))
    ztsnr = ctx.generate(GenerationRequest(**{**BASE, "sampler_name": "Euler a",
                                              "override_settings": {"sd_noise_schedule": "Zero Terminal SNR"}}))
    assert default.images[0].tobytes() != ztsnr.images[0].tobytes()
    assert "Noise Schedule: Zero Terminal SNR" in ztsnr.infotexts[0]
    assert "Noise Schedule" not in default.infotexts[0] and "CFG Rescale" not in ztsnr.infotexts[0]  # eps model


def test_bad_cfg_rescale_is_refused_naming_the_field(ctx, api_client):
    with pytest.raises(RequestError) as e:
        ctx.generate(GenerationRequest(**{**BASE, "cfg_rescale": 1.5}))
    assert e.value.field == "cfg_rescale"
    r = api_client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                   "cfg_rescale": "lots"})
    assert r.status_code == 422 and "cfg_rescale" in r.text
    ok = api_client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                    "cfg_rescale": 0.5})
    assert ok.status_code == 200 and "CFG Rescale φ: 0.5" in json.loads(ok.json()["info"])["infotexts"][0]


def test_send_to_fills_cfg_rescale_and_resets_it_when_absent():
    from webui.ui.sendto import values_from_infotext

    text = "a cat\nSteps: 4, Sampler: Euler, CFG scale: 6, CFG Rescale φ: 0.7, Seed: 1, Size: 64x64"
    assert values_from_infotext(text, ["cfg_rescale", "cfg_scale"]) == {"cfg_rescale": 0.7, "cfg_scale": 6.0}
    plain = "a cat\nSteps: 4, Sampler: Euler, CFG scale: 6, Seed: 1, Size: 64x64"
    assert values_from_infotext(plain, ["cfg_rescale"]) == {"cfg_rescale": None}  # back to automatic
