"""Anima's training objective, written once: rectified flow with logit-normal timesteps.

A clean latent ``x0`` and Gaussian noise meet on a straight line, ``x_t = (1 - t) x0 + t noise`` with t in
[0, 1] (1 is pure noise); the DiT reads ``x_t`` and ``t`` (its ``timestep`` is t itself, see
:func:`lllite.anima.pipeline.transformer_inputs`) and predicts the velocity ``noise - x0``, scored by plain
mean squared error. t is drawn logit-normal (the sigmoid of a normal draw), which favours the middle of the
path, where the image's layout is decided, over its two ends.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")


def sample_sigmas(size: int, generator: torch.Generator, kind: str = "logit_normal", mean: float = 0.0,
                  std: float = 1.0) -> torch.Tensor:
    """``size`` flow times t in (0, 1), float32, drawn from ``generator``.

    Args:
        kind: ``"logit_normal"``: ``sigmoid(N(mean, std))``; ``"uniform"``: U(0, 1).
        mean, std: of the normal draw (logit-normal only); a positive mean draws noisier times more often.
    """
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(size, generator=generator))
    if kind == "uniform":
        return torch.rand(size, generator=generator)
    raise ValueError(f"timestep sampling {kind!r} is not one of {list(TIMESTEP_SAMPLINGS)}")


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - t) x0 + t noise``, with one t per sample (``sigmas`` (B,) broadcast over the other dimensions)."""
    t = sigmas.to(latents.dtype).view(-1, *([1] * (latents.dim() - 1)))
    return (1 - t) * latents + t * noise


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the DiT predicts: ``noise - x0``, the derivative of ``x_t`` along t."""
    return noise - latents


def flow_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element, in float32."""
    return F.mse_loss(prediction.float(), target.float())
