"""Anima's LLLite files, as kohya's ``anima_train_control_net_lllite.py`` writes them and its loaders read them.

A file holds the shared trunk (``lllite_conditioning1.*``) and one module per adapted Linear
(``lllite_dit_blocks_{i}_<linear>.*``, :mod:`lllite.anima.names`); its architecture is in ``lllite.*`` metadata,
which the loaders (kohya's, ComfyUI's, Forge's) rebuild the network from, with their defaults for a missing key.
Every kind kohya writes is read and written: v2 (the pixel stem, ``conv1``..``conv3``), v2.1 (the latent stem,
``lat_conv1``, ``lat_conv2``, and ``mask_conv1..3`` for inpainting), v3 (the semantic trunk, ``ln_in``,
``proj_in``, ``t_proj``; modules with a ``gate``).

Here: what a file says (:func:`config_from_file`, :func:`module_widths`, checked against the tensors' shapes;
a file with no ``lllite.*`` metadata at all is read from its shapes alone, as ComfyUI's core does), what a file
written by lllite says (:func:`file_metadata`), and the mix-ups kohya's loader refuses by name
(:func:`check_input_space`); :func:`lllite.anima.network.from_state_dict` builds the network.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import LLLiteError
from ..fileformat import LLLiteFileError, modelspec
from .config import (
    ASPP_DILATIONS,
    COND_INPUT_SPACES,
    GATES,
    LATENT_CHANNELS,
    REF_CONTEXTS,
    TRUNKS,
    AnimaLLLiteConfig,
    parse_ref_blocks,
)
from .names import (
    ATOMICS,
    MODULE_PREFIX,
    PRESETS,
    TARGETS,
    module_names,
    parse_target_layers,
)

ARCHITECTURE = "anima-preview/control-net-lllite"
#: ``lllite.version``: "2" for the conv stems (v2, v2.1), "3" for the semantic trunk (v3).
VERSIONS = ("2", "3")
#: The shared trunk's name in files.
TRUNK = "lllite_conditioning1"
#: No Anima LLLite is published where lllite could name it.
PUBLISHED = None
_LOADER_DEFAULTS = AnimaLLLiteConfig()  # what kohya's, ComfyUI's and Forge's loaders assume for a missing key
_MODULE_PARAMS = {"down.weight", "down.bias", "mid.weight", "mid.bias", "cond_to_film.weight", "cond_to_film.bias",
                  "up.weight", "up.bias", "depth_embed", "gate.weight", "gate.bias"}
#: config field -> its metadata key, in the order a file's metadata is checked against its tensors.
_KEYS = {"trunk": "lllite.trunk", "cond_input_space": "lllite.cond_input_space",
         "cond_in_channels": "lllite.cond_in_channels", "cond_dim": "lllite.cond_dim",
         "cond_emb_dim": "lllite.cond_emb_dim", "cond_resblocks": "lllite.cond_resblocks",
         "use_aspp": "lllite.use_aspp", "network_dim": "lllite.mlp_dim"}
_DEFAULT_NOTE = " (the loaders' default for a missing key)"
_STEM = "a conv stem (kohya's version 2: v2, v2.1)"
_SEMANTIC = "the semantic trunk (kohya's version 3)"
#: kohya's module name suffix (its Linear's path in a block, underscored) -> the atomic specifier that selects it.
_ATOMIC_OF = {path.replace(".", "_"): atomic for atomic, pairs in TARGETS.items() for path, _ in pairs}
_MODULE_NAME = re.compile(re.escape(MODULE_PREFIX) + r"blocks_\d+_(\w+)")
_SPACE_WORDS = {"pixel": "the control image at the generated image's pixel size (v2)",
                "latent": "the control image's VAE latent (v2.1, v3)"}


def claims(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """Whether a file holds an Anima (DiT) LLLite: its keys (the trunk, DiT modules, or the legacy layout that
    :func:`module_widths` refuses by name) or its modelspec say so."""
    anima_keys = (f"{TRUNK}.", MODULE_PREFIX, "lllite_modules.")
    return (any(key.startswith(anima_keys) for key in tensors)
            or str(metadata.get("modelspec.architecture", "")).startswith("anima"))


def file_metadata(config: AnimaLLLiteConfig, ref_blocks: tuple[int, ...] | None = None) -> dict[str, str]:
    """The metadata kohya's trainer writes, which loaders rebuild the network from: every kind's keys, and for
    the semantic trunk (v3) ``lllite.ref_block``, ``lllite.ref_timestep``, ``lllite.ref_context``, ``lllite.gate``.

    Args:
        ref_blocks: the semantic trunk's taps resolved for the DiT (``config.ref_blocks(num_blocks)``), written
            as ``lllite.ref_block`` where ``config.ref_block`` is None (the middle block). With neither, the key
            is left out, which the loaders read as the middle block too.

    Raises:
        ValueError: ``ref_blocks`` that differ from ``config.ref_block``.
    """
    metadata = {
        **modelspec(ARCHITECTURE),
        "lllite.version": config.version,
        "lllite.cond_emb_dim": str(config.cond_emb_dim),
        "lllite.mlp_dim": str(config.network_dim),
        "lllite.target_layers": config.target_layers,
        "lllite.target_atomics": ",".join(parse_target_layers(config.target_layers)),
        "lllite.cond_dim": str(config.cond_dim),
        "lllite.cond_resblocks": str(config.cond_resblocks),
        "lllite.use_aspp": "true" if config.use_aspp else "false",
    }
    if config.use_aspp:
        metadata["lllite.aspp_dilations"] = ",".join(map(str, config.aspp_dilations))
    metadata.update({
        "lllite.cond_input_space": config.cond_input_space,
        "lllite.cond_in_channels": str(config.cond_in_channels),
        "lllite.inpaint_masked_input": "true" if config.inpaint_masked_input else "false",
        "lllite.trunk": config.trunk,
    })
    if config.trunk == "semantic":
        blocks = parse_ref_blocks(ref_blocks, "ref_blocks")
        if blocks is not None and config.ref_block is not None and blocks != config.ref_block:
            raise ValueError(f"ref_blocks {blocks} differ from the network's ref_block {config.ref_block}")
        blocks = blocks if blocks is not None else config.ref_block
        if blocks is not None:
            metadata["lllite.ref_block"] = ",".join(map(str, blocks))
        metadata.update({"lllite.ref_timestep": str(float(config.ref_timestep)),
                         "lllite.ref_context": config.ref_context, "lllite.gate": config.gate})
    return metadata


def check_input_space(config: AnimaLLLiteConfig, cond_input_space: str, source: str) -> None:
    """Refuse, as kohya's loader does, a network that reads another input than the one asked for (pixel or latent).

    Raises:
        LLLiteError: ``cond_input_space`` is not one of :data:`COND_INPUT_SPACES`.
        LLLiteFileError: the file was trained with the other input space; the message says which is which.
    """
    if cond_input_space not in COND_INPUT_SPACES:
        raise LLLiteError(f"cond_input_space={cond_input_space!r}: give one of {', '.join(COND_INPUT_SPACES)}")
    if config.cond_input_space != cond_input_space:
        raise LLLiteFileError(
            f"{source}: cond input space mismatch: the file was trained with cond_input_space="
            f"{config.cond_input_space!r} ({_SPACE_WORDS[config.cond_input_space]}), but {cond_input_space!r} "
            f"({_SPACE_WORDS[cond_input_space]}) is asked for; give it its own input, or use a network trained "
            f"with cond_input_space={cond_input_space!r} (the file's lllite.cond_input_space says which)"
        )


def _parsed(metadata: Mapping[str, str], key: str, default, source: str, kind: type, what: str):
    value = metadata.get(key)
    if value is None:
        return default
    try:
        return kind(str(value).strip())
    except ValueError:
        raise LLLiteFileError(f"{source}: metadata {key}={value!r} is not {what}") from None


def _number(metadata: Mapping[str, str], key: str, default: int, source: str) -> int:
    return _parsed(metadata, key, default, source, int, "a whole number")


def _real(metadata: Mapping[str, str], key: str, default: float, source: str) -> float:
    return _parsed(metadata, key, default, source, float, "a number")


def _flag(metadata: Mapping[str, str], key: str, default: bool, source: str) -> bool:
    value = metadata.get(key)
    if value is None:
        return default
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise LLLiteFileError(f"{source}: metadata {key}={value!r} should be \"true\" or \"false\"")
    return text in ("true", "1")


def _choice(metadata: Mapping[str, str], key: str, allowed: tuple[str, ...], default: str, source: str) -> str:
    value = metadata.get(key)
    if value is None:
        return default
    text = str(value).strip()
    if text not in allowed:
        raise LLLiteFileError(f"{source}: metadata {key}={value!r} is not one kohya's code writes; "
                              f"it writes one of {', '.join(allowed)}")
    return text


def _refuse_other_layouts(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    keys = list(tensors)
    if any(k.startswith("lllite_modules.") for k in keys):
        raise LLLiteFileError(
            f"{source}: a legacy Anima LLLite file (keys 'lllite_modules.<i>.*', from before kohya's version 2); "
            "kohya's loaders refuse it too. Train it again with the current format."
        )
    if any(k.startswith("lllite_unet_") for k in keys):
        raise LLLiteFileError(f"{source}: an SDXL LLLite file (keys 'lllite_unet_*'), not an Anima one")


# ---------------------------------------------------------------------------------------------- what the tensors say
#: What a file's tensors say of its architecture: config field (and "aspp_kernels", "taps") -> (value, evidence:
#: the words naming the tensors that say it).
Found = dict[str, tuple[object, str]]


def _weight_shape(tensors: Mapping[str, torch.Tensor], part: str, source: str) -> tuple[int, ...]:
    key = f"{TRUNK}.{part}.weight"
    if key not in tensors:
        raise LLLiteFileError(f"{source}: lacks {key!r}, which a trunk with its other tensors has; "
                              "the file is incomplete")
    return tuple(tensors[key].shape)


def _read_stem(tensors: Mapping[str, torch.Tensor], has, source: str) -> Found:
    """The first layers of the conv stems: v2's pixel stem or v2.1's latent stem."""
    if has("lat_conv1"):
        first = _weight_shape(tensors, "lat_conv1", source)
        mask = has("mask_conv1")
        if first[1] != LATENT_CHANNELS * (2 if mask else 1):
            raise LLLiteFileError(
                f"{source}: {TRUNK}.lat_conv1.weight has shape {first}: it reads {first[1]} channels, but the latent "
                f"stem reads {LATENT_CHANNELS} ({2 * LATENT_CHANNELS} with the inpainting mask pyramid mask_conv1..3, "
                f"which this file {'holds' if mask else 'lacks'}); the file is damaged or mixes two networks")
        pyramid = ("the trunk holds the inpainting mask pyramid (mask_conv1..3) and lat_conv1 reads "
                   f"{first[1]} channels" if mask else
                   f"the trunk has no inpainting mask pyramid (mask_conv1..3) and lat_conv1 reads {first[1]} channels")
        return {"trunk": ("stem", f"the trunk holds lat_conv1, {_STEM}"),
                "cond_input_space": ("latent", "the trunk holds lat_conv1, the latent stem's (v2.1)"),
                "cond_in_channels": (4 if mask else 3, pyramid),
                "cond_dim": (first[0], f"{TRUNK}.lat_conv1.weight has shape {first}")}
    first = _weight_shape(tensors, "conv1", source)
    third = _weight_shape(tensors, "conv3", source)
    return {"trunk": ("stem", f"the trunk holds conv1, {_STEM}"),
            "cond_input_space": ("pixel", "the trunk holds conv1, the pixel stem's (v2)"),
            "cond_in_channels": (first[1], f"{TRUNK}.conv1.weight has shape {first}"),
            "cond_dim": (third[0], f"{TRUNK}.conv3.weight has shape {third}")}


def _read_trunk(tensors: Mapping[str, torch.Tensor], source: str) -> Found:
    """What the trunk's tensors say (kohya's loader reads the trunk's kind the same way: ``proj_in`` semantic,
    ``lat_conv1`` or ``conv1`` a stem)."""
    parts = {key[len(TRUNK) + 1:] for key in tensors if key.startswith(f"{TRUNK}.")}

    def has(prefix: str) -> bool:
        return any(part.startswith(f"{prefix}.") for part in parts)

    if has("proj_in"):
        proj_in = _weight_shape(tensors, "proj_in", source)
        ln_in = {part.split(".")[1] for part in parts if part.startswith("ln_in.")}
        taps = 1 if "ln_in.weight" in parts else len(ln_in)
        if not taps:
            raise LLLiteFileError(f"{source}: lacks '{TRUNK}.ln_in.*', which the semantic trunk has; "
                                  "the file is incomplete")
        found = {"trunk": ("semantic", f"the trunk holds proj_in, {_SEMANTIC}"),
                 "cond_input_space": ("latent", "the trunk is the semantic one (v3), which reads the control latent"),
                 "cond_dim": (proj_in[0], f"{TRUNK}.proj_in.weight has shape {proj_in}"),
                 "taps": (taps, f"the trunk holds {taps} reference tap(s) ("
                                + ("ln_in.weight" if taps == 1 else f"ln_in.0 .. ln_in.{taps - 1}") + ")")}
    elif has("lat_conv1") or has("conv1"):
        found = _read_stem(tensors, has, source)
    else:
        raise LLLiteFileError(f"{source}: no trunk: an Anima LLLite file holds the shared trunk '{TRUNK}.*' "
                              "(conv1 for v2, lat_conv1 for v2.1, proj_in for v3)")
    proj = _weight_shape(tensors, "proj", source)
    found["cond_emb_dim"] = (proj[0], f"{TRUNK}.proj.weight has shape {proj}")
    resblocks = len({part.split(".")[1] for part in parts if part.startswith("resblocks.")})
    found["cond_resblocks"] = (resblocks, f"the trunk holds {resblocks} ResBlock(s)")
    found["use_aspp"] = (has("aspp"), "the trunk holds ASPP (aspp.*)" if has("aspp") else "the trunk has no ASPP")
    if has("aspp"):
        branches = sorted({int(part.split(".")[2]) for part in parts if part.startswith("aspp.branches.")})
        kernels = tuple(_weight_shape(tensors, f"aspp.branches.{j}.0", source)[-1] for j in branches)
        found["aspp_kernels"] = (kernels, "the trunk's ASPP branches are " + ", ".join(f"{k}x{k}" for k in kernels))
    return found


def _read_modules(tensors: Mapping[str, torch.Tensor], source: str) -> Found:
    """What the modules' tensors say: their width, the Linears they adapt, their gate."""
    found: Found = {}
    modules = {key.partition(".")[0] for key in tensors if not key.startswith(f"{TRUNK}.")}
    widths = sorted({v.shape[0] for k, v in tensors.items() if k.endswith(".down.weight")})
    if len(widths) > 1:
        raise LLLiteFileError(f"{source}: the modules' down.weight give widths {widths}; an Anima LLLite network's "
                              "modules have one width (lllite.mlp_dim): the file mixes two networks")
    if widths:
        found["network_dim"] = (widths[0], f"the modules' down.weight are {widths[0]} wide")
    atomics = {_ATOMIC_OF.get(m.group(1)) for m in map(_MODULE_NAME.fullmatch, modules) if m} - {None}
    if atomics:
        ordered = tuple(a for a in ATOMICS if a in atomics)
        spelled = next((preset for preset, parts in PRESETS.items() if parts == ordered), ",".join(ordered))
        found["target_layers"] = (spelled, "the modules adapt " + ",".join(ordered))
    gates = sorted(k for k in tensors if k.endswith(".gate.weight") and not k.startswith(f"{TRUNK}."))
    if not gates:
        found["gate"] = ("none", "the modules have no gate.weight")
    else:
        shape = tuple(tensors[gates[0]].shape)
        found["gate"] = ("scalar" if shape[0] == 1 else "vector", f"{gates[0]} has shape {shape}")
    return found


