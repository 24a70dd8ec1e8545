"""LLLite files: kohya-ss' format, read and written.

A file is a flat state dict ``<module>.<param>`` (safetensors; old ones are ``.pt``/``.ckpt``
pickles) whose module names are kohya's (see :mod:`lllite.names`). Dimensions are not stored; they
are read back from the tensor shapes. This module knows tensors, modules and names only; the network
that holds the modules reads and writes its files through it (:func:`lllite.load`,
:meth:`lllite.LLLiteNetwork.save`).
"""
from __future__ import annotations

import datetime as _dt
import json
import pickle
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InputMissingError, LLLiteError
from .files import write_atomic
from .module import LLLiteModule
from .names import MODULE_PREFIX, is_up_path

ARCHITECTURE = "stable-diffusion-xl-v1-base/control-net-lllite"
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}
_PARAMS = {
    f"{layer}.{kind}"
    for layer in ("conditioning1.0", "conditioning1.2", "conditioning1.4", "down.0", "mid.0", "up.0")
    for kind in ("weight", "bias")
}


class LLLiteFileError(LLLiteError):
    """A file that is not a usable LLLite network; the message names the file and what is wrong."""


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or the tensors of a pickle (never other objects)."""
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"no LLLite file at {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise LLLiteFileError(
                f"{path}: this pickle holds more than tensors, and lllite does not run code from files "
                f"(weights_only=True refused it: {str(error).splitlines()[0]}). Use a .safetensors file."
            ) from None
        except Exception as error:
            raise LLLiteFileError(f"{path}: not a readable PyTorch file ({type(error).__name__}: {error})") from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise LLLiteFileError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
        return dict(obj), {}
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:
        raise LLLiteFileError(
            f"{path}: not a readable safetensors file ({type(error).__name__}: {error}); "
            "a download that stopped early leaves such a file - fetch it again"
        ) from None
    return tensors, metadata


def _describe_foreign(keys: list[str]) -> str:
    if any(k.startswith(("lllite_conditioning1.", "lllite_dit_", "lllite_modules.")) for k in keys):
        return "it is an Anima LLLite (kohya's DiT format): lllite.load reads it, and it attaches to an Anima pipeline"
    if any("lora" in k.lower() for k in keys):
        return "it is a LoRA: load it with pipe.load_lora_weights(...)"
    if any(k.startswith(("controlnet_", "input_hint_block", "control_model.")) for k in keys):
        return "it is a full ControlNet: load it with diffusers' ControlNetModel"
    return f"its first keys are {keys[:3]}"


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
    """What every file we write says of its modules: modelspec architecture and dimensions."""
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


def save(modules: Mapping[str, LLLiteModule], path, dtype: torch.dtype | None = torch.float16,
         metadata: Mapping[str, object] | None = None, overwrite: bool = False) -> Path:
    """Write ``modules`` as a kohya-format safetensors file, atomically.

    Args:
        modules: kohya module name -> module.
        path: destination (``.safetensors``).
        dtype: dtype of the stored tensors (the published files are fp16); None keeps the modules'.
        metadata: string metadata (other values are stored as JSON); it overrides the defaults
            (modelspec architecture, dimensions).
        overwrite: replace an existing file; otherwise an existing file raises
            :class:`lllite.errors.OutputExistsError`.
    """
    tensors = {f"{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()}
    return write_tensors(tensors, path, dtype, {**default_metadata(modules), **(metadata or {})}, overwrite)


def write_tensors(tensors: Mapping[str, torch.Tensor], path, dtype: torch.dtype | None,
                  metadata: Mapping[str, object], overwrite: bool) -> Path:
    """Write a flat state dict and its metadata (strings; other values as JSON) as safetensors, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LLLiteFileError(f"{path}: LLLite files are written as .safetensors")
    stored = {key: (value if dtype is None else value.to(dtype)).detach().to("cpu").contiguous()
              for key, value in tensors.items()}
    text = {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    return write_atomic(path, lambda temporary: save_file(stored, str(temporary), metadata=text), overwrite)


def modelspec(architecture: str) -> dict[str, str]:
    """The modelspec keys every file we write carries."""
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
    }


def is_anima(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """Whether a file holds an Anima (DiT) LLLite rather than an SDXL one: its keys or its modelspec say so."""
    anima_keys = ("lllite_conditioning1.", "lllite_dit_", "lllite_modules.")
    return (any(key.startswith(anima_keys) for key in tensors)
            or str(metadata.get("modelspec.architecture", "")).startswith("anima"))
