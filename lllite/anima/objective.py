"""Anima's training objective as kohya's Anima LLLite trainer defines it: rectified flow.

A step draws noise and a noise level ``t`` in (0, 1) per sample, mixes ``x_t = (1 - t) x_0 + t noise``,
and the DiT, given ``t`` as its timestep, predicts the velocity ``noise - x_0``; the loss is its mean
squared error per sample, times an optional weight of ``t``, averaged over the batch
(:func:`lllite.objective.noise_loss`, the same reduction as SDXL's with the velocity as the target).

How ``t`` is drawn (kohya's ``timestep_sampling``; default ``sigmoid``):

- ``uniform``: uniform in (0, 1);
- ``sigmoid``: ``sigmoid(sigmoid_scale * N(0, 1))``, the logit-normal of SD3;
- ``shift``: that, shifted towards noise by ``discrete_flow_shift`` s: ``t' = s t / (1 + (s - 1) t)``;
- ``flux_shift``: that, shifted by FLUX's resolution rule (mu from the latent's token count);
- ``sigma``: uniform over the 1000 discrete levels of a flow-matching Euler scheduler with ``shift = s``.

Weighting (kohya's ``weighting_scheme``; default ``none``): ``sigma_sqrt`` is ``t^-2``, ``cosmap`` is
``2 / (pi (1 - 2t + 2t^2))``. kohya's defaults: ``discrete_flow_shift`` 1.0, ``sigmoid_scale`` 1.0.
"""
from __future__ import annotations

import math

import torch

TIMESTEP_SAMPLINGS = ("sigmoid", "uniform", "shift", "flux_shift", "sigma")
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "cosmap")
#: The values Anima's training takes for options with fixed choices (kohya's).
OPTION_CHOICES = {"timestep_sampling": TIMESTEP_SAMPLINGS, "weighting_scheme": WEIGHTING_SCHEMES}
NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``shift * t / (1 + (shift - 1) * t)``: more of the noise levels near 1 for ``shift > 1``."""
    return t * shift / (1 + (shift - 1) * t)


def flux_mu(latent_size: tuple[int, int]) -> float:
    """FLUX's shift exponent for a latent (H, W): 0.5 at 256 tokens of 2x2, 1.15 at 4096, linear between."""
    tokens = (latent_size[0] // 2) * (latent_size[1] // 2)
    slope = (1.15 - 0.5) / (4096 - 256)
    return 0.5 + slope * (tokens - 256)


def sample_sigmas(kind: str, size: int, generator: torch.Generator, *, sigmoid_scale: float = 1.0,
                  discrete_flow_shift: float = 1.0, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
    """``size`` noise levels ``t`` in (0, 1] (float32), drawn from ``generator`` as ``kind`` says (see the module)."""
    if kind == "uniform":
        return torch.rand(size, generator=generator)
    if kind == "sigma":
        index = (torch.rand(size, generator=generator) * NUM_TRAIN_TIMESTEPS).long()
        levels = torch.linspace(1, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS).flip(0) / NUM_TRAIN_TIMESTEPS
        return shift_sigmas(levels, discrete_flow_shift)[index]
    if kind not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep sampling {kind!r} is not one of {list(TIMESTEP_SAMPLINGS)}")
    t = torch.sigmoid(sigmoid_scale * torch.randn(size, generator=generator))
    if kind == "shift":
        return shift_sigmas(t, discrete_flow_shift)
    if kind == "flux_shift":
        if latent_size is None:
            raise ValueError("flux_shift needs the latent size")
        mu = math.exp(flux_mu(latent_size))
        return mu / (mu + (1 / t - 1))
    return t


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - t) x_0 + t noise``, ``t`` per sample."""
    t = sigmas.view(-1, *([1] * (latents.dim() - 1))).to(latents.dtype)
    return (1 - t) * latents + t * noise


def velocity(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The DiT's target: ``noise - x_0``."""
    return noise - latents


def loss_weights(kind: str, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample weights of the loss at noise levels ``sigmas`` (kohya's ``weighting_scheme``)."""
    if kind == "none":
        return torch.ones_like(sigmas)
    if kind == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if kind == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    raise ValueError(f"weighting_scheme {kind!r} is not one of {list(WEIGHTING_SCHEMES)}")
