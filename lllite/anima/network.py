"""An Anima LLLite network: the shared trunk, its modules, and attaching them to diffusers' Anima DiT.

Attaching works as for SDXL (:mod:`lllite.hooks`): forward pre-hooks on the target Linears of
``CosmosTransformer3DModel``, so its ``state_dict`` is untouched and :meth:`AnimaLLLiteNetwork.remove`
restores it exactly; the multiplier, keyframes, mask and step range are the shared
:class:`lllite.controls.ControlledNetwork`'s. What differs is here: one trunk embeds the control image
once per image for every module (:mod:`lllite.anima.module`), at the DiT's token grid (latent / 2).

In training the embedding is computed in every step, in the hook on the transformer's timestep
projection: before the first block, so that gradient checkpointing of the blocks recomputes nothing
of it and it trains through every module.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import fileformat
from ..controls import ControlledNetwork, strength_at
from ..errors import LLLiteError
from ..hooks import Attachment, model_and_pipeline
from .module import AnimaLLLiteConfig, AnimaLLLiteModule, ConditioningTrunk
from .names import MODULE_PREFIX, find_targets, is_anima_transformer, module_names, parse_target_layers

ARCHITECTURE = "anima-preview/control-net-lllite"
VERSION = "2"
TRUNK = "lllite_conditioning1"
_TOKEN_DEPTH = 2  # the token grid is the latent halved once (the DiT's 2x2 patches): SDXL's depth 2 grid


class AnimaLLLiteNetwork(ControlledNetwork):
    """kohya's Anima ControlNet-LLLite (v2): ``state_dict()`` keys are exactly the keys of its files.

    Make one with :func:`create_network` (fresh, for training) or :func:`lllite.load` (from a file).

    Args:
        config: the architecture (dimensions, targets, trunk).
        modules: kohya module name -> module.
        metadata: string metadata carried from and to files.
    """

    timestep_scale = 1000.0  # the DiT takes sigma = timestep / 1000
    model_name = "transformer"

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
        self._scale: torch.Tensor | None = None  # this call's strength x gate x mask, (model batch, tokens, 1)
        self._token_mask: torch.Tensor | None = None
        self._masks_for: tuple | None = None
        self._trains = False

    # ------------------------------------------------------------------ description
    @property
    def trunk(self) -> ConditioningTrunk:
        return getattr(self, TRUNK)

    def lllite_modules(self) -> Iterator[tuple[str, AnimaLLLiteModule]]:
        return iter(self._modules_by_name.items())

    def __len__(self) -> int:
        return len(self._modules_by_name)

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

    def __repr__(self) -> str:
        return f"AnimaLLLiteNetwork({self.extra_repr()})"

    def _forget_image(self) -> None:
        self._cached = self._embedding = None

    # ------------------------------------------------------------------ attaching
    def apply_to(self, target) -> "AnimaLLLiteNetwork":
        """Attach to diffusers' Anima DiT (``CosmosTransformer3DModel``), or to a pipeline's ``transformer``
        (its scheduler then counts the steps).

        Raises:
            LLLiteError: not an Anima DiT (an SDXL UNet, say), or a module for a block or width the DiT
                does not have; the message names the module.
        """
        if self._attachment is not None:
            raise RuntimeError("this LLLite network is already attached; call remove() before apply_to() again")
        model, pipeline = model_and_pipeline(target)
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
        paths = {name: targets[name].path for name in self._modules_by_name}
        self._attachment = Attachment(self, model, pipeline, paths, time_module=model.time_embed.time_proj)
        return self

    def remove(self) -> None:
        """Detach from the transformer; it is exactly as before :meth:`apply_to`."""
        if self._attachment is None:
            return
        self._attachment.detach()
        self._attachment = None
        self._latent_size = self._cached = self._embedding = self._scale = None
        self._token_mask = self._masks_for = None
        self._timesteps = self._timesteps_source = None
        self._gate = None

    # ------------------------------------------------------------------ each transformer call
    def _before_model(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """On the host: the latent size, the step count, the mask at the token grid, and (inference) the embedding."""
        hidden = args[0] if args else kwargs.get("hidden_states")
        self._attachment.rehome()
        self._gate = self._scale = self._embedding = None
        self._acted = False
        if hidden is None or self._image is None:
            return
        if hidden.dim() != 5 or hidden.shape[2] != 1:
            raise LLLiteError(f"Anima LLLite applies to images (one frame); the transformer got hidden_states "
                              f"{tuple(hidden.shape)}")
        self._latent_size = tuple(hidden.shape[-2:])
        batch = hidden.shape[0]
        images = self._image.shape[0]
        if batch % images:
            raise LLLiteError(f"LLLite: {images} control image(s) for a transformer batch of {batch}: give one image, "
                              "or one per generated image")
        self._trains = self.training and torch.is_grad_enabled()
        with torch.inference_mode(False), torch.no_grad():
            self._follow(hidden.device)
            self._count_steps(self._attachment.scheduler)
            parameter = self.trunk.conv1.weight
            masks = (self._mask_version, self._latent_size, batch, parameter.device, hidden.dtype)
            if masks != self._masks_for:
                self._token_mask = self._mask_rows(batch, _TOKEN_DEPTH, parameter.device, hidden.dtype)
                self._masks_for = masks
            if not self._trains:
                key = (self._image_version, self._latent_size, parameter.device, parameter.dtype,
                       sum(p._version for p in self.trunk.parameters()))
                if self._cached is None or self._cached[0] != key:
                    self._cached = (key, self.trunk(self.prepared_image(parameter.device, parameter.dtype)))
                self._embedding = self._cached[1].repeat(batch // images, 1, 1)

    def prepared_image(self, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The control image at the generated image's pixel size (8 x the latent), where the trunk gives one
        cell per token; resized (bilinear, antialiased) only when it is not that size already."""
        image = self._image.to(device=device, dtype=torch.float32)
        latent = self._latent_size or (image.shape[-2] // 8, image.shape[-1] // 8)
        size = (latent[0] * 8, latent[1] * 8)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return image.to(dtype)

    def _before_time(self, time_proj: nn.Module, args: tuple) -> None:
        """Inside the transformer call, before the first block: the step's scale from the timestep on the
        device and, in training, the embedding with gradients."""
        if self._image is None or self._token_mask is None:
            return
        progress, gate = self._step_gate(args[0])
        self._gate = gate
        self._scale = (strength_at(self._keyframe_table, progress) * gate).to(self._token_mask.dtype) * self._token_mask
        if self._trains:
            parameter = self.trunk.conv1.weight
            embedding = self.trunk(self.prepared_image(parameter.device, parameter.dtype))
            self._embedding = embedding.repeat(self._token_mask.shape[0] // embedding.shape[0], 1, 1)

    def _change(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This network's change to the input ``x`` (B, S, D) of the Linear ``name``, and the scale it is multiplied by."""
        if self._image is None or self._embedding is None:
            return None
        self._acted = True
        if not torch.compiler.is_compiling() and not any(strength for _, strength in self._keyframes):
            return None
        embedding = self._embedding
        if embedding.shape[:2] != x.shape[:2]:
            raise LLLiteError(f"LLLite module {name!r}: the control image gives {embedding.shape[1]} tokens for a batch "
                              f"of {embedding.shape[0]} but the Linear gets {x.shape[1]} for {x.shape[0]}")
        module = self._modules_by_name[name]
        return module(x.to(embedding.dtype), embedding), self._scale

    # ------------------------------------------------------------------ files
    def file_metadata(self) -> dict[str, str]:
        """The metadata kohya's trainer writes, which loaders (kohya's, ComfyUI's, Forge's) rebuild the network from."""
        c = self.config
        metadata = {
            **fileformat.modelspec(ARCHITECTURE),
            "lllite.version": VERSION,
            "lllite.cond_emb_dim": str(c.cond_emb_dim),
            "lllite.mlp_dim": str(c.network_dim),
            "lllite.target_layers": c.target_layers,
            "lllite.target_atomics": ",".join(self.atomics),
            "lllite.cond_dim": str(c.cond_dim),
            "lllite.cond_resblocks": str(c.cond_resblocks),
            "lllite.use_aspp": "true" if c.use_aspp else "false",
            "lllite.cond_in_channels": str(c.cond_in_channels),
            "lllite.inpaint_masked_input": "true" if c.inpaint_masked_input else "false",
        }
        if c.use_aspp:
            metadata["lllite.aspp_dilations"] = ",".join(map(str, c.aspp_dilations))
        return metadata

    def save(self, path, dtype: torch.dtype | None = torch.bfloat16, metadata: dict | None = None,
             overwrite: bool = False) -> Path:
        """Write the network as kohya writes Anima LLLite files (safetensors, same keys, shapes and metadata).

        Args:
            path: destination (``.safetensors``).
            dtype: dtype of the stored tensors (kohya's trainer saves bf16 in bf16 training); None keeps the network's.
            metadata: extra metadata; it overrides the network's own and the architecture keys.
            overwrite: replace an existing file; otherwise an existing file raises :class:`lllite.errors.OutputExistsError`.
        """
        merged = {**self.metadata, **self.file_metadata(), **(metadata or {})}
        return fileformat.write_tensors(self.state_dict(), path, dtype, merged, overwrite)


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


# ---------------------------------------------------------------------- reading files
_LOADER_DEFAULTS = AnimaLLLiteConfig()  # what kohya's, ComfyUI's and Forge's loaders assume for a missing key
_MODULE_PARAMS = {"down.weight", "down.bias", "mid.weight", "mid.bias", "cond_to_film.weight", "cond_to_film.bias",
                  "up.weight", "up.bias", "depth_embed"}


def _number(metadata: dict, key: str, default: int, source: str) -> int:
    value = metadata.get(key)
    if value is None:
        return default
    try:
        return int(str(value).strip())
    except ValueError:
        raise fileformat.LLLiteFileError(f"{source}: metadata {key}={value!r} is not a whole number") from None


def _flag(metadata: dict, key: str, default: bool, source: str) -> bool:
    value = metadata.get(key)
    if value is None:
        return default
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise fileformat.LLLiteFileError(f"{source}: metadata {key}={value!r} should be \"true\" or \"false\"")
    return text in ("true", "1")


def config_from_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> AnimaLLLiteConfig:
    """The architecture of an Anima LLLite file: its ``lllite.*`` metadata, loaders' defaults for missing keys,
    checked against the tensors' shapes (a key that disagrees with them is named)."""
    version = str(metadata.get("lllite.version", VERSION)).strip()
    if version != VERSION or metadata.get("lllite.cond_input_space") not in (None, "", "rgb") \
            or metadata.get("lllite.trunk") not in (None, "", "conv"):
        raise fileformat.LLLiteFileError(
            f"{source}: Anima LLLite version {version!r} (lllite.cond_input_space={metadata.get('lllite.cond_input_space')!r}, "
            f"lllite.trunk={metadata.get('lllite.trunk')!r}); lllite reads kohya's version 2 (RGB input, conv trunk)"
        )
    d = _LOADER_DEFAULTS
    try:  # loaders prefer the canonical atomics; the user's spelling (a preset, say) is kept when it agrees
        targets = metadata.get("lllite.target_atomics") or metadata.get("lllite.target_layers") or d.target_layers
        atomics = parse_target_layers(targets, f"{source}: metadata lllite.target_atomics")
        spelled = metadata.get("lllite.target_layers")
        if spelled and parse_target_layers(spelled, f"{source}: metadata lllite.target_layers") == atomics:
            targets = spelled
    except LLLiteError as error:
        raise fileformat.LLLiteFileError(str(error)) from None
    use_aspp = _flag(metadata, "lllite.use_aspp", any(k.startswith(f"{TRUNK}.aspp.") for k in tensors), source)
    dilations = d.aspp_dilations
    if metadata.get("lllite.aspp_dilations"):
        try:
            dilations = tuple(int(v) for v in str(metadata["lllite.aspp_dilations"]).split(","))
        except ValueError:
            raise fileformat.LLLiteFileError(f"{source}: metadata lllite.aspp_dilations="
                                             f"{metadata['lllite.aspp_dilations']!r} is not a comma list of numbers") from None
    config = AnimaLLLiteConfig(
        cond_emb_dim=_number(metadata, "lllite.cond_emb_dim", d.cond_emb_dim, source),
        network_dim=_number(metadata, "lllite.mlp_dim", d.network_dim, source),
        target_layers=targets,
        cond_dim=_number(metadata, "lllite.cond_dim", d.cond_dim, source),
        cond_resblocks=_number(metadata, "lllite.cond_resblocks", d.cond_resblocks, source),
        use_aspp=use_aspp,
        aspp_dilations=dilations,
        cond_in_channels=_number(metadata, "lllite.cond_in_channels", d.cond_in_channels, source),
        inpaint_masked_input=_flag(metadata, "lllite.inpaint_masked_input", False, source),
    )
    shapes = {  # metadata key -> (value it gives, value the tensors give, the tensor)
        "lllite.cond_emb_dim": (config.cond_emb_dim, f"{TRUNK}.proj.weight", 0),
        "lllite.cond_dim": (config.cond_dim, f"{TRUNK}.conv3.weight", 0),
        "lllite.cond_in_channels": (config.cond_in_channels, f"{TRUNK}.conv1.weight", 1),
    }
    for key, (value, tensor, dim) in shapes.items():
        if tensor not in tensors:
            raise fileformat.LLLiteFileError(f"{source}: no {tensor!r}; an Anima LLLite file holds the shared trunk")
        if tensors[tensor].shape[dim] != value:
            raise fileformat.LLLiteFileError(f"{source}: {tensor} has shape {tuple(tensors[tensor].shape)}, which does "
                                             f"not fit {key}={value}" + ("" if key in metadata else " (the loaders' default)"))
    resblocks = len({k.split(".")[2] for k in tensors if k.startswith(f"{TRUNK}.resblocks.")})
    if resblocks != config.cond_resblocks:
        raise fileformat.LLLiteFileError(f"{source}: the trunk holds {resblocks} ResBlocks but lllite.cond_resblocks "
                                         f"is {config.cond_resblocks}")
    downs = {k: v for k, v in tensors.items() if k.endswith(".down.weight")}
    widths = {v.shape[0] for v in downs.values()}
    if widths and widths != {config.network_dim}:
        raise fileformat.LLLiteFileError(f"{source}: the modules' down.weight give widths {sorted(widths)}, but "
                                         f"lllite.mlp_dim is {config.network_dim}")
    return config


def from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> AnimaLLLiteNetwork:
    """Build an Anima LLLite network from the tensors and metadata of a kohya file (float32).

    Raises:
        LLLiteFileError: a legacy (pre-v2) file, an SDXL file, a later version, or tensors that do not fit; the
            message says which.
    """
    keys = list(tensors)
    if any(k.startswith("lllite_modules.") for k in keys):
        raise fileformat.LLLiteFileError(
            f"{source}: a legacy Anima LLLite file (keys 'lllite_modules.<i>.*', from before kohya's version 2); "
            "kohya's loaders refuse it too. Train it again with the current format."
        )
    if any(k.startswith("lllite_unet_") for k in keys):
        raise fileformat.LLLiteFileError(f"{source}: an SDXL LLLite file (keys 'lllite_unet_*'), not an Anima one")
    config = config_from_file(tensors, metadata, source)
    names: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith(f"{TRUNK}."):
            continue
        name, _, param = key.partition(".")
        if not name.startswith(MODULE_PREFIX) or param not in _MODULE_PARAMS:
            raise fileformat.LLLiteFileError(f"{source}: {key!r} is not a parameter of an Anima LLLite module "
                                             f"(expected '{MODULE_PREFIX}blocks_<i>_<linear>.<{'|'.join(sorted(_MODULE_PARAMS))}>')")
        names.setdefault(name, {})[param] = tensor
    if not names:
        raise fileformat.LLLiteFileError(f"{source}: holds the trunk but no modules")
    indices = [name[len(MODULE_PREFIX):].split("_") for name in names]
    blocks = 1 + max((int(parts[1]) for parts in indices if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit()),
                     default=-1)
    expected = module_names(blocks, parse_target_layers(config.target_layers))
    foreign = sorted(set(names) - set(expected))
    if foreign:
        raise fileformat.LLLiteFileError(f"{source}: module {foreign[0]!r} is not one lllite.target_atomics="
                                         f"{config.target_layers!r} selects")
    modules = {}
    for name in expected:
        if name not in names:
            continue  # a file may adapt fewer blocks than the DiT has
        params = names[name]
        if "down.weight" not in params:
            raise fileformat.LLLiteFileError(f"{source}: module {name!r} has no 'down.weight'")
        modules[name] = AnimaLLLiteModule(params["down.weight"].shape[1], config.cond_emb_dim, config.network_dim)
    network = AnimaLLLiteNetwork(config, modules, metadata)
    state = network.state_dict()
    missing = sorted(set(state) - set(tensors))
    if missing:
        raise fileformat.LLLiteFileError(f"{source}: lacks {missing[0]!r} ({len(missing)} tensor(s) missing)")
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(state[key].shape):
            raise fileformat.LLLiteFileError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected "
                                             f"{tuple(state[key].shape)} for this architecture")
    network.load_state_dict({k: v.float() for k, v in tensors.items()})
    return network
