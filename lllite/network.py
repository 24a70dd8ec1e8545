"""An LLLite network: its modules, their controls, and attaching them to a diffusers SDXL UNet.

Attaching registers forward pre-hooks (:mod:`lllite.hooks`); it never replaces modules or forwards,
so the UNet's ``state_dict`` is untouched and :meth:`LLLiteNetwork.remove` restores it exactly.

Built for ``torch.compile(unet, fullgraph=True)`` and CUDA graphs: everything that changes between
generations lives in tensors the UNet's graph reads, never in Python values it would specialize on.
The multiplier (a number or keyframes, :mod:`lllite.controls`) and the step range sit in small
tensors of fixed shape on the UNet's device, updated in place; the step's scale (strength at this
step x step gate x mask) is computed there from the timestep, without reading it on the host; the
embedding terms and stacked weights of each group of modules (:mod:`lllite.group`) and the mask at
each block's token grid are computed outside the graph when the control image, the mask, the latent
size or the weights change, and written in place when their shape is unchanged. Only "no control
image" is a Python branch.
"""
from __future__ import annotations

from operator import attrgetter
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fileformat
from .controls import ControlledNetwork, strength_at
from .errors import LLLiteError
from .group import GroupWeights, ModuleGroup, group_modules
from .hooks import Attachment, model_and_pipeline
from .module import LLLiteModule, conditioning_stride
from .names import Target, find_targets, is_up_path

_MAX_STRIDE = conditioning_stride(3)
_VERSION = attrgetter("_version")


