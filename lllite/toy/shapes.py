"""Coloured shapes on plain backgrounds: a task where a control's effect is visible and measurable.

Every sample is a function of ``(seed, split, index)`` alone, so a dataset can be regenerated, extended
or read in any order. ``split="eval"`` draws from a separate random stream for held-out evaluation.
Backgrounds are low-saturation tones, light or dark, chosen so that the shape always differs from them
in hue *and* brightness: the colour can be segmented and canny (thresholds 100/200) finds the outline.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from lllite.conditioning import canny
from lllite.errors import OutputExistsError
from lllite.files import write_bytes_atomic

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (40, 180, 60),
    "blue": (50, 100, 240),
    "yellow": (240, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
SPLITS = {"train": 0, "eval": 1, "unseen": 2}

# Circumradius of a shape as a fraction of the image's shorter side.
RADIUS_RANGE = (0.125, 0.28)
# The ``"unseen"`` split's radii: smaller or larger than any the other splits draw (either with equal odds).
# Positions are drawn as in the other splits, so a larger shape also reaches places no training shape's
# centre did.
UNSEEN_RADIUS_RANGES = ((0.09, 0.125), (0.28, 0.34))
# How squares and triangles may stand: turned by a random angle, or upright.
ORIENTATIONS = ("random", "upright")
# The angle of the first vertex (image coordinates, y down) of an upright shape: a triangle with its apex at the
# top, a square with its sides along the image's.
UPRIGHT_ANGLES = {"triangle": -np.pi / 2, "square": np.pi / 4}
COLOUR_JITTER = 12
# Background brightness ranges; yellow is as bright as a light background, so it only gets dark ones.
DARK_BACKGROUND = (5, 35)
LIGHT_BACKGROUND = (200, 250)
BACKGROUND_TINT = 12


@dataclass
class ShapeSample:
    """One rendered sample.

    Attributes:
        image: RGB uint8 (H, W, 3).
        mask: bool (H, W), True on the shape.
        colour, shape: the words of the caption.
        caption: "a <colour> <shape>".
    """

    image: np.ndarray
    mask: np.ndarray
    colour: str
    shape: str

    @property
    def caption(self) -> str:
        return caption_for(self.colour, self.shape)


def caption_for(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def _vertices(shape: str, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
    corners = {"square": 4, "triangle": 3}[shape]
    angles = angle + 2 * np.pi * np.arange(corners) / corners
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _background(rng: np.random.Generator, height: int, width: int, colour: str) -> np.ndarray:
    light = colour != "yellow" and rng.random() < 0.5
    low, high = LIGHT_BACKGROUND if light else DARK_BACKGROUND
    ends = rng.uniform(low, high, size=2)
    tints = rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=(2, 3))
    direction = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xs / max(width - 1, 1) * np.cos(direction) + ys / max(height - 1, 1) * np.sin(direction)
    along = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    start = ends[0] + tints[0]
    stop = ends[1] + tints[1]
    image = start[None, None, :] * (1 - along[..., None]) + stop[None, None, :] * along[..., None]
    # Keep the tinted tone inside its brightness band so it never reaches the shapes' brightness.
    return np.clip(image, low - BACKGROUND_TINT, high + BACKGROUND_TINT).clip(0, 255).astype(np.uint8)


def render_sample(
    index: int,
    seed: int = 0,
    size: int | tuple[int, int] = 128,
    split: str = "train",
    colour: str | None = None,
    shape: str | None = None,
    orientation: str = "random",
) -> ShapeSample:
    """Render sample number ``index`` of the stream ``(seed, split)``.

    Args:
        index: position in the stream (>= 0).
        seed: dataset seed; the same (seed, split, index, size) always gives the same sample.
        size: image side in pixels, or (height, width).
        split: ``"train"``, ``"eval"`` or ``"unseen"``; no two share a random stream. ``"unseen"`` draws sizes
            outside the other two's range (:data:`UNSEEN_RADIUS_RANGES`).
        colour, shape: force the caption words (otherwise drawn at random, uniformly).
        orientation: ``"random"`` turns squares and triangles by a random angle; ``"upright"`` stands them as
            :data:`UPRIGHT_ANGLES` says (the random stream is the same either way: only the angle differs).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    if colour is not None and colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose one of {sorted(COLOURS)}")
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {list(SHAPES)}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; choose one of {list(ORIENTATIONS)}")
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([seed, SPLITS[split], index])
    drawn_colour = list(COLOURS)[rng.integers(len(COLOURS))]
    drawn_shape = SHAPES[rng.integers(len(SHAPES))]
    colour = colour or drawn_colour
    shape = shape or drawn_shape

    radii = UNSEEN_RADIUS_RANGES[rng.integers(2)] if split == "unseen" else RADIUS_RANGE
    radius = rng.uniform(*radii) * min(height, width)
    centre = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
    angle = rng.uniform(0, 2 * np.pi)
    if orientation == "upright":
        angle = UPRIGHT_ANGLES.get(shape, angle)
    rgb = np.clip(np.array(COLOURS[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3), 0, 255)

    image = _background(rng, height, width, colour)
    mask = np.zeros((height, width), np.uint8)
    # Sub-pixel coordinates (4 fractional bits) keep small shapes round and their edges anti-aliased.
    scale = 16
    if shape == "circle":
        centre_px = tuple(int(round(v * scale)) for v in centre)
        radius_px = int(round(radius * scale))
        cv2.circle(image, centre_px, radius_px, rgb.tolist(), -1, cv2.LINE_AA, shift=4)
        cv2.circle(mask, centre_px, radius_px, 255, -1, cv2.LINE_AA, shift=4)
    else:
        points = np.round(_vertices(shape, centre, radius, angle) * scale).astype(np.int32)
        cv2.fillPoly(image, [points], rgb.tolist(), cv2.LINE_AA, shift=4)
        cv2.fillPoly(mask, [points], 255, cv2.LINE_AA, shift=4)
    # A pixel belongs to the shape when the shape covers at least half of it.
    return ShapeSample(image=image, mask=mask >= 128, colour=colour, shape=shape)


def _png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def write_dataset(
    out_dir: str | os.PathLike,
    count: int,
    seed: int = 0,
    size: int | tuple[int, int] = 128,
    split: str = "train",
    overwrite: bool = False,
) -> Path:
    """Write ``count`` samples in kohya's layout and return ``out_dir``.

    Layout: ``images/NAME.png`` + ``images/NAME.txt`` (caption), ``conditioning/NAME.png`` (canny edges,
    white on black, thresholds 100/200), ``masks/NAME.png`` (255 on the shape). NAME is the zero-padded
    sample index, so the files pair up by basename.

    Args:
        out_dir: dataset folder; created if needed.
        count: number of samples (> 0).
        seed, size, split: as in :func:`render_sample`.
        overwrite: replace existing sample files; without it a folder that already holds a dataset
            is refused rather than mixed with the new one.
    """
    if count <= 0:
        raise ValueError(f"count must be > 0, got {count}")
    out = Path(out_dir)
    folders = {name: out / name for name in ("images", "conditioning", "masks")}
    if not overwrite and any(folder.is_dir() and any(folder.iterdir()) for folder in folders.values()):
        raise OutputExistsError(
            f"{out} already holds a dataset; choose another folder or pass overwrite=True to replace its files"
        )
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(count - 1)))
    for index in tqdm(range(count), desc=f"writing shapes to {out}", unit="sample"):
        sample = render_sample(index, seed=seed, size=size, split=split)
        name = f"{index:0{digits}d}"
        write_bytes_atomic(folders["images"] / f"{name}.png", _png(sample.image))
        write_bytes_atomic(folders["images"] / f"{name}.txt", (sample.caption + "\n").encode())
        write_bytes_atomic(folders["conditioning"] / f"{name}.png", _png(canny(sample.image)))
        write_bytes_atomic(folders["masks"] / f"{name}.png", _png(sample.mask.astype(np.uint8) * 255))
    return out


def eval_samples(count: int, seed: int = 0, size: int | tuple[int, int] = 128) -> list[ShapeSample]:
    """Held-out samples: the ``"eval"`` stream, never seen by a dataset written with ``split="train"``."""
    return [render_sample(index, seed=seed, size=size, split="eval") for index in range(count)]


def unseen_samples(count: int, seed: int = 0, size: int | tuple[int, int] = 128) -> list[ShapeSample]:
    """Held-out samples of sizes no training sample has (the ``"unseen"`` stream): does a control trained on
    the toy's shapes follow shapes smaller or larger than those?"""
    return [render_sample(index, seed=seed, size=size, split="unseen") for index in range(count)]
