"""A1111 1.10's schedule types restated from its ``modules/sd_schedulers.py`` (not our code), for the tests.

``a1111_sigmas(name, n, inner)`` runs the formulas on a k-diffusion discrete denoiser ``inner`` (A1111's
``inner_model``: ``sigmas``, ``sigma_to_t``, ``t_to_sigma``); Beta uses SciPy's quantiles and Align Your Steps
NVIDIA's published 10-step tables. Shared by tests/test_schedule_oracles.py and tests/sampler_parity.py (so the
sampler parity runs feed k-diffusion the reference sigmas, not ours).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

AYS = {"sd1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
       "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]}


#: A1111 1.10's modules/sd_schedulers.py list, written out by hand: (name, label, default_rho, need_inner_model)
A1111_SCHEDULERS = [
    ("automatic", "Automatic", -1, False), ("uniform", "Uniform", -1, True), ("karras", "Karras", 7.0, False),
    ("exponential", "Exponential", -1, False), ("polyexponential", "Polyexponential", 1.0, False),
    ("sgm_uniform", "SGM Uniform", -1, True), ("kl_optimal", "KL Optimal", -1, False),
    ("align_your_steps", "Align Your Steps", -1, False), ("simple", "Simple", -1, True),
    ("normal", "Normal", -1, True), ("ddim", "DDIM", -1, True), ("beta", "Beta", -1, True)]

def a1111_sigmas(name: str, n: int, inner, family: str = "sd1") -> torch.Tensor:
    """The A1111 1.10 formulas (sd_schedulers.py), with sigma_min / sigma_max = the model's first / last sigma."""
    smin, smax = float(inner.sigmas[0]), float(inner.sigmas[-1])
    if name in ("normal", "sgm_uniform"):
        start, end = inner.sigma_to_t(torch.tensor(smax)), inner.sigma_to_t(torch.tensor(smin))
        ts = torch.linspace(start, end, n + 1)[:-1] if name == "sgm_uniform" else torch.linspace(start, end, n)
        sigs = [float(inner.t_to_sigma(t)) for t in ts]
    elif name == "simple":
        step = len(inner.sigmas) / n
        sigs = [float(inner.sigmas[-(1 + int(x * step))]) for x in range(n)]
    elif name == "ddim":
        step = max(len(inner.sigmas) // n, 1)
        sigs = [float(inner.sigmas[x]) for x in range(1, len(inner.sigmas), step)][::-1]
    elif name == "beta":
        sigs = [smin + q * (smax - smin) for q in stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)]
    elif name == "kl_optimal":
        a_min, a_max = np.arctan(smin), np.arctan(smax)
        return torch.tensor([np.tan(i / n * a_min + (1 - i / n) * a_max) for i in range(n + 1)], dtype=torch.float32)
    elif name == "align_your_steps":
        table = AYS[family]
        if n == len(table):
            sigs = list(table)
        else:
            ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), np.log(table[::-1]))
            sigs = list(np.exp(ys)[::-1])
    else:
        raise ValueError(name)
    return torch.tensor([*sigs, 0.0], dtype=torch.float32)