def _keep(old: tuple[torch.Tensor, ...] | None, new: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
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


class LLLiteNetwork(ControlledNetwork):
    """A set of :class:`LLLiteModule`, one per target Linear, named as in kohya's files.

    ``state_dict()`` keys are exactly the keys of a kohya LLLite file. Make one with
    :func:`create_network` (fresh, for training) or :func:`lllite.load` (from a file).

    Args:
        modules: kohya module name -> module.
        metadata: string metadata carried from and to files.
    """

    def __init__(self, modules: dict[str, LLLiteModule], metadata: dict[str, str] | None = None):
        super().__init__(metadata)
        if not modules:
            raise ValueError("an LLLite network needs at least one module")
        for name, module in modules.items():
            self.add_module(name, module)
        self._prepared: torch.Tensor | None = None  # the control image at the generated size (training)
        self._cached_for: tuple | None = None  # what the groups' cached tensors were computed for
        self._masks_for: tuple | None = None  # what the token masks were computed for
        self._groups: list[ModuleGroup] = []
        self._group_of: dict[str, tuple[ModuleGroup, int]] = {}
        self._scales: dict[int, torch.Tensor] = {}  # this UNet call's scale per depth
        self._token_masks: dict[int, torch.Tensor] = {}  # the mask at each depth's token grid, per UNet batch row
        self._weights: list[nn.Parameter] | None = None  # self.parameters(), listed once: read every UNet call
        self._weights_listed = 0
        self.register_load_state_dict_post_hook(LLLiteNetwork._forget_weights)

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

    def _forget_image(self) -> None:
        self._prepared, self._cached_for = None, None
        for group in self._groups:
            group.cached = None

    def extra_repr(self) -> str:
        return (f"{len(self)} modules, cond_emb_dim={self.cond_emb_dim}, network_dim={self.network_dim}, "
                f"multiplier={self.multiplier}, steps=[{self.control_guidance_start}, {self.control_guidance_end}]")

    def __repr__(self) -> str:  # 136 child reprs help nobody
        return f"LLLiteNetwork({self.extra_repr()})"

    # ------------------------------------------------------------------ attaching
    def apply_to(self, target) -> "LLLiteNetwork":
        """Attach to a diffusers SDXL UNet, or to a pipeline's ``unet`` (its scheduler then counts steps).

        Checks every module against the UNet before attaching any: a module for a block the UNet
        does not have, or of another width or depth, raises ``ValueError`` naming it.
        """
        if self._attachment is not None:
            raise RuntimeError("this LLLite network is already attached; call remove() before apply_to() again")
        unet, pipeline = model_and_pipeline(target)
        if not hasattr(unet, "time_proj") or not hasattr(unet, "down_blocks"):
            raise LLLiteError(
                f"this is an SDXL LLLite network and {type(unet).__name__} is not an SDXL UNet; an SDXL network "
                "attaches to an SDXL pipeline or its UNet (Anima's networks are read by lllite.load from their own files)"
            )
        targets = find_targets(unet, up_path=True)
        self._check_against(targets)
        modules = dict(self.lllite_modules())
        paths = {name: targets[name].path for name in modules}
        self._groups = group_modules(modules, paths)
        self._group_of = {name: (group, i) for group in self._groups for i, name in enumerate(group.names)}
        self._attachment = Attachment(self, unet, pipeline, paths, time_module=unet.time_proj)
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
        if self._attachment is None:
            return
        self._attachment.detach()
        self._attachment = None
        self._groups, self._group_of = [], {}
        self._latent_size = self._prepared = self._cached_for = self._masks_for = None
        self._timesteps = self._timesteps_source = None
        self._gate, self._scales, self._token_masks = None, {}, {}

    # ------------------------------------------------------------------ before each UNet call, on the host
    def _apply(self, fn, recurse: bool = True):
        self._forget_weights()  # .to() and its kind may give the modules new parameters
        return super()._apply(fn, recurse)

    def _forget_weights(self, *_) -> None:
        self._weights = None

    def _weights_version(self) -> tuple[int, int]:
        """Changes whenever a weight does: in place (version counters) or replaced."""
        if self._weights is None:
            self._weights = list(self.parameters())
            self._weights_listed += 1
        return self._weights_listed, sum(map(_VERSION, self._weights))

    def _before_model(self, unet: nn.Module, args: tuple, kwargs: dict) -> None:
        """Everything a UNet call needs that is decided on the host; it reads no tensor's values."""
        sample = args[0] if args else kwargs.get("sample")
        self._attachment.rehome()
        for group in self._groups:
            group.pending = None
        self._gate, self._scales = None, {}  # the last call's: a CUDA graph's outputs, about to be overwritten
        self._acted = False
        if sample is None:
            return
        self._latent_size = tuple(sample.shape[-2:])
        trains = self.training and torch.is_grad_enabled()
        # what is kept must stay writable by later calls made outside inference mode
        with torch.inference_mode(False), torch.no_grad():
            self._follow(sample.device)
            if self._image is not None:
                self._count_steps(self._attachment.scheduler)
                self._refresh(sample.shape[0], sample.dtype, trains)

    def _refresh(self, batch: int, dtype: torch.dtype, trains: bool) -> None:
        """Compute what stays fixed while the control image, the mask, the latent size and the weights do.

        The mask at every depth's token grid, in ``dtype`` (the UNet's activations'), when the mask or
        the shapes change. Training (``trains``: training mode with gradients) keeps only the prepared
        image besides: the embeddings train, so they are computed in every step. Inference also keeps
        each group's stacked weights and embedding terms, repeated for the UNet batch.
        """
        images = self._image.shape[0]
        if batch % images:
            raise ValueError(
                f"LLLite: {images} control image(s) for a UNet batch of {batch}: give one image, or one per "
                "generated image (the batch of 2x for classifier-free guidance is handled)"
            )
        parameter = next(self.parameters())
        masks = (self._mask_version, self._latent_size, batch, parameter.device, dtype)
        if masks != self._masks_for:
            self._refresh_masks(batch, parameter.device, dtype)
            self._masks_for = masks
        versions = None if trains else self._weights_version()
        key = (self._image_version, self._latent_size, batch, parameter.device, parameter.dtype, trains, versions)
        if key == self._cached_for:
            return
        image = self._prepared_image(parameter.device, parameter.dtype)
        self._prepared = image if trains else None
        for group in self._groups:
            if trains:
                group.cached = None
                continue
            terms = group.embedding_terms(image, self._latent_size).repeat(1, batch // images, 1, 1)
            weights = group.weights() if len(group) > 1 else ()
            old = None if group.cached is None else (*(group.cached[0] or ()), group.cached[1])
            kept = _keep(old, (*weights, terms))
            group.cached = (GroupWeights(*kept[:-1]) if weights else None, kept[-1])
        self._cached_for = key

    def _refresh_masks(self, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        """The mask at every depth's token grid, one row per UNet batch row, kept in place (:meth:`_mask_rows`)."""
        for depth in sorted({group.depth for group in self._groups}):
            tokens = self._mask_rows(batch, depth, device, dtype)
            old = self._token_masks.get(depth)
            self._token_masks[depth] = _keep(None if old is None else (old,), (tokens,))[0]

    def _prepared_image(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The control image at the generated image's pixel size, padded to a multiple of 32.

        Replicate-padding lets every depth's strided convs cover the UNet's token grid when the size
        is not a multiple of 32; the embedding is then cropped to that grid.
        """
        image = self._image
        latent = self._latent_size or (image.shape[-2] // 8, image.shape[-1] // 8)
        size = (latent[0] * 8, latent[1] * 8)
        prepared = image.to(device=device, dtype=torch.float32)
        if tuple(prepared.shape[-2:]) != size:
            prepared = F.interpolate(prepared, size=size, mode="bilinear", align_corners=False, antialias=True)
        pad_h, pad_w = (-size[0]) % _MAX_STRIDE, (-size[1]) % _MAX_STRIDE
        if pad_h or pad_w:
            prepared = F.pad(prepared, (0, pad_w, 0, pad_h), mode="replicate")
        return prepared.to(dtype)

    # ------------------------------------------------------------------ inside the UNet call (traced when compiled)
    def _before_time(self, time_proj: nn.Module, args: tuple) -> None:
        """This step's scale at each depth, strength x step gate x mask, from the timestep on the device:
        the tensor every module of that depth multiplies its change by."""
        if self._image is None:
            return
        progress, gate = self._step_gate(args[0])
        self._gate = gate
        scale = strength_at(self._keyframe_table, progress) * gate
        self._scales = {depth: scale.to(tokens.dtype) * tokens for depth, tokens in self._token_masks.items()}

    def _change(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This network's change to the input ``x`` of the Linear ``name``, and the scale it is multiplied by."""
        if self._image is None:
            return None
        self._acted = True
        if not torch.compiler.is_compiling() and not any(strength for _, strength in self._keyframes):
            return None  # eager skips the work; a compiled graph multiplies by the zero scale instead
        group, index = self._group_of[name]
        pending = group.pending
        if pending is not None and pending[0] is x:
            changes = pending[1]  # computed by the group's first Linear, on this very input
        else:
            changes = self._group_changes(group, x)
        group.pending = (x, changes) if index + 1 < len(group) else None
        return changes[index], self._scales[group.depth]

    def _group_changes(self, group: ModuleGroup, x: torch.Tensor) -> torch.Tensor:
        dtype = group.modules[0].down[0].weight.dtype
        if self.training and torch.is_grad_enabled():  # the embeddings train: computed in every step
            terms = group.embedding_terms(self._prepared, self._latent_size)
            if x.shape[0] % terms.shape[1] == 0:
                terms = terms.repeat(1, x.shape[0] // terms.shape[1], 1, 1)
            weights = group.weights()
        else:
            weights, terms = group.cached
            weights = weights or group.weights()
        if terms.shape[1:3] != x.shape[:2]:
            raise ValueError(
                f"LLLite module {group.names[0]!r}: the control image gives {terms.shape[2]} tokens for a batch of "
                f"{terms.shape[1]} but the block has {x.shape[1]} for {x.shape[0]}; was the UNet called on a latent "
                "of another size than recorded?"
            )
        return group.changes(x.to(dtype), terms, weights)

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


def load(path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Read a kohya-format LLLite file, SDXL's or Anima's (fp16, bf16 or fp32; safetensors, or a tensors-only pickle).

    Args:
        path: the ``.safetensors`` file (``.pt``/``.ckpt`` are read with ``weights_only=True``).
        dtype: dtype of the returned network's parameters.
        device: where to put them.

    Returns an :class:`LLLiteNetwork` for an SDXL file, an :class:`lllite.anima.AnimaLLLiteNetwork` for an
    Anima one (its architecture read from the file's ``lllite.*`` metadata), in eval mode, ready for
    inference; call ``.train()`` to fine-tune it.

    Raises:
        lllite.fileformat.LLLiteFileError: not a usable LLLite file (the message says why).
        lllite.errors.InputMissingError: no file at ``path``.
    """
    tensors, metadata = fileformat.read_state_dict(path)
    if fileformat.is_anima(tensors, metadata):
        from .anima.network import from_state_dict

        network = from_state_dict(tensors, metadata, source=str(path))
    else:
        network = LLLiteNetwork(fileformat.modules_from_state_dict(tensors, source=str(path)), metadata)
    return network.to(device=device, dtype=dtype).eval()


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
