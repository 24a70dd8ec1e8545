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


def _largest_blob(image, colour: str) -> np.ndarray | None:
    segmented = colour_mask(image, colour).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(segmented, connectivity=8)
    if count <= 1:
        return None
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def circle_fill(blob: np.ndarray) -> float:
    """How much of its circumscribed circle a region fills: its area over pi R^2, R the largest distance from its
    centroid to a pixel's far corner. A disc fills nearly all of it, a square 2/pi, an equilateral triangle 0.41;
    rotation does not change it."""
    ys, xs = np.nonzero(blob)
    cy, cx = ys.mean(), xs.mean()
    radius = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max() + 0.5 * np.sqrt(2)
    return float(len(xs) / (np.pi * radius ** 2))


#: The least IoU with its best-fitting toy shape at which a region reads as that shape (toy renders score 0.9 and
#: more at 64 px; a triangle with blunted corners about 0.7).
MIN_MATCH = 0.8


def shape_match(blob: np.ndarray, shape: str, rotations: int = 30) -> float:
    """How well a region is ``shape``: its best IoU with that shape drawn at the region's centroid and area, over
    ``rotations`` turns (a circle needs none). Crisp toy renders score about 0.9 and more; blunted corners, bulges
    and stars score lower, whatever their size."""
    ys, xs = np.nonzero(blob)
    if not len(xs):
        return 0.0
    centre, area = np.array([xs.mean(), ys.mean()]), len(xs)
    canvas = np.zeros(blob.shape, np.uint8)
    scale = 16
    if shape == "circle":
        cv2.circle(canvas, tuple(int(round(v * scale)) for v in centre), int(round(np.sqrt(area / np.pi) * scale)), 1, -1,
                   cv2.LINE_8, shift=4)
        return _iou(blob, canvas > 0)
    corners = {"square": 4, "triangle": 3}[shape]
    radius = np.sqrt(2 * area / (corners * np.sin(2 * np.pi / corners)))  # a regular polygon of that area
    best = 0.0
    for angle in np.linspace(0, 2 * np.pi / corners, rotations, endpoint=False):
        turns = angle + 2 * np.pi * np.arange(corners) / corners
        points = centre + radius * np.stack([np.cos(turns), np.sin(turns)], axis=1)
        canvas[:] = 0
        cv2.fillPoly(canvas, [np.round(points * scale).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        best = max(best, _iou(blob, canvas > 0))
    return best


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@dataclass(frozen=True)
class ShapeReading:
    """What :func:`read_shape` saw: the toy shape the region matches best, if it matches it at :data:`MIN_MATCH` or
    better (None: no region of the colour, or no clear shape); the best match; the region's area as a fraction of
    the image."""

    shape: str | None
    match: float
    area: float


def read_shape(image, colour: str, shapes=("circle", "square", "triangle"), min_fraction: float = 0.01,
               min_match: float = MIN_MATCH) -> ShapeReading:
    """The shape a picture draws in ``colour``: its largest region of that colour, compared with each of ``shapes``
    drawn at its centroid and area in the best rotation (:func:`shape_match`). A region under ``min_fraction`` of
    the image, or one that matches no shape at ``min_match``, reads as no shape (rounded blobs, stars, smudges).

    Args:
        image: RGB uint8 (H, W, 3).
        colour: the caption's colour.
    """
    blob = _largest_blob(_rgb(image), colour)
    area = 0.0 if blob is None else float(blob.mean())
    if blob is None or area < min_fraction:
        return ShapeReading(None, 0.0, area)
    matches = {shape: shape_match(blob, shape) for shape in shapes}
    best = max(matches, key=matches.get)
    return ShapeReading(best if matches[best] >= min_match else None, matches[best], area)
