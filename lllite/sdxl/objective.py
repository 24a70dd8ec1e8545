"""SDXL's training objective, written once: the noise schedule, the draws of noise and timesteps and the
loss weights. The LLLite trainer's SDXL side and the toy SDXL's pretraining both use it; the loss's
reduction and the learning-rate schedule are shared by every family (:mod:`lllite.objective`).

SDXL is a DDPM: scaled_linear betas from 0.00085 to 0.012 over 1000 steps, and the UNet predicts the
noise (epsilon). A step of training draws noise and a timestep per sample, noises the latents, and
scores the UNet's prediction of that noise by its mean squared error, optionally weighted per sample
by the timestep's signal-to-noise ratio ``SNR = alphas_cumprod / (1 - alphas_cumprod)``.
"""
from __future__ import annotations

import torch

#: SDXL's noise schedule as diffusers' scheduler arguments (its ``scheduler/scheduler_config.json``).
SDXL_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
TIMESTEP_SAMPLINGS = ("uniform", "cubic")
#: The values SDXL's training takes for options with fixed choices.
OPTION_CHOICES = {"timestep_sampling": TIMESTEP_SAMPLINGS}
#: The debiased weight caps SNR here, as kohya does: without a cap the cleanest timestep (SNR about
#: 1175 at t = 0) would weigh a little less than the next ones (SNR about 580 at t = 1).
DEBIASED_SNR_CAP = 1000.0


def noise_scheduler():
    """diffusers' ``DDPMScheduler`` with SDXL's schedule: its ``alphas_cumprod`` and ``add_noise`` train."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SDXL_SCHEDULE)


def sample_noise(shape: tuple[int, ...], generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise of ``shape`` (B, C, H, W), drawn from ``generator``.

    Args:
        noise_offset: adds ``noise_offset * N(0, 1)`` per sample and channel (drawn after the noise),
            which lets the model learn to change an image's mean brightness; 0 draws nothing more.
    """
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise += noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise


def sample_timesteps(kind: str, size: int, generator: torch.Generator,
                     num_train_timesteps: int = SDXL_SCHEDULE["num_train_timesteps"]) -> torch.Tensor:
    """``size`` timesteps (int64) in ``[0, num_train_timesteps)``, drawn from ``generator``.

    Args:
        kind: ``"uniform"`` (SDXL's own objective) or ``"cubic"``: ``t = (1 - u^3) * num_train_timesteps``
            with u uniform, which draws the noisy timesteps more often (mean 750 of 1000), where an
            image's layout is decided (as T2I-Adapter trains).
    """
    if kind == "uniform":
        return torch.randint(0, num_train_timesteps, (size,), generator=generator)
    if kind == "cubic":
        cubic = (1 - torch.rand(size, generator=generator) ** 3) * num_train_timesteps
        return cubic.long().clamp(0, num_train_timesteps - 1)
    raise ValueError(f"timestep sampling {kind!r} is not one of {list(TIMESTEP_SAMPLINGS)}")


def signal_to_noise(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR of the timesteps with these cumulative alphas: ``alphas_cumprod / (1 - alphas_cumprod)``."""
    return alphas_cumprod / (1 - alphas_cumprod)


def loss_weights(snr: torch.Tensor, min_snr_gamma: float | None = None, debiased: bool = False) -> torch.Tensor:
    """Per-sample weights of the noise loss at timesteps with this SNR; 1 everywhere when both are off.

    Args:
        min_snr_gamma: min-SNR weighting (Hang et al. 2023) for epsilon prediction,
            ``min(SNR, gamma) / SNR``: 1 on the noisy timesteps, less on the clean ones.
        debiased: multiply by ``1 / sqrt(SNR)``, with SNR capped at :data:`DEBIASED_SNR_CAP`: the noise
            loss hardly sees the layout at high noise, and this weight restores it.
    """
    weights = torch.ones_like(snr)
    if min_snr_gamma is not None:
        weights = weights * snr.clamp(max=min_snr_gamma) / snr
    if debiased:
        weights = weights * snr.clamp(max=DEBIASED_SNR_CAP).rsqrt()
    return weights
