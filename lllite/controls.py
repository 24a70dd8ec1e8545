"""What every LLLite network has, whatever model it adapts (:class:`ControlledNetwork`): the control image, the
strength beyond one number (keyframes over the denoising steps, masks over the image), the step range, and the
skeleton of attaching to a model, of each model call and of saving. Each family fills in its targets, its
modules' math and its file layout.

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
from contextlib import contextmanager
from numbers import Real
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CompiledWithoutNetworkError, LLLiteError
from .fileformat import write_tensors
from .hooks import Attachment, model_and_pipeline
from .images import to_control_tensor, to_mask_tensor

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


def token_grid(latent_size: tuple[int, int], depth: int) -> tuple[int, int]:
    """The token grid (rows, cols) of a block at this depth for a latent of ``latent_size``: the latent halved
    ``depth - 1`` times (SDXL's UNet levels; Anima's DiT, whose 2x2 patches halve it once, is depth 2).

    Each halving is a stride-2 conv with padding 1 (diffusers' downsamplers), so odd sizes round up.
    """
    h, w = latent_size
    for _ in range(depth - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def keep_in_place(old: tuple[torch.Tensor, ...] | None, new: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``new``'s values in ``old``'s tensors where every shape matches (a CUDA graph keeps their addresses).

    Otherwise copies of ``new``, so that nothing kept shares memory with a parameter.
    """
    if old is not None and all(o.shape == n.shape and o.dtype == n.dtype and o.device == n.device
                               for o, n in zip(old, new)):
        for o, n in zip(old, new):
            o.copy_(n)
        return old
    new = tuple(tensor.clone(memory_format=torch.contiguous_format) for tensor in new)
    for tensor in new:
        torch._dynamo.mark_static_address(tensor)
    return new


def token_masks(mask: torch.Tensor, latent_size: tuple[int, int], depth: int) -> torch.Tensor:
    """A mask (B, 1, H, W) in [0, 1] averaged over each token of a block at ``depth``: (B, tokens, 1),
    row-major like the block's tokens. All ones stays all ones and all zeros all zeros, exactly."""
    grid = token_grid(latent_size, depth)
    return F.adaptive_avg_pool2d(mask.float(), grid).flatten(2).transpose(1, 2)


class _Quiet:
    """How many model calls made on a network's behalf (v3's reference forward) are running: none acts in them."""

    depth = 0


@contextmanager
def networks_quiet():
    """No LLLite network acts on the model calls made inside (the frozen DiT's reference forward of a v3 network)."""
    _Quiet.depth += 1
    try:
        yield
    finally:
        _Quiet.depth -= 1


def quiet() -> bool:
    """Whether the model is running on a network's behalf (:func:`networks_quiet`)."""
    return _Quiet.depth > 0


#: Room for the scheduler's timesteps on the device; padding with +inf keeps the step count out of the graph's shapes.
_TIMESTEP_SLOTS = 1000
_START, _END, _STEPS = range(3)  # the slots of ControlledNetwork._controls


def _control_dtype(device: torch.device) -> torch.dtype:
    # float64 counts steps exactly as diffusers' Python floats do; Apple's GPUs have no float64
    return torch.float32 if device.type == "mps" else torch.float64


#: ``save``'s default dtype: the family's (:attr:`ControlledNetwork.file_dtype`).
FAMILY_DTYPE = "family"


class ControlledNetwork(nn.Module):
    """What every LLLite network has, whatever model it adapts: the control image, the strength
    (a multiplier or keyframes), the mask and the step range, and how a model call reads them; attaching,
    removing and saving.

    Each family's network builds on it (:class:`lllite.LLLiteNetwork` for SDXL,
    :class:`lllite.anima.AnimaLLLiteNetwork` for Anima) and fills in what differs: the Linears it adapts
    (:meth:`_target_paths`), what a model call prepares (:meth:`_refresh`, :meth:`_step_started`), a
    module's change (:meth:`_module_change`) and its file's metadata (:meth:`file_metadata`).

    The strength and the step range live in small tensors of fixed shape on the model's device,
    written in place, and the step gate is computed there from the timestep (:meth:`_step_gate`),
    so that a compiled model reads them without recompiling or syncing with the host.
    """

    #: The family's name in :mod:`lllite.families`.
    family: str = ""
    #: What ``python -m lllite inspect`` calls the file, after its path ("" says nothing more).
    kind: str = ""
    #: How the model's timestep relates to the scheduler's timesteps (in 0..1000): SDXL's UNet takes
    #: them as they are (1); Anima's transformer takes the flow-matching sigma, timesteps / 1000.
    timestep_scale: float = 1.0
    #: Channels of the control image (RGB; Anima's inpainting networks take RGB + mask).
    cond_in_channels: int = 3
    #: How messages name the model the network adapts.
    model_name: str = "UNet"
    #: What the model's forward calls the latents it denoises.
    sample_argument: str = "sample"
    #: The dtype ``save`` writes by default (the family's published files').
    file_dtype: torch.dtype = torch.float16
    #: The training metadata keys a summary of a file shows (:func:`lllite.notebook.file_summary`).
    summary_keys: tuple[str, ...] = ()

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
        self._scales: dict[int, torch.Tensor] = {}  # this model call's scale per depth
        self._token_masks: dict[int, torch.Tensor] = {}  # the mask at each depth's token grid, per model batch row
        self._masks_for: tuple | None = None  # what the token masks were computed for
        self._acted = False  # whether this model call reached the network (see _after_model)
        self._attachment: Attachment | None = None

    # ------------------------------------------------------------------ what the family fills in
    def lllite_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(kohya module name, module) of every module, in the file's order."""
        raise NotImplementedError

    def _target_paths(self, model: nn.Module) -> dict[str, str]:
        """kohya module name -> the path of its Linear in ``model``, after checking that ``model`` is this family's
        and has every module's Linear at the module's width (else :class:`LLLiteError` naming the module)."""
        raise NotImplementedError

    def _time_module(self, model: nn.Module) -> nn.Module:
        """The submodule the model calls once per call with the timestep as its input."""
        raise NotImplementedError

    def _attached(self, paths: dict[str, str]) -> None:
        """Called when the network attaches at ``paths``."""

    def _detached(self) -> None:
        """Called when the network is removed: forget what belonged to the model."""

    def _start_call(self) -> None:
        """Forget the last model call's intermediate results (a CUDA graph's outputs, about to be overwritten)."""

    def _check_sample(self, sample: torch.Tensor) -> None:
        """Raise :class:`LLLiteError` for latents this network cannot control."""

    def _mask_depths(self) -> set[int]:
        """The depths whose token grids the modules see (:func:`token_grid`)."""
        raise NotImplementedError

    def _refresh(self, batch: int, trains: bool) -> None:
        """On the host, before a model call of ``batch`` rows: what stays fixed while the control image, the latent
        size and the weights do. ``trains``: training mode with gradients (the embeddings train then)."""

    def _step_started(self) -> None:
        """Inside the model call, once the step's scales are known, before the first block."""

    def _module_change(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Module ``name``'s change to its Linear's input ``x``, and the scale it is multiplied by."""
        raise NotImplementedError

    def file_metadata(self) -> dict[str, str]:
        """The metadata the family's files carry of the network's architecture."""
        raise NotImplementedError

    def check_weights(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> None:
        """Refuse weights written for another kind of this family's network before loading them, naming what differs
        (:class:`lllite.fileformat.LLLiteFileError`); every kind of a family whose files hold only one accepts all."""

    def record_gates(self, on: bool = True) -> None:
        """Keep the gates of each model call, for :meth:`gate_maps`: only networks whose modules gate their change
        (Anima's v3) have them."""
        raise LLLiteError(f"{type(self).__name__} has no gates to record: gates belong to Anima's v3 networks "
                          "(lllite.gate 'scalar' or 'vector')")

    def gate_maps(self) -> dict[str, torch.Tensor]:
        """Each module's gate of the last model call on the token grid, (B, rows, cols), while :meth:`record_gates`
        is on; none for networks without gates."""
        return {}

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) rows that describe the network (``python -m lllite inspect``), parameters last."""
        return [("parameters", f"{sum(p.numel() for p in self.parameters()):,}")]

    # ------------------------------------------------------------------ description
    def __len__(self) -> int:
        return sum(1 for _ in self.lllite_modules())

    def __repr__(self) -> str:  # a child repr per module helps nobody
        return f"{type(self).__name__}({self.extra_repr()})"

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

    # ------------------------------------------------------------------ attaching
    def apply_to(self, target) -> "ControlledNetwork":
        """Attach to the family's denoising model, or to a pipeline's (its scheduler then counts the steps).

        Attaching registers forward pre-hooks (:mod:`lllite.hooks`); it never replaces modules or forwards,
        so the model's ``state_dict`` is untouched and :meth:`remove` restores it exactly. Every module is
        checked against the model before any attaches: a module for a block the model does not have, or of
        another width, raises an error naming it.
        """
        if self._attachment is not None:
            raise RuntimeError("this LLLite network is already attached; call remove() before apply_to() again")
        model, pipeline = model_and_pipeline(target)
        paths = self._target_paths(model)
        self._attached(paths)
        self._attachment = Attachment(self, model, pipeline, paths, time_module=self._time_module(model))
        return self

    def remove(self) -> None:
        """Detach from the model; it is exactly as before :meth:`apply_to`."""
        if self._attachment is None:
            return
        self._attachment.detach()
        self._attachment = None
        self._latent_size = self._masks_for = None
        self._timesteps = self._timesteps_source = None
        self._gate, self._scales, self._token_masks = None, {}, {}
        self._detached()

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

    # ------------------------------------------------------------------ each model call, on the host
    def _before_model(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """Everything a model call needs that is decided on the host; it reads no tensor's values."""
        sample = args[0] if args else kwargs.get(self.sample_argument)
        self._attachment.rehome()
        self._start_call()
        self._gate, self._scales, self._acted = None, {}, False
        if sample is None:
            return
        if self._image is not None:
            self._check_sample(sample)
        self._latent_size = tuple(sample.shape[-2:])
        batch = sample.shape[0]
        trains = self.training and torch.is_grad_enabled()
        # what is kept must stay writable by later calls made outside inference mode
        with torch.inference_mode(False), torch.no_grad():
            self._follow(sample.device)
            if self._image is None:
                return
            images = self._image.shape[0]
            if batch % images:
                raise LLLiteError(
                    f"LLLite: {images} control image(s) for a {self.model_name} batch of {batch}: give one image, or one "
                    "per generated image (the batch of 2x for classifier-free guidance is handled)"
                )
            self._count_steps(self._attachment.scheduler)
            self._refresh_masks(batch, sample.dtype)
            self._refresh(batch, trains)

    def _refresh_masks(self, batch: int, dtype: torch.dtype) -> None:
        """The mask at every depth's token grid, one row per model batch row, in the activations' dtype, kept in
        place (:func:`keep_in_place`); computed again only when the mask or the shapes change."""
        device = next(self.parameters()).device
        key = (self._mask_version, self._latent_size, batch, device, dtype)
        if key == self._masks_for:
            return
        for depth in sorted(self._mask_depths()):
            tokens = self._mask_rows(batch, depth, device, dtype)
            old = self._token_masks.get(depth)
            self._token_masks[depth] = keep_in_place(None if old is None else (old,), (tokens,))[0]
        self._masks_for = key

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

    # ------------------------------------------------------------------ inside the model call (traced when compiled)
    def _before_time(self, time_module: nn.Module, args: tuple) -> None:
        """This step's scale at each depth, strength x step gate x mask, from the timestep on the device:
        the tensor every module of that depth multiplies its change by."""
        if self._image is None or not self._token_masks or _Quiet.depth:
            return
        progress, gate = self._step_gate(args[0])
        self._gate = gate
        scale = strength_at(self._keyframe_table, progress) * gate
        self._scales = {depth: scale.to(tokens.dtype) * tokens for depth, tokens in self._token_masks.items()}
        self._step_started()

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

    def _change(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This network's change to the input ``x`` of the Linear ``name``, and the scale it is multiplied by."""
        if self._image is None or _Quiet.depth:
            return None
        self._acted = True
        if not torch.compiler.is_compiling() and not any(strength for _, strength in self._keyframes):
            return None  # eager skips the work; a compiled graph multiplies by the zero scale instead
        return self._module_change(name, x)

    @property
    def _step_active(self) -> bool:
        """Whether the last model call was inside the step range (reads the device: for tests and debugging)."""
        return True if self._gate is None else bool(self._gate)

    # ------------------------------------------------------------------ files
    def save(self, path, dtype: torch.dtype | str | None = FAMILY_DTYPE, metadata: dict | None = None,
             overwrite: bool = False) -> Path:
        """Write the network as its family's files are written (safetensors: kohya's keys, shapes and metadata),
        atomically, and return the path.

        Args:
            path: destination (``.safetensors``).
            dtype: dtype of the stored tensors; by default the family's (:attr:`file_dtype`: fp16 for SDXL, as
                published; bf16 for Anima, as kohya's bf16 training writes); None keeps the network's.
            metadata: extra string metadata (other values are stored as JSON); it overrides the network's own
                metadata and the architecture keys (:meth:`file_metadata`).
            overwrite: replace an existing file; otherwise an existing file raises
                :class:`lllite.errors.OutputExistsError`.
        """
        dtype = self.file_dtype if isinstance(dtype, str) and dtype == FAMILY_DTYPE else dtype
        merged = {**self.metadata, **self.file_metadata(), **(metadata or {})}
        return write_tensors(self.state_dict(), path, dtype, merged, overwrite)
