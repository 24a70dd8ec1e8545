"""Images in, tensors out and back: the one place where uint8 RGB meets [-1, 1].

The published LLLite models read RGB in [-1, 1] (``uint8 / 127.5 - 1``) with no other
preprocessing: a canny control is white edges on black. The VAE reads and writes the same range, so
training images, decoded images and controls all convert here.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import LLLiteError


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


def to_control_tensor(image, what: str = "control image", channels: int = 3) -> torch.Tensor:
    """Convert a control image to a float32 tensor (B, 3, H, W) in [-1, 1].

    Args:
        image: a PIL image (any mode; converted to RGB), a uint8 numpy array (H, W, 3) or
            (B, H, W, 3), a float tensor (3, H, W) or (B, 3, H, W) already in [-1, 1], or a list of
            PIL images / arrays of one size (a batch).
        what: how error messages name the argument.
        channels: channels the network reads: 3 (RGB), or 4 for Anima's inpainting networks, which
            take a tensor (B, 4, H, W) of RGB and mask (see :func:`lllite.anima.inpaint_condition`).
    """
    if channels != 3:
        if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or image.shape[-3] != channels:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise LLLiteError(f"{what}: this network reads {channels} channels; give a float tensor (B, {channels}, H, W) "
                              f"(RGB in [-1, 1] and the mask in [0, 1]), got {shape}")
        return (image[None] if image.dim() == 3 else image).float()
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


def to_mask_tensor(mask, what: str = "mask") -> torch.Tensor:
    """Convert a mask to a float32 tensor (B, 1, H, W) in [0, 1]: 1 where the control acts, 0 where not.

    Args:
        mask: a PIL image (mode "L" or "1"; other modes are read as greyscale), a uint8 numpy array
            (H, W) read as ``x / 255``, a float numpy array or tensor (H, W) in [0, 1], or a tensor
            (B, 1, H, W) in [0, 1] (one mask per generated image).
        what: how error messages name the argument.

    Raises:
        LLLiteError: another shape, a NaN, or values outside [0, 1]; the message says which.
    """
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        if mask.dtype == np.uint8:
            mask = mask.astype(np.float32) / 255.0
        elif mask.dtype == bool:
            mask = mask.astype(np.float32)
        elif not np.issubdtype(mask.dtype, np.floating):
            raise LLLiteError(f"{what}: numpy masks must be uint8 (0..255) or float (0..1), got dtype {mask.dtype}")
        with np.errstate(over="ignore"):  # values past float32's range become inf, refused below by value
            mask = torch.from_numpy(np.array(mask, dtype=np.float32))
    if not isinstance(mask, torch.Tensor):
        raise LLLiteError(f"{what}: expected a PIL image, a numpy array (H, W) or a tensor (H, W) or (B, 1, H, W), "
                          f"got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        mask = mask.float()
    if not mask.is_floating_point():
        raise LLLiteError(f"{what}: tensor masks must be float in [0, 1], got {mask.dtype}")
    if mask.dim() == 2:
        mask = mask[None, None]
    if mask.dim() != 4 or mask.shape[1] != 1 or 0 in mask.shape:
        raise LLLiteError(f"{what}: expected (H, W) or (B, 1, H, W), got shape {tuple(mask.shape)}")
    mask = mask.detach().float()
    if bool(mask.isnan().any()):
        raise LLLiteError(f"{what}: holds NaN values")
    low, high = float(mask.min()), float(mask.max())
    if low < 0 or high > 1:
        hint = " (it looks like 0..255: divide by 255)" if high > 1 and low >= 0 else ""
        raise LLLiteError(f"{what}: values must lie in [0, 1], got [{low:.3g}, {high:.3g}]{hint}")
    return mask


def region_mask(width: int, height: int, shape: str = "rectangle", box: tuple[float, float, float, float] = (0.0, 0.0, 0.5, 1.0),
                invert: bool = False) -> Image.Image:
    """A mask picture ("L": 255 inside the region, 0 outside) of a rectangle or an ellipse.

    Args:
        width, height: the mask's size in pixels (the generated image's).
        shape: ``"rectangle"`` or ``"ellipse"``.
        box: (left, top, right, bottom) of the region as fractions of the width and height, e.g.
            ``(0, 0, 0.5, 1)`` for the left half.
        invert: 255 outside the region instead.
    """
    if shape not in ("rectangle", "ellipse"):
        raise LLLiteError(f"shape = {shape!r}: choose 'rectangle' or 'ellipse'")
    left, top, right, bottom = (float(v) for v in box)
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise LLLiteError(f"box = {tuple(box)}: give (left, top, right, bottom) fractions with 0 <= left < right <= 1 "
                          "and 0 <= top < bottom <= 1")
    picture = Image.new("L", (width, height), 255 if invert else 0)
    corners = (round(left * width), round(top * height), round(right * width) - 1, round(bottom * height) - 1)
    draw = ImageDraw.Draw(picture)
    (draw.rectangle if shape == "rectangle" else draw.ellipse)(corners, fill=0 if invert else 255)
    return picture


def random_region_masks(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Masks for training inpainting controls: (count, 1, height, width) in {0, 1}, each the union of one to
    three rectangles or ellipses of 10% to 60% of each side, drawn from ``generator``."""
    masks = torch.zeros(count, 1, height, width)
    for index in range(count):
        picture = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(picture)
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            size = (0.1 + 0.5 * torch.rand(2, generator=generator)) * torch.tensor([width, height])
            corner = torch.rand(2, generator=generator) * (torch.tensor([width, height]) - size)
            box = (float(corner[0]), float(corner[1]), float(corner[0] + size[0]), float(corner[1] + size[1]))
            ellipse = bool(torch.rand(1, generator=generator) < 0.5)
            (draw.ellipse if ellipse else draw.rectangle)(box, fill=255)
        masks[index, 0] = torch.from_numpy(np.asarray(picture) >= 128)
    return masks
