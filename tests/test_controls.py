"""Keyframes and masks as the network reads them: checked by value."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lllite.controls import KEYFRAME_SLOTS, keyframe_table, keyframes, strength_at, token_masks
from lllite.errors import LLLiteError
from lllite.images import region_mask, to_mask_tensor


def strengths(frames, points):
    table = keyframe_table(keyframes(frames))
    return [float(strength_at(table, torch.tensor(p, dtype=torch.float64))) for p in points]


def test_a_number_is_one_keyframe_at_the_start():
    assert keyframes(0.8) == ((0.0, 0.8),)
    assert strengths(0.8, [0.0, 0.5, 1.0]) == [0.8, 0.8, 0.8]


def test_the_last_keyframe_started_decides_and_nothing_acts_before_the_first():
    frames = [(0.25, 1.0), (0.5, 0.3), (0.75, 0.0)]
    assert strengths(frames, [0.0, 0.2, 0.25, 0.4, 0.5, 0.74, 0.75, 1.0]) == [0.0, 0.0, 1.0, 1.0, 0.3, 0.3, 0.0, 0.0]


def test_the_table_has_a_fixed_shape_whatever_the_number_of_keyframes():
    assert keyframe_table(keyframes(1.0)).shape == keyframe_table(keyframes([(0, 1), (0.5, 0)])).shape == (2, KEYFRAME_SLOTS)


@pytest.mark.parametrize("bad, message", [
    ([(0.5, 1.0), (0.5, 0.0)], r"multiplier\[1\]: start 0.5 must be after"),
    ([(0.0, 1.0), (1.5, 0.0)], r"multiplier\[1\]: start 1.5 is not a fraction"),
    ([(0.0, float("nan"))], r"multiplier\[0\]: strength must be a finite number"),
    ([(0.0, 1.0, 2.0)], r"multiplier\[0\] = \(0.0, 1.0, 2.0\): a keyframe is a \(start, strength\) pair"),
    ([("a", 1.0)], r"multiplier\[0\] .* must be numbers"),
    ("strong", r"give a number, or keyframes"),
    ([], r"give a number, or keyframes"),
    (float("inf"), r"multiplier must be a finite number"),
    ([(i / 20, 1.0) for i in range(KEYFRAME_SLOTS + 1)], r"at most 16"),
])
def test_bad_keyframes_are_refused_naming_what_is_wrong(bad, message):
    with pytest.raises(LLLiteError, match=message):
        keyframes(bad)


def test_masks_of_every_kind_become_one_float_tensor_in_0_1():
    half = np.zeros((4, 6), np.uint8)
    half[:, :3] = 255
    expected = torch.from_numpy(half / 255.0).float()[None, None]
    for mask in (Image.fromarray(half), half, half / 255.0, torch.from_numpy(half / 255.0).float(), expected):
        assert torch.equal(to_mask_tensor(mask), expected)
    assert to_mask_tensor(torch.ones(2, 1, 4, 6)).shape == (2, 1, 4, 6)


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 4), 2.0), r"mask: values must lie in \[0, 1\], got \[2, 2\]"),
    (torch.full((4, 4), 255.0), "divide by 255"),
    (torch.ones(1, 3, 4, 4), r"expected \(H, W\) or \(B, 1, H, W\), got shape \(1, 3, 4, 4\)"),
    (torch.full((2, 2), float("nan")), "NaN"),
    (np.ones((4, 4), np.int64), "numpy masks must be uint8"),
    ("left half", "expected a PIL image"),
])
def test_bad_masks_are_refused_naming_what_is_wrong(bad, message):
    with pytest.raises(LLLiteError, match=message):
        to_mask_tensor(bad)


def test_token_masks_average_over_each_token_and_keep_all_ones_and_all_zeros_exact():
    for value in (0.0, 1.0):
        tokens = token_masks(torch.full((1, 1, 104, 72), value), (13, 9), depth=2)
        assert tokens.shape == (1, 7 * 5, 1) and bool((tokens == value).all())
    left = to_mask_tensor(region_mask(64, 64, "rectangle", (0.0, 0.0, 0.5, 1.0)))
    tokens = token_masks(left, (8, 8), depth=1).view(8, 8)
    assert bool((tokens[:, :4] == 1).all()) and bool((tokens[:, 4:] == 0).all())


def test_region_masks_draw_rectangles_and_ellipses_inside_their_box():
    rectangle = np.asarray(region_mask(8, 4, "rectangle", (0.0, 0.0, 0.5, 1.0)))
    assert rectangle[:, :4].min() == 255 and rectangle[:, 4:].max() == 0
    ellipse = np.asarray(region_mask(40, 40, "ellipse", (0.25, 0.25, 0.75, 0.75)))
    assert ellipse[20, 20] == 255 and ellipse[0, 0] == 0 and ellipse[11, 11] == 0  # the box's corner is outside
    inverted = np.asarray(region_mask(8, 4, "rectangle", (0.0, 0.0, 0.5, 1.0), invert=True))
    assert np.array_equal(inverted, 255 - rectangle)
    with pytest.raises(LLLiteError, match="box"):
        region_mask(8, 8, box=(0.5, 0.0, 0.5, 1.0))
    with pytest.raises(LLLiteError, match="'star'"):
        region_mask(8, 8, shape="star")
