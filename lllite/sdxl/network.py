"""An SDXL LLLite network: its modules, and what each UNet call needs of them.

The skeleton (attaching by hooks, the controls, each call's gate, saving) is every network's
(:class:`lllite.controls.ControlledNetwork`); here is what SDXL's has of its own: one module per target
Linear of the UNet, each with its own conditioning stack, computed by groups (:mod:`lllite.sdxl.group`).

Built for ``torch.compile(unet, fullgraph=True)`` and CUDA graphs: everything that changes between
generations lives in tensors the UNet's graph reads, never in Python values it would specialize on.
The embedding terms and stacked weights of each group of modules and the mask at each block's token
grid are computed outside the graph when the control image, the mask, the latent size or the weights
change, and written in place when their shape is unchanged. Only "no control image" is a Python branch.
"""
from __future__ import annotations

from operator import attrgetter
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..controls import ControlledNetwork, keep_in_place
from ..errors import LLLiteError
from ..hooks import model_and_pipeline
from .config import LLLiteConfig
from .fileformat import default_metadata, modules_from_state_dict
from .group import GroupWeights, ModuleGroup, embedding_terms_together, group_modules
from .module import LLLiteModule, conditioning_stride
from .names import Target, find_targets, is_up_path

_MAX_STRIDE = conditioning_stride(3)
_VERSION = attrgetter("_version")


