"""An Anima LLLite network: the shared trunk, its modules, and what each call of Anima's DiT needs of them.

The skeleton (attaching by hooks to ``CosmosTransformer3DModel``'s target Linears, the controls, each call's
gate, saving) is every network's (:class:`lllite.controls.ControlledNetwork`); what is Anima's is here: one
trunk embeds the control once per control batch for every module (:mod:`lllite.anima.module`), at the DiT's
token grid (latent / 2). What the trunk reads depends on kohya's architecture (:class:`AnimaLLLiteConfig`):

- v2 (pixel stem): the control image at the generated image's pixel size;
- v2.1 (latent stem): the control image's normalised latent, encoded by the pipeline's VAE without gradients
  and outside autocast (or given ready with :meth:`AnimaLLLiteNetwork.set_cond_latent`);
- v3 (semantic trunk): the frozen DiT's hidden states of that latent (:mod:`lllite.anima.reference`), one
  reference forward per control batch (and per text context with ``ref_context="caption"``); the modules
  also read the step's time embedding through ``t_proj`` (a hook after ``time_embed.norm``).

What needs no gradient (the image's resize, the VAE, the reference forward) runs on the host before the
model call. In training the trunk itself runs in every step, in the hook on the transformer's timestep
projection: before the first block, so that gradient checkpointing of the blocks recomputes nothing
of it and it trains through every module.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..controls import ControlledNetwork, quiet, token_grid
from ..errors import LLLiteError
from ..fileformat import LLLiteFileError
from ..hooks import model_and_pipeline
from ..precision import in_float32
from .config import LATENT_CHANNELS, AnimaLLLiteConfig
from .fileformat import (
    TRUNK,
    check_input_space,
    check_shapes,
    config_from_file,
    file_metadata,
    module_widths,
)
from .module import AnimaLLLiteModule, build_trunk
from .names import find_targets, is_anima_transformer, parse_target_layers
from .pipeline import encode_with
from .reference import model_width, pad_latent, reference_hidden_states, uncond_context

_TOKEN_DEPTH = 2  # the token grid is the latent halved once (the DiT's 2x2 patches): SDXL's depth 2 grid
_CONTEXTS_KEPT = 4  # "caption" references kept per control batch: one per guidance branch, and a little room


class AnimaLLLiteNetwork(ControlledNetwork):
    """kohya's Anima ControlNet-LLLite (v2, v2.1, v3): ``state_dict()`` keys are exactly the keys of its files.

    Make one with :func:`create_network` (fresh, for training) or :func:`lllite.load` (from a file).

    Args:
        config: the architecture (dimensions, targets, trunk).
        modules: kohya module name -> module.
        metadata: string metadata carried from and to files.
        model_dim: the DiT's width, which the semantic trunk (v3) reads.
        taps: the semantic trunk's reference taps (K); by default ``config.ref_block``'s, else 1.
    """

    family = "anima"
    timestep_scale = 1000.0  # the DiT takes sigma = timestep / 1000
    model_name = "transformer"
    sample_argument = "hidden_states"
    file_dtype = torch.bfloat16
    summary_keys = ("modelspec.architecture", "lllite.version", "lllite.cond_input_space", "lllite.trunk",
                    "lllite.target_atomics", "lllite.cond_dim", "lllite.cond_resblocks", "ss_steps", "ss_sd_model_name")

    def __init__(self, config: AnimaLLLiteConfig, modules: dict[str, AnimaLLLiteModule],
                 metadata: dict[str, str] | None = None, model_dim: int | None = None, taps: int | None = None):
        super().__init__(metadata)
        if not modules:
            raise ValueError("an LLLite network needs at least one module")
        self.config = config
        self.cond_in_channels = config.cond_in_channels
        self.atomics = parse_target_layers(config.target_layers)
        taps = taps or (len(config.ref_block) if config.ref_block else 1)
        self.add_module(TRUNK, build_trunk(config, model_dim, taps))
        for name, module in modules.items():
            self.add_module(name, module)
        self._modules_by_name = dict(modules)
        self._embedding: torch.Tensor | None = None  # this call's embedding, (model batch, tokens, E)
        self._time: torch.Tensor | None = None  # v3: this call's time embedding through t_proj, (model batch, 1, E)
        self._cached: tuple[tuple, torch.Tensor] | None = None  # inference: (what it was made for, embedding)
        self._inputs: tuple | None = None  # what the trunk reads in this call (training: with gradients next)
        self._latents: tuple[tuple, tuple] | None = None  # (what for, (latent, mask)): the encoded control
        self._references: list[tuple] = []  # (context, what for, hidden states, serial number)
        self._uncond: tuple | None = None  # (what for, the empty prompt's context)
        self._serial = 0
        self._latent_given = False  # the control was given as a latent (set_cond_latent)
        self._given_mask: torch.Tensor | None = None
        self._context: torch.Tensor | None = None  # this call's encoder_hidden_states
        self._taps: tuple[int, ...] | None = None  # the reference taps, known once attached
        self._time_handle = None
        self._encoders: tuple = (None, None)  # set_encoders: (VAE, LLM adapter)
        self._grid: tuple[int, int] | None = None  # the token grid of the last model call
        self._trains = False

    # ------------------------------------------------------------------ description
    @property
    def kind(self) -> str:
        return f"Anima LLLite, kohya's {self.config.kind}"

    @property
    def trunk(self) -> nn.Module:
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
        return (f"{self.config.kind}, {len(self)} modules, target_layers={','.join(self.atomics)}, "
                f"cond_emb_dim={self.cond_emb_dim}, network_dim={self.network_dim}, multiplier={self.multiplier}, "
                f"steps=[{self.control_guidance_start}, {self.control_guidance_end}]")

    def summary(self) -> list[tuple[str, str]]:
        c = self.config
        aspp = "on " + ",".join(map(str, c.aspp_dilations)) if c.use_aspp else "off"
        rows = [("architecture", f"kohya's {c.kind} (lllite.version {c.version}, {c.cond_input_space} input, "
                                 f"{c.trunk} trunk)"),
                ("modules", f"{len(self)}  (target_layers {c.target_layers})"), ("cond_emb_dim", str(c.cond_emb_dim)),
                ("network_dim", str(c.network_dim)),
                ("trunk", f"cond_dim {c.cond_dim}, {c.cond_resblocks} ResBlock(s), ASPP {aspp}, "
                          f"{c.cond_in_channels} input channels")]
        if c.trunk == "semantic":
            taps = ",".join(map(str, c.ref_block)) if c.ref_block else "the middle block"
            rows.append(("reference", f"blocks {taps}, timestep {c.ref_timestep}, context {c.ref_context}, "
                                      f"gate {c.gate}"))
        return [*rows, *super().summary()]

    def _forget_image(self) -> None:
        self._cached = self._embedding = self._inputs = self._latents = None
        self._references = []

    # ------------------------------------------------------------------ the control
    def set_cond_image(self, image) -> None:
        """Set the control image; ``None`` switches the network off.

        A v2.1 or v3 network (``cond_input_space="latent"``) encodes it with the pipeline's VAE when it runs; it
        also takes a ready latent (B, 16, h, w) here, as kohya's network does (see :meth:`set_cond_latent`).
        Otherwise as :meth:`lllite.controls.ControlledNetwork.set_cond_image`.
        """
        if (self.config.reads_latents and isinstance(image, torch.Tensor) and image.dim() in (3, 4)
                and image.shape[-3] == LATENT_CHANNELS):
            self.set_cond_latent(image)
            return
        self._latent_given, self._given_mask = False, None
        super().set_cond_image(image)

    def set_cond_latent(self, latent: torch.Tensor | None, mask: torch.Tensor | None = None) -> None:
        """Set the control as a ready latent, as kohya's ComfyUI node takes ``cond_latent``: a v2.1 / v3 network.

        Args:
            latent: (B, 16, h, w) or (16, h, w), normalised as the pipeline's VAE latents are
                (``(z - latents_mean) / latents_std``, :func:`lllite.anima.pipeline.encode_images`), at the
                generated latent's size (a side one short of even is padded as kohya's node pads it). None: off.
            mask: for an inpainting network (``cond_in_channels`` 4), the mask (B, 1, 8h, 8w) in {-1, 1}
                (+1 where to paint), as kohya's latent stem reads it; otherwise None.

        Raises:
            LLLiteError: a pixel-input (v2) network, a tensor of another shape, or a missing or unexpected mask.
        """
        if latent is None:
            self.set_cond_image(None)
            return
        if not self.config.reads_latents:
            raise LLLiteError("set_cond_latent: this network reads the control image (kohya's v2, "
                              "lllite.cond_input_space 'pixel'); give the image to set_cond_image")
        if not isinstance(latent, torch.Tensor) or latent.dim() not in (3, 4) or latent.shape[-3] != LATENT_CHANNELS:
            shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise LLLiteError(f"set_cond_latent: give the control latent as a tensor (B, {LATENT_CHANNELS}, h, w), got {shape}")
        latent = latent[None] if latent.dim() == 3 else latent
        inpaint = self.config.cond_in_channels == 4
        if inpaint and mask is None:
            raise LLLiteError("set_cond_latent: this inpainting network (cond_in_channels 4) needs the mask "
                              "(B, 1, 8h, 8w) in {-1, 1}")
        if mask is not None and not inpaint:
            raise LLLiteError("set_cond_latent: this network takes no mask (cond_in_channels 3)")
        if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1
                                 or tuple(mask.shape[-2:]) != (latent.shape[-2] * 8, latent.shape[-1] * 8)):
            raise LLLiteError(f"set_cond_latent: the mask must be (B, 1, {latent.shape[-2] * 8}, {latent.shape[-1] * 8}) "
                              f"for a latent of {tuple(latent.shape[-2:])}, got {tuple(mask.shape)}")
        self._forget_image()
        self._image = latent.detach().float()
        self._given_mask = None if mask is None else mask.detach().float()
        self._latent_given = True
        self._image_version += 1

    def set_encoders(self, vae: nn.Module | None = None, text_conditioner: nn.Module | None = None) -> None:
        """The models a network attached to a bare transformer uses where it would use the pipeline's: the VAE that
        encodes the control image (v2.1, v3) and the LLM adapter that makes the empty prompt's context
        (``ref_context="uncond"``). Attached to the pipeline, it uses ``pipe.vae`` and ``pipe.text_conditioner``."""
        self._encoders = (vae, text_conditioner)  # a tuple: not submodules, never saved

    def gate_maps(self) -> dict[str, torch.Tensor]:
        """v3 with a gate: each module's gate of the last model call, (B, rows, cols), for pictures; recorded while
        :meth:`record_gates` is on (kohya's ``--save_gate_maps``). A vector gate is averaged over its channels."""
        grid, maps = self._grid, {}
        for name, module in self.lllite_modules():
            if module.last_gate is not None and grid is not None:
                g = module.last_gate.float().mean(-1)
                maps[name] = g.reshape(g.shape[0], *grid).cpu()
        return maps

    def record_gates(self, on: bool = True) -> None:
        """Keep every module's gate of each model call (inference; a v3 network with a gate), read by :meth:`gate_maps`."""
        if self.config.gate_mode == "none":
            raise LLLiteError(f"this network (kohya's {self.config.kind}) has no gate to record; gates belong to v3 "
                              "networks with lllite.gate 'scalar' or 'vector'")
        for _, module in self.lllite_modules():
            module.capture_gate, module.last_gate = on, None

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
        if self.config.trunk == "semantic":
            self._taps = self._check_semantic(model)
        return {name: targets[name].path for name in self._modules_by_name}

    def _check_semantic(self, model: nn.Module) -> tuple[int, ...]:
        taps = self.config.ref_blocks(len(model.transformer_blocks))
        if len(taps) != self.trunk.taps:
            raise LLLiteError(f"lllite.ref_block {','.join(map(str, taps))} names {len(taps)} reference block(s) but the "
                              f"semantic trunk was trained on {self.trunk.taps}")
        if model_width(model) != self.trunk.model_dim:
            raise LLLiteError(f"the semantic trunk reads hidden states of width {self.trunk.model_dim} but this "
                              f"transformer's are {model_width(model)} wide: made for another model")
        return taps

    def apply_to(self, target) -> "AnimaLLLiteNetwork":
        super().apply_to(target)
        if self.config.trunk == "semantic":  # t-FiLM: the step's time embedding, after the time embedding's norm
            self._time_handle = self._attachment.model.time_embed.norm.register_forward_hook(self._after_time_norm)
        return self

    def _time_module(self, model: nn.Module) -> nn.Module:
        return model.time_embed.time_proj

    def _detached(self) -> None:
        if self._time_handle is not None:
            self._time_handle.remove()
            self._time_handle = None
        self._forget_image()
        self._taps = self._uncond = None

    # ------------------------------------------------------------------ each transformer call, on the host
    def _start_call(self) -> None:
        self._embedding = self._time = None

    def _check_sample(self, hidden: torch.Tensor) -> None:
        if hidden.dim() != 5 or hidden.shape[2] != 1:
            raise LLLiteError(f"Anima LLLite applies to images (one frame); the transformer got hidden_states "
                              f"{tuple(hidden.shape)}")

    def _mask_depths(self) -> set[int]:
        return {_TOKEN_DEPTH}

    def _before_model(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        self._context = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        super()._before_model(model, args, kwargs)

    def _refresh(self, batch: int, trains: bool) -> None:
        """What the trunk reads (the image, its latent, or the reference's hidden states), computed without
        gradients; in inference also the embedding, once per control (and per reference) and repeated for the batch."""
        self._trains = trains
        self._grid = token_grid(self._latent_size, _TOKEN_DEPTH)
        weight = self.trunk.first_weight
        key = (self._image_version, self._latent_size, weight.device, weight.dtype)
        if trains:
            self._inputs = self._trunk_inputs(weight.device, weight.dtype)
            return
        key = (*key, self._reference_serial(weight.device), sum(p._version for p in self.trunk.parameters()))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, in_float32(self.trunk, *self._trunk_inputs(weight.device, weight.dtype)))
        embedding = self._cached[1]
        self._embedding = embedding.repeat(batch // embedding.shape[0], 1, 1)

    def _trunk_inputs(self, device, dtype) -> tuple:
        kind = self.trunk.kind
        if kind == "pixel":
            return (self.prepared_image(device, dtype),)
        latent, mask = self._control_latent(device)
        if kind == "latent":
            return (latent.to(dtype), mask)
        hidden = self._reference(latent)
        return (hidden.to(device=device, dtype=dtype), token_grid(self._latent_size, _TOKEN_DEPTH))

    def _padded_latent_size(self) -> tuple[int, int]:
        rows, cols = token_grid(self._latent_size, _TOKEN_DEPTH)
        return rows * 2, cols * 2

    def prepared_image(self, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The control image at the generated image's pixel size (8 x the latent, padded to whole 2x2 patches as the
        DiT's token grid is), where the pixel stem gives one cell per token; resized (bilinear, antialiased) only
        when it is not that size already."""
        image = self._image.to(device=device, dtype=torch.float32)
        if self._latent_size is None:
            latent = (image.shape[-2] // 8, image.shape[-1] // 8)
        else:
            latent = self._padded_latent_size()
        size = (latent[0] * 8, latent[1] * 8)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return image.to(dtype or torch.float32)

    def _control_latent(self, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """v2.1 / v3: the normalised control latent at the DiT's latent size, and the inpainting mask (B, 1, 8h, 8w)
        in {-1, 1} or None: as given (:meth:`set_cond_latent`), or the image encoded by the pipeline's VAE
        without gradients and outside autocast, once per image and size."""
        size = self._padded_latent_size()
        if self._latent_given:
            mask = self._given_mask
            if mask is not None:
                mask = pad_latent(mask, (size[0] * 8, size[1] * 8), "control mask", unit=8).to(device)
            return pad_latent(self._image, size).to(device), mask
        key = (self._image_version, size, device)
        if self._latents is None or self._latents[0] != key:
            image = self.prepared_image(device)
            rgb, mask = (image[:, :3], image[:, 3:]) if image.shape[1] == 4 else (image, None)
            self._latents = (key, (self._encode(rgb).float(), mask))
        return self._latents[1]

    def _encode(self, rgb: torch.Tensor) -> torch.Tensor:
        vae = self._encoders[0] or getattr(self._attachment.pipeline, "vae", None)
        if vae is None:
            raise LLLiteError(f"this network (kohya's {self.config.kind}) reads the control image's VAE latent: attach it to "
                              "the Anima pipeline (apply_to(pipe)) so that it encodes the image with pipe.vae, or give "
                              "the latent with set_cond_latent")
        no_autocast = torch.autocast(rgb.device.type, enabled=False)
        with torch.no_grad(), no_autocast:
            return encode_with(vae, rgb).to(rgb.device)

    # ------------------------------------------------------------------ v3: the reference forward
    def _reference_context(self) -> torch.Tensor | None:
        mode = self.config.ref_context
        if mode == "zero":
            return None
        context = self._context
        if mode == "caption":
            if context is None:
                raise LLLiteError("ref_context='caption': the transformer was called without encoder_hidden_states")
            return context.detach()
        weight = self._attachment.model.patch_embed.proj.weight
        key = (1 if context is None else context.shape[1], weight.device, weight.dtype)
        if self._uncond is None or self._uncond[0] != key:  # the empty prompt's context: made once
            conditioner = self._encoders[1] or getattr(self._attachment.pipeline, "text_conditioner", None)
            self._uncond = (key, uncond_context(conditioner, *key))
        return self._uncond[1]

    def _reference_serial(self, device) -> int | None:
        """Inference with ``ref_context="caption"``: which reference this call's context has (made now if it has
        none yet), so that each guidance branch's embedding is its own."""
        if self.config.trunk != "semantic" or self.config.ref_context != "caption":
            return None
        latent, _ = self._control_latent(device)
        self._reference(latent)
        return self._references[self._reference_entry(self._context)][3]

    def _reference_entry(self, context: torch.Tensor | None) -> int:
        key = (self._image_version, self._latent_size)
        self._references = [r for r in self._references if r[1] == key]
        for index, (kept, _, _, _) in enumerate(self._references):
            if kept is context or (kept is not None and context is not None and kept.shape == context.shape
                                   and torch.equal(kept, context)):
                return index
        return -1

    def _reference(self, latent: torch.Tensor) -> torch.Tensor:
        """The reference forward's hidden states (B, K, tokens, D): once per control batch in inference (per context
        for "caption", one per guidance branch); in training every step (the controls change)."""
        caption = self.config.ref_context == "caption"
        key = (self._image_version, self._latent_size)
        entry = self._reference_entry(self._context if caption else None)
        if entry >= 0 and not self._trains:
            return self._references[entry][2]
        model = self._attachment.model
        hidden = reference_hidden_states(model, latent, self._taps, self.config.ref_timestep, self._reference_context())
        if not self._trains:
            kept = self._context.detach() if caption else None
            self._serial += 1
            self._references = [*self._references[-(_CONTEXTS_KEPT - 1):], (kept, key, hidden, self._serial)]
        return hidden

    # ------------------------------------------------------------------ inside the model call (traced when compiled)
    def _step_started(self) -> None:
        """Training: the embedding with gradients, before the first block."""
        if self._trains:
            embedding = in_float32(self.trunk, *self._inputs)
            self._embedding = embedding.repeat(self._token_masks[_TOKEN_DEPTH].shape[0] // embedding.shape[0], 1, 1)

    def _after_time_norm(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """v3's t-FiLM: the time embedding's norm output (B, D) through ``t_proj``, for every module of this call."""
        if self._image is not None and self._token_masks and not quiet():
            self._time = self.trunk.time(output)

    def _module_change(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        embedding = self._embedding
        if embedding is None:
            return None
        if embedding.shape[:2] != x.shape[:2]:
            raise LLLiteError(f"LLLite module {name!r}: the control gives {embedding.shape[1]} tokens for a batch "
                              f"of {embedding.shape[0]} but the Linear gets {x.shape[1]} for {x.shape[0]}")
        module = self._modules_by_name[name]
        time = None if self._time is None else self._time.to(embedding.dtype)
        return module(x.to(embedding.dtype), embedding, time), self._scales[_TOKEN_DEPTH]

    # ------------------------------------------------------------------ files
    def check_weights(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> None:
        """Refuse, as kohya's loader does, weights of another input space (pixel, latent) or trunk (stem, semantic)."""
        config = config_from_file(tensors, metadata, source)
        check_input_space(config, self.config.cond_input_space, source)
        if config.trunk != self.config.trunk:
            raise LLLiteFileError(f"{source}: trunk mismatch: the file was trained with trunk={config.trunk!r} "
                                  f"(kohya's {config.kind}), but this network has trunk={self.config.trunk!r} "
                                  f"(kohya's {self.config.kind}); check lllite_trunk / the file's lllite.trunk")

    def file_metadata(self) -> dict[str, str]:
        """The metadata kohya's trainer writes, which loaders (kohya's, ComfyUI's, Forge's) rebuild the network from."""
        return file_metadata(self.config, self._taps)


def create_network(transformer: nn.Module, config: AnimaLLLiteConfig | None = None, **options) -> AnimaLLLiteNetwork:
    """A fresh, trainable Anima LLLite network for this DiT (not yet attached).

    Args:
        transformer: diffusers' ``CosmosTransformer3DModel`` (or a pipeline holding it as ``transformer``).
        config: the architecture; kohya's defaults when omitted.
        options: fields of :class:`AnimaLLLiteConfig` to change, e.g. ``target_layers="self_attn_qkv"`` or
            ``cond_input_space="latent", trunk="semantic", ref_block="-1,14"`` (v3).
    """
    model, _ = model_and_pipeline(transformer)
    config = AnimaLLLiteConfig(**{**asdict(config or AnimaLLLiteConfig()), **options})
    targets = find_targets(model, parse_target_layers(config.target_layers))
    modules = {name: AnimaLLLiteModule(t.in_features, config.cond_emb_dim, config.network_dim, config.dropout,
                                       config.gate_mode)
               for name, t in targets.items()}
    if config.trunk != "semantic":
        return AnimaLLLiteNetwork(config, modules)
    taps = config.ref_blocks(len(model.transformer_blocks))
    config = AnimaLLLiteConfig(**{**asdict(config), "ref_block": taps})
    return AnimaLLLiteNetwork(config, modules, model_dim=model_width(model), taps=len(taps))


def from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> AnimaLLLiteNetwork:
    """Build an Anima LLLite network from the tensors and metadata of a kohya file (float32).

    Raises:
        LLLiteFileError: a legacy (pre-v2) file, an SDXL file, a later version, or tensors that do not fit; the
            message says which.
    """
    config = config_from_file(tensors, metadata, source)
    modules = {name: AnimaLLLiteModule(width, config.cond_emb_dim, config.network_dim, gate=config.gate_mode)
               for name, width in module_widths(tensors, config, source).items()}
    model_dim = taps = None
    if config.trunk == "semantic":
        model_dim = tensors[f"{TRUNK}.t_proj.weight"].shape[1]
        taps = 1 if f"{TRUNK}.ln_in.weight" in tensors else len(
            {k.split(".")[2] for k in tensors if k.startswith(f"{TRUNK}.ln_in.")})
    network = AnimaLLLiteNetwork(config, modules, metadata, model_dim=model_dim, taps=taps)
    check_shapes(tensors, network.state_dict(), source)
    network.load_state_dict({k: v.float() for k, v in tensors.items()})
    return network
