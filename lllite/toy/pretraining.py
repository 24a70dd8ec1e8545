"""What both toys' pretraining shares: the training shapes, the VAEs' reconstruction loss, the VAE round trip's
score, the learning rate's floor, and the command line.

The toys' own pretraining is :mod:`lllite.sdxl.pretrain` and :mod:`lllite.anima.pretrain`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lllite.errors import LLLiteError, OutputExistsError
from lllite.images import from_uint8, to_uint8
from lllite.metrics import shape_iou
from lllite.toy.reading import base_shapes
from lllite.toy.shapes import eval_samples, render_sample

#: Both toys' stages warm up linearly, then decay along a cosine to this fraction of their peak rate.
MIN_LR_RATE = 0.1
#: A toy passes its quality gate when its worst caption draws the caption's colour for this share of seeds.
GATE = 0.8
#: The share of a base's unconditioned images whose shape the shape reader reads as the caption's, aimed at.
SHAPE_TARGET = 0.9


class PretrainError(LLLiteError):
    """A pretraining setting that cannot work; the message names it and what would."""


def render_training_set(cfg, progress: bool = True, orientation: str = "random"
                        ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images in [-1, 1] (N, 3, H, W), shape masks (N, 1, H, W) and captions, from the ``"train"`` stream.

    Args:
        cfg: a toy's pretraining settings: ``train_samples``, ``seed`` and ``image_size`` are read.
        orientation: how squares and triangles stand (:func:`lllite.toy.shapes.render_sample`).
    """
    images = np.empty((cfg.train_samples, cfg.image_size, cfg.image_size, 3), np.uint8)
    masks = np.empty((cfg.train_samples, 1, cfg.image_size, cfg.image_size), np.float32)
    captions = []
    for index in tqdm(range(cfg.train_samples), desc="rendering shapes", unit="image", mininterval=5, disable=not progress):
        sample = render_sample(index, seed=cfg.seed, size=cfg.image_size, orientation=orientation)
        images[index] = sample.image
        masks[index, 0] = sample.mask > 0
        captions.append(sample.caption)
    return from_uint8(images), torch.from_numpy(masks), captions


def outline_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """1 on pixels within ``width`` pixels of the mask's outline (inside or outside), else 0; (N, 1, H, W)."""
    size = 2 * width + 1
    dilated = F.max_pool2d(mask, size, stride=1, padding=width)
    eroded = -F.max_pool2d(-mask, size, stride=1, padding=width)
    return dilated - eroded


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differences between vertical and between horizontal neighbours."""
    return images[..., 1:, :] - images[..., :-1, :], images[..., :, 1:] - images[..., :, :-1]


def reconstruction_losses(reconstruction: torch.Tensor, batch: torch.Tensor, mask: torch.Tensor, edge_band_px: int,
                          shape_weight: float, edge_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The toy VAEs' reconstruction terms: the MSE with the shape's pixels weighing ``1 + shape_weight`` and its
    outline ``edge_weight`` more, normalised by the mean weight; the L1 of the image gradients' difference; and
    the weights themselves.

    MSE rather than L1: L1 pulls a pixel towards its median, which is the background when the shape covers a
    tenth of the image, so colours came out late or never in short training; for the same reason the shape's
    pixels weigh more. MSE alone blurs the outline (a soft edge costs it little), so pixels near the outline
    weigh more again and the gradient term penalises soft edges directly.
    """
    weight = 1 + shape_weight * mask + edge_weight * outline_band(mask, edge_band_px)
    mse = (weight * (reconstruction - batch).square()).mean() / weight.mean()
    gradient = sum((a - b).abs().mean() for a, b in zip(image_gradients(reconstruction), image_gradients(batch)))
    return mse, gradient, weight


@torch.no_grad()
def round_trip_iou(round_trip, size: int, count: int = 48) -> dict[str, float]:
    """Mean shape IoU by colour of held-out shapes after ``round_trip`` (pixels (B, 3, H, W) in [-1, 1] -> the
    same through a VAE's encoder and decoder): a colour the VAE loses here, no denoiser can draw."""
    samples = eval_samples(count, seed=1, size=size)
    images = to_uint8(round_trip(from_uint8(np.stack([s.image for s in samples]))))
    scores: dict[str, list[float]] = {}
    for sample, image in zip(samples, images):
        scores.setdefault(sample.colour, []).append(shape_iou(image, sample.mask, sample.colour))
    return {colour: sum(v) / len(v) for colour, v in sorted(scores.items())}


def report_shapes(pipe, generate, size: int, per_caption: int = 8, num_inference_steps: int = 20) -> float:
    """Print how often the base draws its caption's shape (:func:`lllite.toy.reading.base_shapes`, ``per_caption``
    unconditioned images of each caption) and what the misread shapes were read as; return the share read right."""
    result = base_shapes(pipe, generate, per_caption, size=size, num_inference_steps=num_inference_steps,
                         progress=False)
    print(f"shapes read right: {result.shape_accuracy:.1%} of {sum(map(len, result.readings.values()))} images "
          f"(target >= {SHAPE_TARGET:.0%}), colour {result.colour_accuracy:.1%}; read as {result.confusion()}")
    return result.shape_accuracy


def main(argv: list[str] | None, config_class: type, pretrain: Callable[..., dict[str, float]], index: str,
         description: str, prog: str) -> int:
    """A toy's pretraining command: one flag per field of ``config_class``, and ``--overwrite``.

    Args:
        pretrain: trains with a ``config_class`` instance, saves the pipeline to its ``out_dir`` and returns the
            quality gate's rate per caption.
        index: the file that marks a saved pipeline (diffusers' index), refused without ``--overwrite``.
        description, prog: what ``--help`` says.

    Returns:
        0 when the gate passed, 2 when the pipeline was written but failed its gate, 1 for a setting or an
        existing pipeline (the message, one line, says which).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    defaults = config_class()
    for field in fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pipeline in --out-dir")
    args = parser.parse_args(argv)
    overwrite = args.__dict__.pop("overwrite")
    cfg = config_class(**vars(args))
    changed = [f"--{field.name.replace('_', '-')} {getattr(cfg, field.name)}" for field in fields(config_class)
               if getattr(cfg, field.name) != getattr(defaults, field.name)]
    # The run's recipe, for the record of how a pipeline was made.
    print(f"{prog} " + " ".join(changed) if changed else f"{prog} (every setting at its default)", flush=True)
    try:
        if (Path(cfg.out_dir) / index).exists() and not overwrite:
            raise OutputExistsError(f"{cfg.out_dir} already holds a pipeline; pass --overwrite to replace it")
        rates = pretrain(cfg)
    except LLLiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0 if min(rates.values()) >= GATE else 2


def forget_source_folder(pipe) -> None:
    """Drop the ``_name_or_path`` that diffusers records when it loads a model, and saves again: a pipeline
    that continues from a saved toy should not write this machine's path into the folder it saves."""
    for part in [pipe, *getattr(pipe, "components", {}).values()]:
        config = getattr(part, "config", None)
        if isinstance(config, dict) and "_name_or_path" in config:
            part._internal_dict = type(config)({k: v for k, v in config.items() if k != "_name_or_path"})
