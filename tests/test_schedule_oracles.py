"""Schedule types against an oracle that is not our code (issue 29: parity runs fed k-diffusion our own sigmas, so a
changed schedule passed). The reference is AUTOMATIC1111's ``modules/sd_schedulers.py`` (v1.10), its formulas
restated below from that source, run on k-diffusion's own ``CompVisDenoiser`` (A1111's ``inner_model``: its
``sigmas``, ``sigma_to_t``, ``t_to_sigma``) built from the SD scaled-linear schedule written out here, and SciPy's
Beta quantiles; the Align Your Steps tables are NVIDIA's published 10-step sigmas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from tests.kdiffusion_oracle import load
from webui.models.components import scaled_linear_alphas_cumprod
from webui.sampling import schedules
from webui.sampling.denoiser import DiscreteSchedule

AYS = {"sd1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
       "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]}


class _Model(torch.nn.Module):  # what CompVisDenoiser reads from an LDM model
    def __init__(self):
        super().__init__()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled linear
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float())


@pytest.fixture(scope="module")
def inner():
    _, external = load()
    return external.CompVisDenoiser(_Model())


def _a1111(name: str, n: int, inner, family: str = "sd1") -> torch.Tensor:
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


@pytest.mark.parametrize("n", [4, 10, 25])
@pytest.mark.parametrize("name", ["sgm_uniform", "simple", "normal", "ddim", "beta", "kl_optimal",
                                  "align_your_steps"])
def test_schedule_equals_a1111(inner, name, n):
    ours = {s.name: s for s in schedules.builtin_schedules()}[name].fn(n, DiscreteSchedule(
        scaled_linear_alphas_cumprod()))
    expected = _a1111(name, n, inner)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours.float(), expected, rtol=1e-4, atol=1e-5)


def test_ays_uses_the_sdxl_table_for_sdxl(inner):
    # A1111: 11 steps = the table itself
    ours = schedules.align_your_steps(11, DiscreteSchedule(scaled_linear_alphas_cumprod(), "sdxl"))
    torch.testing.assert_close(ours, torch.tensor([*AYS["sdxl"], 0.0]))
