"""Samplers with k-diffusion's update rules (the ones A1111 runs), written for this project.

Every sampler follows the contract in :mod:`webui.sampling.registry`::

    fn(model, x, sigmas, *, noise_sampler, callback, eta, s_noise, s_churn, s_tmin, s_tmax, **options)

``sigmas`` are CPU tensors, so comparisons such as ``sigmas[i + 1] == 0`` never synchronise a
GPU; only the latents live on the device. ``tests/test_sampler_parity.py`` checks every
function against the ``k-diffusion`` package (A1111's engine) to 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


# --- helpers ----------------------------------------------------------------------------


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """Split a step into a deterministic part down to ``sigma_down`` and fresh noise ``sigma_up``."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _batch(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A per-image sigma vector, kept on the CPU (the denoiser turns it into kernel arguments)."""
    return sigma.reshape(()).expand(x.shape[0])


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma.log()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return (-t).exp()


def _churn(x, sigma, n, noise_sampler, sigma_next, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s stochastic churn: raise sigma to sigma_hat and add matching noise.

    Noise is drawn on every step when churn is enabled (as k-diffusion does), so the
    per-image generators advance exactly as in A1111.
    """
    if s_churn <= 0:
        return x, sigma
    gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= float(sigma) <= s_tmax else 0.0
    eps = noise_sampler(sigma, sigma_next) * s_noise
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


# --- first-order and Heun family ---------------------------------------------------------


@torch.no_grad()
def sample_euler(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, **_):
    """Euler (Karras et al. 2022, Algorithm 2 with optional churn)."""
    n = len(sigmas) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, sigmas[i], n, noise_sampler, sigmas[i + 1], s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        x = x + _to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                           eta=1.0, s_noise=1.0, **_):
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise up to sigma_next."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, **_):
    """Heun's second-order method (trapezoid correction; Euler on the last step)."""
    n = len(sigmas) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, sigmas[i], n, noise_sampler, sigmas[i + 1], s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        d = _to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], model(x_2, _batch(x, sigmas[i + 1])))
            x = x + (d + d_2) / 2 * dt
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_dpm_2(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, **_):
    """DPM-Solver-2 in sigma space: a midpoint (in log sigma) second-order step."""
    n = len(sigmas) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, sigmas[i], n, noise_sampler, sigmas[i + 1], s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, _batch(x, sigma_hat))
        d = _to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = _to_d(x_2, sigma_mid, model(x_2, _batch(x, sigma_mid)))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                           eta=1.0, s_noise=1.0, **_):
    """DPM-Solver-2 with ancestral noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = _to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = _to_d(x_2, sigma_mid, model(x_2, _batch(x, sigma_mid)))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        callback(i, x, denoised, sigmas[i])
    return x


# --- linear multistep -----------------------------------------------------------------------


def lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j}
    (nodes t_i, ..., t_{i-order+1}), computed exactly in float64."""
    nodes = [t[i - k] for k in range(order)]
    poly, denom = [1.0], 1.0  # coefficients, lowest degree first
    for k, node in enumerate(nodes):
        if k == j:
            continue
        grown = [0.0] * (len(poly) + 1)
        for d, c in enumerate(poly):
            grown[d + 1] += c
            grown[d] -= c * node
        poly, denom = grown, denom * (nodes[j] - node)
    a, b = t[i], t[i + 1]
    return sum(c * (b ** (d + 1) - a ** (d + 1)) / (d + 1) for d, c in enumerate(poly)) / denom


