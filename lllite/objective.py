"""What every family's training shares: how a micro-batch's loss is reduced, the learning-rate schedule, and
what a family's objective hands the training loop for one micro-batch (:class:`Draw`).

The objectives themselves differ by family: SDXL's DDPM noise prediction (:mod:`lllite.sdxl.objective`)
and Anima's rectified flow (:mod:`lllite.anima.objective`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass
class Draw:
    """One micro-batch's inputs to the denoising model and its target, drawn from the step's generator.

    Attributes:
        noisy: the noised latents, in the model's dtype.
        timesteps: the model's timestep argument (SDXL: int64 in [0, 1000); Anima: the noise level in (0, 1)).
        target: what the model should predict (SDXL: the noise; Anima: the velocity ``noise - latents``).
        weights: per-sample loss weights, or None.
        conditioning: the model's text conditioning by argument name, in the model's dtype.
    """

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor | None
    conditioning: dict[str, torch.Tensor]


def noise_loss(prediction: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The batch's loss: each sample's mean squared error of the prediction (in float32), times its
    weight (a family's loss weights), averaged over the batch."""
    per_sample = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=tuple(range(1, noise.dim())))
    return (per_sample if weights is None else per_sample * weights).mean()


def lr_factor(kind: str, step: int, warmup_steps: int, total_steps: int, time_used: float = 0.0,
              min_lr_rate: float = 0.0) -> float:
    """The learning rate's multiplier at ``step`` (0-based), as diffusers' schedulers of the same name compute it.

    Args:
        kind: ``constant``, ``constant_with_warmup``, ``linear`` or ``cosine``.
        warmup_steps: the rate rises linearly from 0 over these steps (all but ``constant``).
        total_steps: the decay of ``linear`` and ``cosine`` ends here.
        time_used: the fraction of a time budget already spent; after warmup the decay follows the
            larger of it and the fraction of steps done, so a run stopped by its budget ends low too.
        min_lr_rate: where ``linear`` and ``cosine`` end, as a fraction of the peak (transformers' name).
    """
    if kind not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler {kind!r} is not one of {list(LR_SCHEDULERS)}")
    if kind == "constant":
        return 1.0
    if step < warmup_steps:
        return step / warmup_steps
    if kind == "constant_with_warmup":
        return 1.0
    progress = min(1.0, max((step - warmup_steps) / max(1, total_steps - warmup_steps), time_used))
    decay = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_rate + (1.0 - min_lr_rate) * decay
