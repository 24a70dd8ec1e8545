"""An Anima LLLite network: the shared trunk, its modules, and what each call of Anima's DiT needs of them.

The skeleton (attaching by hooks to ``CosmosTransformer3DModel``'s target Linears, the controls, each call's
gate, saving) is every network's (:class:`lllite.controls.ControlledNetwork`); what is Anima's is here: one
trunk embeds the control image once per image for every module (:mod:`lllite.anima.module`), at the DiT's
token grid (latent / 2).

In training the embedding is computed in every step, in the hook on the transformer's timestep
projection: before the first block, so that gradient checkpointing of the blocks recomputes nothing
of it and it trains through every module.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..controls import ControlledNetwork
from ..errors import LLLiteError
from ..hooks import model_and_pipeline
from ..precision import in_float32
from .config import AnimaLLLiteConfig
from .fileformat import TRUNK, check_shapes, config_from_file, file_metadata, module_widths
from .module import AnimaLLLiteModule, ConditioningTrunk
from .names import find_targets, is_anima_transformer, parse_target_layers

_TOKEN_DEPTH = 2  # the token grid is the latent halved once (the DiT's 2x2 patches): SDXL's depth 2 grid


class AnimaLLLiteNetwork(ControlledNetwork):
    """kohya's Anima ControlNet-LLLite (v2): ``state_dict()`` keys are exactly the keys of its files.

    Make one with :func:`create_network` (fresh, for training) or :func:`lllite.load` (from a file).

    Args:
        config: the architecture (dimensions, targets, trunk).
        modules: kohya module name -> module.
        metadata: string metadata carried from and to files.
    """

    family = "anima"
    kind = "Anima LLLite, kohya's v2"
    timestep_scale = 1000.0  # the DiT takes sigma = timestep / 1000
    model_name = "transformer"
    sample_argument = "hidden_states"
    file_dtype = torch.bfloat16
    summary_keys = ("modelspec.architecture", "lllite.version", "lllite.target_atomics", "lllite.cond_dim",
                    "lllite.cond_resblocks", "ss_steps", "ss_sd_model_name")

    def __init__(self, config: AnimaLLLiteConfig, modules: dict[str, AnimaLLLiteModule],
                 metadata: dict[str, str] | None = None):
        super().__init__(metadata)
        if not modules:
            raise ValueError("an LLLite network needs at least one module")
        self.config = config
        self.cond_in_channels = config.cond_in_channels
        self.atomics = parse_target_layers(config.target_layers)
        self.add_module(TRUNK, ConditioningTrunk(config))
        for name, module in modules.items():
            self.add_module(name, module)
        self._modules_by_name = dict(modules)
        self._embedding: torch.Tensor | None = None  # this call's embedding, (model batch, tokens, E)
        self._cached: tuple[tuple, torch.Tensor] | None = None  # inference: (what it was made for, embedding)
        self._trains = False

    # ------------------------------------------------------------------ description
    @property
    def trunk(self) -> ConditioningTrunk:
        return getattr(self, TRUNK)

    def lllite_modules(self) -> Iterator[tuple[str, AnimaLLLiteModule]]:
        return iter(self._modules_by_name.items())

    @property
    def cond_emb_dim(self) -> int:
        return self.config.cond_emb_dim

    @property
    def network_dim(self) -> int:
        return self.config.network_dim

    def extra_repr(self) -> str:
        return (f"{len(self)} modules, target_layers={','.join(self.atomics)}, cond_emb_dim={self.cond_emb_dim}, "
                f"network_dim={self.network_dim}, multiplier={self.multiplier}, "
                f"steps=[{self.control_guidance_start}, {self.control_guidance_end}]")

    def summary(self) -> list[tuple[str, str]]:
        c = self.config
        aspp = "on " + ",".join(map(str, c.aspp_dilations)) if c.use_aspp else "off"
        return [("modules", f"{len(self)}  (target_layers {c.target_layers})"), ("cond_emb_dim", str(c.cond_emb_dim)),
                ("network_dim", str(c.network_dim)),
                ("trunk", f"cond_dim {c.cond_dim}, {c.cond_resblocks} ResBlock(s), ASPP {aspp}, "
                          f"{c.cond_in_channels} input channels"),
                *super().summary()]

    def _forget_image(self) -> None:
        self._cached = self._embedding = None

    # ------------------------------------------------------------------ attaching
    def _target_paths(self, model: nn.Module) -> dict[str, str]:
        if not is_anima_transformer(model):
            raise LLLiteError(
                f"this is an Anima LLLite network and {type(model).__name__} is not Anima's DiT "
                "(CosmosTransformer3DModel); it attaches to an Anima pipeline or its transformer "
                "(SDXL's networks come from SDXL LLLite files)"
            )
        targets = find_targets(model, self.atomics)
        for name, module in self.lllite_modules():
            if name not in targets:
                raise LLLiteError(f"LLLite module {name!r} names a Linear this transformer does not have "
                                  f"({len(model.transformer_blocks)} blocks): the network was made for another model")
            if module.in_dim != targets[name].in_features:
                raise LLLiteError(f"LLLite module {name!r} expects inputs of width {module.in_dim} but the transformer's "
                                  f"{targets[name].path} takes {targets[name].in_features}: made for another model")
        return {name: targets[name].path for name in self._modules_by_name}

    def _time_module(self, model: nn.Module) -> nn.Module:
        return model.time_embed.time_proj

    def _detached(self) -> None:
        self._cached = self._embedding = None

    # ------------------------------------------------------------------ each transformer call
    def _start_call(self) -> None:
        self._embedding = None

    def _check_sample(self, hidden: torch.Tensor) -> None:
        if hidden.dim() != 5 or hidden.shape[2] != 1:
            raise LLLiteError(f"Anima LLLite applies to images (one frame); the transformer got hidden_states "
                              f"{tuple(hidden.shape)}")

    def _mask_depths(self) -> set[int]:
        return {_TOKEN_DEPTH}

    def _refresh(self, batch: int, trains: bool) -> None:
        """Inference: the trunk's embedding, computed once per control image and repeated for the batch."""
        self._trains = trains
        if trains:
            return
        parameter = self.trunk.conv1.weight
        key = (self._image_version, self._latent_size, parameter.device, parameter.dtype,
               sum(p._version for p in self.trunk.parameters()))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, in_float32(self.trunk, self.prepared_image(parameter.device, parameter.dtype)))
        self._embedding = self._cached[1].repeat(batch // self._image.shape[0], 1, 1)

    def prepared_image(self, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The control image at the generated image's pixel size (8 x the latent), where the trunk gives one
        cell per token; resized (bilinear, antialiased) only when it is not that size already."""
        image = self._image.to(device=device, dtype=torch.float32)
        latent = self._latent_size or (image.shape[-2] // 8, image.shape[-1] // 8)
        size = (latent[0] * 8, latent[1] * 8)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return image.to(dtype)

    def _step_started(self) -> None:
        """Training: the embedding with gradients, before the first block."""
        if self._trains:
            parameter = self.trunk.conv1.weight
            embedding = in_float32(self.trunk, self.prepared_image(parameter.device, parameter.dtype))
            self._embedding = embedding.repeat(self._token_masks[_TOKEN_DEPTH].shape[0] // embedding.shape[0], 1, 1)

    def _module_change(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        embedding = self._embedding
        if embedding is None:
            return None
        if embedding.shape[:2] != x.shape[:2]:
            raise LLLiteError(f"LLLite module {name!r}: the control image gives {embedding.shape[1]} tokens for a batch "
                              f"of {embedding.shape[0]} but the Linear gets {x.shape[1]} for {x.shape[0]}")
        module = self._modules_by_name[name]
        return module(x.to(embedding.dtype), embedding), self._scales[_TOKEN_DEPTH]

    # ------------------------------------------------------------------ files
    def file_metadata(self) -> dict[str, str]:
        """The metadata kohya's trainer writes, which loaders (kohya's, ComfyUI's, Forge's) rebuild the network from."""
        return file_metadata(self.config)


def create_network(transformer: nn.Module, config: AnimaLLLiteConfig | None = None, **options) -> AnimaLLLiteNetwork:
    """A fresh, trainable Anima LLLite network for this DiT (not yet attached).

    Args:
        transformer: diffusers' ``CosmosTransformer3DModel`` (or a pipeline holding it as ``transformer``).
        config: the architecture; kohya's defaults when omitted.
        options: fields of :class:`AnimaLLLiteConfig` to change, e.g. ``target_layers="self_attn_qkv"``.
    """
    model, _ = model_and_pipeline(transformer)
    config = AnimaLLLiteConfig(**{**asdict(config or AnimaLLLiteConfig()), **options})
    targets = find_targets(model, parse_target_layers(config.target_layers))
    modules = {name: AnimaLLLiteModule(t.in_features, config.cond_emb_dim, config.network_dim, config.dropout)
               for name, t in targets.items()}
    return AnimaLLLiteNetwork(config, modules)


def from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> AnimaLLLiteNetwork:
    """Build an Anima LLLite network from the tensors and metadata of a kohya file (float32).

    Raises:
        LLLiteFileError: a legacy (pre-v2) file, an SDXL file, a later version, or tensors that do not fit; the
            message says which.
    """
    config = config_from_file(tensors, metadata, source)
    modules = {name: AnimaLLLiteModule(width, config.cond_emb_dim, config.network_dim)
               for name, width in module_widths(tensors, config, source).items()}
    network = AnimaLLLiteNetwork(config, modules, metadata)
    check_shapes(tensors, network.state_dict(), source)
    network.load_state_dict({k: v.float() for k, v in tensors.items()})
    return network
