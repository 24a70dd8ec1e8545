"""Images in, tensors out and back: the one place where uint8 RGB meets [-1, 1].

The published LLLite models read RGB in [-1, 1] (``uint8 / 127.5 - 1``) with no other
preprocessing: a canny control is white edges on black. The VAE reads and writes the same range, so
training images, decoded images and controls all convert here.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image


def from_uint8(array: np.ndarray, what: str = "image") -> torch.Tensor:
    """uint8 RGB (H, W, 3) or (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1], as ``uint8 / 127.5 - 1``.

    Args:
        what: how error messages name the argument.
    """
    if array.dtype != np.uint8:
        raise TypeError(
            f"{what}: numpy images must be uint8 RGB (H, W, 3), got dtype {array.dtype}; "
            "for float data pass a torch tensor (B, 3, H, W) in [-1, 1]"
        )
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"{what}: expected a uint8 array (H, W, 3) or (B, H, W, 3), got shape {array.shape}")
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, copy=True)  # np.asarray of a PIL image is read-only, a flipped view has negative strides
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 RGB (B, H, W, 3), clamped and rounded: the inverse of :func:`from_uint8`."""
    pixels = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def to_control_tensor(image, what: str = "control image") -> torch.Tensor:
    """Convert a control image to a float32 tensor (B, 3, H, W) in [-1, 1].

    Args:
        image: a PIL image (any mode; converted to RGB), a uint8 numpy array (H, W, 3) or
            (B, H, W, 3), a float tensor (3, H, W) or (B, 3, H, W) already in [-1, 1], or a list of
            PIL images / arrays of one size (a batch).
        what: how error messages name the argument.
    """
    if isinstance(image, Image.Image):
        return from_uint8(np.asarray(image.convert("RGB")), what)
    if isinstance(image, np.ndarray):
        return from_uint8(image, what)
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError(f"{what}: an empty list")
        parts = [to_control_tensor(item, f"{what}[{i}]") for i, item in enumerate(image)]
        sizes = {tuple(p.shape[-2:]) for p in parts}
        if len(sizes) > 1:
            raise ValueError(f"{what}: the images of a batch must share one size, got {sorted(sizes)}")
        return torch.cat(parts)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{what}: expected a PIL image, a uint8 numpy array or a tensor, got {type(image).__name__}")
    tensor = image[None] if image.dim() == 3 else image
    if tensor.dim() != 4 or tensor.shape[1] != 3:
        raise ValueError(
            f"{what}: expected a tensor (B, 3, H, W) or (3, H, W) with 3 RGB channels, got shape {tuple(image.shape)}"
        )
    if not tensor.is_floating_point():
        raise TypeError(f"{what}: tensors must be float in [-1, 1], got {tensor.dtype}; pass uint8 data as numpy or PIL")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1.001 or high > 1.001:
        hint = " (it looks like 0..255: use x / 127.5 - 1)" if high > 1.001 and low >= 0 else ""
        raise ValueError(f"{what}: values must lie in [-1, 1], got [{low:.3g}, {high:.3g}]{hint}")
    if low >= 0 and high > low:
        warnings.warn(
            f"{what}: every value is >= 0, but control images are read in [-1, 1]; "
            "if yours is in [0, 1], pass x * 2 - 1",
            stacklevel=3,
        )
    return tensor.float()


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    return [Image.fromarray(array) for array in to_uint8(tensor)]
