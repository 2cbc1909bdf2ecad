"""Schedule types against an oracle that is not our code (issue 29: parity runs fed k-diffusion our own sigmas, so a
changed schedule passed). The reference is AUTOMATIC1111's ``modules/sd_schedulers.py`` (v1.10), its formulas
restated below from that source, run on k-diffusion's own ``CompVisDenoiser`` (A1111's ``inner_model``: its
``sigmas``, ``sigma_to_t``, ``t_to_sigma``) built from the SD scaled-linear schedule written out here, and SciPy's
Beta quantiles; the Align Your Steps tables are NVIDIA's published 10-step sigmas."""

from __future__ import annotations

import pytest
import torch

from tests.kdiffusion_oracle import load
from tests.schedule_oracle import AYS, a1111_sigmas
from webui.models.components import scaled_linear_alphas_cumprod
from webui.sampling import schedules
from webui.sampling.denoiser import DiscreteSchedule


class _Model(torch.nn.Module):  # what CompVisDenoiser reads from an LDM model
    def __init__(self):
        super().__init__()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # SD's scaled linear
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float())


@pytest.fixture(scope="module")
def inner():
    _, external = load()
    return external.CompVisDenoiser(_Model())


@pytest.mark.parametrize("n", [4, 10, 25])
@pytest.mark.parametrize("name", ["sgm_uniform", "simple", "normal", "ddim", "beta", "kl_optimal",
                                  "align_your_steps"])
def test_schedule_equalsa1111_sigmas(inner, name, n):
    ours = {s.name: s for s in schedules.builtin_schedules()}[name].fn(n, DiscreteSchedule(
        scaled_linear_alphas_cumprod()))
    expected = a1111_sigmas(name, n, inner)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours.float(), expected, rtol=1e-4, atol=1e-5)


def test_ays_uses_the_sdxl_table_for_sdxl(inner):
    # A1111: 11 steps = the table itself
    ours = schedules.align_your_steps(11, DiscreteSchedule(scaled_linear_alphas_cumprod(), "sdxl"))
    torch.testing.assert_close(ours, torch.tensor([*AYS["sdxl"], 0.0]))


def test_schedule_list_equals_a1111():
    from tests.schedule_oracle import A1111_SCHEDULERS

    ours = [(d.name, d.label, d.default_rho, d.need_inner_model) for d in schedules.builtin_schedules()]
    assert ours == A1111_SCHEDULERS[1:]  # "Automatic" is not a schedule of its own here
    sgm = next(d for d in schedules.builtin_schedules() if d.name == "sgm_uniform")
    assert sgm.aliases == ("SGMUniform",)