def _dilations_from_kernels(kernels: tuple[int, ...], source: str) -> tuple[int, ...]:
    """ASPP's dilations from its branches' kernels: 1 for a 1x1 branch; a 3x3 branch's dilation is no shape's, so
    only kohya's default (1x1 then three 3x3: 1,2,4,8) is assumed."""
    if all(k == 1 for k in kernels):
        return tuple(1 for _ in kernels)
    if kernels == tuple(1 if d == 1 else 3 for d in ASPP_DILATIONS):
        return ASPP_DILATIONS
    raise LLLiteFileError(
        f"{source}: the trunk's ASPP branches are {', '.join(f'{k}x{k}' for k in kernels)} and the file's metadata "
        "does not give lllite.aspp_dilations: the dilations of 3x3 branches cannot be inferred from the tensors' "
        "shapes (only kohya's default, 1,2,4,8, is assumed, for a 1x1 and three 3x3 branches). Add "
        "lllite.aspp_dilations (the comma list it was trained with, e.g. '1,3,6') to the file's metadata")


# ---------------------------------------------------------------------------------------------- what the metadata says
def _check_version(metadata: Mapping[str, str], source: str) -> str | None:
    if "lllite.version" not in metadata:
        return None
    version = str(metadata["lllite.version"]).strip()
    if version not in VERSIONS:
        raise LLLiteFileError(
            f"{source}: lllite.version={metadata['lllite.version']!r}: lllite reads kohya's Anima LLLite versions 2 "
            "(v2, v2.1: a conv stem) and 3 (v3: the semantic trunk); a later version needs a later lllite")
    return version


