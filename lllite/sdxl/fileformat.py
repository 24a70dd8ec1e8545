"""SDXL's LLLite files: kohya-ss' format, read and written.

A file is a flat state dict ``<module>.<param>`` whose module names are kohya's (see :mod:`lllite.sdxl.names`).
Dimensions are not stored; they are read back from the tensor shapes. This module knows tensors, modules
and names; :func:`lllite.sdxl.network.from_state_dict` builds the network of a file's modules and
:meth:`lllite.LLLiteNetwork.save` writes them with :func:`default_metadata`.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..fileformat import LLLiteFileError, describe_foreign, modelspec
from .module import LLLiteModule
from .names import MODULE_PREFIX, is_up_path

ARCHITECTURE = "stable-diffusion-xl-v1-base/control-net-lllite"
#: kohya's published canny model, the file notebook 04 samples with on real SDXL.
PUBLISHED = ("kohya-ss/controlnet-lllite", "controllllite_v01032064e_sdxl_canny.safetensors")
_PARAMS = {
    f"{layer}.{kind}"
    for layer in ("conditioning1.0", "conditioning1.2", "conditioning1.4", "down.0", "mid.0", "up.0")
    for kind in ("weight", "bias")
}


def claims(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """Whether a file holds SDXL LLLite modules (kohya's ``lllite_unet_*`` keys)."""
    return any(key.startswith(MODULE_PREFIX) for key in tensors)


def _describe_foreign(keys: list[str]) -> str:
    if any(k.startswith(("lllite_conditioning1.", "lllite_dit_", "lllite_modules.")) for k in keys):
        return "it is an Anima LLLite (kohya's DiT format): lllite.load reads it, and it attaches to an Anima pipeline"
    return describe_foreign(keys)


def modules_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, LLLiteModule]:
    """Build the modules of kohya-format tensors (float32, in the file's key order), every dimension read from the shapes.

    Args:
        state_dict: ``<module>.<param>`` tensors, as in a file.
        source: how error messages name where the tensors came from (a path).

    Raises:
        LLLiteFileError: no LLLite keys, unknown or missing parameters, inconsistent shapes.
    """
    keys = list(state_dict)
    if not keys:
        raise LLLiteFileError(f"{source}: holds no tensors")
    foreign = [k for k in keys if not k.startswith(MODULE_PREFIX)]
    if len(foreign) == len(keys):
        raise LLLiteFileError(f"{source}: not an LLLite file (no '{MODULE_PREFIX}*' keys); {_describe_foreign(keys)}")
    if foreign:
        raise LLLiteFileError(f"{source}: {len(foreign)} key(s) are not LLLite parameters, e.g. {foreign[0]!r}")
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key in keys:
        name, _, param = key.partition(".")
        if param not in _PARAMS:
            raise LLLiteFileError(f"{source}: unknown parameter {key!r} (expected one of {sorted(_PARAMS)})")
        grouped.setdefault(name, {})[param] = state_dict[key]
    return {name: _module_from_tensors(name, tensors, source) for name, tensors in grouped.items()}


def _module_from_tensors(name: str, tensors: dict[str, torch.Tensor], source: str) -> LLLiteModule:
    for required in ("conditioning1.0.weight", "conditioning1.2.weight", "down.0.weight", "mid.0.weight", "up.0.weight"):
        if required not in tensors:
            raise LLLiteFileError(f"{source}: module {name!r} has no {required!r}")
    down = tensors["down.0.weight"]
    first = tensors["conditioning1.0.weight"]
    if down.dim() != 2 or first.dim() != 4:
        raise LLLiteFileError(f"{source}: module {name!r} has malformed tensors "
                              f"(down.0.weight {tuple(down.shape)}, conditioning1.0.weight {tuple(first.shape)})")
    network_dim, in_dim = down.shape
    cond_emb_dim = 2 * first.shape[0]
    if "conditioning1.4.weight" in tensors:
        depth = 3
    else:
        depth = 2 if tensors["conditioning1.2.weight"].shape[-1] == 4 else 1
    module = LLLiteModule(in_dim, cond_emb_dim, network_dim, depth)
    expected = module.state_dict()
    for param, tensor in tensors.items():
        if param not in expected:
            raise LLLiteFileError(f"{source}: module {name!r} has {param!r}, which a depth-{depth} module does not")
        if tuple(tensor.shape) != tuple(expected[param].shape):
            raise LLLiteFileError(
                f"{source}: module {name!r} parameter {param!r} has shape {tuple(tensor.shape)}, expected "
                f"{tuple(expected[param].shape)} for in_dim={in_dim}, cond_emb_dim={cond_emb_dim}, network_dim={network_dim}"
            )
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise LLLiteFileError(f"{source}: module {name!r} lacks {missing}")
    module.load_state_dict({k: v.float() for k, v in tensors.items()})
    return module


def _common(modules: Mapping[str, LLLiteModule], attr: str) -> int | None:
    values = {getattr(m, attr) for m in modules.values()}
    return values.pop() if len(values) == 1 else None


def default_metadata(modules: Mapping[str, LLLiteModule]) -> dict[str, str]:
    """What every SDXL file lllite writes says of its modules: modelspec architecture and dimensions."""
    depths = sorted({m.depth for m in modules.values()})
    return {
        **modelspec(ARCHITECTURE),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "lllite.cond_emb_dim": str(_common(modules, "cond_emb_dim")),
        "lllite.mlp_dim": str(_common(modules, "network_dim")),
        "lllite.modules": str(len(modules)),
        "lllite.depths": ",".join(map(str, depths)),
        "lllite.up_path": str(any(is_up_path(name) for name in modules)).lower(),
    }