class LLLiteNetwork(ControlledNetwork):
    """A set of :class:`LLLiteModule`, one per target Linear, named as in kohya's files.

    ``state_dict()`` keys are exactly the keys of a kohya LLLite file. Make one with
    :func:`create_network` (fresh, for training) or :func:`lllite.load` (from a file).

    Args:
        modules: kohya module name -> module.
        metadata: string metadata carried from and to files.
    """

    family = "sdxl"
    summary_keys = ("ss_network_module", "ss_steps", "ss_sd_model_name")

    def __init__(self, modules: dict[str, LLLiteModule], metadata: dict[str, str] | None = None):
        super().__init__(metadata)
        if not modules:
            raise ValueError("an LLLite network needs at least one module")
        for name, module in modules.items():
            self.add_module(name, module)
        self._prepared: torch.Tensor | None = None  # the control image at the generated size (training)
        self._cached_for: tuple | None = None  # what the groups' cached tensors were computed for
        self._terms_together = False  # training without gradient checkpointing: all embedding terms at once
        self._groups: list[ModuleGroup] = []
        self._group_of: dict[str, tuple[ModuleGroup, int]] = {}
        self._weights: list[nn.Parameter] | None = None  # self.parameters(), listed once: read every UNet call
        self._weights_listed = 0
        self.register_load_state_dict_post_hook(LLLiteNetwork._forget_weights)

    # ------------------------------------------------------------------ description
    def lllite_modules(self) -> Iterator[tuple[str, LLLiteModule]]:
        return ((name, m) for name, m in self.named_children() if isinstance(m, LLLiteModule))

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
    def config(self) -> LLLiteConfig:
        """The network's settings, read off its modules (None for a dimension the modules do not share)."""
        return LLLiteConfig(self.cond_emb_dim, self.network_dim, self.up_path)

    def extra_repr(self) -> str:
        return (f"{len(self)} modules, cond_emb_dim={self.cond_emb_dim}, network_dim={self.network_dim}, "
                f"multiplier={self.multiplier}, steps=[{self.control_guidance_start}, {self.control_guidance_end}]")

    def summary(self) -> list[tuple[str, str]]:
        depths: dict[int, int] = {}
        for _, module in self.lllite_modules():
            depths[module.depth] = depths.get(module.depth, 0) + 1
        by_depth = ", ".join(f"{d}: {n}" for d, n in sorted(depths.items()))
        return [("modules", f"{len(self)}  (by depth: {by_depth})"), ("cond_emb_dim", str(self.cond_emb_dim)),
                ("network_dim", str(self.network_dim)), *super().summary(),
                ("up path", "yes" if self.up_path else "no")]

    def _forget_image(self) -> None:
        self._prepared, self._cached_for = None, None
        for group in self._groups:
            group.cached = None

    # ------------------------------------------------------------------ attaching
    def _target_paths(self, unet: nn.Module) -> dict[str, str]:
        if not hasattr(unet, "time_proj") or not hasattr(unet, "down_blocks"):
            raise LLLiteError(
                f"this is an SDXL LLLite network and {type(unet).__name__} is not an SDXL UNet; an SDXL network "
                "attaches to an SDXL pipeline or its UNet (Anima's networks are read by lllite.load from their own files)"
            )
        targets = find_targets(unet, up_path=True)
        self._check_against(targets)
        return {name: targets[name].path for name, _ in self.lllite_modules()}

    def _time_module(self, unet: nn.Module) -> nn.Module:
        return unet.time_proj

    def _attached(self, paths: dict[str, str]) -> None:
        self._groups = group_modules(dict(self.lllite_modules()), paths)
        self._group_of = {name: (group, i) for group in self._groups for i, name in enumerate(group.names)}

    def _detached(self) -> None:
        self._groups, self._group_of = [], {}
        self._prepared = self._cached_for = None

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

    def _start_call(self) -> None:
        for group in self._groups:
            group.pending = group.step_terms = None

    def _mask_depths(self) -> set[int]:
        return {group.depth for group in self._groups}

    def _refresh(self, batch: int, trains: bool) -> None:
        """Training (``trains``) keeps only the prepared image: the embeddings train, so they are computed in
        every step. Inference also keeps each group's stacked weights and embedding terms, repeated for the
        UNet batch."""
        images = self._image.shape[0]
        parameter = next(self.parameters())
        # Under gradient checkpointing each group embeds inside its block, which the checkpoint recomputes;
        # computed together before the first block, every module's convolutions would be kept for the backward.
        self._terms_together = trains and not getattr(self._attachment.model, "is_gradient_checkpointing", False)
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
            kept = keep_in_place(old, (*weights, terms))
            group.cached = (GroupWeights(*kept[:-1]) if weights else None, kept[-1])
        self._cached_for = key

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
    def _step_started(self) -> None:
        """Training: every group's embedding terms with gradients, together, before the first block."""
        if self._terms_together and self._prepared is not None:
            for group, terms in zip(self._groups, embedding_terms_together(self._groups, self._prepared,
                                                                          self._latent_size)):
                group.step_terms = terms

    def _module_change(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
            terms = group.step_terms
            if terms is None:
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
    def file_metadata(self) -> dict[str, str]:
        return default_metadata(dict(self.lllite_modules()))


def from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> LLLiteNetwork:
    """The network of a kohya SDXL LLLite file's tensors (float32), every dimension read from the shapes.

    Raises:
        LLLiteFileError: no LLLite keys, unknown or missing parameters, inconsistent shapes.
    """
    return LLLiteNetwork(modules_from_state_dict(tensors, source=source), metadata)


def create_network(unet: nn.Module, cond_emb_dim: int = 32, network_dim: int = 64, up_path: bool = False,
                   zero_init: bool = True) -> LLLiteNetwork:
    """A fresh, trainable LLLite network for an SDXL-layout UNet (not yet attached).

    Args:
        unet: diffusers ``UNet2DConditionModel`` with SDXL's block layout (real SDXL or smaller), or a
            pipeline holding one; a UNet on the ``meta`` device works.
        cond_emb_dim, network_dim, up_path: the settings (:class:`lllite.sdxl.LLLiteConfig`; kohya's canny
            model by default: 136 modules on SDXL).
        zero_init: zero the ``up`` projections so that the fresh network changes nothing.
    """
    config = LLLiteConfig(cond_emb_dim, network_dim, up_path)
    unet, _ = model_and_pipeline(unet)
    targets = find_targets(unet, up_path=config.up_path)
    if not targets:
        raise ValueError("the UNet has no transformer blocks to adapt")
    modules = {
        name: LLLiteModule(t.in_features, config.cond_emb_dim, config.network_dim, t.depth, zero_init=zero_init)
        for name, t in targets.items()
    }
    return LLLiteNetwork(modules)