def _targets(metadata: Mapping[str, str], default: str, source: str) -> str:
    """The target layers; loaders prefer the canonical atomics, the user's spelling (a preset, say) is kept when
    it agrees."""
    try:
        key = "lllite.target_atomics" if metadata.get("lllite.target_atomics") else "lllite.target_layers"
        targets = metadata.get(key) or default
        atomics = parse_target_layers(targets, f"{source}: metadata {key}")
        spelled = metadata.get("lllite.target_layers")
        if spelled and parse_target_layers(spelled, f"{source}: metadata lllite.target_layers") == atomics:
            targets = spelled
    except LLLiteError as error:
        raise LLLiteFileError(str(error)) from None
    return targets


def _dilations(metadata: Mapping[str, str], found: Found, inferred: bool, source: str) -> tuple[int, ...]:
    text = metadata.get("lllite.aspp_dilations")
    if text:
        try:
            return tuple(int(v) for v in str(text).split(",") if v.strip())
        except ValueError:
            raise LLLiteFileError(f"{source}: metadata lllite.aspp_dilations={text!r} is not a comma list of "
                                  "whole numbers") from None
    if inferred and "aspp_kernels" in found:
        return _dilations_from_kernels(found["aspp_kernels"][0], source)
    return ASPP_DILATIONS


