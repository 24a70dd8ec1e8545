"""Does a toy draw what it is told? The shape a coloured region shows, and a base model's unconditioned
drawings of every toy caption read that way (``benches/toy_shapes.py``, the toys' pretraining)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from lllite.metrics import has_colour_blob, read_shape
from lllite.toy.shapes import COLOURS, SHAPES, caption_for


@dataclass
class BaseShapes:
    """How the base model alone (no network) draws the toy captions: per caption, the shape each image reads as
    (:func:`read_toy_shape`) and whether it shows the caption's colour as one plausible region
    (:func:`lllite.metrics.has_colour_blob`)."""

    readings: dict[str, list[str | None]]
    coloured: dict[str, list[bool]]

    @property
    def shape_accuracy(self) -> float:
        """The fraction of images that read as their caption's shape."""
        hits = [reading == caption.split()[-1] for caption, readings in self.readings.items() for reading in readings]
        return float(np.mean(hits))

    @property
    def colour_accuracy(self) -> float:
        """The fraction of images that show their caption's colour."""
        return float(np.mean([hit for hits in self.coloured.values() for hit in hits]))

    def confusion(self) -> dict[str, dict[str, int]]:
        """Caption shape -> shape read (None: no region of the colour) -> count."""
        table: dict[str, dict[str, int]] = {}
        for caption, readings in self.readings.items():
            row = table.setdefault(caption.split()[-1], {})
            for reading in readings:
                row[str(reading)] = row.get(str(reading), 0) + 1
        return table


def read_toy_shape(image, colour: str):
    """:func:`lllite.metrics.read_shape` among the toy's shapes: every toy render reads as its own shape."""
    return read_shape(np.asarray(image), colour, SHAPES)


def base_shapes(pipe, generate_base, per_caption: int = 8, *, size: int, num_inference_steps: int = 20,
                guidance_scale: float = 5.0, seed: int = 0, progress: bool = True) -> BaseShapes:
    """Generate every toy caption ("a red triangle", ...) ``per_caption`` times with the base model and read each
    image's shape and colour: does the toy draw what it is told?

    Args:
        generate_base: the family's ``pipeline.generate`` (the pipeline's own call, no network), called as
            ``generate_base(pipe, prompts, num_inference_steps=..., guidance_scale=..., height=..., width=...,
            generator=...)``.
        size: the images' side in pixels (the toy's own).
    """
    captions = [caption_for(colour, shape) for colour in COLOURS for shape in SHAPES]
    readings: dict[str, list] = {}
    coloured: dict[str, list] = {}
    for index, caption in enumerate(tqdm(captions, desc="base model's shapes", disable=not progress, unit="caption")):
        generators = [torch.Generator().manual_seed(seed + 1000 * index + i) for i in range(per_caption)]
        images = generate_base(pipe, [caption] * per_caption, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, height=size, width=size, generator=generators)
        colour = caption.split()[1]
        arrays = [np.asarray(image.convert("RGB")) for image in images]
        readings[caption] = [read_toy_shape(array, colour).shape for array in arrays]
        coloured[caption] = [has_colour_blob(array, colour) for array in arrays]
    return BaseShapes(readings, coloured)
