"""The toy shape classifier (lllite.metrics.read_shape) and the base-model shape measurement built on it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from lllite.evaluate import BaseShapes, base_shapes, read_toy_shape
from lllite.metrics import circle_fill, shape_match
from lllite.toy.shapes import SHAPES, render_sample


@pytest.mark.parametrize("size", [64, 128])
def test_every_toy_render_reads_as_its_own_shape(size):
    samples = [render_sample(i, seed=5, size=size, split="eval") for i in range(150)]
    readings = [read_toy_shape(s.image, s.colour).shape for s in samples]
    assert readings == [s.shape for s in samples]


def test_the_fill_of_a_disc_a_square_and_a_triangle_is_near_its_geometry():
    fills = {shape: circle_fill(render_sample(0, size=256, shape=shape).mask) for shape in SHAPES}
    assert fills["circle"] > 0.9
    assert abs(fills["square"] - 2 / np.pi) < 0.05
    assert abs(fills["triangle"] - 3 * np.sqrt(3) / (4 * np.pi)) < 0.05


def test_a_triangle_with_rounded_corners_reads_as_a_circle_and_a_missing_colour_as_no_shape():
    sample = render_sample(3, size=128, shape="triangle", colour="red")
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (21, 21))  # corners rounded to a radius of 10 px
    rounded = cv2.morphologyEx(sample.mask.astype(np.uint8), cv2.MORPH_OPEN, disc).astype(bool)
    blob = sample.image.copy()
    blob[sample.mask & ~rounded] = sample.image[0, 0]  # the corners painted over with the background
    assert read_toy_shape(sample.image, "red").shape == "triangle"
    assert read_toy_shape(blob, "red").shape == "circle"
    assert read_toy_shape(sample.image, "blue").shape is None
    assert shape_match(np.zeros((8, 8), bool), "circle") == 0.0


def test_base_shapes_reads_every_caption_and_counts_hits():
    def draw(pipe, prompts, num_inference_steps, guidance_scale, height, width, generator):
        assert (height, width) == (64, 64)
        shape, colour = prompts[0].split()[-1], prompts[0].split()[1]
        return [Image.fromarray(render_sample(i, size=height, shape=shape if shape != "square" else "circle",
                                              colour=colour).image) for i in range(len(prompts))]

    result = base_shapes(None, draw, per_caption=2, size=64, progress=False)
    assert len(result.readings) == 12 and all(len(r) == 2 for r in result.readings.values())
    assert result.shape_accuracy == pytest.approx(2 / 3)  # every square drawn as a circle
    assert result.colour_accuracy == 1.0
    assert result.confusion()["square"] == {"circle": 8}
    assert BaseShapes({"a red circle": [None]}, {"a red circle": [False]}).shape_accuracy == 0.0