def _fields(metadata: Mapping[str, str], found: Found, source: str) -> dict:
    """The config's fields: each metadata key the file has; for a missing one, the loaders' default in a file
    kohya's trainer wrote (it writes ``lllite.version`` on every file), else what the tensors say."""
    d = _LOADER_DEFAULTS
    inferred = "lllite.version" not in metadata

    def default(field: str):
        return found[field][0] if inferred and field in found else getattr(d, field)

    trunk = _choice(metadata, "lllite.trunk", TRUNKS, default("trunk"), source)
    version = _check_version(metadata, source)
    if version is not None and version != ("3" if trunk == "semantic" else "2"):
        raise LLLiteFileError(
            f"{source}: lllite.version={version!r} but lllite.trunk={trunk!r}"
            f"{'' if 'lllite.trunk' in metadata else _DEFAULT_NOTE}: version 3 is the "
            "semantic trunk (v3), version 2 a conv stem (v2, v2.1); one of the two keys is wrong")
    semantic = trunk == "semantic"
    use_aspp = _flag(metadata, "lllite.use_aspp", default("use_aspp"), source)
    fields = {
        "trunk": trunk,
        "cond_input_space": _choice(metadata, "lllite.cond_input_space", COND_INPUT_SPACES,
                                    "latent" if semantic else default("cond_input_space"), source),
        "cond_in_channels": _number(metadata, "lllite.cond_in_channels", default("cond_in_channels"), source),
        "cond_dim": _number(metadata, "lllite.cond_dim", default("cond_dim"), source),
        "cond_emb_dim": _number(metadata, "lllite.cond_emb_dim", default("cond_emb_dim"), source),
        "cond_resblocks": _number(metadata, "lllite.cond_resblocks", default("cond_resblocks"), source),
        "use_aspp": use_aspp,
        "network_dim": _number(metadata, "lllite.mlp_dim", default("network_dim"), source),
        "target_layers": _targets(metadata, default("target_layers"), source),
        "inpaint_masked_input": _flag(metadata, "lllite.inpaint_masked_input", d.inpaint_masked_input, source),
    }
    if use_aspp:  # as the loaders: the dilations are read only with ASPP on
        fields["aspp_dilations"] = _dilations(metadata, found, inferred, source)
    if semantic:  # the reference forward's keys are the semantic trunk's alone
        try:
            fields["ref_block"] = parse_ref_blocks(metadata.get("lllite.ref_block"),
                                                   f"{source}: metadata lllite.ref_block")
        except LLLiteError as error:
            raise LLLiteFileError(str(error)) from None
        fields["ref_timestep"] = _real(metadata, "lllite.ref_timestep", d.ref_timestep, source)
        fields["ref_context"] = _choice(metadata, "lllite.ref_context", REF_CONTEXTS, d.ref_context, source)
        fields["gate"] = _choice(metadata, "lllite.gate", GATES, default("gate"), source)
    return fields


