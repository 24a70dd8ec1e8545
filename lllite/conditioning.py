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


def soft_edge(image, sigma: float = 1.5) -> np.ndarray:
    """Soft edges: the smoothed gradient magnitude as grey lines on black, without a model.

    Close in spirit to HED/PiDiNet "softedge" controls: strong contours are bright, texture is faint,
    and lines keep their thickness, so a model trained on it follows shapes less strictly than canny.

    Args:
        image: RGB uint8 array (H, W, 3) or a PIL image.
        sigma: Gaussian blur before the gradient, in pixels (> 0); larger gives fewer, wider edges.
    """
    if sigma <= 0:
        raise ValueError(f"soft_edge sigma must be > 0 pixels, got {sigma}")
    grey = cv2.cvtColor(_as_rgb_uint8(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    grey = cv2.GaussianBlur(grey, (0, 0), sigma)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    # A high percentile instead of the maximum, so that one hard corner does not dim every other edge.
    scale = float(np.percentile(magnitude, 99.5))
    edges = np.zeros_like(grey, dtype=np.uint8) if scale <= 0 else np.clip(magnitude * (255.0 / scale), 0, 255).astype(np.uint8)
    return np.repeat(edges[:, :, None], 3, axis=2)


def blur(image, sigma: float = 8.0) -> np.ndarray:
    """A Gaussian-blurred copy, the control of a tile / de-blur model (it adds the detail back).

    Args:
        image: RGB uint8 array (H, W, 3) or a PIL image.
        sigma: standard deviation of the blur in pixels (> 0); about 1% of the image side keeps the
            layout and colours while removing texture.
    """
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0 pixels, got {sigma}")
    return cv2.GaussianBlur(_as_rgb_uint8(image), (0, 0), sigma)


def greyscale(image) -> np.ndarray:
    """The image's luminance in all three channels, the control of a recolouring model.

    Args:
        image: RGB uint8 array (H, W, 3) or a PIL image.
    """
    grey = cv2.cvtColor(_as_rgb_uint8(image), cv2.COLOR_RGB2GRAY)
    return np.repeat(grey[:, :, None], 3, axis=2)


# Conditioning kinds by the name used on the command line, and the options each one accepts.
KINDS = {
    "canny": (canny, ("low_threshold", "high_threshold")),
    "soft_edge": (soft_edge, ("sigma",)),
    "blur": (blur, ("sigma",)),
    "greyscale": (greyscale, ()),
}


def make_conditioning(kind: str, image, **options) -> np.ndarray:
    """The conditioning image of ``kind`` (one of :data:`KINDS`) for an RGB image.

    Options that ``kind`` does not take are ignored, so one set of settings can serve every kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown conditioning kind '{kind}'; choose one of {', '.join(KINDS)}")
    function, accepted = KINDS[kind]
    return function(image, **{k: v for k, v in options.items() if k in accepted and v is not None})
