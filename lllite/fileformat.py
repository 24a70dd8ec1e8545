"""LLLite files: kohya-ss' format, read and written.

A file is a flat state dict ``<module>.<param>`` (safetensors; old ones are ``.pt``/``.ckpt``
pickles) whose module names are kohya's (see :mod:`lllite.names`). Dimensions are not stored; they
are read back from the tensor shapes.
"""
from __future__ import annotations

import datetime as _dt
import json
import pickle
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .files import write_atomic
from .module import LLLiteModule
from .names import MODULE_PREFIX
from .network import LLLiteNetwork

ARCHITECTURE = "stable-diffusion-xl-v1-base/control-net-lllite"
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}
_PARAMS = {
    f"{layer}.{kind}"
    for layer in ("conditioning1.0", "conditioning1.2", "conditioning1.4", "down.0", "mid.0", "up.0")
    for kind in ("weight", "bias")
}


class LLLiteFileError(ValueError):
    """A file that is not a usable LLLite network; the message names the file and what is wrong."""


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or the tensors of a pickle (never other objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LLLite file at {path}")
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
    if any("lora" in k.lower() for k in keys):
        return "it is a LoRA: load it with pipe.load_lora_weights(...)"
    if any(k.startswith(("controlnet_", "input_hint_block", "control_model.")) for k in keys):
        return "it is a full ControlNet: load it with diffusers' ControlNetModel"
    return f"its first keys are {keys[:3]}"


def network_from_state_dict(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                            source: str = "state dict", dtype: torch.dtype = torch.float32) -> LLLiteNetwork:
    """Build a network from kohya-format tensors, reading every dimension from the shapes.

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
    modules = {name: _module_from_tensors(name, tensors, source) for name, tensors in grouped.items()}
    network = LLLiteNetwork(modules, metadata).to(dtype)
    return network


def _module_from_tensors(name: str, tensors: dict[str, torch.Tensor], source: str) -> LLLiteModule:
    for required in ("conditioning1.0.weight", "conditioning1.2.weight", "down.0.weight", "mid.0.weight", "up.0.weight"):
        if required not in tensors:
            raise LLLiteFileError(f"{source}: module {name!r} has no {required!r}")
    down = tensors["down.0.weight"]
    first = tensors["conditioning1.0.weight"]
    if down.dim() != 2 or first.dim() != 4:
        raise LLLiteFileError(f"{source}: module {name!r} has malformed tensors "
                              f"(down.0.weight {tuple(down.shape)}, conditioning1.0.weight {tuple(first.shape)})")
    mlp_dim, in_dim = down.shape
    cond_emb_dim = 2 * first.shape[0]
    if "conditioning1.4.weight" in tensors:
        depth = 3
    else:
        depth = 2 if tensors["conditioning1.2.weight"].shape[-1] == 4 else 1
    module = LLLiteModule(in_dim, cond_emb_dim, mlp_dim, depth)
    expected = module.state_dict()
    for param, tensor in tensors.items():
        if param not in expected:
            raise LLLiteFileError(f"{source}: module {name!r} has {param!r}, which a depth-{depth} module does not")
        if tuple(tensor.shape) != tuple(expected[param].shape):
            raise LLLiteFileError(
                f"{source}: module {name!r} parameter {param!r} has shape {tuple(tensor.shape)}, expected "
                f"{tuple(expected[param].shape)} for in_dim={in_dim}, cond_emb_dim={cond_emb_dim}, mlp_dim={mlp_dim}"
            )
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise LLLiteFileError(f"{source}: module {name!r} lacks {missing}")
    module.load_state_dict({k: v.float() for k, v in tensors.items()})
    return module


def load(path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LLLiteNetwork:
    """Read a kohya-format LLLite file (fp16, bf16 or fp32; safetensors, or a tensors-only pickle).

    Args:
        path: the ``.safetensors`` file (``.pt``/``.ckpt`` are read with ``weights_only=True``).
        dtype: dtype of the returned network's parameters.
        device: where to put them.

    Returns the network in eval mode, ready for inference; call ``.train()`` to fine-tune it.
    """
    tensors, metadata = read_state_dict(path)
    return network_from_state_dict(tensors, metadata, source=str(path), dtype=dtype).to(device).eval()


def default_metadata(network: LLLiteNetwork) -> dict[str, str]:
    depths = sorted({m.depth for _, m in network.lllite_modules()})
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURE,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "lllite.cond_emb_dim": str(network.cond_emb_dim),
        "lllite.mlp_dim": str(network.mlp_dim),
        "lllite.modules": str(len(network)),
        "lllite.depths": ",".join(map(str, depths)),
        "lllite.up_path": str(network.up_path).lower(),
    }


def save(network: LLLiteNetwork, path, dtype: torch.dtype | None = torch.float16, metadata: dict | None = None,
         overwrite: bool = False) -> Path:
    """Write ``network`` as a kohya-format safetensors file, atomically.

    Args:
        path: destination (``.safetensors``).
        dtype: dtype of the stored tensors (the published files are fp16); None keeps the network's.
        metadata: extra string metadata (other values are stored as JSON); it overrides the
            network's own metadata and the defaults (modelspec architecture, dimensions).
        overwrite: replace an existing file; otherwise an existing file raises FileExistsError.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: LLLite files are written as .safetensors")
    tensors = {
        key: (value if dtype is None else value.to(dtype)).detach().to("cpu").contiguous()
        for key, value in network.state_dict().items()
    }
    merged = {**network.metadata, **default_metadata(network)}
    for key, value in (metadata or {}).items():
        merged[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return write_atomic(path, lambda temporary: save_file(tensors, str(temporary), metadata=merged), overwrite)