@torch.no_grad()
def sample_lms(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback, order: int = 4,
               **_):
    """Linear multistep (order 4) on the derivatives in sigma."""
    t = sigmas.double().tolist()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        ds.append(_to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur = min(i + 1, order)
        coeffs = [lms_coefficient(cur, t, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
        callback(i, x, denoised, sigmas[i])
    return x


# --- DPM-Solver++ family --------------------------------------------------------------------


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                              eta=1.0, s_noise=1.0, **_):
    """DPM-Solver++(2S) single-step, with ancestral noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _batch(x, _sigma(s)))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                     eta=1.0, s_noise=1.0, r: float = 0.5, **_):
    """DPM-Solver++ (stochastic), two evaluations per step with noise at the midpoint and the end."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        if sigmas[i + 1] == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = ancestral_step(_sigma(t), _sigma(s), eta)
            s_ = _t(sd)
            x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + noise_sampler(_sigma(t), _sigma(s)) * s_noise * su
            denoised_2 = model(x_2, _batch(x, _sigma(s)))
            sd, su = ancestral_step(_sigma(t), _sigma(t_next), eta)
            t_next_ = _t(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + noise_sampler(_sigma(t), _sigma(t_next)) * s_noise * su
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback, **_):
    """DPM-Solver++(2M) multistep."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                        eta=1.0, s_noise=1.0, solver_type: str = "midpoint", **_):
    """DPM-Solver++(2M) SDE; ``solver_type`` "midpoint" or "heun" for the second-order correction."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    coef = (-h - eta_h).expm1().neg() / (-h - eta_h) + 1
                else:
                    coef = 0.5 * (-h - eta_h).expm1().neg()
                x = x + coef * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                    (-2 * eta_h).expm1().neg().sqrt()) * s_noise
        old_denoised = denoised
        h_last = h
        callback(i, x, denoised, sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                        eta=1.0, s_noise=1.0, **_):
    """DPM-Solver++(3M) SDE."""
    d_1 = d_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch(x, sigmas[i]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                    (-2 * h * eta).expm1().neg().sqrt()) * s_noise
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
        callback(i, x, denoised, sigmas[i])
    return x


# --- DPM-Solver (fast, adaptive) --------------------------------------------------------------


class _DPMSolver:
    """DPM-Solver (Lu et al. 2022) of orders 1-3 in t = -log(sigma), eps-parameterised."""

    def __init__(self, model: Model, x: torch.Tensor):
        self.model = model
        self.ref = x

    def eps(self, cache: dict, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = _sigma(t)
            cache[key] = (x - self.model(x, _batch(x, sigma))) / sigma
        return cache[key]

    def step1(self, x, t, t_next, cache):
        h = t_next - t
        return x - _sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step2(self, x, t, t_next, cache, r1=0.5):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
              - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _noise_step(t, t_next, t_end, eta):
    """Ancestral variant of a DPM-Solver step: where the deterministic part ends, and the noise to add."""
    if not eta:
        return t_next, 0.0
    sd, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_next_ = torch.minimum(t_end, _t(sd))
    return t_next_, (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5


@torch.no_grad()
def sample_dpm_fast(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                    sigma_min: float, sigma_max: float, n: int, eta=0.0, s_noise=1.0, **_):
    """DPM-Solver-fast: ``n`` evaluations split into orders 3,3,...,(2,1 | n % 3), uniform in t.

    It integrates from ``sigma_max`` to ``sigma_min`` (not to 0), as k-diffusion does.
    """
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    solver = _DPMSolver(model, x)
    t_start, t_end = _t(torch.tensor(float(sigma_max))), _t(torch.tensor(float(sigma_min)))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = _noise_step(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        denoised = x - _sigma(t) * eps
        step = {1: solver.step1, 2: solver.step2, 3: solver.step3}[order]
        x = step(x, t, t_next_, cache)
        x = x + su * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
        callback(i, x, denoised, _sigma(t))
    return x


class _PIDStepSize:
    """PID controller for the adaptive step size (Söderlind 2003 style), with an arctan limiter."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(model: Model, x, sigmas, *, noise_sampler: NoiseSampler, callback: StepCallback,
                        sigma_min: float, sigma_max: float, order: int = 3, rtol: float = 0.05,
                        atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0,
                        dcoeff: float = 0.0, accept_safety: float = 0.81, eta=0.0, s_noise=1.0, **_):
    """DPM-Solver-adaptive: embedded order 2/3 pairs with error control (needs one host sync per step)."""
    if order not in (2, 3):
        raise ValueError("order must be 2 or 3")
    solver = _DPMSolver(model, x)
    t_start, t_end = _t(torch.tensor(float(sigma_max))), _t(torch.tensor(float(sigma_min)))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s = t_start
    x_prev = x
    pid = _PIDStepSize(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    step_no = 0
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h)
        t_, su = _noise_step(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low = solver.step1(x, s, t_, cache)
            x_high = solver.step2(x, s, t_, cache)
        else:
            x_low = solver.step2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step3(x, s, t_, cache)
        delta = torch.maximum(atol_t.to(x.device), rtol_t.to(x.device) * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose(float(error)):
            x_prev = x_low
            x = x_high + su * s_noise * noise_sampler(_sigma(s), _sigma(t))
            s = t
        callback(step_no, x, denoised, _sigma(s))
        step_no += 1
    return x
