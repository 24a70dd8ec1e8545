"""A network's strength beyond one number: keyframes over the denoising steps, masks over the image.

Keyframes are ``(start, strength)`` pairs, ``start`` a fraction of the denoising steps counted as
:meth:`lllite.LLLiteNetwork.set_step_range` counts them: at step ``i`` of ``n`` the strength is that
of the last keyframe whose start is ``<= i / n``, and 0 before the first. A plain multiplier ``m``
is the single keyframe ``(0, m)``. A mask says where in the image the control acts (1) or not (0);
each module's change to its Linear's input is multiplied by the mask resized to its block's token grid.

Both become tensors of a fixed shape that a compiled UNet reads (keyframes padded to
:data:`KEYFRAME_SLOTS`), so changing them between generations recompiles nothing.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from .errors import LLLiteError
from .module import token_grid

#: The most keyframes one network holds.
KEYFRAME_SLOTS = 16

Keyframes = tuple[tuple[float, float], ...]
#: What ``set_multiplier`` takes: one number, or ``(start, strength)`` keyframes.
Multiplier = Union[float, Sequence[Sequence[float]]]


def _is_sequence(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def is_keyframes(value) -> bool:
    """Whether ``value`` reads as keyframes: a non-empty sequence of sequences of numbers (pairs, when right)."""
    return (_is_sequence(value) and len(value) > 0
            and all(_is_sequence(item) and all(isinstance(v, (Real, torch.Tensor)) for v in item) for item in value))


def keyframes(value: Multiplier, what: str = "multiplier") -> Keyframes:
    """Check a multiplier or keyframes and return them as keyframes.

    Args:
        value: a finite number, or ``(start, strength)`` pairs with starts in [0, 1], strictly
            increasing, and finite strengths (at most :data:`KEYFRAME_SLOTS`).
        what: how error messages name the argument.

    Raises:
        LLLiteError: naming the keyframe that is wrong and why.
    """
    if isinstance(value, (Real, torch.Tensor)) and not isinstance(value, bool):
        number = float(value)
        if not math.isfinite(number):
            raise LLLiteError(f"{what} must be a finite number, got {number}")
        return ((0.0, number),)
    if not (is_keyframes(value) or _is_sequence(value) and value and all(map(_is_sequence, value))):
        raise LLLiteError(f"{what}: give a number, or keyframes as (start, strength) pairs such as "
                          f"[(0.0, 1.0), (0.5, 0.3)]; got {value!r}")
    if len(value) > KEYFRAME_SLOTS:
        raise LLLiteError(f"{what}: {len(value)} keyframes, at most {KEYFRAME_SLOTS} are supported")
    frames = []
    for index, item in enumerate(value):
        if len(item) != 2:
            raise LLLiteError(f"{what}[{index}] = {tuple(item)!r}: a keyframe is a (start, strength) pair")
        try:
            start, strength = float(item[0]), float(item[1])
        except (TypeError, ValueError):
            raise LLLiteError(f"{what}[{index}] = {tuple(item)!r}: start and strength must be numbers") from None
        if not 0.0 <= start <= 1.0:
            raise LLLiteError(f"{what}[{index}]: start {start} is not a fraction of the denoising steps in [0, 1]")
        if not math.isfinite(strength):
            raise LLLiteError(f"{what}[{index}]: strength must be a finite number, got {strength}")
        if frames and start <= frames[-1][0]:
            raise LLLiteError(f"{what}[{index}]: start {start} must be after the previous keyframe's {frames[-1][0]} "
                              "(keyframes in order of their starts)")
        frames.append((start, strength))
    return tuple(frames)


def keyframe_table(frames: Keyframes, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Keyframes as a (2, KEYFRAME_SLOTS) tensor: starts (padding: +inf, never reached), strengths (padding: 0)."""
    table = torch.zeros(2, KEYFRAME_SLOTS, dtype=dtype, device=device)
    table[0] = math.inf
    for slot, (start, strength) in enumerate(frames):
        table[0, slot], table[1, slot] = start, strength
    return table


def strength_at(table: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
    """The strength at ``progress`` (a fraction of the steps, 0-d tensor): that of the last keyframe
    started, 0 before the first. Read on the device, without a branch on its value."""
    started = table[0] <= progress  # True for a prefix: the starts increase
    last = started & ~torch.cat([started[1:], started.new_zeros(1)])  # one True, or none before the first start
    return (table[1] * last).sum()  # the one strength plus zeros: exact, and no index read on the host


def token_masks(mask: torch.Tensor, latent_size: tuple[int, int], depth: int) -> torch.Tensor:
    """A mask (B, 1, H, W) in [0, 1] averaged over each token of a block at ``depth``: (B, tokens, 1),
    row-major like the block's tokens. All ones stays all ones and all zeros all zeros, exactly."""
    grid = token_grid(latent_size, depth)
    return F.adaptive_avg_pool2d(mask.float(), grid).flatten(2).transpose(1, 2)
