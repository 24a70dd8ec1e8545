"""Conditioning images made from ordinary images, with no model download.

Every function takes and returns RGB ``uint8`` arrays of shape (H, W, 3) so that the result can be
saved as a PNG and fed to :meth:`lllite.LLLiteNetwork.set_cond_image` unchanged.
"""
from __future__ import annotations

import cv2
import numpy as np


def _as_rgb_uint8(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"expected a uint8 RGB image, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {array.shape}")
    return array


def canny(image, low_threshold: int = 100, high_threshold: int = 200) -> np.ndarray:
    """Canny edges as white lines on black, the control that kohya's published canny model expects.

    Args:
        image: RGB uint8 array (H, W, 3) or a PIL image.
        low_threshold, high_threshold: hysteresis thresholds on the gradient magnitude (0..~1000);
            100/200 is the recipe used for the published SDXL canny LLLite.
    """
    if not 0 <= low_threshold <= high_threshold:
        raise ValueError(
            f"canny thresholds must satisfy 0 <= low <= high, got low={low_threshold}, high={high_threshold}"
        )
    rgb = _as_rgb_uint8(image)
    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low_threshold, high_threshold)
    return np.repeat(edges[:, :, None], 3, axis=2)
