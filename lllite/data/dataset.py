"""The dataset: paired samples of one or more :class:`DatasetConfig`, placed in aspect-ratio buckets.

Samples are dicts of tensors: ``image`` and ``conditioning_image`` (3, H, W) in [-1, 1], the caption,
and SDXL's micro-conditioning (``original_size``, ``crop_top_left``, ``target_size``, each (height,
width)). Images are grouped into aspect-ratio buckets whose sides are multiples of 64; use
:class:`BucketBatchSampler` and :func:`collate` so that a batch shares one bucket.
"""
from __future__ import annotations

import math
import random
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ..images import from_uint8
from .cache import CachedSamples, TensorCache
from .config import DatasetConfig, DatasetConfigError, SubsetConfig
from .pairing import CONDITIONING_BACKGROUND, ERROR, IMAGE_BACKGROUND, SKIPPED, Pair, Problem, load_rgb, pair_subset




def make_buckets(resolution: tuple[int, int], min_side: int, max_side: int, step: int = 64) -> list[tuple[int, int]]:
    """(width, height) buckets: sides multiples of ``step`` in [min_side, max_side], area at most
    resolution's area and as large as the step allows, both orientations."""
    max_area = resolution[0] * resolution[1]
    buckets = {(resolution[0] // step * step, resolution[1] // step * step)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, max_area // width // step * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def choose_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log scale) to the image's (width, height)."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


@dataclass(frozen=True)
class Placement:
    """How one image becomes a training sample: resized to ``resized`` (w, h), then ``target`` (w, h)
    is cut out at ``crop_top_left`` (top, left)."""

    original: tuple[int, int]
    resized: tuple[int, int]
    crop_top_left: tuple[int, int]
    target: tuple[int, int]


def place(size: tuple[int, int], target: tuple[int, int]) -> Placement:
    """Scale so that the image covers ``target``, then cut out the centre."""
    scale = max(target[0] / size[0], target[1] / size[1])
    resized = (max(target[0], round(size[0] * scale)), max(target[1], round(size[1] * scale)))
    top = (resized[1] - target[1]) // 2
    left = (resized[0] - target[0]) // 2
    return Placement(size, resized, (top, left), target)




@dataclass
class _Item:
    pair: Pair
    subset: SubsetConfig
    dataset_index: int
    placement: Placement


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as (3, H, W) in [-1, 1]."""
    return from_uint8(np.asarray(image))[0]


def _render(path: Path, background, placement: Placement, flip: bool) -> Image.Image:
    image, _ = load_rgb(path, background)
    if image.size != placement.resized:
        shrinking = image.size[0] > placement.resized[0]
        image = image.resize(placement.resized, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
    top, left = placement.crop_top_left
    image = image.crop((left, top, left + placement.target[0], top + placement.target[1]))
    return ImageOps.mirror(image) if flip else image


class PairedDataset(CachedSamples, torch.utils.data.Dataset):
    """Training pairs of one or more :class:`DatasetConfig`, bucketed by aspect ratio.

    Args:
        configs: one dataset config or several (each keeps its own resolution and batch size).
        seed: makes flips and caption dropout reproducible; call :meth:`set_epoch` each epoch.
        progress: show progress bars while reading the folders.

    Raises:
        DatasetConfigError: a folder is missing, or no pair at all is usable. Files that are left
            out are summarized in a warning; ``python -m data_tools check`` lists them.
    """

    def __init__(self, configs: DatasetConfig | Sequence[DatasetConfig], seed: int = 0, progress: bool = True):
        self.configs = [configs] if isinstance(configs, DatasetConfig) else list(configs)
        self.seed = seed
        self.epoch = 0
        self.items: list[_Item] = []
        self.problems: list[Problem] = []
        self._latents: TensorCache | None = None
        self._control_latents: TensorCache | None = None
        self._latent_keys: dict[tuple[int, bool], str] = {}
        self._control_latent_keys: dict[tuple[int, bool], str] = {}
        self._texts: TensorCache | None = None
        self._text_keys: dict[str, str] = {}
        for dataset_index, config in enumerate(self.configs):
            buckets = None
            if config.enable_bucket:
                buckets = make_buckets(config.resolution, config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps)
            for subset in config.subsets:
                report = pair_subset(subset, progress=progress)
                errors = [p for p in report.problems if p.action == ERROR]
                if errors:
                    raise DatasetConfigError("; ".join(f"{p.file}: {p.problem}" for p in errors))
                self.problems.extend(report.problems)
                for pair in report.pairs:
                    target = choose_bucket(pair.size, buckets) if buckets else config.resolution
                    item = _Item(pair, subset, dataset_index, place(pair.size, target))
                    self.items.extend([item] * subset.num_repeats)
        if not self.items:
            folders = ", ".join(str(s.image_dir) for c in self.configs for s in c.subsets)
            raise DatasetConfigError(f"no usable image/conditioning pair in {folders}; run `python -m data_tools check` on it")
        skipped = sum(p.action == SKIPPED for p in self.problems)
        if skipped:
            warnings.warn(f"{skipped} file(s) left out of the dataset; `python -m data_tools check` lists why", stacklevel=2)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def bucket_of(self, index: int) -> tuple[int, tuple[int, int]]:
        """(dataset index, (width, height)) of a sample; a batch shares one."""
        item = self.items[index]
        return item.dataset_index, item.placement.target

    def _image_tensor(self, index: int, flip: bool) -> torch.Tensor:
        item = self.items[index]
        return _to_tensor(_render(item.pair.image, IMAGE_BACKGROUND, item.placement, flip))

    def _conditioning_tensor(self, index: int, flip: bool) -> torch.Tensor:
        item = self.items[index]
        return _to_tensor(_render(item.pair.conditioning, CONDITIONING_BACKGROUND, item.placement, flip))

    def _random(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.epoch}:{index}")

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        rng = self._random(index)
        flip = item.subset.flip_aug and rng.random() < 0.5
        caption = item.pair.caption
        if item.subset.caption_dropout_rate and rng.random() < item.subset.caption_dropout_rate:
            caption = ""
        placement = item.placement
        top, left = placement.crop_top_left
        if flip:
            # The crop is mirrored with the picture, so micro-conditioning tells where it really came from.
            left = placement.resized[0] - left - placement.target[0]
        sample = {
            "conditioning_image": self._conditioning_tensor(index, flip),
            "caption": caption,
            "original_size": torch.tensor([placement.original[1], placement.original[0]]),
            "crop_top_left": torch.tensor([top, left]),
            "target_size": torch.tensor([placement.target[1], placement.target[0]]),
        }
        if self._latents is not None:
            sample["latents"] = self._latents.get(self._latent_keys[(index, flip)])["latents"]
        else:
            sample["image"] = self._image_tensor(index, flip)
        if self._control_latents is not None:
            sample["control_latents"] = self._control_latents.get(self._control_latent_keys[(index, flip)])["latents"]
        if self._texts is not None:
            sample.update(self._texts.get(self._text_keys[caption]))
        return sample

class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of indices that share a bucket, each dataset with its own batch size.

    Shuffled reproducibly from ``seed`` and the epoch; the last batch of a bucket may be smaller.
    """

    def __init__(self, dataset: PairedDataset, shuffle: bool = True, seed: int = 0):
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index in range(len(self.dataset)):
            groups[self.dataset.bucket_of(index)].append(index)
        batches = []
        for (dataset_index, _), indices in sorted(groups.items()):
            if self.shuffle:
                rng.shuffle(indices)
            size = self.dataset.configs[dataset_index].batch_size
            batches.extend(indices[i:i + size] for i in range(0, len(indices), size))
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def collate(samples: list[dict]) -> dict:
    """Stack samples of one bucket: tensors gain a batch dimension, captions become a list."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


def make_dataloader(dataset: PairedDataset, shuffle: bool = True, seed: int = 0, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader of bucketed batches; call ``loader.batch_sampler.set_epoch(epoch)`` each epoch."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=BucketBatchSampler(dataset, shuffle=shuffle, seed=seed),
        collate_fn=collate, num_workers=num_workers,
    )
