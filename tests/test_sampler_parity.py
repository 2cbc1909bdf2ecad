"""Every k-diffusion sampler x schedule type matches the k-diffusion package (A1111's engine)
to max |delta| <= 1e-4 in float32 on the CPU, from the same noise, on a tiny real UNet."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from tests.kdiffusion_oracle import load
from tests.sampler_parity import KD_FUNCTIONS, run_pair, tiny_unet_fn
from webui.plugins import make_plugin_manager
from webui.sampling.denoiser import DiscreteSchedule
from webui.sampling.registry import SamplerRegistry

TOL = 1e-4


@pytest.fixture(scope="module")
def registry():
    hooks = make_plugin_manager(disable_extensions=True).hooks
    return SamplerRegistry(hooks.register_samplers(), hooks.register_schedules())


SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "Simple",
             "Normal", "DDIM", "Beta", "Align Your Steps", "KL Optimal"]
STEP_SAMPLERS = [n for n in KD_FUNCTIONS if n not in ("DPM fast", "DPM adaptive")]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler", STEP_SAMPLERS)
def test_parity_eps(registry, sampler, schedule):
    s, sched = registry.resolve(sampler, schedule)
    assert run_pair(s, sched) <= TOL


@pytest.mark.parametrize("sampler", ["DPM fast", "DPM adaptive"])
def test_parity_full_range_samplers(registry, sampler):
    s, sched = registry.resolve(sampler, "Automatic")
    assert run_pair(s, sched) <= TOL


@pytest.mark.parametrize("steps", [3, 6, 7])  # DPM fast splits n steps into floor(n / 3) + 1 intervals of order 3/2/1
def test_dpm_fast_step_split_equals_k_diffusion(registry, steps):
    s, sched = registry.resolve("DPM fast", "Automatic")
    rec: dict = {}
    assert run_pair(s, sched, steps=steps, record=rec) <= TOL
    assert len(rec["ours_calls"]) == len(rec["theirs_calls"])


@pytest.mark.parametrize("sampler", KD_FUNCTIONS)
def test_parity_v_prediction(registry, sampler):
    s, sched = registry.resolve(sampler, "Automatic")
    assert run_pair(s, sched, prediction_type="v_prediction") <= TOL


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM2"])
def test_parity_with_churn(registry, sampler):
    s, sched = registry.resolve(sampler, "Karras")
    assert run_pair(s, sched, s_churn=1.0) <= TOL


@pytest.mark.parametrize("sampler", ["Euler", "Heun"])
def test_parity_with_churn_at_its_cap(registry, sampler):
    """s_churn / steps = 1 is above k-diffusion's cap sqrt(2) - 1 on gamma, so the cap decides the churn."""
    s, sched = registry.resolve(sampler, "Karras")
    assert run_pair(s, sched, s_churn=8.0) <= TOL


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ SDE", "DPM2 a"])
def test_parity_with_eta(registry, sampler):
    s, sched = registry.resolve(sampler, "Automatic")
    assert run_pair(s, sched, eta=0.5) <= TOL


