"""An LLLite network: its modules, and attaching them to a diffusers SDXL UNet.

Attaching registers forward pre-hooks; it never replaces modules or forwards, so the UNet's
``state_dict`` is untouched and :meth:`LLLiteNetwork.remove` restores it exactly. A pre-hook on the
UNet itself records the latent size and the timestep of each call, which gives every module its
token grid (any resolution) and the denoising progress (the step range).
"""
from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fileformat
from .images import to_control_tensor
from .module import LLLiteModule, conditioning_stride, token_grid
from .names import Target, find_targets, is_up_path

_MAX_STRIDE = conditioning_stride(3)


class _Dispatch:
    """The single pre-hook on one target Linear; it sums the changes of every attached network.

    Each network reads the Linear's original input, so several networks add up independently of the
    order in which they were attached.
    """

    def __init__(self, linear: nn.Module):
        self.entries: list[tuple[LLLiteNetwork, str]] = []
        self.handle = linear.register_forward_pre_hook(self)

    def __call__(self, linear: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        delta = None
        for network, name in self.entries:
            change = network._change(name, x)
            if change is not None:
                delta = change if delta is None else delta + change
        return None if delta is None else (x + delta, *args[1:])


_DISPATCH: "weakref.WeakKeyDictionary[nn.Module, _Dispatch]" = weakref.WeakKeyDictionary()


def _hook(linear: nn.Module, network: "LLLiteNetwork", name: str) -> None:
    dispatch = _DISPATCH.get(linear)
    if dispatch is None:
        dispatch = _DISPATCH[linear] = _Dispatch(linear)
    dispatch.entries.append((network, name))


def _unhook(linear: nn.Module, network: "LLLiteNetwork", name: str) -> None:
    dispatch = _DISPATCH.get(linear)
    if dispatch is None:
        return
    dispatch.entries = [(n, m) for n, m in dispatch.entries if not (n is network and m == name)]
    if not dispatch.entries:
        dispatch.handle.remove()
        del _DISPATCH[linear]


def _unet_and_scheduler(target: Any) -> tuple[nn.Module, Any]:
    unet = getattr(target, "unet", None)
    if isinstance(unet, nn.Module):
        return unet, getattr(target, "scheduler", None)
    if isinstance(target, nn.Module):
        return target, None
    raise TypeError(f"apply_to expects a diffusers UNet2DConditionModel or an SDXL pipeline, got {type(target).__name__}")


class _Attachment:
    """What :meth:`LLLiteNetwork.apply_to` set up, so that :meth:`remove` can undo exactly that."""

    def __init__(self, unet: nn.Module, scheduler: Any, linears: dict[str, tuple[str, nn.Module]]):
        self.unet = unet
        self.scheduler = scheduler
        self.linears = linears  # module name -> (path in the UNet, hooked module)
        self.handle: Any = None


class LLLiteNetwork(nn.Module):
    """A set of :class:`LLLiteModule`, one per target Linear, named as in kohya's files.

    ``state_dict()`` keys are exactly the keys of a kohya LLLite file. Make one with
    :func:`create_network` (fresh, for training) or :func:`lllite.load` (from a file).

    Args:
        modules: kohya module name -> module.
        metadata: string metadata carried from and to files.
    """

    def __init__(self, modules: dict[str, LLLiteModule], metadata: dict[str, str] | None = None):
        super().__init__()
        if not modules:
            raise ValueError("an LLLite network needs at least one module")
        for name, module in modules.items():
            self.add_module(name, module)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.multiplier = 1.0
        self.control_guidance_start, self.control_guidance_end = 0.0, 1.0
        self._image: torch.Tensor | None = None
        self._image_version = 0
        self._latent_size: tuple[int, int] | None = None
        self._step_active = True
        self._prepared: tuple[tuple, torch.Tensor] | None = None
        self._cache: dict[str, tuple[tuple, torch.Tensor]] = {}
        self._attachment: _Attachment | None = None

    # ------------------------------------------------------------------ description
    def lllite_modules(self) -> Iterator[tuple[str, LLLiteModule]]:
        return ((name, m) for name, m in self.named_children() if isinstance(m, LLLiteModule))

    def __len__(self) -> int:
        return sum(1 for _ in self.lllite_modules())

    def _common(self, attr: str) -> int | None:
        values = {getattr(m, attr) for _, m in self.lllite_modules()}
        return values.pop() if len(values) == 1 else None

    @property
    def cond_emb_dim(self) -> int | None:
        """E shared by every module (None if the modules differ)."""
        return self._common("cond_emb_dim")

    @property
    def network_dim(self) -> int | None:
        """M, the width of ``down``/``mid``, shared by every module (None if the modules differ)."""
        return self._common("network_dim")

    @property
    def up_path(self) -> bool:
        """Whether any module adapts the up path (kohya's default networks have none)."""
        return any(is_up_path(name) for name, _ in self.lllite_modules())

    @property
    def is_attached(self) -> bool:
        return self._attachment is not None

    def extra_repr(self) -> str:
        return (f"{len(self)} modules, cond_emb_dim={self.cond_emb_dim}, network_dim={self.network_dim}, "
                f"multiplier={self.multiplier}, steps=[{self.control_guidance_start}, {self.control_guidance_end}]")

    def __repr__(self) -> str:  # 136 child reprs help nobody
        return f"LLLiteNetwork({self.extra_repr()})"

    # ------------------------------------------------------------------ controls
    def set_cond_image(self, image) -> None:
        """Set the control image; ``None`` switches the network off.

        Args:
            image: a tensor (B, 3, H, W) or (3, H, W) in [-1, 1], or PIL / uint8 numpy RGB (read as
                ``x / 127.5 - 1``), or a list of those. Use one image for the whole batch or one per
                generated image; with classifier-free guidance the UNet batch is twice that, and the
                images are repeated for both halves. Any size: it is resized to the generated
                image's pixel size when it differs.
        """
        self._image = None if image is None else to_control_tensor(image)
        self._image_version += 1
        self._prepared = None
        self._cache.clear()

    @property
    def cond_image(self) -> torch.Tensor | None:
        """The control image as set, (B, 3, H, W) in [-1, 1], or None."""
        return self._image

    def set_multiplier(self, multiplier: float) -> None:
        """Strength of the control: 0 switches it off, 1 is the trained strength."""
        multiplier = float(multiplier)
        if not math.isfinite(multiplier):
            raise ValueError(f"multiplier must be a finite number, got {multiplier}")
        self.multiplier = multiplier

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
        self.control_guidance_start, self.control_guidance_end = start, end

    # ------------------------------------------------------------------ attaching
    def apply_to(self, target) -> "LLLiteNetwork":
        """Attach to a diffusers SDXL UNet, or to a pipeline's ``unet`` (its scheduler then counts steps).

        Checks every module against the UNet before attaching any: a module for a block the UNet
        does not have, or of another width or depth, raises ``ValueError`` naming it.
        """
        if self._attachment is not None:
            raise RuntimeError("this LLLite network is already attached; call remove() before apply_to() again")
        unet, scheduler = _unet_and_scheduler(target)
        targets = find_targets(unet, up_path=True)
        self._check_against(targets)
        attachment = _Attachment(unet, scheduler, {})
        for name, _ in self.lllite_modules():
            path = targets[name].path
            linear = unet.get_submodule(path)
            _hook(linear, self, name)
            attachment.linears[name] = (path, linear)
        attachment.handle = unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        self._attachment = attachment
        return self

    def _check_against(self, targets: dict[str, Target]) -> None:
        unknown = [name for name, _ in self.lllite_modules() if name not in targets]
        if unknown:
            raise ValueError(
                f"{len(unknown)} LLLite module(s) name blocks this UNet does not have, e.g. {unknown[0]!r}; "
                "the network was made for a UNet with more transformer blocks (another base model?)"
            )
        for name, module in self.lllite_modules():
            target = targets[name]
            if module.in_dim != target.in_features:
                raise ValueError(
                    f"LLLite module {name!r} expects inputs of width {module.in_dim} (down.0.weight "
                    f"{tuple(module.down[0].weight.shape)}) but the UNet's {target.path} takes "
                    f"{target.in_features}: the network was made for another UNet"
                )
            if module.depth != target.depth:
                raise ValueError(
                    f"LLLite module {name!r} has conditioning depth {module.depth} but its block "
                    f"{target.block.sgm} sits at depth {target.depth}"
                )

    def remove(self) -> None:
        """Detach from the UNet; the UNet is exactly as before :meth:`apply_to`."""
        attachment = self._attachment
        if attachment is None:
            return
        for name, (_, linear) in attachment.linears.items():
            _unhook(linear, self, name)
        attachment.handle.remove()
        self._attachment = None
        self._latent_size = None
        self._step_active = True
        self._prepared = None
        self._cache.clear()

    def _rehome(self) -> None:
        """Follow target Linears that were wrapped after attaching (``pipe.load_lora_weights``)."""
        attachment = self._attachment
        for name, (path, linear) in attachment.linears.items():
            current = attachment.unet.get_submodule(path)
            if current is not linear:
                _unhook(linear, self, name)
                _hook(current, self, name)
                attachment.linears[name] = (path, current)

    def _before_unet(self, unet: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        self._rehome()
        if sample is not None:
            self._latent_size = tuple(sample.shape[-2:])
            parameter = next(self.parameters())
            if parameter.device != sample.device:
                self.to(sample.device)
        self._step_active = timestep is None or self._in_step_range(timestep)

    # ------------------------------------------------------------------ the hooked computation
    def _in_step_range(self, timestep) -> bool:
        if (self.control_guidance_start, self.control_guidance_end) == (0.0, 1.0):
            return True  # without reading the timestep, which would wait for the GPU
        timestep = float(torch.as_tensor(timestep).flatten()[0])
        timesteps = getattr(self._attachment.scheduler, "timesteps", None)
        if timesteps is not None and len(timesteps):
            steps = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
            i, n = int((steps - timestep).abs().argmin()), len(steps)
            return i / n >= self.control_guidance_start and (i + 1) / n <= self.control_guidance_end
        progress = 1.0 - timestep / 1000.0
        return self.control_guidance_start <= progress <= self.control_guidance_end

    def _prepared_image(self, device: torch.device, dtype: torch.dtype) -> tuple[tuple, torch.Tensor]:
        """The control image at the generated image's pixel size, padded to a multiple of 32.

        Replicate-padding lets every depth's strided convs cover the UNet's token grid when the size
        is not a multiple of 32; the embedding is then cropped to that grid.
        """
        image = self._image
        latent = self._latent_size or (image.shape[-2] // 8, image.shape[-1] // 8)
        key = (self._image_version, latent, device, dtype)
        if self._prepared is not None and self._prepared[0] == key:
            return self._prepared
        size = (latent[0] * 8, latent[1] * 8)
        prepared = image.to(device=device, dtype=torch.float32)
        if tuple(prepared.shape[-2:]) != size:
            prepared = F.interpolate(prepared, size=size, mode="bilinear", align_corners=False, antialias=True)
        pad_h, pad_w = (-size[0]) % _MAX_STRIDE, (-size[1]) % _MAX_STRIDE
        if pad_h or pad_w:
            prepared = F.pad(prepared, (0, pad_w, 0, pad_h), mode="replicate")
        self._prepared = (key, prepared.to(dtype))
        return self._prepared

    def _embedding(self, name: str, module: LLLiteModule, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        image_key, image = self._prepared_image(device, dtype)
        grid = token_grid(image_key[1], module.depth)
        if self.training and torch.is_grad_enabled():
            return module.embed(image, grid)  # trains conditioning1: never reuse across steps
        weights = tuple((p.data_ptr(), p._version) for p in module.conditioning1.parameters())
        key = (image_key, weights)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            emb = module.embed(image, grid)
        self._cache[name] = (key, emb)
        return emb

    def _change(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        if self.multiplier == 0 or self._image is None or not self._step_active:
            return None
        module: LLLiteModule = getattr(self, name)
        dtype = module.down[0].weight.dtype
        emb = self._embedding(name, module, x.device, dtype)
        if emb.shape[1] != x.shape[1]:
            raise ValueError(
                f"LLLite module {name!r}: the control image gives {emb.shape[1]} tokens but the block has "
                f"{x.shape[1]}; was the UNet called on a latent of another size than recorded?"
            )
        if emb.shape[0] != x.shape[0]:
            if x.shape[0] % emb.shape[0]:
                raise ValueError(
                    f"LLLite: {emb.shape[0]} control image(s) for a UNet batch of {x.shape[0]}: give one "
                    "image, or one per generated image (the batch of 2x for classifier-free guidance is handled)"
                )
            emb = emb.repeat(x.shape[0] // emb.shape[0], 1, 1)
        change = module(x.to(dtype), emb)
        return (change * self.multiplier).to(x.dtype)

    # ------------------------------------------------------------------ files
    def save(self, path, dtype: torch.dtype | None = torch.float16, metadata: dict | None = None,
             overwrite: bool = False) -> Path:
        """Write a kohya-format LLLite file (safetensors), atomically, and return its path.

        Args:
            path: destination (``.safetensors``).
            dtype: dtype of the stored tensors (the published files are fp16); None keeps the network's.
            metadata: extra string metadata (other values are stored as JSON); it overrides the
                network's own metadata and the defaults (modelspec architecture, dimensions).
            overwrite: replace an existing file; otherwise an existing file raises
                :class:`lllite.errors.OutputExistsError`.
        """
        modules = dict(self.lllite_modules())
        merged = {**self.metadata, **fileformat.default_metadata(modules), **(metadata or {})}
        return fileformat.save(modules, path, dtype=dtype, metadata=merged, overwrite=overwrite)


def load(path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LLLiteNetwork:
    """Read a kohya-format LLLite file (fp16, bf16 or fp32; safetensors, or a tensors-only pickle).

    Args:
        path: the ``.safetensors`` file (``.pt``/``.ckpt`` are read with ``weights_only=True``).
        dtype: dtype of the returned network's parameters.
        device: where to put them.

    Returns the network in eval mode, ready for inference; call ``.train()`` to fine-tune it.

    Raises:
        lllite.fileformat.LLLiteFileError: not a usable LLLite file (the message says why).
        lllite.errors.InputMissingError: no file at ``path``.
    """
    tensors, metadata = fileformat.read_state_dict(path)
    modules = fileformat.modules_from_state_dict(tensors, source=str(path))
    return LLLiteNetwork(modules, metadata).to(device=device, dtype=dtype).eval()


def create_network(unet: nn.Module, cond_emb_dim: int = 32, network_dim: int = 64, up_path: bool = False,
                   zero_init: bool = True) -> LLLiteNetwork:
    """A fresh, trainable LLLite network for an SDXL-layout UNet (not yet attached).

    Args:
        unet: diffusers ``UNet2DConditionModel`` with SDXL's block layout (real SDXL or smaller);
            a UNet on the ``meta`` device works.
        cond_emb_dim: channels of the conditioning embedding (kohya's ``cond_emb_dim``, 32 for canny).
        network_dim: width of the down/mid projections (kohya's ``network_dim``, 64 for canny).
        up_path: also adapt the up path's transformer blocks (kohya's default is the down path and
            the middle: 136 modules on SDXL).
        zero_init: zero the ``up`` projections so that the fresh network changes nothing.
    """
    targets = find_targets(unet, up_path=up_path)
    if not targets:
        raise ValueError("the UNet has no transformer blocks to adapt")
    modules = {
        name: LLLiteModule(t.in_features, cond_emb_dim, network_dim, t.depth, zero_init=zero_init)
        for name, t in targets.items()
    }
    return LLLiteNetwork(modules)