# ---------------------------------------------------------------------------------------------- both
def _contradiction(key: str, value, evidence: str, metadata: Mapping[str, str], source: str) -> LLLiteFileError:
    note = "" if key in metadata else _DEFAULT_NOTE
    shown = ("true" if value else "false") if isinstance(value, bool) else value if isinstance(value, int) else repr(value)
    return LLLiteFileError(f"{source}: {key}={shown}{note}, but {evidence}; correct {key} to what the tensors "
                           "hold, or the file mixes two networks")


def _check_against_tensors(fields: dict, found: Found, metadata: Mapping[str, str], source: str) -> None:
    """Raise :class:`LLLiteFileError` naming the metadata key that the tensors contradict."""
    for field, key in _KEYS.items():
        value = fields.get(field, getattr(_LOADER_DEFAULTS, field))
        if field in found and value != found[field][0]:
            raise _contradiction(key, value, found[field][1], metadata, source)
    semantic = fields["trunk"] == "semantic"
    gate, (found_gate, evidence) = (fields["gate"] if semantic else "none"), found["gate"]
    if gate != found_gate:
        if not semantic:
            raise LLLiteFileError(f"{source}: {evidence}: a gate, which only {_SEMANTIC} has, but the trunk is "
                                  f"{_STEM}; the file mixes two networks")
        raise _contradiction("lllite.gate", gate, f"{evidence} (gate {found_gate!r})", metadata, source)
    if fields["use_aspp"] and "aspp_kernels" in found:
        dilations = fields["aspp_dilations"]
        if tuple(1 if x == 1 else 3 for x in dilations) != found["aspp_kernels"][0]:
            raise _contradiction("lllite.aspp_dilations", ",".join(map(str, dilations)),
                                 found["aspp_kernels"][1] + " (a dilation of 1 is a 1x1 branch, any other a 3x3 one)",
                                 metadata, source)
    if "taps" in found:
        taps, evidence = found["taps"]
        blocks = fields.get("ref_block")
        if blocks is None and taps > 1:
            raise LLLiteFileError(
                f"{source}: {evidence}, and no lllite.ref_block says which DiT blocks they read, which the tensors "
                "cannot tell (without it the loaders read the middle block alone): add lllite.ref_block to the "
                "file's metadata (kohya's ascending comma list of the blocks it was trained with, e.g. '2,13')")
        if blocks is not None and len(blocks) != taps:
            raise _contradiction("lllite.ref_block", ",".join(map(str, blocks)), evidence, metadata, source)