@pytest.mark.parametrize("sampler", KD_FUNCTIONS)
def test_model_calls_and_progress_steps_match_k_diffusion(registry, sampler):
    """Same number of U-Net calls as k-diffusion's sampler (a cache key or a reused evaluation lost would add calls),
    and the callback reports the same step indices and sigmas (what the progress bar and previews show)."""
    s, sched = registry.resolve(sampler, "Automatic")
    rec: dict = {}
    assert run_pair(s, sched, record=rec) <= TOL
    assert len(rec["ours_calls"]) == len(rec["theirs_calls"]) > 0
    assert rec["ours_steps"] == rec["theirs_steps"] == list(range(len(rec["theirs_steps"])))
    assert rec["ours_sigmas"] == pytest.approx(rec["theirs_sigmas"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sigmas", [(3.5,), (3.5, 3.5), (14.0, 0.2)])
def test_denoiser_equals_k_diffusion_on_both_paths(prediction_type, sigmas):
    """D(x, sigma) equals k-diffusion's DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser (A1111's wrappers) for one
    sigma per batch and per-image sigmas, on the host-scalar path and on the path a sigma on the GPU takes (called
    directly here: on this CPU every sigma is a host tensor)."""
    import torch

    from tests.kdiffusion_oracle import load
    from tests.sampler_parity import tiny_unet_fn
    from webui.sampling.denoiser import Denoiser, DiscreteSchedule

    _, kext = load()
    unet_fn, ac = tiny_unet_fn(prediction_type)
    cls = kext.DiscreteEpsDDPMDenoiser if prediction_type == "epsilon" else kext.DiscreteVDDPMDenoiser
    theirs = cls(unet_fn, ac, quantize=False)
    ours = Denoiser(DiscreteSchedule(ac), unet_fn, prediction_type)
    x = torch.randn(len(sigmas), 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 4
    sigma = torch.tensor(sigmas)
    expected = theirs(x, sigma)
    torch.testing.assert_close(ours(x, sigma), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours._call_device_sigma(x, sigma), expected, rtol=1e-4, atol=1e-5)


#: A1111 1.10's ``modules/sd_samplers_kdiffusion.py`` ``samplers_k_diffusion`` (and ``Restart``), written out by
#: hand: name -> (aliases, options). The flags decide the step count (second_order), the sigma grid
#: (discard_next_to_last_sigma, scheduler), and the noise (brownian_noise, uses_ensd) -- and
#: tests/sampler_parity.py feeds k-diffusion from our flags, so only this table checks them.
A1111_SAMPLERS = {
    "DPM++ 2M": (["k_dpmpp_2m"], {"scheduler": "karras"}),
    "DPM++ SDE": (["k_dpmpp_sde"], {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    "DPM++ 2M SDE": (["k_dpmpp_2m_sde"], {"scheduler": "exponential", "brownian_noise": True}),
    "DPM++ 2M SDE Heun": (["k_dpmpp_2m_sde_heun"], {"scheduler": "exponential", "brownian_noise": True,
                                                    "solver_type": "heun"}),
    "DPM++ 2S a": (["k_dpmpp_2s_a"], {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    "DPM++ 3M SDE": (["k_dpmpp_3m_sde"], {"scheduler": "exponential", "discard_next_to_last_sigma": True,
                                          "brownian_noise": True}),
    "Euler a": (["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    "Euler": (["k_euler"], {}),
    "LMS": (["k_lms"], {}),
    "Heun": (["k_heun"], {"second_order": True}),
    "DPM2": (["k_dpm_2"], {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    "DPM2 a": (["k_dpm_2_a"], {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True,
                               "second_order": True}),
    "DPM fast": (["k_dpm_fast"], {"uses_ensd": True}),
    "DPM adaptive": (["k_dpm_ad"], {"uses_ensd": True}),
    "Restart": (["restart"], {"scheduler": "karras", "second_order": True}),
}


@pytest.mark.parametrize("name", A1111_SAMPLERS)
def test_sampler_flags_equal_a1111(registry, name):
    aliases, options = A1111_SAMPLERS[name]
    s, _ = registry.resolve(name, "Automatic")
    assert s.name == name and list(s.aliases) == aliases
    for flag in ("second_order", "discard_next_to_last_sigma", "brownian_noise", "uses_ensd"):
        assert getattr(s, flag) is bool(options.get(flag)), flag
    assert s.default_scheduler == options.get("scheduler")
    assert s.options == {k: v for k, v in options.items() if k == "solver_type"}
    # GET /sdapi/v1/samplers: A1111's options dict, values as strings
    assert s.public_options() == {k: str(v) for k, v in options.items()}


@pytest.mark.parametrize("name,scheduler,expected", [
    # A1111's get_sampler_and_scheduler (modules/sd_samplers.py): with the schedule left at Automatic, a sampler
    # name ending in " <schedule label>" is split into the sampler and that schedule (the pre-1.9 combined names)
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "karras")),
    ("DPM++ 2M SDE Exponential", None, ("DPM++ 2M SDE", "exponential")),
    ("LMS Karras", "", ("LMS", "karras")),  # LMS has no default schedule of its own
    ("Euler a SGM Uniform", "Automatic", ("Euler a", "sgm_uniform")),
    ("Euler Polyexponential", "automatic", ("Euler", "polyexponential")),
    ("LMS Uniform", None, ("LMS", "uniform")),
    ("DPM++ 2M Karras", "Exponential", ("DPM++ 2M", "exponential")),  # a schedule given explicitly wins
    ("DPM++ 2M", None, ("DPM++ 2M", "karras")),  # the sampler's own default schedule
    ("Euler", None, ("Euler", None)),
])
def test_legacy_combined_sampler_names(registry, name, scheduler, expected):
    s, sched = registry.resolve(name, scheduler)
    assert (s.name, sched.name if sched else None) == expected


def test_unknown_legacy_name_names_the_field(registry):
    from webui.errors import UnknownChoice

    with pytest.raises(UnknownChoice) as err:
        registry.resolve("Nonsense Karras", None)
    assert err.value.field == "sampler_name"


def test_unknown_scheduler_names_the_field_and_offers_a1111s_labels(registry):
    from tests.schedule_oracle import A1111_SCHEDULERS
    from webui.errors import UnknownChoice

    with pytest.raises(UnknownChoice) as err:
        registry.schedule("Nonsense")
    assert err.value.field == "scheduler" and "Nonsense" in str(err.value)
    # A1111's scheduler dropdown (sd_schedulers.schedulers), "Automatic" first; our extra ones may follow
    assert err.value.choices[0] == "Automatic"
    assert {label for _, label, _, _ in A1111_SCHEDULERS} <= set(err.value.choices)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("swapped", [False, True])
def test_brownian_noise_equals_k_diffusion_both_directions(batch, swapped):
    """Our per-image Brownian trees against k-diffusion's BrownianTreeNoiseSampler (what A1111 builds for the SDE
    samplers), one seed per image: queried downwards (sampling) and upwards, built with the interval ends in either
    order."""
    import torch

    from tests.kdiffusion_oracle import load
    from webui.sampling.brownian import BrownianTreeNoise

    ks, _ = load()
    x = torch.zeros(batch, 4, 8, 8)
    seeds = [11, 12][:batch]
    ends = (0.03, 14.6)[::-1] if swapped else (0.03, 14.6)
    ours = BrownianTreeNoise(x, *ends, seeds)
    theirs = ks.BrownianTreeNoiseSampler(x, *ends, seed=seeds)
    for a, b in [(14.6, 7.0), (7.0, 1.5), (1.5, 0.03), (0.5, 3.0)]:
        mine, ref = ours(torch.tensor(a), torch.tensor(b)), theirs(torch.tensor(a), torch.tensor(b))
        assert mine.shape == x.shape
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)
        assert float(mine.std()) > 0.5  # N(0, 1) increments, not zeros


def test_empty_and_automatic_schedule_names_mean_the_samplers_own(registry):
    # A1111 sd_schedulers: "" and "Automatic" (any case) leave the sampler's default schedule
    assert registry.schedule("") is None and registry.schedule("Automatic") is None
    assert registry.schedule("automatic") is None and registry.schedule("Karras").name == "karras"


@pytest.mark.parametrize("sampler", ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE",
                                     "DPM adaptive"])
def test_parity_with_s_noise(registry, sampler):
    # A1111's "SGM noise multiplier" / s_noise option scales every noise draw; k-diffusion takes it as s_noise
    # (DPM adaptive adds noise only with eta > 0: run it at eta 0.5)
    s, sched = registry.resolve(sampler, "Automatic")
    assert run_pair(s, sched, s_noise=0.6, eta=0.5 if sampler == "DPM adaptive" else 1.0) <= TOL


@pytest.mark.parametrize("sampler", KD_FUNCTIONS)
def test_sampler_function_defaults_equal_k_diffusion(registry, sampler):
    """Every keyword both functions have defaults to the same value in ours as in k-diffusion's function (A1111 calls
    them with only some of the keywords, so the rest come from these defaults)."""
    ks, _ = load()
    ours = inspect.signature(registry.resolve(sampler, "Automatic")[0].fn).parameters
    theirs = inspect.signature(getattr(ks, KD_FUNCTIONS[sampler])).parameters
    empty = inspect.Parameter.empty
    shared = [n for n in ours if n in theirs and ours[n].default is not empty and theirs[n].default is not empty]
    assert {n: ours[n].default for n in shared} == {n: theirs[n].default for n in shared}


def test_dpm_adaptive_end_tolerance_equals_k_diffusion(registry):
    """k-diffusion's adaptive loop runs while ``s < t_end - 1e-5``: a step that lands 7e-6 short of the end is the
    last one. A first step of exactly that length, always accepted (huge tolerances), shows the rule."""
    s, _ = registry.resolve("DPM adaptive", "Automatic")
    _, alphas = tiny_unet_fn("epsilon")
    ds = DiscreteSchedule(alphas)
    t_start, t_end = -torch.log(ds.sigma_max.float()), -torch.log(ds.sigma_min.float())
    options = {**s.options, "h_init": float(t_end - t_start) - 7e-6, "rtol": 1e6, "atol": 1e6}
    rec: dict = {}
    assert run_pair(dataclasses.replace(s, options=options), None, eta=0.0, record=rec) <= TOL
    assert len(rec["ours_calls"]) == len(rec["theirs_calls"]) == 3  # one order-3 step: three evaluations
