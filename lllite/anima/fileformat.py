"""Anima's LLLite files, as kohya's ``anima_train_control_net_lllite.py`` writes them and its loaders read them.

A file holds the shared trunk (``lllite_conditioning1.*``) and one module per adapted Linear
(``lllite_dit_blocks_{i}_<linear>.*``, :mod:`lllite.anima.names`); its architecture is in ``lllite.*`` metadata,
which the loaders (kohya's, ComfyUI's, Forge's) rebuild the network from, with their defaults for a missing key.
Here: what a file says (:func:`config_from_file`, :func:`module_widths`, checked against the tensors' shapes)
and what a file written by lllite says (:func:`file_metadata`); :func:`lllite.anima.network.from_state_dict`
builds the network.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import LLLiteError
from ..fileformat import LLLiteFileError, modelspec
from .config import AnimaLLLiteConfig
from .names import MODULE_PREFIX, module_names, parse_target_layers

ARCHITECTURE = "anima-preview/control-net-lllite"
VERSION = "2"
#: The shared trunk's name in files.
TRUNK = "lllite_conditioning1"
#: No Anima LLLite is published where lllite could name it.
PUBLISHED = None
_LOADER_DEFAULTS = AnimaLLLiteConfig()  # what kohya's, ComfyUI's and Forge's loaders assume for a missing key
_MODULE_PARAMS = {"down.weight", "down.bias", "mid.weight", "mid.bias", "cond_to_film.weight", "cond_to_film.bias",
                  "up.weight", "up.bias", "depth_embed"}


def claims(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """Whether a file holds an Anima (DiT) LLLite: its keys (the trunk, DiT modules, or the legacy layout that
    :func:`module_widths` refuses by name) or its modelspec say so."""
    anima_keys = (f"{TRUNK}.", MODULE_PREFIX, "lllite_modules.")
    return (any(key.startswith(anima_keys) for key in tensors)
            or str(metadata.get("modelspec.architecture", "")).startswith("anima"))


def file_metadata(config: AnimaLLLiteConfig) -> dict[str, str]:
    """The metadata kohya's trainer writes, which loaders rebuild the network from."""
    metadata = {
        **modelspec(ARCHITECTURE),
        "lllite.version": VERSION,
        "lllite.cond_emb_dim": str(config.cond_emb_dim),
        "lllite.mlp_dim": str(config.network_dim),
        "lllite.target_layers": config.target_layers,
        "lllite.target_atomics": ",".join(parse_target_layers(config.target_layers)),
        "lllite.cond_dim": str(config.cond_dim),
        "lllite.cond_resblocks": str(config.cond_resblocks),
        "lllite.use_aspp": "true" if config.use_aspp else "false",
        "lllite.cond_in_channels": str(config.cond_in_channels),
        "lllite.inpaint_masked_input": "true" if config.inpaint_masked_input else "false",
    }
    if config.use_aspp:
        metadata["lllite.aspp_dilations"] = ",".join(map(str, config.aspp_dilations))
    return metadata


def _number(metadata: dict, key: str, default: int, source: str) -> int:
    value = metadata.get(key)
    if value is None:
        return default
    try:
        return int(str(value).strip())
    except ValueError:
        raise LLLiteFileError(f"{source}: metadata {key}={value!r} is not a whole number") from None


def _flag(metadata: dict, key: str, default: bool, source: str) -> bool:
    value = metadata.get(key)
    if value is None:
        return default
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise LLLiteFileError(f"{source}: metadata {key}={value!r} should be \"true\" or \"false\"")
    return text in ("true", "1")


def _refuse_other_layouts(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    keys = list(tensors)
    if any(k.startswith("lllite_modules.") for k in keys):
        raise LLLiteFileError(
            f"{source}: a legacy Anima LLLite file (keys 'lllite_modules.<i>.*', from before kohya's version 2); "
            "kohya's loaders refuse it too. Train it again with the current format."
        )
    if any(k.startswith("lllite_unet_") for k in keys):
        raise LLLiteFileError(f"{source}: an SDXL LLLite file (keys 'lllite_unet_*'), not an Anima one")


def config_from_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> AnimaLLLiteConfig:
    """The architecture of an Anima LLLite file: its ``lllite.*`` metadata, loaders' defaults for missing keys,
    checked against the tensors' shapes (a key that disagrees with them is named).

    Raises:
        LLLiteFileError: a legacy (pre-v2) file, an SDXL file, a later version, or metadata that the tensors
            contradict; the message says which.
    """
    _refuse_other_layouts(tensors, source)
    version = str(metadata.get("lllite.version", VERSION)).strip()
    if version != VERSION or metadata.get("lllite.cond_input_space") not in (None, "", "rgb") \
            or metadata.get("lllite.trunk") not in (None, "", "conv"):
        raise LLLiteFileError(
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
        raise LLLiteFileError(str(error)) from None
    use_aspp = _flag(metadata, "lllite.use_aspp", any(k.startswith(f"{TRUNK}.aspp.") for k in tensors), source)
    dilations = d.aspp_dilations
    if metadata.get("lllite.aspp_dilations"):
        try:
            dilations = tuple(int(v) for v in str(metadata["lllite.aspp_dilations"]).split(","))
        except ValueError:
            raise LLLiteFileError(f"{source}: metadata lllite.aspp_dilations="
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
            raise LLLiteFileError(f"{source}: no {tensor!r}; an Anima LLLite file holds the shared trunk")
        if tensors[tensor].shape[dim] != value:
            raise LLLiteFileError(f"{source}: {tensor} has shape {tuple(tensors[tensor].shape)}, which does "
                                  f"not fit {key}={value}" + ("" if key in metadata else " (the loaders' default)"))
    resblocks = len({k.split(".")[2] for k in tensors if k.startswith(f"{TRUNK}.resblocks.")})
    if resblocks != config.cond_resblocks:
        raise LLLiteFileError(f"{source}: the trunk holds {resblocks} ResBlocks but lllite.cond_resblocks "
                                  f"is {config.cond_resblocks}")
    downs = {k: v for k, v in tensors.items() if k.endswith(".down.weight")}
    widths = {v.shape[0] for v in downs.values()}
    if widths and widths != {config.network_dim}:
        raise LLLiteFileError(f"{source}: the modules' down.weight give widths {sorted(widths)}, but "
                                  f"lllite.mlp_dim is {config.network_dim}")
    return config


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
