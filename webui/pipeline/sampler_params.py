"""The sigma parameters ``s_churn``, ``s_tmin``, ``s_tmax`` and ``s_noise`` of a run, as A1111 1.10 sets them.

A1111 1.10 (``modules/processing.py`` ``StableDiffusionProcessing.__post_init__``, then
``modules/sd_samplers_common.py`` ``Sampler.initialize``):

* a request value that is given (not None) is used, else the option of the same name; ``s_tmax`` 0 (or
  unset) means infinity;
* only samplers whose k-diffusion function takes a parameter get it (``sampler_extra_params`` in
  ``modules/sd_samplers_kdiffusion.py``: Euler, Heun and DPM2 take all four; DPM fast, DPM2 a, DPM++ 2S a,
  DPM++ SDE, DPM++ 2M SDE and DPM++ 3M SDE take ``s_noise``); the others run with the function's
  defaults (churn 0, tmin 0, tmax infinity, noise 1);
* then, for each parameter the sampler takes, an *option* that differs from that default replaces the
  value -- even one the request gave -- and is written to the infotext ("Sigma churn", "Sigma tmin",
  "Sigma tmax", "Sigma noise"). A request value used under a default option is not written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from webui.pipeline.request import GenerationRequest
from webui.sampling.registry import SamplerDef

#: The k-diffusion sampler defaults (also what samplers that do not take a parameter run with).
DEFAULTS: dict[str, float] = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
#: A1111 1.10's ``sampler_extra_params``: the sampling functions (by name) that take sigma parameters.
TAKES: dict[str, tuple[str, ...]] = {
    **{fn: ("s_churn", "s_tmin", "s_tmax", "s_noise") for fn in ("sample_euler", "sample_heun", "sample_dpm_2")},
    **{fn: ("s_noise",) for fn in ("sample_dpm_fast", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral",
                                   "sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde")},
}
INFOTEXT: dict[str, str] = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax",
                            "s_noise": "Sigma noise"}


def _option(opts: Mapping[str, Any], name: str) -> float:
    value = float(opts.get(name, 0.0 if name == "s_tmax" else DEFAULTS[name]))
    return (value or math.inf) if name == "s_tmax" else value


def sigma_params(sampler: SamplerDef, req: GenerationRequest, opts: Mapping[str, Any]
                 ) -> tuple[dict[str, float], dict[str, Any]]:
    """``(params, infotext)`` for ``sampler``: the four values passed to the sampling function and the
    infotext fields A1111 writes for them."""
    params = dict(DEFAULTS)
    info: dict[str, Any] = {}
    for name in TAKES.get(getattr(sampler.fn, "__name__", ""), ()):
        requested = getattr(req, name)
        value = float(requested) if requested is not None else _option(opts, name)
        if name == "s_tmax":
            value = value or math.inf
        option = _option(opts, name)
        if option != DEFAULTS[name]:
            value = option
            info[INFOTEXT[name]] = option
        params[name] = value
    return params, info
