"""DDIM, PLMS, UniPC, Restart and LCM (webui.sampling.extra_samplers) on toy models.

The toy data distribution is N(MU, S**2) per dimension; its exact denoiser is
``D(x, sigma) = (S**2 x + sigma**2 MU) / (S**2 + sigma**2)`` and its probability-flow ODE has the
closed-form solution ``x(sigma) = MU + (x(sigma_T) - MU) * sqrt(S**2 + sigma**2) / sqrt(S**2 + sigma_T**2)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch

from tests.kdiffusion_oracle import load
from webui.models.components import scaled_linear_alphas_cumprod
from webui.sampling import extra_samplers as es
from webui.sampling.denoiser import DiscreteSchedule
from webui.sampling.registry import SamplerRegistry
from webui.sampling.schedules import builtin_schedules, karras

MU, S = 0.5, 0.3
SHAPE = (8, 4, 8, 8)


@pytest.fixture(scope="module")
def schedule() -> DiscreteSchedule:
    return DiscreteSchedule(scaled_linear_alphas_cumprod())


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (S**2 * x + s**2 * MU) / (S**2 + s**2)


def exact_flow(x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
    return MU + (x_start - MU) * math.sqrt(S**2 + sigma_end**2) / math.sqrt(S**2 + sigma_start**2)


class Recorder:
    """Counts model calls, callbacks (with their indices) and noise draws."""

    def __init__(self, model: Any = gaussian_denoiser, seed: int = 0, dtype: torch.dtype = torch.float32):
        self.model = model
        self.gen = torch.Generator().manual_seed(seed)
        self.dtype = dtype
        self.model_sigmas: list[float] = []
        self.callback_steps: list[int] = []
        self.callback_sigmas: list[float] = []
        self.noise_calls: list[tuple[float, float]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        self.model_sigmas.append(float(sigma[0]))
        return self.model(x, sigma)

    def callback(self, i: int, x: torch.Tensor, denoised: torch.Tensor, sigma: Any) -> None:
        assert x.shape == denoised.shape
        self.callback_sigmas.append(float(sigma))
        self.callback_steps.append(i)

    def noise_sampler(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        self.noise_calls.append((float(sigma), float(sigma_next)))
        return torch.randn(SHAPE, generator=self.gen, dtype=self.dtype)


def start_noise(seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run(fn: Any, sigmas: torch.Tensor, *, vp_init: bool, rec: Recorder | None = None, x: torch.Tensor | None = None,
        **kwargs: Any) -> tuple[torch.Tensor, Recorder]:
    rec = rec or Recorder()
    if x is None:
        s0 = float(sigmas[0])
        x = start_noise() * (math.sqrt(1 + s0**2) if vp_init else s0)
    kwargs.setdefault("eta", 0.0)
    out = fn(rec, x, sigmas, noise_sampler=rec.noise_sampler, callback=rec.callback, schedule=None,
             s_noise=1.0, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), **kwargs)
    return out, rec


# --------------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------------


def test_ddim_sigmas_are_training_sigmas_951_to_1(schedule: DiscreteSchedule) -> None:
    sigmas = es.ddim_sigmas(20, schedule)
    timesteps = list(range(951, 0, -50))
    assert timesteps[-1] == 1 and len(timesteps) == 20
    expected = torch.cat([schedule.sigmas[torch.tensor(timesteps)], torch.zeros(1)])
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu"
    assert torch.equal(sigmas, expected.float())


def test_ddim_timesteps_follow_a1111_integer_stride() -> None:
    assert es.ddim_timesteps(20) == list(range(1, 1000, 50))
    assert len(es.ddim_timesteps(30)) == 31  # 1000 // 30 = 33 -> 0, 33, ..., 990
    assert es.ddim_timesteps(37)[-1] == 999  # 27 * 37 = 999, + 1 clipped to 999
    big = es.ddim_timesteps(600)
    assert len(big) == 1000 and big[-2:] == [999, 999]


def test_unipc_sigmas_grids(schedule: DiscreteSchedule) -> None:
    s = es.unipc_sigmas(9, schedule)  # time_uniform: timesteps 999, 888, ..., 111, 0
    assert len(s) == 11 and float(s[-1]) == 0.0
    ts = torch.tensor([999 - 111 * k for k in range(10)])
    assert torch.allclose(s[:-1], schedule.sigmas[ts], rtol=1e-5)
    lsnr = es.unipc_sigmas(10, schedule, "logSNR")
    steps = torch.diff(torch.log(lsnr[:-1].double()))
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-4)
    assert math.isclose(float(lsnr[0]), float(schedule.sigma_max), rel_tol=1e-5)
    assert math.isclose(float(lsnr[-2]), float(schedule.sigma_min), rel_tol=1e-5)
    quad = es.unipc_sigmas(10, schedule, "time_quadratic")
    assert len(quad) == 12 and bool((torch.diff(quad[:-1]) < 0).all())
    # UniPC's get_time_steps("time_quadratic") (A1111 modules/models/diffusion/uni_pc/uni_pc.py): t uniform in sqrt(t)
    # from 1 to 1/N, then NoiseScheduleVP("discrete") -- log(alpha) interpolated linearly at tau = N t - 1 -- gives
    # sigma = sqrt(1 / alpha^2 - 1); restated here with numpy on alphas_cumprod
    import numpy as np

    n = 1000
    t = np.linspace(1.0, (1.0 / n) ** 0.5, 11) ** 2
    log_alpha = 0.5 * np.log(scaled_linear_alphas_cumprod().double().numpy())
    la = np.interp(n * t - 1.0, np.arange(n), log_alpha)
    assert quad[:-1].double().numpy() == pytest.approx(np.sqrt(np.exp(-2 * la) - 1), rel=5e-5)  # float32 sigmas
    with pytest.raises(ValueError):
        es.unipc_sigmas(10, schedule, "nope")


def test_lcm_sigmas_interpolate_the_50_step_grid(schedule: DiscreteSchedule) -> None:
    s = es.lcm_sigmas(4, schedule)
    assert len(s) == 5 and float(s[-1]) == 0.0
    grid = schedule.sigmas[torch.arange(50) * 20 + 19].double()
    assert math.isclose(float(s[0]), float(grid[49]), rel_tol=1e-6)
    assert math.isclose(float(s[3]), float(grid[0]), rel_tol=1e-6)
    idx = (672.3333333333 - 19) / 20  # linspace(999, 19, 4)[1] on the grid
    lo = math.floor(idx)
    want = math.exp((1 - (idx - lo)) * math.log(grid[lo]) + (idx - lo) * math.log(grid[lo + 1]))
    assert math.isclose(float(s[1]), want, rel_tol=1e-5)


# --------------------------------------------------------------------------------------------------
# evaluation and callback counts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "evals", "callbacks"),
    [(20, 19, 20), (30, 30, 31), (2, 1, 2), (1, 1, 1)],
)
def test_ddim_counts(schedule: DiscreteSchedule, steps: int, evals: int, callbacks: int) -> None:
    out, rec = run(es.sample_ddim, es.ddim_sigmas(steps, schedule), vp_init=True)
    assert len(rec.model_sigmas) == evals
    assert rec.callback_steps == list(range(callbacks))
    assert not rec.noise_calls  # eta 0 draws no noise
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("steps", "evals", "callbacks"), [(20, 20, 20), (30, 31, 31), (2, 2, 2), (1, 1, 1)])
def test_plms_counts(schedule: DiscreteSchedule, steps: int, evals: int, callbacks: int) -> None:
    out, rec = run(es.sample_plms, es.ddim_sigmas(steps, schedule), vp_init=True)
    assert len(rec.model_sigmas) == evals
    assert rec.callback_steps == list(range(callbacks))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", [20, 3, 2, 1])
def test_unipc_counts(schedule: DiscreteSchedule, steps: int, variant: str) -> None:
    sigmas = es.unipc_sigmas(steps, schedule)
    out, rec = run(es.sample_unipc, sigmas, vp_init=True, variant=variant)
    assert len(rec.model_sigmas) == steps
    assert len(sigmas) == steps + 2  # steps + 1 time points, then 0
    assert rec.callback_steps == list(range(steps + 1))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("steps", "restarts"), [(10, 0), (19, 0), (20, 1), (30, 1), (35, 1), (36, 2), (40, 2)])
def test_restart_counts(schedule: DiscreteSchedule, steps: int, restarts: int) -> None:
    out, rec = run(es.sample_restart, karras(steps, schedule), vp_init=False)
    assert rec.callback_steps == list(range(steps))
    assert len(rec.model_sigmas) == 2 * steps - 1  # Heun, Euler into 0
    assert len(rec.noise_calls) == restarts
    assert torch.isfinite(out).all()


def test_lcm_counts(schedule: DiscreteSchedule) -> None:
    sigmas = es.lcm_sigmas(4, schedule)
    out, rec = run(es.sample_lcm, sigmas, vp_init=False)
    assert rec.model_sigmas == pytest.approx([float(s) for s in sigmas[:-1]])
    assert rec.callback_steps == [0, 1, 2, 3]
    assert len(rec.noise_calls) == 3


# --------------------------------------------------------------------------------------------------
# DDIM / PLMS against the VP-space update equations
# --------------------------------------------------------------------------------------------------


def _vp_eps(schedule: DiscreteSchedule, x_vp: torch.Tensor, t: int) -> torch.Tensor:
    """The toy model as an eps-predicting UNet called at integer timestep t on VP latents."""
    sigma = float(schedule.sigmas[t])
    x_k = x_vp * math.sqrt(1 + sigma**2)
    return (x_k - gaussian_denoiser(x_k, torch.full((x_vp.shape[0],), sigma))) / sigma


def _alphas(schedule: DiscreteSchedule) -> list[float]:
    return [1.0 / (1.0 + float(s) ** 2) for s in schedule.sigmas]


def reference_ddim_vp(schedule: DiscreteSchedule, steps: int, eta: float, noises: list[torch.Tensor]) -> torch.Tensor:
    """A1111's DDIM walk in VP space: timesteps from the last to the second, alphas_prev from the previous."""
    ts = es.ddim_timesteps(steps)
    ac = _alphas(schedule)
    x = start_noise().double()
    for k, index in enumerate(range(len(ts) - 1, 0, -1)):
        a_t, a_prev = ac[ts[index]], ac[ts[index - 1]]
        e = _vp_eps(schedule, x, ts[index])
        s = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - s**2) * e
        if eta:
            x = x + s * noises[k].double()
    return x


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_vp_equations(schedule: DiscreteSchedule, eta: float) -> None:
    steps = 15
    sigmas = es.ddim_sigmas(steps, schedule)
    rec = Recorder(dtype=torch.float64)
    x = start_noise().double() * math.sqrt(1 + float(sigmas[0]) ** 2)
    out, rec = run(es.sample_ddim, sigmas.double(), vp_init=True, rec=rec, x=x, eta=eta)
    gen = torch.Generator().manual_seed(0)
    noises = [torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(len(sigmas))]
    ref = reference_ddim_vp(schedule, steps, eta, noises)
    assert len(sigmas) == 17  # 1000 // 15 = 66: 16 grid timesteps
    assert len(rec.noise_calls) == (15 if eta else 0)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_plms_matches_vp_equations(schedule: DiscreteSchedule) -> None:
    steps = 12
    ts = es.ddim_timesteps(steps)
    ac = _alphas(schedule)
    x = start_noise().double()
    history: list[torch.Tensor] = []
    for index in range(len(ts) - 1, 0, -1):
        a_t, a_prev = ac[ts[index]], ac[ts[index - 1]]

        def step(e: torch.Tensor, x: torch.Tensor = x, a_t: float = a_t, a_prev: float = a_prev) -> torch.Tensor:
            x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
            return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e

        e = _vp_eps(schedule, x, ts[index])
        if not history:
            e_prime = (e + _vp_eps(schedule, step(e), ts[index - 1])) / 2
        elif len(history) == 1:
            e_prime = (3 * e - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x = step(e_prime)
        history = (history + [e])[-3:]
    sigmas = es.ddim_sigmas(steps, schedule).double()
    out, _ = run(es.sample_plms, sigmas, vp_init=True, x=start_noise().double() * math.sqrt(1 + float(sigmas[0]) ** 2))
    assert torch.allclose(out, x, atol=1e-5, rtol=1e-5)


def test_ddim_eta0_is_deterministic_and_follows_the_ode(schedule: DiscreteSchedule) -> None:
    errors = []
    for steps in (50, 100, 200):
        sigmas = es.ddim_sigmas(steps, schedule)
        a, _ = run(es.sample_ddim, sigmas, vp_init=True, rec=Recorder(seed=1))
        b, _ = run(es.sample_ddim, sigmas, vp_init=True, rec=Recorder(seed=2))
        assert torch.equal(a, b)
        s0, s_last = float(sigmas[0]), float(sigmas[-2])
        x = start_noise() * math.sqrt(1 + s0**2)
        exact = exact_flow(x, s0, s_last) / math.sqrt(1 + s_last**2)  # A1111's VP latent at t = 1
        errors.append(float((a - exact).abs().max()))
    print(errors)
    assert errors[2] < 0.03
    assert 1.7 < errors[0] / errors[1] < 2.3 and 1.7 < errors[1] / errors[2] < 2.3  # first order


def test_ddim_eta_adds_noise(schedule: DiscreteSchedule) -> None:
    sigmas = es.ddim_sigmas(10, schedule)
    a, _ = run(es.sample_ddim, sigmas, vp_init=True, rec=Recorder(seed=1), eta=1.0)
    b, _ = run(es.sample_ddim, sigmas, vp_init=True, rec=Recorder(seed=2), eta=1.0)
    assert not torch.allclose(a, b)


# --------------------------------------------------------------------------------------------------
# UniPC accuracy
# --------------------------------------------------------------------------------------------------


def _unipc_error(schedule: DiscreteSchedule, steps: int, **kwargs: Any) -> float:
    sigmas = es.unipc_sigmas(steps, schedule, "logSNR").double()
    x = start_noise(dtype=torch.float64) * math.sqrt(1 + float(sigmas[0]) ** 2)
    out, _ = run(es.sample_unipc, sigmas, vp_init=True, x=x, rec=Recorder(dtype=torch.float64), **kwargs)
    s0, s_last = float(sigmas[0]), float(sigmas[-2])
    exact = exact_flow(x, s0, s_last) / math.sqrt(1 + s_last**2)
    return float((out - exact).abs().max())


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_converges_at_high_order(schedule: DiscreteSchedule, variant: str) -> None:
    # without lower_order_final: order 3 predictor + corrector -> error falls by >= 8x per doubling
    e16, e32, e64 = (_unipc_error(schedule, n, variant=variant, lower_order_final=False) for n in (16, 32, 64))
    assert e64 < 1e-5
    assert e16 / e32 > 6 and e32 / e64 > 6
    # A1111's default (lower_order_final): the last step is first order without corrector -> ~4x
    d16, d32, d64 = (_unipc_error(schedule, n, variant=variant) for n in (16, 32, 64))
    assert d64 < 1e-4
    assert 3.0 < d32 / d64 < 5.5


def test_unipc_order1_is_ddim_plus_corrector(schedule: DiscreteSchedule) -> None:
    # order 1: predictor = DDIM (DPM-Solver-1); the corrector makes it second order
    e = [_unipc_error(schedule, n, order=1) for n in (16, 32, 64)]
    assert 3.0 < e[1] / e[2] < 5.5


def _a1111_unipc_orders(steps: int, order: int, lower_order_final: bool) -> list[tuple[int, bool]]:
    """(order, corrector) of each UniPC update, restated from ``UniPC.sample(method="multistep")`` in A1111's
    modules/models/diffusion/uni_pc/uni_pc.py: updates 1 .. order-1 warm up at their own index as order with the
    corrector on; from ``order`` on, ``min(order, steps + 1 - step)`` with ``lower_order_final`` (else ``order``),
    and no corrector on the last update (``assert steps >= order`` there)."""
    out = [(init_order, True) for init_order in range(1, order)]
    for step in range(order, steps + 1):
        out.append((min(order, steps + 1 - step) if lower_order_final else order, step != steps))
    return out


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize(("steps", "order"), [(3, 3), (4, 3), (5, 3), (6, 3), (2, 2), (3, 2), (3, 1), (8, 3)])
def test_unipc_order_schedule_equals_a1111(schedule: DiscreteSchedule, monkeypatch: pytest.MonkeyPatch, steps: int,
                                           order: int, lower_order_final: bool) -> None:
    used: list[tuple[int, bool]] = []
    original = es._unipc_coefficients

    def recording(h, rks, p, variant, need_predictor, need_corrector):
        used.append((p, need_corrector))
        return original(h, rks, p, variant, need_predictor, need_corrector)

    monkeypatch.setattr(es, "_unipc_coefficients", recording)
    sigmas = es.unipc_sigmas(steps, schedule)  # steps + 1 time points: ``steps`` updates
    run(es.sample_unipc, sigmas, vp_init=True, order=order, lower_order_final=lower_order_final)
    assert used == _a1111_unipc_orders(steps, order, lower_order_final)


def test_unipc_rejects_unknown_variant(schedule: DiscreteSchedule) -> None:
    with pytest.raises(ValueError):
        run(es.sample_unipc, es.unipc_sigmas(5, schedule), vp_init=True, variant="vary_coeff")


# --------------------------------------------------------------------------------------------------
# Restart
# --------------------------------------------------------------------------------------------------


def test_restart_step_list_follows_a1111_rules(schedule: DiscreteSchedule) -> None:
    plain = karras(10, schedule)
    assert es.restart_step_list(plain) == list(zip([float(s) for s in plain[:-1]], [float(s) for s in plain[1:]]))

    steps = es.restart_step_list(karras(30, schedule))
    assert len(steps) == 30
    ups = [k for k in range(1, len(steps)) if steps[k][0] > steps[k - 1][1]]
    assert len(ups) == 1
    k = ups[0]
    s_min, s_max = steps[k - 1][1], steps[k][0]
    assert abs(s_min - 0.1) < 0.03 and abs(s_max - 2.0) < 0.4
    assert k + 9 < len(steps) and steps[k + 8][1] == s_min  # 9 restart steps back down to s_min
    main = [a for a, _ in steps[:k]] + [a for a, _ in steps[k + 9:]] + [0.0]
    expected = es._karras(21, float(schedule.sigma_min), float(schedule.sigma_max))
    assert main[:-1] == pytest.approx(expected, rel=1e-5)

    steps40 = es.restart_step_list(karras(40, schedule))
    ups40 = [k for k in range(1, len(steps40)) if steps40[k][0] > steps40[k - 1][1]]
    assert len(steps40) == 40 and len(ups40) == 2 and ups40[1] - ups40[0] == 10  # K = 2 of 40 // 4 steps


def test_restart_noise_scale(schedule: DiscreteSchedule) -> None:
    """With the point-mass model D = 0 the flow is x = sigma * eps, so after a restart x must have the
    variance of sigma_max**2: sigma_min**2 carried over plus the added sigma_max**2 - sigma_min**2."""
    seen: dict[int, torch.Tensor] = {}
    big = (4096, 4, 8, 8)

    def zero_model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    gen = torch.Generator().manual_seed(0)
    sigmas = karras(30, schedule)
    steps = es.restart_step_list(sigmas)
    k = next(k for k in range(1, len(steps)) if steps[k][0] > steps[k - 1][1])
    x = torch.randn(big, generator=gen) * float(sigmas[0])
    es.sample_restart(zero_model, x, sigmas, noise_sampler=lambda a, b: torch.randn(big, generator=gen),
                      callback=lambda i, x_, d, s: seen.__setitem__(i, x_.clone()))
    # after restart step k (from s_max to the next sub-schedule sigma), std = that sigma
    assert math.isclose(float(seen[k].std()), steps[k][1], rel_tol=0.02)
    assert math.isclose(float(seen[k - 1].std()), steps[k - 1][1], rel_tol=0.02)


def a1111_restart(model: Any, x: torch.Tensor, sigmas: torch.Tensor, noise: Any) -> torch.Tensor:
    """A1111's ``modules/sd_samplers_extra.restart_sampler`` restated (s_noise 1, its automatic restart list),
    on k-diffusion's own ``get_sigmas_karras`` and ``to_d``; ``noise()`` stands for ``randn_like``."""
    ks, _ = load()
    s_in = x.new_ones([x.shape[0]])
    steps = len(sigmas) - 1
    restart_list: dict[float, list[int]] = {}
    if steps >= 20:
        k, times = (9, 1) if steps < 36 else (steps // 4, 2)
        sigmas = ks.get_sigmas_karras(steps - k * times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [k + 1, times, 2]}
    by_index = {int(torch.argmin(abs(sigmas - key))): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            points, times, s_max = by_index[i + 1]
            lo, hi = i + 1, int(torch.argmin(abs(sigmas - s_max)))
            if hi < lo:
                sub = ks.get_sigmas_karras(points, sigmas[lo].item(), sigmas[hi].item())[:-1]
                step_list.extend(list(zip(sub[:-1], sub[1:])) * times)
    last = None
    for old, new in step_list:
        if last is None:
            last = old
        elif last < old:
            x = x + noise() * (old**2 - last**2) ** 0.5
        d = ks.to_d(x, old, model(x, old * s_in))
        if new == 0:
            x = x + d * (new - old)
        else:
            x_2 = x + d * (new - old)
            d_2 = ks.to_d(x_2, new, model(x_2, new * s_in))
            x = x + (d + d_2) / 2 * (new - old)
        last = new
    return x


@pytest.mark.parametrize("steps", [12, 25, 40])  # no restart, K = 1 of 9 steps, K = 2 of 10 steps
def test_restart_equals_a1111_restart_sampler(schedule: DiscreteSchedule, steps: int) -> None:
    # one noise tensor for every restart: A1111 may also add ~1e-5 sigma of noise where a restart segment ends
    # (float32 Karras end points), which then changes nothing that matters here
    bump = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    sigmas = karras(steps, schedule)
    x = start_noise() * float(sigmas[0])
    rec = Recorder()
    ours = es.sample_restart(rec, x, sigmas, noise_sampler=lambda a, b: bump, callback=rec.callback)
    theirs = a1111_restart(gaussian_denoiser, x, sigmas, lambda: bump)
    assert float((ours - theirs).abs().max()) < 1e-4
    assert len(rec.model_sigmas) == 2 * steps - 1  # Heun steps, Euler to 0
    # and the model is not a near-identity here: without the restart noise the answer is different
    if steps >= 20:
        plain = a1111_restart(gaussian_denoiser, x, sigmas, lambda: torch.zeros(SHAPE))
        assert float((ours - plain).abs().max()) > 1e-2


# --------------------------------------------------------------------------------------------------
# LCM
# --------------------------------------------------------------------------------------------------


def test_lcm_one_step_is_the_model_output(schedule: DiscreteSchedule) -> None:
    sigmas = es.lcm_sigmas(1, schedule)
    x = start_noise() * float(sigmas[0])
    out, rec = run(es.sample_lcm, sigmas, vp_init=False, x=x)
    assert torch.allclose(out, gaussian_denoiser(x, torch.full((SHAPE[0],), float(sigmas[0]))))
    assert not rec.noise_calls


def kdiffusion_lcm(model: Any, x: torch.Tensor, sigmas: torch.Tensor, noise_sampler: Any) -> torch.Tensor:
    """k-diffusion's ``sample_lcm`` (A1111 1.10 ships the same in ``modules/sd_samplers_lcm.py``) restated: the
    installed k-diffusion 0.1.1 predates it."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_lcm_equals_kdiffusion_sample_lcm(schedule: DiscreteSchedule, steps: int) -> None:
    sigmas = es.lcm_sigmas(steps, schedule)
    x = start_noise() * float(sigmas[0])
    ours, rec = run(es.sample_lcm, sigmas, vp_init=False, x=x)
    draws = Recorder()  # the same seeded noise, drawn in the same order
    theirs = kdiffusion_lcm(gaussian_denoiser, x, sigmas, draws.noise_sampler)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert rec.noise_calls == draws.noise_calls and len(rec.noise_calls) == steps - 1


# --------------------------------------------------------------------------------------------------
# contract
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "plms", "unipc", "restart", "lcm"])
def test_callback_edits_of_x_reach_the_result(schedule: DiscreteSchedule, name: str) -> None:
    sampler = {d.aliases[-1] if d.name == "LCM" else d.aliases[0]: d for d in es.extra_sampler_defs()}[name]
    sigmas = sampler.sigmas_fn(8, schedule) if sampler.sigmas_fn else karras(8, schedule)
    s0 = float(sigmas[0])
    x = start_noise() * (math.sqrt(1 + s0**2) if sampler.vp_init else s0)
    last = {"i": -1}

    def callback(i: int, x_: torch.Tensor, denoised: torch.Tensor, sigma: Any) -> None:
        last["i"] = i
        if i == len(sigmas) - 2:
            x_.fill_(7.0)

    gen = torch.Generator().manual_seed(0)
    out = sampler.fn(gaussian_denoiser, x, sigmas, noise_sampler=lambda a, b: torch.randn(SHAPE, generator=gen),
                     callback=callback, schedule=schedule, eta=0.0, s_noise=1.0, s_churn=0.0, s_tmin=0.0,
                     s_tmax=float("inf"), unknown_option=1)
    assert last["i"] == len(sigmas) - 2
    assert torch.all(out == 7.0)


@pytest.mark.parametrize("name", ["ddim", "plms", "unipc"])
@pytest.mark.parametrize("steps", [20, 1])
def test_timestep_samplers_report_step_i_at_sigma_i(schedule: DiscreteSchedule, name: str, steps: int) -> None:
    """The callback's sigma is the grid's sigma of that step, as every k-diffusion sampler reports it
    (``{"i": i, "sigma": sigmas[i], ...}``); previews and plugins' on_step_end read it."""
    fn = getattr(es, f"sample_{name}")
    sigmas = (es.unipc_sigmas if name == "unipc" else es.ddim_sigmas)(steps, schedule)
    _, rec = run(fn, sigmas, vp_init=True)
    assert rec.callback_sigmas == pytest.approx([float(sigmas[i]) for i in rec.callback_steps])
    if steps == 1 and name != "unipc":  # one positive sigma: one evaluation, at that sigma
        assert rec.model_sigmas == pytest.approx([float(sigmas[0])])


def test_timestep_sampler_defaults_equal_a1111() -> None:
    # A1111 1.10 sd_samplers_timesteps_impl.ddim(..., eta=0.0); UniPC from shared_options: uni_pc_order 3,
    # uni_pc_variant "bh1", uni_pc_lower_order_final True
    def default(fn: Any, name: str) -> Any:
        return inspect.signature(fn).parameters[name].default

    assert default(es.sample_ddim, "eta") == 0.0
    assert (default(es.sample_unipc, "order"), default(es.sample_unipc, "variant"),
            default(es.sample_unipc, "lower_order_final")) == (3, "bh1", True)


def test_extra_sampler_defs_match_a1111() -> None:
    defs = {d.name: d for d in es.extra_sampler_defs()}
    assert list(defs) == ["DDIM", "PLMS", "UniPC", "Restart", "LCM"]
    assert defs["DDIM"].aliases == ("ddim",) and defs["DDIM"].eta_option == "eta_ddim"
    assert defs["DDIM"].sigmas_fn is es.ddim_sigmas and defs["DDIM"].vp_init
    assert defs["PLMS"].aliases == ("plms",) and defs["PLMS"].sigmas_fn is es.ddim_sigmas and defs["PLMS"].vp_init
    assert defs["UniPC"].aliases == ("unipc",) and defs["UniPC"].vp_init
    assert defs["Restart"].aliases == ("restart",) and defs["Restart"].second_order
    assert defs["Restart"].public_options() == {"scheduler": "karras", "second_order": "True"}
    assert defs["LCM"].aliases == ("k_lcm", "lcm") and not defs["LCM"].vp_init
    for d in defs.values():
        assert d.options == {}

    reg = SamplerRegistry(defs.values(), builtin_schedules())
    assert reg.sampler("ddim").name == "DDIM"
    assert reg.sampler("k_lcm").name == "LCM"
    sampler, sched = reg.resolve("Restart", None)
    assert sampler.name == "Restart" and sched is not None and sched.name == "karras"


def test_dpm_adaptive_pid_controller_with_p_and_d_terms_matches_k_diffusion() -> None:
    """A1111 runs DPM adaptive with k-diffusion's default PID coefficients (an I-controller: the P and D exponents
    are 0); the P and D terms are checked here by calling both samplers directly with them set."""
    from webui.sampling.samplers import sample_dpm_adaptive

    ks, _ = load()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) * 14.6
    kw = dict(order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.3, icoeff=1.0, dcoeff=0.2, eta=0.0)
    theirs = ks.sample_dpm_adaptive(gaussian_denoiser, x.clone(), 0.03, 14.6, disable=True, **kw)
    steps: list[int] = []
    ours = sample_dpm_adaptive(gaussian_denoiser, x.clone(), None, noise_sampler=lambda a, b: torch.zeros_like(x),
                               callback=lambda i, *a: steps.append(i), sigma_min=0.03, sigma_max=14.6, **kw)
    assert (ours - theirs).abs().max() < 1e-4
    plain = sample_dpm_adaptive(gaussian_denoiser, x.clone(), None, noise_sampler=lambda a, b: torch.zeros_like(x),
                                callback=lambda *a: None, sigma_min=0.03, sigma_max=14.6,
                                **{**kw, "pcoeff": 0.0, "dcoeff": 0.0})
    assert (plain - ours).abs().max() > 1e-3  # the P and D terms change the path


@pytest.mark.parametrize("j", [1, 2, 3, 4])
@pytest.mark.parametrize("z", [-2.3, -0.7, -0.3, 0.05, 0.4, 0.9])
def test_unipc_phi_functions_equal_their_definition(j: int, z: float) -> None:
    """UniPC's phi_j(z) = (e^z - sum_{m<j} z^m / m!) / z^j, checked in 50-digit arithmetic on both of our branches
    (the series below |z| = 0.5, the recurrence above)."""
    import mpmath

    with mpmath.workdps(50):
        zz = mpmath.mpf(z)
        expected = (mpmath.exp(zz) - sum(zz**m / mpmath.factorial(m) for m in range(j))) / zz**j
    assert es._phi(j, z) == pytest.approx(float(expected), rel=1e-9)
