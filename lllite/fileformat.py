"""LLLite files as every family stores them: a flat state dict of tensors with string metadata, read and
written here; what the keys and metadata mean is each family's (``lllite/<family>/fileformat.py``).

Files are safetensors; old ones are ``.pt``/``.ckpt`` pickles, read with ``weights_only=True`` so that a
file never runs code. Writing is atomic (:mod:`lllite.files`).
"""
from __future__ import annotations

import datetime as _dt
import json
import pickle
import warnings
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InputMissingError, LLLiteError
from .files import write_atomic

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}


class LLLiteFileError(LLLiteError):
    """A file that is not a usable LLLite network; the message names the file and what is wrong."""


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or the tensors of a pickle (never other objects)."""
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"no LLLite file at {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        try:
            with warnings.catch_warnings():  # torch notes an older pickle protocol; the unpickler reads it safely
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
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
    _check_header_length(path)
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


def _check_header_length(path: Path) -> None:
    """Refuse a file whose first 8 bytes (a safetensors header's length) claim more than the file holds, before
    anything is read or allocated on their word."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
    claimed = int.from_bytes(head, "little") if len(head) == 8 else None
    if claimed is None or not 2 <= claimed <= size - 8:
        what = f"is {size} bytes long" if claimed is None else f"claims a header of {claimed:,} bytes in {size:,}"
        raise LLLiteFileError(f"{path}: not a readable safetensors file (it {what}); a download that stopped early "
                              "leaves such a file - fetch it again")


def describe_foreign(keys: list[str]) -> str:
    """What a file that is no family's LLLite holds, and what to do with it, as far as its keys tell."""
    if any("lora" in k.lower() for k in keys):
        return "it is a LoRA: load it with pipe.load_lora_weights(...)"
    if any(k.startswith(("controlnet_", "input_hint_block", "control_model.")) for k in keys):
        return "it is a full ControlNet: load it with diffusers' ControlNetModel"
    return f"its first keys are {keys[:3]}"


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
