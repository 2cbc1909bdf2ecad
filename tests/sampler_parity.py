"""Run one sampler x schedule both ways -- our sampler on our denoiser, k-diffusion's sampler on
k-diffusion's CompVis-style denoiser -- from the same noise, and return max |delta| of the latents.

Shared by tests/test_sampler_parity.py and benchmarks/sampler_parity.py.
"""

from __future__ import annotations

import functools

import torch

from tests.kdiffusion_oracle import TorchWithNoise, load
from tests.schedule_oracle import a1111_sigmas
from webui.models.tiny import build_tiny_components
from webui.pipeline.noise import ImageRNG
from webui.pipeline.sample import sample, sigmas_for
from webui.sampling.denoiser import Denoiser, DiscreteSchedule
from webui.sampling.registry import SamplerDef
from webui.sampling.schedules import ScheduleDef

KD_FUNCTIONS = {
    "DPM++ 2M": "sample_dpmpp_2m", "DPM++ SDE": "sample_dpmpp_sde", "DPM++ 2M SDE": "sample_dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "sample_dpmpp_2m_sde", "DPM++ 2S a": "sample_dpmpp_2s_ancestral",
    "DPM++ 3M SDE": "sample_dpmpp_3m_sde", "Euler a": "sample_euler_ancestral", "Euler": "sample_euler",
    "LMS": "sample_lms", "Heun": "sample_heun", "DPM2": "sample_dpm_2", "DPM2 a": "sample_dpm_2_ancestral",
    "DPM fast": "sample_dpm_fast", "DPM adaptive": "sample_dpm_adaptive",
}
#: k-diffusion has these schedule functions; the others are A1111's own, restated in tests/schedule_oracle.py.
KD_SCHEDULES = {"uniform", "karras", "exponential", "polyexponential"}
SEEDS = (1234, 1235)


@functools.lru_cache(maxsize=2)
def tiny_unet_fn(prediction_type: str):
    """A conditional tiny UNet with fixed random conditioning, as ``fn(x_scaled, t) -> eps or v``."""
    family = "sd1" if prediction_type == "epsilon" else "sd2"
    comps = build_tiny_components(family, prediction_type=prediction_type, seed=7)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(len(SEEDS), 77, comps.unet.config.cross_attention_dim, generator=g)

    @torch.no_grad()
    def fn(x, t):
        return comps.unet(x, t, encoder_hidden_states=ctx[: x.shape[0]], return_dict=False)[0]

    return fn, comps.alphas_cumprod


def _counted(fn, calls: list):
    def counted(x, t):
        calls.append(1)
        return fn(x, t)

    return counted


def run_pair(sampler: SamplerDef, schedule: ScheduleDef | None, *, steps: int = 8,
             prediction_type: str = "epsilon", eta: float = 1.0, s_churn: float = 0.0, s_noise: float = 1.0,
             record: dict | None = None, options: dict | None = None) -> float:
    """max |ours - k-diffusion's|; with ``record``, also fills it with each side's U-Net calls (``*_calls``) and
    the step indices and sigmas its callback reported (``*_steps``, ``*_sigmas``)."""
    ks, kext = load()
    unet_fn, ac = tiny_unet_fn(prediction_type)
    rec = record if record is not None else {}
    for side in ("ours", "theirs"):
        rec[f"{side}_calls"], rec[f"{side}_steps"], rec[f"{side}_sigmas"] = [], [], []
    shape = (4, 8, 8)
    params = {"eta": eta, "s_noise": s_noise, "s_churn": s_churn, "s_tmin": 0.0, "s_tmax": float("inf")}

    # ours
    ds = DiscreteSchedule(ac)
    mine = Denoiser(ds, _counted(unet_fn, rec["ours_calls"]), prediction_type)
    sigmas = sigmas_for(sampler, schedule, steps, ds)
    rng = ImageRNG(shape, SEEDS, device=torch.device("cpu"))

    def our_callback(i, x, denoised, sigma):
        rec["ours_steps"].append(int(i))
        rec["ours_sigmas"].append(float(sigma))

    ours = sample(sampler, mine, ds, sigmas, rng, SEEDS, params=params, callback=our_callback)

    # k-diffusion, fed exactly as A1111 feeds it
    cls = kext.DiscreteEpsDDPMDenoiser if prediction_type == "epsilon" else kext.DiscreteVDDPMDenoiser
    theirs_model = cls(_counted(unet_fn, rec["theirs_calls"]), ac, quantize=False)
    smin, smax = theirs_model.sigmas[0].item(), theirs_model.sigmas[-1].item()
    n = steps + 1 if sampler.discard_next_to_last_sigma else steps
    name = schedule.name if schedule is not None else "uniform"
    if name == "uniform":
        kd_sigmas = theirs_model.get_sigmas(n)
    elif name == "karras":
        kd_sigmas = ks.get_sigmas_karras(n, smin, smax, rho=7.0)
    elif name == "exponential":
        kd_sigmas = ks.get_sigmas_exponential(n, smin, smax)
    elif name == "polyexponential":
        kd_sigmas = ks.get_sigmas_polyexponential(n, smin, smax, rho=1.0)
    else:  # A1111's own schedule types: its formulas restated (tests/schedule_oracle.py), never our sigmas
        kd_sigmas = a1111_sigmas(name, n, theirs_model)
    if sampler.discard_next_to_last_sigma:
        kd_sigmas = torch.cat([kd_sigmas[:-2], kd_sigmas[-1:]])
    assert torch.allclose(sigmas, kd_sigmas.float(), atol=1e-5, rtol=1e-5), (sigmas, kd_sigmas)
    if sampler.brownian_noise:
        # the reference sigmas agree to float rounding (asserted above), but a Brownian tree turns a 1e-6 change of
        # its query points into ~1e-2 of noise: the SDE samplers run on the very same sigmas on both sides
        kd_sigmas = sigmas.clone()
    rng2 = ImageRNG(shape, SEEDS, device=torch.device("cpu"))
    x = rng2.first() * kd_sigmas[0]
    fn = getattr(ks, KD_FUNCTIONS[sampler.name])
    kwargs = dict(sampler.options)
    if sampler.brownian_noise:
        kwargs["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, kd_sigmas[kd_sigmas > 0].min(), kd_sigmas.max(),
                                                             seed=list(SEEDS))
    elif sampler.uses_ensd:
        kwargs["noise_sampler"] = lambda s, sn: rng2.next()
    if sampler.uses_ensd or sampler.brownian_noise:
        kwargs["eta"] = eta
    if s_churn:
        kwargs.update(s_churn=s_churn)
    if s_noise != 1.0:
        kwargs.update(s_noise=s_noise)
    kwargs.update(options or {})
    def their_callback(info):
        rec["theirs_steps"].append(int(info["i"]))
        rec["theirs_sigmas"].append(float(info["sigma"]))

    kwargs["callback"] = their_callback
    original_torch = ks.torch
    ks.torch = TorchWithNoise(rng2.next)
    try:
        if sampler.full_range:
            theirs = fn(theirs_model, x, smin, smax, **({"n": steps} if "fast" in sampler.name else {}),
                        disable=True, **kwargs)
        else:
            theirs = fn(theirs_model, x, kd_sigmas, disable=True, **kwargs)
    finally:
        ks.torch = original_torch
    return float((ours - theirs).abs().max())