def config_from_file(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                     source: str) -> AnimaLLLiteConfig:
    """The architecture of an Anima LLLite file of any kind (v2, v2.1, v3): its ``lllite.*`` metadata, checked
    against the tensors' shapes. A key a file kohya's trainer wrote lacks takes the loaders' default; a file without
    ``lllite.version`` (none at all, say) is read from the shapes, as ComfyUI's core does.

    ``config.ref_block`` None is the middle block, resolved when the DiT is known; a file with several reference
    taps always names its blocks, so ``len(config.ref_blocks(num_blocks))`` is the file's number of taps.

    Raises:
        LLLiteFileError: a legacy (pre-v2) file, an SDXL file, a later version, metadata that the tensors
            contradict (the key is named), or what the shapes cannot tell (the key to add is named).
    """
    _refuse_other_layouts(tensors, source)
    _check_version(metadata, source)
    found = {**_read_trunk(tensors, source), **_read_modules(tensors, source)}
    fields = _fields(metadata, found, source)
    _check_against_tensors(fields, found, metadata, source)
    try:
        return AnimaLLLiteConfig(**fields)
    except LLLiteError as error:
        raise LLLiteFileError(f"{source}: its metadata describes no network kohya's code builds: {error}") from None


def module_widths(tensors: dict[str, torch.Tensor], config: AnimaLLLiteConfig, source: str) -> dict[str, int]:
    """kohya module name -> the width of its Linear, for every module a file holds, in kohya's module order.

    Raises:
        LLLiteFileError: a key that is no module's parameter, or a module that ``config.target_layers`` does not
            select; the message says which.
    """
    names: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith(f"{TRUNK}."):
            continue
        name, _, param = key.partition(".")
        if not name.startswith(MODULE_PREFIX) or param not in _MODULE_PARAMS:
            raise LLLiteFileError(f"{source}: {key!r} is not a parameter of an Anima LLLite module "
                                  f"(expected '{MODULE_PREFIX}blocks_<i>_<linear>.<{'|'.join(sorted(_MODULE_PARAMS))}>')")
        names.setdefault(name, {})[param] = tensor
    if not names:
        raise LLLiteFileError(f"{source}: holds the trunk but no modules")
    indices = [name[len(MODULE_PREFIX):].split("_") for name in names]
    blocks = 1 + max((int(parts[1]) for parts in indices if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit()),
                     default=-1)
    expected = module_names(blocks, parse_target_layers(config.target_layers))
    foreign = sorted(set(names) - set(expected))
    if foreign:
        raise LLLiteFileError(f"{source}: module {foreign[0]!r} is not one lllite.target_atomics="
                                  f"{config.target_layers!r} selects")
    widths = {}
    for name in expected:
        if name not in names:
            continue  # a file may adapt fewer blocks than the DiT has
        if "down.weight" not in names[name]:
            raise LLLiteFileError(f"{source}: module {name!r} has no 'down.weight'")
        widths[name] = names[name]["down.weight"].shape[1]
    return widths


def check_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`LLLiteFileError` for a tensor the network of a file's architecture lacks or has in another shape."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise LLLiteFileError(f"{source}: lacks {missing[0]!r} ({len(missing)} tensor(s) missing)")
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise LLLiteFileError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected "
                                  f"{tuple(expected[key].shape)} for this architecture")
