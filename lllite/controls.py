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
from typing import TYPE_CHECKING, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CompiledWithoutNetworkError, LLLiteError
from .images import to_control_tensor, to_mask_tensor
from .module import token_grid

if TYPE_CHECKING:
    from .hooks import Attachment

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


#: Room for the scheduler's timesteps on the device; padding with +inf keeps the step count out of the graph's shapes.
_TIMESTEP_SLOTS = 1000
_START, _END, _STEPS = range(3)  # the slots of ControlledNetwork._controls


def _control_dtype(device: torch.device) -> torch.dtype:
    # float64 counts steps exactly as diffusers' Python floats do; Apple's GPUs have no float64
    return torch.float32 if device.type == "mps" else torch.float64


class ControlledNetwork(nn.Module):
    """What every LLLite network has, whatever model it adapts: the control image, the strength
    (a multiplier or keyframes), the mask and the step range, and how a model call reads them.

    :class:`lllite.LLLiteNetwork` (SDXL) and :class:`lllite.anima.AnimaLLLiteNetwork` build on it;
    each adds its modules, where they attach and how a change is computed.

    The strength and the step range live in small tensors of fixed shape on the model's device,
    written in place, and the step gate is computed there from the timestep (:meth:`_step_gate`),
    so that a compiled model reads them without recompiling or syncing with the host.
    """

    #: How the model's timestep relates to the scheduler's timesteps (in 0..1000): SDXL's UNet takes
    #: them as they are (1); Anima's transformer takes the flow-matching sigma, timesteps / 1000.
    timestep_scale: float = 1.0
    #: Channels of the control image (RGB; Anima's inpainting networks take RGB + mask).
    cond_in_channels: int = 3
    #: How messages name the model the network adapts.
    model_name: str = "UNet"

    def __init__(self, metadata: dict[str, str] | None = None):
        super().__init__()
        self.metadata: dict[str, str] = dict(metadata or {})
        self._keyframes: Keyframes = ((0.0, 1.0),)
        self._start, self._end = 0.0, 1.0
        # start, end, step count; the keyframes' starts and strengths: on the model's device, read by its
        # graph, written in place
        self._controls = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        self._keyframe_table = keyframe_table(self._keyframes)
        self._mask: torch.Tensor | None = None
        self._mask_version = 0
        self._timesteps: torch.Tensor | None = None  # the scheduler's timesteps, padded with +inf
        self._timesteps_source: torch.Tensor | None = None
        self._image: torch.Tensor | None = None
        self._image_version = 0
        self._latent_size: tuple[int, int] | None = None
        self._gate: torch.Tensor | None = None  # this model call's step gate
        self._acted = False  # whether this model call reached the network (see _after_model)
        self._attachment: Attachment | None = None

    @property
    def is_attached(self) -> bool:
        return self._attachment is not None

    def _forget_image(self) -> None:
        """Drop what was computed from the control image (the image was unset)."""

    def _mask_rows(self, batch: int, depth: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The mask (all ones without one) at the token grid of ``depth`` (:func:`token_masks`), one row per row
        of the model's batch, in the dtype of the activations the changes are added to."""
        mask = torch.ones(1, 1, 1, 1) if self._mask is None else self._mask
        if batch % mask.shape[0]:
            raise LLLiteError(
                f"LLLite mask: {mask.shape[0]} masks for a {self.model_name} batch of {batch}: give one mask, or one "
                "per generated image (the batch of 2x for classifier-free guidance is handled)"
            )
        return token_masks(mask, self._latent_size, depth).repeat(batch // mask.shape[0], 1, 1).to(device, dtype)

    # ------------------------------------------------------------------ controls
    def set_cond_image(self, image) -> None:
        """Set the control image; ``None`` switches the network off.

        Args:
            image: a tensor (B, 3, H, W) or (3, H, W) in [-1, 1], or PIL / uint8 numpy RGB (read as
                ``x / 127.5 - 1``), or a list of those. Use one image for the whole batch or one per
                generated image; with classifier-free guidance the model's batch is twice that, and the
                images are repeated for both halves. Any size: it is resized to the generated
                image's pixel size when it differs.
        """
        self._image = None if image is None else to_control_tensor(image, channels=self.cond_in_channels)
        self._image_version += 1
        if image is None:  # free the cached tensors; a new image computes them again
            self._forget_image()

    @property
    def cond_image(self) -> torch.Tensor | None:
        """The control image as set, (B, 3, H, W) in [-1, 1], or None."""
        return self._image

    @property
    def multiplier(self) -> Multiplier:
        """The strength as set: a number, or keyframes (see :meth:`set_multiplier`)."""
        frames = self._keyframes
        return frames[0][1] if len(frames) == 1 and frames[0][0] == 0 else frames

    @multiplier.setter
    def multiplier(self, multiplier: Multiplier) -> None:
        self.set_multiplier(multiplier)

    @property
    def keyframes(self) -> Keyframes:
        """The strength as ``(start, strength)`` keyframes; a plain multiplier ``m`` is ``((0.0, m),)``."""
        return self._keyframes

    def set_multiplier(self, multiplier: Multiplier) -> None:
        """Strength of the control: a number, or keyframes that vary it over the denoising steps.

        Args:
            multiplier: 0 switches the control off, 1 is the trained strength. Or keyframes: a sequence
                of ``(start, strength)`` pairs, ``start`` a fraction of the denoising steps counted as
                :meth:`set_step_range` counts them, in increasing order. At step ``i`` of ``n`` the
                strength is that of the last keyframe whose start is ``<= i / n``, and 0 before the first:
                ``[(0.0, 1.0), (0.5, 0.0)]`` is strength 1 for the first half of the steps, as
                ``set_multiplier(1.0)`` with ``set_step_range(0.0, 0.5)`` when the half falls on a step.

        Raises:
            LLLiteError: not a finite number or not such keyframes; the message names the keyframe.
        """
        frames = keyframes(multiplier)
        self._keyframes = frames
        self._keyframe_table.copy_(keyframe_table(frames))  # in place, on the device: nothing recompiles

    @property
    def mask(self) -> torch.Tensor | None:
        """Where the control acts, as set: (B, 1, H, W) in [0, 1], or None for everywhere."""
        return self._mask

    def set_mask(self, mask) -> None:
        """Confine the control to a region of the image.

        Args:
            mask: None (everywhere), or a mask: a PIL image (mode "L"), a uint8 (0..255) or float (0..1)
                array (H, W), a tensor (H, W) or (B, 1, H, W) with values in [0, 1], one per generated
                image or one for all. It is resized to each block's token grid (each token gets the mean
                of the mask over its pixels), and every module's change to its Linear's input is
                multiplied by it token by token: an all-ones mask changes nothing, an all-zeros mask
                switches the network off, and tokens under 0 give their Linear its unchanged input.

        Raises:
            LLLiteError: a mask of another shape, or with values outside [0, 1].
        """
        self._mask = None if mask is None else to_mask_tensor(mask)
        self._mask_version += 1

    def set_step_range(self, control_guidance_start: float = 0.0, control_guidance_end: float = 1.0) -> None:
        """Apply the control only between these fractions of the denoising steps.

        Named and counted as diffusers' ``control_guidance_start/end``: step ``i`` of ``n`` is
        controlled when ``i / n >= control_guidance_start`` and ``(i + 1) / n <= control_guidance_end``.
        Steps are counted on the scheduler's timesteps when the network was applied to a pipeline;
        applied to a bare UNet, the fraction is read from the timestep (``1 - t / 1000``).
        """
        start, end = float(control_guidance_start), float(control_guidance_end)
        if not 0.0 <= start < end <= 1.0:
            raise ValueError("the step range (control_guidance_start, control_guidance_end) must satisfy "
                             f"0 <= start < end <= 1, got start={start}, end={end}")
        self._start, self._end = start, end
        self._controls[_START].fill_(start)
        self._controls[_END].fill_(end)

    @property
    def control_guidance_start(self) -> float:
        """The fraction of the denoising steps where the control starts (see :meth:`set_step_range`)."""
        return self._start

    @control_guidance_start.setter
    def control_guidance_start(self, start: float) -> None:
        self.set_step_range(start, self._end)

    @property
    def control_guidance_end(self) -> float:
        """The fraction of the denoising steps where the control ends (see :meth:`set_step_range`)."""
        return self._end

    @control_guidance_end.setter
    def control_guidance_end(self, end: float) -> None:
        self.set_step_range(self._start, end)

    # ------------------------------------------------------------------ each model call
    def _after_model(self, model: nn.Module, args: tuple, output) -> None:
        if self._image is not None and not self._acted:
            raise CompiledWithoutNetworkError(
                f"LLLite: the {type(model).__name__} ran code torch.compile made before this network was attached, so "
                "the network did not act on this call (dynamo does not watch hooks). Attach networks before the "
                "compiled model's first call, or call torch.compiler.reset() after apply_to()."
            )
    def _follow(self, device: torch.device) -> None:
        """Move the network and its controls to the model's device."""
        if next(self.parameters()).device != device:
            self.to(device)
        if self._controls.device != device:
            self._controls = self._controls.to(device=device, dtype=_control_dtype(device))
            self._keyframe_table = self._keyframe_table.to(device=device, dtype=_control_dtype(device))
            self._timesteps = self._timesteps_source = None
    def _count_steps(self, scheduler) -> None:
        """Copy the scheduler's timesteps to the device once per generation (a new tensor each time)."""
        timesteps = getattr(scheduler, "timesteps", None)
        if not isinstance(timesteps, torch.Tensor) or timesteps is self._timesteps_source:
            return
        count = timesteps.numel()
        controls = self._controls
        if self._timesteps is None or self._timesteps.numel() < count:
            self._timesteps = torch.full((max(_TIMESTEP_SLOTS, count),), math.inf, dtype=controls.dtype,
                                         device=controls.device)
            torch._dynamo.mark_static_address(self._timesteps)
        else:
            self._timesteps[count:].fill_(math.inf)
        self._timesteps[:count].copy_(timesteps.flatten() / self.timestep_scale, non_blocking=True)
        controls[_STEPS].fill_(count)
        self._timesteps_source = timesteps
    def _step_gate(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fraction of the steps done, and whether this step is inside the step range (diffusers' rule,
        see :meth:`set_step_range`), as tensors."""
        controls = self._controls
        t = timestep.reshape(-1)[0].to(controls.dtype)
        start, end = controls[_START], controls[_END]
        if self._timesteps is None:  # a bare model: the fraction of denoising done, read from the timestep
            progress = (1 - t * (self.timestep_scale / 1000)).clamp(0, 1)
            return progress, (progress >= start) & (progress <= end)
        i = (self._timesteps - t).abs().argmin().to(controls.dtype)
        count = controls[_STEPS]
        return i / count, (i / count >= start) & ((i + 1) / count <= end)

    @property
    def _step_active(self) -> bool:
        """Whether the last model call was inside the step range (reads the device: for tests and debugging)."""
        return True if self._gate is None else bool(self._gate)
