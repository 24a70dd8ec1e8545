"""uint8 RGB <-> [-1, 1]: the conversions every part of the package shares, checked by value."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lllite.images import from_uint8, to_pil, to_uint8


def every_value() -> np.ndarray:
    """All 256 levels in each channel, (1, 16, 16, 3)."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return np.stack([levels, levels[::-1], levels.T], axis=-1)[None]


def test_uint8_becomes_channels_first_float32_from_minus_1_to_1():
    tensor = from_uint8(np.array([[[0, 128, 255]]], dtype=np.uint8))
    assert tensor.shape == (1, 3, 1, 1) and tensor.dtype == torch.float32
    assert tensor.flatten().tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-7)  # float32


def test_the_round_trip_returns_every_uint8_value_exactly():
    array = every_value()
    assert np.array_equal(to_uint8(from_uint8(array)), array)
    assert np.array_equal(np.asarray(to_pil(from_uint8(array))[0]), array[0])


def test_values_outside_minus_1_to_1_are_clamped_and_the_rest_rounded():
    tensor = torch.tensor([-3.0, -1.0, 0.0, 0.003, 1.0, 7.0]).reshape(1, 1, 2, 3).expand(1, 3, 2, 3)
    assert to_uint8(tensor)[0, ..., 0].flatten().tolist() == [0, 0, 128, 128, 255, 255]  # 127.5 rounds to even


def test_read_only_and_flipped_arrays_convert_and_the_result_owns_its_memory():
    array = every_value()[0]
    image = np.asarray(Image.fromarray(array))  # read-only
    assert torch.equal(from_uint8(image), from_uint8(array))
    flipped = array[:, ::-1]
    assert torch.equal(from_uint8(flipped), from_uint8(np.ascontiguousarray(flipped)))
    tensor = from_uint8(array)
    array[:] = 0
    assert tensor.max() == 1.0


def test_other_dtypes_and_shapes_are_refused_naming_the_argument():
    with pytest.raises(TypeError, match="pixels: numpy images must be uint8"):
        from_uint8(np.zeros((4, 4, 3), np.float32), "pixels")
    with pytest.raises(ValueError, match="pixels: expected a uint8 array"):
        from_uint8(np.zeros((4, 4), np.uint8), "pixels")
