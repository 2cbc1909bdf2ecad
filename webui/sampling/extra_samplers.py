"""A1111's samplers that are not plain k-diffusion ones: DDIM, PLMS, UniPC, Restart and LCM.

Written from the papers / the update equations; they follow the sampler contract of
:mod:`webui.sampling.registry`::

    fn(model, x, sigmas, *, noise_sampler, callback, schedule, eta, s_noise, s_churn, s_tmin, s_tmax,
       **options) -> latents

Everything is done in k-diffusion's space (``x = x0 + sigma * eps``, ``model(x, sigma) -> x0``).
The timestep samplers of A1111 (DDIM, PLMS, UniPC) work in the VP space
``x_vp = x / sqrt(1 + sigma**2)`` (``alphas_cumprod = 1 / (1 + sigma**2)``); their VP update rules
are rewritten here in k-space, which is the same arithmetic divided by ``sqrt(alpha)``.

Conventions shared by all functions in this module:

* ``callback(i, x, denoised, sigma)`` is called exactly ``len(sigmas) - 1`` times, once per interval
  of ``sigmas`` (``i = 0 .. len(sigmas) - 2``, ``sigma = sigmas[i]``), except Restart which calls it
  once per Heun step of its own step list (also ``len(sigmas) - 1`` of them, see
  :func:`sample_restart`).  The ``x`` given to the callback is the tensor the loop continues with
  (or returns), so in-place edits by the callback take effect.
* ``sigmas`` is a CPU tensor; all step coefficients are Python floats computed from it, so nothing
  in the loops syncs a GPU.
* DDIM, PLMS and UniPC reproduce A1111 down to where they stop: A1111 never integrates the last
  interval (smallest positive sigma -> 0).  It returns the VP latent at the smallest timestep of its
  grid, and that is what the web UI decodes.  These functions do the same: the trailing ``0`` of
  ``sigmas`` is bookkeeping, the last interval costs no model evaluation, and the returned tensor is
  ``x / sqrt(1 + sigma_last**2)`` -- exactly A1111's returned latent (its residual noise is
  ``sigma_last`` = 0.041 for DDIM/PLMS, 0.029 for UniPC on SD's schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from webui.sampling.registry import SamplerDef

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[Any, Any], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def _noop_callback(i: int, x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> None:
    return None


def _floats(sigmas: torch.Tensor) -> list[float]:
    return [float(s) for s in sigmas.detach().cpu().reshape(-1)]


def _sigma_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x.new_full((x.shape[0],), sigma)


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros([1])])


def _training_sigmas(schedule: Any) -> torch.Tensor:
    return schedule.sigmas.detach().to("cpu", torch.float64)


def _positive_count(sig: Sequence[float]) -> int:
    """Number of leading sigmas the timestep samplers walk (all but a trailing 0)."""
    return len(sig) - 1 if sig and sig[-1] == 0.0 else len(sig)

def _zero_or_one_step(model, x, sigmas, sig, n_pos: int, callback):
    """Grids with no or one positive sigma: return ``x`` or a single x0 prediction."""
    if n_pos == 0:
        return x
    denoised = model(x, _sigma_batch(x, sig[0]))
    callback(0, denoised, denoised, sigmas[0])
    return denoised



# ---------------------------------------------------------------------------------------------------
# sigma grids (SamplerDef.sigmas_fn)
# ---------------------------------------------------------------------------------------------------


def ddim_timesteps(steps: int, n_train: int = 1000) -> list[int]:
    """A1111's timestep grid for DDIM/PLMS: ``clip(range(0, N, N // steps) + 1, 0, N - 1)``, ascending.

    Note ``N // steps`` does not divide N evenly for most step counts, so the grid can hold one
    timestep more than ``steps`` (30 steps -> 31 timesteps, as in A1111).  For ``steps > N // 2`` the
    stride is 1 and the last two timesteps are both ``N - 1`` (A1111 does the same); ``steps > N``
    would make A1111 fail -- here the stride is clamped to 1.
    """
    stride = max(1, n_train // max(1, int(steps)))
    return [min(max(t + 1, 0), n_train - 1) for t in range(0, n_train, stride)]


def ddim_sigmas(steps: int, schedule: Any) -> torch.Tensor:
    """k-space sigmas of the DDIM/PLMS grid, descending, plus a final 0 (float32, CPU).

    ``ddim_sigmas(20, schedule)`` is the training sigmas at timesteps 951, 901, ..., 51, 1, then 0.
    """
    train = _training_sigmas(schedule)
    ts = ddim_timesteps(steps, len(train))
    sig = train[torch.tensor(ts[::-1], dtype=torch.long)]
    return _append_zero(sig).float()


def _log_alpha_at(schedule: Any, tau: torch.Tensor) -> torch.Tensor:
    """UniPC's ``NoiseScheduleVP('discrete')``: ``log(sqrt(alphas_cumprod))`` linearly interpolated in
    the (fractional) training timestep ``tau``; outside [0, N-1] the end segments are extended."""
    train = _training_sigmas(schedule)
    log_alpha = -0.5 * torch.log1p(train**2)  # 0.5 * log(alphas_cumprod)
    n = len(train)
    tau = tau.to(torch.float64)
    lo = tau.floor().clamp(0, n - 2).long()
    w = tau - lo
    return log_alpha[lo] + w * (log_alpha[lo + 1] - log_alpha[lo])


def unipc_sigmas(steps: int, schedule: Any, skip_type: str = "time_uniform") -> torch.Tensor:
    """The time points A1111's UniPC visits, as k-space sigmas, plus a final 0.

    UniPC works on continuous time ``t`` in ``[1/N, 1]`` (``N`` = 1000 training steps); the model is
    called at the fractional timestep ``tau = 1000 * t - 1``, i.e. from 999 down to 0.  It takes
    ``steps + 1`` points (``steps`` updates) spaced by ``skip_type``:

    * ``"time_uniform"`` (A1111's default): ``t = linspace(1, 1/N, steps + 1)``;
    * ``"time_quadratic"``: uniform in ``sqrt(t)``;
    * ``"logSNR"``: uniform in ``lambda = -log(sigma)`` between the end points.

    ``sigma(tau)`` interpolates ``log(alpha)`` linearly in ``tau`` as UniPC's discrete schedule does.
    The result has ``steps + 2`` entries (``steps + 1`` positive, then 0).
    """
    n = len(schedule.sigmas)
    t_T, t_0 = 1.0, 1.0 / n
    if skip_type == "time_uniform":
        t = torch.linspace(t_T, t_0, steps + 1, dtype=torch.float64)
    elif skip_type == "time_quadratic":
        t = torch.linspace(t_T**0.5, t_0**0.5, steps + 1, dtype=torch.float64) ** 2
    elif skip_type == "logSNR":
        ends = _log_alpha_at(schedule, torch.tensor([n * t_T - 1.0, n * t_0 - 1.0], dtype=torch.float64))
        lam_T, lam_0 = (float(-0.5 * torch.log(torch.expm1(-2.0 * la))) for la in ends)
        lam = torch.linspace(lam_T, lam_0, steps + 1, dtype=torch.float64)
        return _append_zero(torch.exp(-lam)).float()
    else:
        raise ValueError(f"unknown UniPC skip type {skip_type!r}")
    log_alpha = _log_alpha_at(schedule, n * t - 1.0)
    sig = torch.sqrt(torch.expm1(-2.0 * log_alpha))  # sqrt(1/alpha^2 - 1)
    return _append_zero(sig).float()


def lcm_sigmas(steps: int, schedule: Any, original_steps: int = 50) -> torch.Tensor:
    """A1111's "Automatic" LCM schedule (its LCM denoiser's ``get_sigmas``), plus a final 0.

    LCM models are distilled on ``original_steps`` = 50 timesteps ``skip * j + skip - 1``
    (``skip = 1000 // 50 = 20``: 19, 39, ..., 999).  The schedule takes ``steps`` timesteps evenly
    spaced from 999 to 19 and interpolates log-sigma over that 50-point grid (so e.g. 4 steps give
    the sigmas of grid indices 49, 32.67, 16.33, 0).
    """
    train = _training_sigmas(schedule)
    n = len(train)
    skip = max(1, n // original_steps)
    grid_t = torch.arange(original_steps, dtype=torch.long) * skip + (skip - 1)
    grid_log = train[grid_t].log()
    t_hi, t_lo = float(grid_t[-1]), float(grid_t[0])
    t = torch.linspace(t_hi, t_lo, steps, dtype=torch.float64)
    idx = ((t - (skip - 1)) / skip).clamp(0, original_steps - 1)
    lo = idx.floor().long()
    hi = idx.ceil().long()
    w = idx - lo
    log_sig = (1 - w) * grid_log[lo] + w * grid_log[hi]
    return _append_zero(log_sig.exp()).float()


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """``n`` sigmas evenly spaced in ``sigma ** (1/rho)`` from sigma_max to sigma_min (no final 0)."""
    if n == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return [(hi + (k / (n - 1)) * (lo - hi)) ** rho for k in range(n)]


# ---------------------------------------------------------------------------------------------------
# DDIM
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_ddim(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, noise_sampler: NoiseSampler | None = None,
                callback: StepCallback | None = None, eta: float = 0.0, **_: Any) -> torch.Tensor:
    """DDIM (Song et al. 2021) as A1111's ``sd_samplers_timesteps_impl.ddim``.

    ``sigmas`` are the training sigmas of the grid timesteps (:func:`ddim_sigmas`), descending, then
    0; with ``vp_init`` the input is ``noise * sqrt(1 + sigmas[0]**2)`` (unit noise in VP space).
    With ``a = 1 / (1 + sigma**2)`` (``alphas_cumprod`` of the timestep), one step from ``t`` to the
    previous grid timestep ``p`` is::

        e      = (x - D) / sigma_t                    # the model's eps; D = model(x, sigma_t)
        s      = eta * sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        x_vp_p = sqrt(a_p) * D + sqrt(1 - a_p - s**2) * e + s * noise

    done in k-space (divided by ``sqrt(a_p)``); with ``eta = 0`` it is an Euler step in sigma.

    Evaluations: for ``T`` positive sigmas (``T = len(sigmas) - 1``; ``T == steps`` when
    ``1000 % steps`` leaves no extra grid point, e.g. 20 -> 20, but 30 -> 31), A1111 walks the grid
    from the last timestep to the second (index ``T-1`` .. 1), i.e. **T - 1 model evaluations**
    (19 for 20 steps), and stops at the first grid timestep (``t = 1``, sigma 0.041): the step with
    ``alphas_prev = alphas_cumprod[0]`` is never taken and x0 is never formed explicitly.  Here the
    final interval ``sigmas[T-1] -> 0`` likewise costs no evaluation: it returns A1111's latent,
    ``x_vp = x / sqrt(1 + sigmas[T-1]**2) = sqrt(a_1) * D + sqrt(1 - a_1) * e`` (+ noise if eta),
    with the last ``pred_x0`` as ``denoised`` for the callback.  ``callback`` runs ``T`` times.

    Differences from A1111: noise is only drawn when ``eta > 0`` (A1111 draws ``randn_like`` every
    step and multiplies it by 0); with a single grid timestep (``steps=1``) A1111 runs no step and
    returns the input noise, whereas this makes one evaluation and returns the prediction of x0.
    """
    callback = callback or _noop_callback
    sig = _floats(sigmas)
    n_pos = _positive_count(sig)
    if n_pos <= 1:
        return _zero_or_one_step(model, x, sigmas, sig, n_pos, callback)
    denoised = x
    for i in range(n_pos - 1):
        s_t, s_p = sig[i], sig[i + 1]
        denoised = model(x, _sigma_batch(x, s_t))
        e_t = (x - denoised) / s_t
        a_t, a_p = 1.0 / (1.0 + s_t * s_t), 1.0 / (1.0 + s_p * s_p)
        s_eta = 0.0
        if eta and a_p > a_t:
            s_eta = eta * math.sqrt((1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p))
        dir_coef = math.sqrt(max(1.0 - a_p - s_eta * s_eta, 0.0) / a_p)
        x = denoised + dir_coef * e_t
        if s_eta > 0.0:
            if noise_sampler is None:
                raise ValueError("DDIM with eta > 0 needs a noise_sampler")
            x = x + (s_eta / math.sqrt(a_p)) * noise_sampler(sigmas[i], sigmas[i + 1])
        callback(i, x, denoised, sigmas[i])
    x = x / math.sqrt(1.0 + sig[n_pos - 1] ** 2)
    callback(n_pos - 1, x, denoised, sigmas[n_pos - 1])
    return x


# ---------------------------------------------------------------------------------------------------
# PLMS
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_plms(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                **_: Any) -> torch.Tensor:
    """PLMS, pseudo linear multistep (Liu et al. 2022), as A1111's ``sd_samplers_timesteps_impl.plms``.

    Same grid, direction and end point as :func:`sample_ddim` (eta 0).  Each step replaces the eps of
    the DDIM update by ``e'``, a linear-multistep combination of the current eps ``e`` and up to three
    earlier ones ``e1, e2, e3`` (most recent first)::

        no history : e' = (e + e_next) / 2        # Heun-like start: e_next from a DDIM step to t_prev
        1 earlier  : e' = (3 e - e1) / 2
        2 earlier  : e' = (23 e - 16 e1 + 5 e2) / 12
        3 earlier  : e' = (55 e - 59 e1 + 37 e2 - 9 e3) / 24

    then ``pred_x0 = x - sigma_t * e'`` and ``x_prev = pred_x0 + sigma_p * e'`` (k-space form of
    ``sqrt(a_p) * pred_x0 + sqrt(1 - a_p) * e'``).  The history stores the raw ``e`` of each step.

    Evaluations: ``T - 1`` steps plus one extra for the start, i.e. **T evaluations** for ``T``
    positive sigmas (20 for 20 steps).  The final interval ``sigmas[T-1] -> 0`` costs nothing and
    returns A1111's latent ``x / sqrt(1 + sigmas[T-1]**2)``.  ``callback`` runs ``T`` times with
    ``denoised = pred_x0``.  Difference from A1111: ``steps=1`` makes one evaluation and returns x0
    (A1111 returns the input noise).
    """
    callback = callback or _noop_callback
    sig = _floats(sigmas)
    n_pos = _positive_count(sig)
    if n_pos <= 1:
        return _zero_or_one_step(model, x, sigmas, sig, n_pos, callback)
    history: list[torch.Tensor] = []
    pred_x0 = x
    for i in range(n_pos - 1):
        s_t, s_p = sig[i], sig[i + 1]
        e_t = (x - model(x, _sigma_batch(x, s_t))) / s_t
        if not history:
            x_next = x + (s_p - s_t) * e_t
            e_next = (x_next - model(x_next, _sigma_batch(x, s_p))) / s_p
            e_prime = (e_t + e_next) / 2
        elif len(history) == 1:
            e_prime = (3 * e_t - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e_t - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        pred_x0 = x - s_t * e_prime
        x = pred_x0 + s_p * e_prime
        history.append(e_t)
        if len(history) > 3:
            history.pop(0)
        callback(i, x, pred_x0, sigmas[i])
    x = x / math.sqrt(1.0 + sig[n_pos - 1] ** 2)
    callback(n_pos - 1, x, pred_x0, sigmas[n_pos - 1])
    return x


# ---------------------------------------------------------------------------------------------------
# UniPC
# ---------------------------------------------------------------------------------------------------


def _phi(j: int, z: float) -> float:
    """``phi_j(z) = sum_{m>=0} z**m / (m + j)!`` (``phi_0 = exp``), stable for small |z|."""
    if abs(z) < 0.5:
        term, total, m = 1.0 / math.factorial(j), 0.0, 0
        while True:
            total += term
            m += 1
            term *= z / (m + j)
            if abs(term) < 1e-18 * max(abs(total), 1e-300) or m > 60:
                return total
    # closed form (exp(z) - sum_{m<j} z^m/m!) / z^j, by the recurrence phi_{k+1} = (phi_k - 1/k!) / z
    value = math.exp(z)
    for k in range(j):
        value = (value - 1.0 / math.factorial(k)) / z
    return value


def _unipc_coefficients(h: float, rks: list[float], order: int, variant: str,
                        need_predictor: bool, need_corrector: bool) -> tuple[float, float, list[float], list[float]]:
    """Coefficients of one UniPC update in data-prediction form.

    With ``z = -h`` (``h = lambda_t - lambda_s``, ``lambda = -log sigma``):

    * ``hphi1 = exp(z) - 1``;
    * ``B(h) = z`` ("bh1") or ``exp(z) - 1`` ("bh2");
    * ``b_k = k! * z * phi_{k+1}(z) / B(h)``  for ``k = 1..order``;
    * ``R[k][i] = rks[i] ** k`` with ``rks = [r_1, ..., r_{order-1}, 1]``.

    Predictor weights solve ``R[:-1, :-1] rho_p = b[:-1]`` (fixed ``[0.5]`` at order 2); corrector
    weights solve ``R rho_c = b`` (fixed ``[0.5]`` at order 1), as in the UniPC paper / reference code.
    """
    z = -h
    hphi1 = math.expm1(z)
    if variant == "bh1":
        big_b = z
    elif variant == "bh2":
        big_b = math.expm1(z)
    else:
        raise ValueError(f"unknown UniPC variant {variant!r} (supported: 'bh1', 'bh2')")
    b = [math.factorial(k) * z * _phi(k + 1, z) / big_b for k in range(1, order + 1)]
    rho_p: list[float] = []
    if need_predictor and order >= 2:
        if order == 2:
            rho_p = [0.5]
        else:
            r = np.array([[rk**k for rk in rks[:-1]] for k in range(order - 1)], dtype=np.float64)
            rho_p = [float(v) for v in np.linalg.solve(r, np.array(b[:-1], dtype=np.float64))]
    rho_c: list[float] = []
    if need_corrector:
        if order == 1:
            rho_c = [0.5]
        else:
            r = np.array([[rk**k for rk in rks] for k in range(order)], dtype=np.float64)
            rho_c = [float(v) for v in np.linalg.solve(r, np.array(b, dtype=np.float64))]
    return hphi1, big_b, rho_p, rho_c


@torch.no_grad()
def sample_unipc(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                 order: int = 3, variant: str = "bh1", lower_order_final: bool = True, **_: Any) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), multistep, data-prediction (x0) form, as A1111 runs it.

    A1111's defaults are used: ``order=3``, ``variant="bh1"`` (A1111's "UniPC variant" setting
    defaults to bh1; "bh2" is the other choice, "vary_coeff" is not implemented),
    ``lower_order_final=True``, skip type "time_uniform" (that one lives in :func:`unipc_sigmas`,
    the SamplerDef's ``sigmas_fn``), no thresholding, ``denoise_to_zero=False``.

    With ``T`` positive sigmas ``s_0 > ... > s_N`` (``N = T - 1`` updates, ``lambda = -log s``) and
    the k-space data-prediction update from ``s`` to ``t`` (``h = lambda_t - lambda_s``)::

        x_t' = (s_t / s_s) * x - (exp(-h) - 1) * m_0                       # first-order part
        predictor: x_t = x_t' - B(h) * sum_i rho_p[i] * D_i                # UniP-p
        corrector: m_t = model(x_t, s_t)                                   # reused by the next step
                   x_t = x_t' - B(h) * (sum_i rho_c[i] * D_i + rho_c[-1] * (m_t - m_0))   # UniC
        D_i = (m_i - m_0) / r_i,  r_i = (lambda_i - lambda_s) / h           # earlier data predictions

    (the VP-space formulas of the paper divided by ``alpha_t``).  Step ``k`` (1-based) uses order
    ``k`` while warming up (``k < order``), then ``min(order, N + 1 - k)`` with ``lower_order_final``
    (so the last step is first order); the last step skips the corrector.  ``order`` is clamped to
    ``N`` (A1111 asserts ``steps >= order`` instead).

    Evaluations: one at ``s_0`` plus one corrector evaluation per step except the last, i.e.
    **N evaluations** (= ``steps`` with :func:`unipc_sigmas`).  A1111 stops at ``t_0`` (timestep 0,
    sigma 0.029) and returns that VP latent; so does this: the trailing interval ``s_N -> 0`` costs no
    evaluation and returns ``x / sqrt(1 + s_N**2)``.  ``callback`` runs ``N + 1`` times
    (``len(sigmas) - 1``): after each update with the newest model output as ``denoised`` (the last
    update, which evaluates nothing, passes its own result), then once for the trailing interval.
    Differences from A1111: the model is evaluated at the sigmas of UniPC's time points, and the
    web UI's denoiser turns a sigma into a timestep by log-sigma interpolation where UniPC would pass
    the fractional timestep directly (the two differ by < 0.01 timestep); with a single positive sigma
    one evaluation is made and x0 returned.
    """
    callback = callback or _noop_callback
    sig = _floats(sigmas)
    n_pos = _positive_count(sig)
    if n_pos == 0:
        return x
    m0 = model(x, _sigma_batch(x, sig[0]))
    if n_pos == 1:
        x = m0
        callback(0, x, m0, sigmas[0])
        return x
    n_steps = n_pos - 1
    order = max(1, min(int(order), n_steps))
    lambdas = [-math.log(s) for s in sig[:n_pos]]
    hist_m: list[torch.Tensor] = [m0]
    hist_lam: list[float] = [lambdas[0]]
    for step in range(1, n_steps + 1):
        if step < order:
            p = step
        elif lower_order_final:
            p = min(order, n_steps + 1 - step)
        else:
            p = order
        use_corrector = step != n_steps
        s_prev, s_t = sig[step - 1], sig[step]
        lam_prev, lam_t = hist_lam[-1], lambdas[step]
        h = lam_t - lam_prev
        m_prev0 = hist_m[-1]
        rks = [(hist_lam[-(i + 1)] - lam_prev) / h for i in range(1, p)] + [1.0]
        diffs = [(hist_m[-(i + 1)] - m_prev0) / rks[i - 1] for i in range(1, p)]
        hphi1, big_b, rho_p, rho_c = _unipc_coefficients(h, rks, p, variant, bool(diffs), use_corrector)
        x_lin = (s_t / s_prev) * x - hphi1 * m_prev0
        x_new = x_lin
        for rho, d in zip(rho_p, diffs):
            x_new = x_new - (big_b * rho) * d
        denoised = x_new
        if use_corrector:
            m_t = model(x_new, _sigma_batch(x, s_t))
            corr = rho_c[-1] * (m_t - m_prev0)
            for rho, d in zip(rho_c[:-1], diffs):
                corr = corr + rho * d
            x_new = x_lin - big_b * corr
            hist_m.append(m_t)
            hist_lam.append(lam_t)
            if len(hist_m) > order:
                hist_m.pop(0)
                hist_lam.pop(0)
            denoised = m_t
        x = x_new
        callback(step - 1, x, denoised, sigmas[step - 1])
    x = x / math.sqrt(1.0 + sig[n_pos - 1] ** 2)
    callback(n_steps, x, x, sigmas[n_steps])
    return x


# ---------------------------------------------------------------------------------------------------
# Restart
# ---------------------------------------------------------------------------------------------------


def restart_step_list(sigmas: torch.Tensor | Sequence[float],
                      restart_list: dict[float, Sequence[float]] | None = None) -> list[tuple[float, float]]:
    """The (sigma, sigma_next) Heun steps Restart takes, restart segments included (A1111's rules).

    ``restart_list`` maps ``sigma_min -> (restart_points, restart_times, sigma_max)``: right after the
    main schedule reaches the sigma closest to ``sigma_min``, jump back up to the main-schedule sigma
    closest to ``sigma_max`` and walk down again over ``restart_points`` Karras-spaced sigmas
    (``restart_points - 1`` Heun steps), ``restart_times`` times.

    Default (``restart_list=None``), with ``n = len(sigmas) - 1`` steps:

    * ``n < 20``: no restart, plain Heun on ``sigmas``;
    * ``20 <= n < 36``: ``K = 1`` restart of ``k = 9`` steps; ``36 <= n``: ``K = 2`` restarts of
      ``k = n // 4`` steps;
    * the main schedule becomes Karras (rho 7) with ``n - K*k`` steps between ``sigmas[-2]`` and
      ``sigmas[0]`` (whatever schedule type was chosen; only its end points count), and
      ``restart_list = {0.1: (k + 1, K, 2.0)}``: restart from sigma ~0.1 up to sigma ~2.

    So the step list always has ``n`` steps.  The restart sub-schedule's end points are set exactly
    to the main-schedule sigmas it joins (A1111 recomputes them in float32 and can add a negligible
    ~1e-5 sigma of noise at the join; here none is added there).
    """
    sig = [float(s) for s in sigmas] if not isinstance(sigmas, torch.Tensor) else _floats(sigmas)
    steps = len(sig) - 1
    if restart_list is None:
        if steps >= 20:
            k, times = 9, 1
            if steps >= 36:
                k, times = steps // 4, 2
            sig = _karras(steps - k * times, sig[-2], sig[0]) + [0.0]
            restart_list = {0.1: (k + 1, times, 2.0)}
        else:
            restart_list = {}

    def closest(value: float) -> int:
        return min(range(len(sig)), key=lambda j: abs(sig[j] - value))

    by_index = {closest(key): value for key, value in restart_list.items()}
    out: list[tuple[float, float]] = []
    for i in range(len(sig) - 1):
        out.append((sig[i], sig[i + 1]))
        if i + 1 in by_index:
            points, times, s_max = by_index[i + 1]
            lo_idx, hi_idx = i + 1, closest(float(s_max))
            if hi_idx < lo_idx and int(points) >= 2:
                sub = _karras(int(points), sig[lo_idx], sig[hi_idx])
                sub[0], sub[-1] = sig[hi_idx], sig[lo_idx]
                for _ in range(int(times)):
                    out.extend(zip(sub[:-1], sub[1:]))
    return out


@torch.no_grad()
def sample_restart(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, noise_sampler: NoiseSampler | None = None,
                   callback: StepCallback | None = None, s_noise: float = 1.0,
                   restart_list: dict[float, Sequence[float]] | None = None, **_: Any) -> torch.Tensor:
    """Restart sampling (Xu et al. 2023) as A1111's ``sd_samplers_extra.restart_sampler``.

    Heun steps (Euler for the step to 0) over :func:`restart_step_list`.  Whenever a step starts above
    where the previous one ended (a restart: from ``s_min`` back up to ``s_max``), the forward process
    is simulated by adding ``s_noise * sqrt(s_max**2 - s_min**2) * noise``, then the sub-schedule is
    integrated down again.  The paper's restart intervals are ``[t_min, t_max]`` with ``K`` repeats;
    A1111 (and this) uses one interval ~[0.1, 2] with K = 1 (20-35 steps) or 2 (>= 36 steps), and
    none below 20 steps.

    Evaluations: 2 per step, 1 for the final step to 0: ``2 * n - 1`` for ``n = len(sigmas) - 1``.
    ``callback(i, x, denoised, sigma)`` after each of the ``n`` steps, ``sigma`` = the step's start
    (A1111 calls it before the step, with the pre-step x).  ``noise_sampler(s_max, s_min)`` supplies
    the restart noise (A1111 uses the per-image ``randn_like``); it is called ``K`` times.
    """
    callback = callback or _noop_callback
    last: float | None = None
    for i, (s_cur, s_next) in enumerate(restart_step_list(sigmas, restart_list)):
        if last is not None and last < s_cur:
            if noise_sampler is None:
                raise ValueError("Restart needs a noise_sampler")
            bump = math.sqrt(s_cur * s_cur - last * last)
            x = x + noise_sampler(torch.tensor(s_cur), torch.tensor(last)) * (s_noise * bump)
        denoised = model(x, _sigma_batch(x, s_cur))
        d = (x - denoised) / s_cur
        dt = s_next - s_cur
        if s_next == 0.0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, _sigma_batch(x, s_next))
            d_2 = (x_2 - denoised_2) / s_next
            x = x + (d + d_2) * (dt / 2)
        callback(i, x, denoised, torch.tensor(s_cur, dtype=torch.float32))
        last = s_next
    return x


# ---------------------------------------------------------------------------------------------------
# LCM
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_lcm(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, noise_sampler: NoiseSampler | None = None,
               callback: StepCallback | None = None, **_: Any) -> torch.Tensor:
    """Latent consistency model sampling (Luo et al. 2023; k-diffusion's / A1111's ``sample_lcm``).

    For each sigma: ``x = model(x, sigma)`` (the consistency model's x0), then, unless the next sigma
    is 0, re-noise to it: ``x = x + sigma_next * noise``.  ``len(sigmas) - 1`` evaluations and
    callbacks; ``noise_sampler`` is called ``len(sigmas) - 2`` times.

    A1111's LCM also swaps in an LCM-specific denoiser: it evaluates the UNet at the nearest of the
    50 LCM timesteps and applies the consistency boundary scaling (``c_skip <= 7e-6`` at timestep
    19); both are model-side and not reproduced by this sampler (the web UI's denoiser evaluates at
    the continuous timestep of each sigma).  The sigmas of A1111's default LCM schedule come from
    :func:`lcm_sigmas`.
    """
    callback = callback or _noop_callback
    sig = _floats(sigmas)
    for i in range(len(sig) - 1):
        denoised = model(x, _sigma_batch(x, sig[i]))
        x = denoised
        if sig[i + 1] > 0.0:
            if noise_sampler is None:
                raise ValueError("LCM needs a noise_sampler")
            x = denoised + sig[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
        callback(i, x, denoised, sigmas[i])
    return x


# ---------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------


def extra_sampler_defs() -> list[SamplerDef]:
    """A1111 v1.10's DDIM, PLMS, UniPC, Restart and LCM entries.

    * DDIM, PLMS, UniPC are A1111 "timestep" (CompVis) samplers: they pick their own grid
      (``sigmas_fn``; the schedule type is ignored, as in A1111) and start from unit VP noise
      (``vp_init``).  Only DDIM takes eta (from "eta_ddim", written as "Eta DDIM" when not 0): A1111
      passes eta only to sampler functions with an ``eta`` parameter, which PLMS and UniPC lack, so
      they keep the default ``eta_option`` and ignore the ``eta`` they are given.
    * Restart is a k-diffusion-style sampler defaulting to Karras (A1111 options
      ``{"scheduler": "karras", "second_order": True}``).
    * LCM uses A1111's default LCM schedule via ``sigmas_fn`` (A1111 would apply a chosen schedule
      type over its LCM denoiser's sigma range instead; here schedule types are ignored for LCM).
    """
    return [
        SamplerDef("DDIM", sample_ddim, aliases=("ddim",), sigmas_fn=ddim_sigmas, vp_init=True,
                   eta_option="eta_ddim"),
        SamplerDef("PLMS", sample_plms, aliases=("plms",), sigmas_fn=ddim_sigmas, vp_init=True),
        SamplerDef("UniPC", sample_unipc, aliases=("unipc",), sigmas_fn=unipc_sigmas, vp_init=True),
        SamplerDef("Restart", sample_restart, aliases=("restart",), default_scheduler="karras",
                   second_order=True),
        SamplerDef("LCM", sample_lcm, aliases=("k_lcm", "lcm"), sigmas_fn=lcm_sigmas),
    ]
