"""Held-out control fidelity by strength: does the image follow the control, and from which strength on?

Every held-out toy shape is generated at every multiplier, with its canny edges as the control, its
caption as the prompt and its index as the seed, and each image is scored twice: the **shape IoU** of
the caption's colour with the true shape, and the **edge F-score** of the image's canny edges against
the control (:mod:`lllite.metrics`). Multiplier 0 is the base model alone, which puts the shape
anywhere: its scores are the chance level the control has to beat. The demo and notebook 04 both
measure this way.

    from lllite.evaluate import fidelity_by_strength, plot_fidelity
    from lllite.toy.shapes import eval_samples
    fidelity = fidelity_by_strength(pipe, network, eval_samples(32))
    fidelity.means("iou")                 # one mean shape IoU per multiplier
    plot_fidelity(fidelity)               # a matplotlib Figure (lllite.figures)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .conditioning import canny
from .errors import LLLiteError
from .figures import new_figure
from .images import to_control_tensor
from .metrics import edge_f_score, shape_iou
from .sampling import MULTIPLIERS, generate
from .toy.reading import BaseShapes, base_shapes, read_toy_shape  # noqa: F401  (the toys' shape reading, here too)

#: The scores of each image, and how plots and tables name them.
METRICS = {"iou": "shape IoU", "edge_f": "edge F-score"}


@dataclass
class Fidelity:
    """Control fidelity by strength over held-out shapes.

    Attributes:
        multipliers: the strengths measured, in order.
        colours: each sample's caption colour.
        iou, edge_f: for each multiplier, one score per sample (in the samples' order).
        images: for each multiplier, the generated images of the first ``keep_images`` samples.
    """

    multipliers: list[float]
    colours: list[str]
    iou: dict[float, list[float]] = field(default_factory=dict)
    edge_f: dict[float, list[float]] = field(default_factory=dict)
    images: dict[float, list[Image.Image]] = field(default_factory=dict)

    def _scores(self, metric: str) -> dict[float, list[float]]:
        if metric not in METRICS:
            raise LLLiteError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
        return getattr(self, metric)

    def means(self, metric: str) -> list[float]:
        """The mean of ``metric`` (``"iou"`` or ``"edge_f"``) at each multiplier."""
        return [float(np.mean(self._scores(metric)[m])) for m in self.multipliers]

    def stds(self, metric: str) -> list[float]:
        """The standard deviation of ``metric`` over the samples at each multiplier."""
        return [float(np.std(self._scores(metric)[m])) for m in self.multipliers]

    def by_colour(self, metric: str) -> dict[float, dict[str, float]]:
        """The mean of ``metric`` per caption colour at each multiplier: a colour the base model cannot
        draw scores 0 at every strength."""
        scores = self._scores(metric)
        return {m: {colour: float(np.mean([v for v, c in zip(scores[m], self.colours) if c == colour]))
                    for colour in sorted(set(self.colours))}
                for m in self.multipliers}


@torch.no_grad()
def fidelity_by_strength(pipe, network, samples, *, multipliers: Sequence[float] = MULTIPLIERS,
                         num_inference_steps: int = 20, guidance_scale: float = 5.0, batch_size: int = 8,
                         keep_images: int = 0, progress: bool = True) -> Fidelity:
    """Generate every held-out shape at every multiplier and score each image.

    Args:
        pipe, network: an SDXL pipeline and the LLLite network to measure.
        samples: :class:`lllite.toy.shapes.ShapeSample` objects, e.g. ``eval_samples(32, size=...)``.
        multipliers: the strengths compared.
        num_inference_steps, guidance_scale: sampling settings.
        batch_size: images generated at once (lower it if a GPU runs out of memory).
        keep_images: how many samples' images (the first ones) to keep in :attr:`Fidelity.images`.
        progress: show a progress bar over the images.
    """
    from tqdm.auto import tqdm

    if not samples:
        raise LLLiteError("fidelity_by_strength needs at least one held-out sample")
    fidelity = Fidelity([float(m) for m in multipliers], [s.colour for s in samples])
    edges = [canny(s.image) for s in samples]
    controls = torch.cat([to_control_tensor(e) for e in edges])
    bar = tqdm(total=len(fidelity.multipliers) * len(samples), desc="fidelity by strength", unit="image",
               disable=not progress)
    for multiplier in fidelity.multipliers:
        iou, edge_f, kept = [], [], []
        fidelity.iou[multiplier], fidelity.edge_f[multiplier], fidelity.images[multiplier] = iou, edge_f, kept
        for first in range(0, len(samples), batch_size):
            chunk = samples[first:first + batch_size]
            images = generate(pipe, network, controls[first:first + len(chunk)], [s.caption for s in chunk],
                              seed=list(range(first, first + len(chunk))), num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, multiplier=multiplier)
            for index, (sample, image) in enumerate(zip(chunk, images), start=first):
                array = np.asarray(image.convert("RGB"))
                iou.append(shape_iou(array, sample.mask, sample.colour))
                edge_f.append(edge_f_score(array, edges[index]))
                if index < keep_images:
                    kept.append(image)
            bar.update(len(chunk))
    bar.close()
    return fidelity


def plot_fidelity(fidelity: Fidelity, metrics: Sequence[str] = tuple(METRICS)):
    """The mean of each metric (with one standard deviation) against strength, and the shape IoU of
    multiplier 0 (the base model's chance level) as a dashed line: a 500 x 350 px Figure."""
    figure, axes = new_figure(5, 3.5)
    for metric in metrics:
        axes.errorbar(fidelity.multipliers, fidelity.means(metric), yerr=fidelity.stds(metric), marker="o", capsize=4,
                      label=METRICS[metric])
    axes.axhline(fidelity.means("iou")[0], color="0.6", linestyle="--", linewidth=0.8,
                 label="IoU at strength 0 (no control)")
    axes.set_xlabel("LLLite strength (multiplier)")
    axes.set_ylabel("control fidelity" if len(metrics) > 1 else METRICS[metrics[0]])
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", fontsize=8)
    return figure
