"""The model wrapped as a denoiser ``D(x, sigma)`` over discrete training sigmas.

Semantics follow k-diffusion's ``CompVisDenoiser`` / ``CompVisVDenoiser``, which
A1111 uses: the 1000 training timesteps define sigmas ``sqrt((1-a)/a)``; a
continuous sigma maps to a fractional timestep by interpolating in log-sigma.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: ``eps_or_v = unet_fn(scaled_x, t)`` for a batch; the caller binds conditioning.
UNetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: ``alphas_cumprod`` at the last timestep after the zero-terminal-SNR rescale: A1111 and ComfyUI put this tiny
#: value there instead of 0 (sigma_max ~ 4519 instead of infinity), so every sampler keeps a finite start.
ZTSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The schedule with zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
    Steps Are Flawed", Algorithm 1), for v-prediction checkpoints trained on it (NoobAI-XL v-pred and others).

    ``sqrt(alphas_cumprod)`` is shifted so that its last value is 0 and scaled so that its first value is
    unchanged; the last ``alphas_cumprod`` is then :data:`ZTSNR_LAST_ALPHA_BAR` (A1111, ComfyUI). Computed in
    the dtype of the input (A1111 rescales the float16 copy when ``use_downcasted_alpha_bar`` is on)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    rescaled = root**2
    rescaled[-1] = ZTSNR_LAST_ALPHA_BAR
    return rescaled


class DiscreteSchedule:
    """The training sigmas of a checkpoint and conversions sigma <-> t.

    ``downcast`` is A1111's option ``use_downcasted_alpha_bar`` ("Downcast alphas_cumprod"): before
    sampling, A1111 (``sd_models.apply_alpha_schedule_override``) casts the model's ``alphas_cumprod`` to
    float16, as every model had it before 1.7, and k-diffusion's ``CompVisDenoiser`` then computes
    ``sigmas = ((1 - a) / a) ** 0.5`` and ``log_sigmas`` from that float16 tensor, in float16. Here too:
    ``sigmas`` and ``log_sigmas`` are then float16 tensors, and every computation with them promotes to
    float32 exactly as k-diffusion's does (``low - high`` in :meth:`sigma_to_t` stays float16).
    ``zero_terminal_snr``: the schedule rescaled by :func:`rescale_zero_terminal_snr` (a checkpoint's
    ``ztsnr`` marker, or A1111's option ``sd_noise_schedule`` = "Zero Terminal SNR").
    """

    def __init__(self, alphas_cumprod: torch.Tensor, family: str = "sd1", downcast: bool = False,
                 zero_terminal_snr: bool = False):
        self.family = family  # some schedules (Align Your Steps) have per-architecture tables
        ac = alphas_cumprod.to(torch.float16 if downcast else torch.float32)
        if zero_terminal_snr:  # after the downcast, as A1111's apply_alpha_schedule_override does
            ac = rescale_zero_terminal_snr(ac)
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> torch.Tensor:
        # float32 like A1111's ``sigmas[0].item()`` turned back into a tensor
        return self.sigmas[0].float()

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1].float()

    def to(self, device: torch.device) -> "DiscreteSchedule":
        self.sigmas = self.sigmas.to(device)
        self.log_sigmas = self.log_sigmas.to(device)
        return self

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()


class Denoiser:
    """``D(x, sigma) -> x0`` for epsilon- or v-prediction UNets.

    ``sigma`` is a per-image vector. Samplers pass it as a CPU tensor (sigmas live on the CPU):
    then the scalings and the timestep are computed on the host and reach the device as kernel
    arguments, so a sampling step never waits for the GPU. A sigma vector already on the
    latents' device is handled too.
    """

    def __init__(self, schedule: DiscreteSchedule, unet_fn: UNetFn, prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unknown prediction type {prediction_type!r}")
        self.schedule = schedule
        self.unet_fn = unet_fn
        self.prediction_type = prediction_type
        self._cpu = DiscreteSchedule.__new__(DiscreteSchedule)
        self._cpu.sigmas, self._cpu.log_sigmas = schedule.sigmas.cpu(), schedule.log_sigmas.cpu()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if sigma.device.type == "cpu":
            return self._call_host_sigma(x, sigma)
        return self._call_device_sigma(x, sigma)

    def _call_device_sigma(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The same as :meth:`_call_host_sigma`, with every scaling computed on the sigma's device."""
        sigma = sigma.to(x.dtype)
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        t = self.schedule.sigma_to_t(sigma.float())
        out = self.unet_fn(x * (1.0 / (s**2 + 1.0) ** 0.5), t)
        return self._combine(x, out, s)

    def _call_host_sigma(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.float()
        t = self._cpu.sigma_to_t(sigma)
        if x.device.type != "cpu":
            t = t.to(x.device, non_blocking=True)
        if bool((sigma == sigma[0]).all()):  # the usual case: one sigma for the whole batch
            s = sigma[0]
            x_in = x * (1.0 / (s**2 + 1.0) ** 0.5)
        else:
            s = sigma.to(x.device, non_blocking=True).view(-1, *([1] * (x.ndim - 1)))
            x_in = x * (1.0 / (s**2 + 1.0) ** 0.5)
        return self._combine(x, self.unet_fn(x_in, t), s)

    def _combine(self, x: torch.Tensor, out: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return x - out * s
        c_skip = 1.0 / (s**2 + 1.0)
        c_out = -s / (s**2 + 1.0) ** 0.5
        return out * c_out + x * c_skip
