"""Control-fidelity metrics for generated images: does the picture follow the control, and how closely?

Colours are segmented by hue among the four toy colours (red, green, blue, yellow) on saturated,
not-too-dark pixels; the toy backgrounds are low-saturation, so they never count as a colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lllite.conditioning import canny

# OpenCV hue (0..180) of each colour; a saturated pixel belongs to the colour with the nearest hue.
HUES = {"red": 0.0, "yellow": 26.0, "green": 64.0, "blue": 112.0}
MIN_SATURATION = 90
MIN_VALUE = 70


def _rgb(image, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must be an RGB uint8 array (H, W, 3), got {array.dtype} {array.shape}")
    return array


def _binary(array, name: str) -> np.ndarray:
    """A bool (H, W) from a bool/0-1/0-255 mask or an RGB control image (white = on)."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{name} must be (H, W) or (H, W, 3), got shape {array.shape}")
    return array > 127 if array.dtype == np.uint8 else array.astype(bool)


def colour_mask(image, colour: str) -> np.ndarray:
    """Pixels of ``image`` (RGB uint8) that show ``colour`` (one of red, green, blue, yellow)."""
    if colour not in HUES:
        raise ValueError(f"unknown colour {colour!r}; choose one of {sorted(HUES)}")
    hsv = cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2HSV).astype(np.float32)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    names = list(HUES)
    centres = np.array([HUES[name] for name in names], np.float32)
    distance = np.abs(hue[..., None] - centres)
    distance = np.minimum(distance, 180 - distance)
    nearest = np.argmin(distance, axis=-1)
    return (nearest == names.index(colour)) & (saturation >= MIN_SATURATION) & (value >= MIN_VALUE)


def shape_iou(image, mask, colour: str) -> float:
    """IoU between the pixels of ``colour`` in a generated image and the target shape's mask.

    Args:
        image: generated RGB uint8 (H, W, 3).
        mask: target mask (H, W), bool or uint8 (>127 = shape); must not be empty.
        colour: the caption's colour.

    Returns:
        IoU in [0, 1]; 0 when the colour is absent.
    """
    target = _binary(mask, "mask")
    segmented = colour_mask(image, colour)
    if target.shape != segmented.shape:
        raise ValueError(f"mask shape {target.shape} does not match image shape {segmented.shape}")
    if not target.any():
        raise ValueError("mask is empty: there is no target shape to compare with")
    union = np.logical_or(segmented, target).sum()
    return float(np.logical_and(segmented, target).sum() / union)


@dataclass
class EdgeScore:
    precision: float
    recall: float
    f_score: float


def edge_scores(image, edges, tolerance_px: float = 2.0) -> EdgeScore:
    """Precision, recall and F-score of the canny edges of ``image`` against the control ``edges``.

    An edge pixel counts as matched when the other edge map has an edge within ``tolerance_px``
    (Euclidean). The image's edges use the control's recipe (canny 100/200).

    Args:
        image: generated RGB uint8 (H, W, 3).
        edges: the canny control (white on black), RGB or single channel, same size.
        tolerance_px: matching distance in pixels (>= 0).
    """
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    target = _binary(edges, "edges")
    found = canny(_rgb(image))[..., 0] > 0
    if target.shape != found.shape:
        raise ValueError(f"edges shape {target.shape} does not match image shape {found.shape}")
    if not target.any() and not found.any():
        return EdgeScore(1.0, 1.0, 1.0)
    if not target.any() or not found.any():
        return EdgeScore(float(not found.any()), float(not target.any()), 0.0)
    to_target = cv2.distanceTransform((~target).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_found = cv2.distanceTransform((~found).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    precision = float((to_target[found] <= tolerance_px).mean())
    recall = float((to_found[target] <= tolerance_px).mean())
    f_score = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return EdgeScore(precision, recall, f_score)


def edge_f_score(image, edges, tolerance_px: float = 2.0) -> float:
    """F-score (0..1) of the image's canny edges against the control edges; see :func:`edge_scores`."""
    return edge_scores(image, edges, tolerance_px).f_score


def largest_blob_fraction(image, colour: str) -> float:
    """Area of the largest 8-connected region of ``colour``, as a fraction of the image area."""
    segmented = colour_mask(image, colour).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(segmented, connectivity=8)
    if count <= 1:
        return 0.0
    return float(stats[1:, cv2.CC_STAT_AREA].max() / segmented.size)


def has_colour_blob(image, colour: str, min_fraction: float = 0.01, max_fraction: float = 0.35) -> bool:
    """Whether the image shows one region of ``colour`` with a plausible size for a toy shape.

    The default range brackets the toy shapes (about 2% to 25% of the image) with some slack.

    Args:
        image: RGB uint8 (H, W, 3).
        colour: red, green, blue or yellow.
        min_fraction, max_fraction: accepted area of the largest region, as fractions of the image.
    """
    if not 0 <= min_fraction <= max_fraction <= 1:
        raise ValueError(
            f"need 0 <= min_fraction <= max_fraction <= 1, got min_fraction={min_fraction}, max_fraction={max_fraction}"
        )
    return min_fraction <= largest_blob_fraction(image, colour) <= max_fraction
