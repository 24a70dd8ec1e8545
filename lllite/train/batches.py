"""What each step reads: the dataset (checked against the model's sizes, its caches filled), and for every
optimizer step its micro-batches and its random generator, each a function of ``seed`` and the step alone,
so that a resumed run draws exactly what an uninterrupted one would have."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterator

import torch

from ..data import BucketBatchSampler, DatasetConfig, PairedDataset, collate, load_dataset_config
from ..errors import TrainError
from .config import TrainConfig


def check_resolutions(dataset: PairedDataset, multiple: int, source: str) -> None:
    """Raise :class:`TrainError` when a bucket's size is not a multiple of ``multiple`` pixels (what passes through
    the VAE and the UNet's levels, or the DiT's patches)."""
    for index in range(len(dataset)):
        dataset_index, (width, height) = dataset.bucket_of(index)
        if width % multiple or height % multiple:
            raise TrainError(
                f"{source}: dataset {dataset_index} trains at {width}x{height} px, but this model needs sides that are "
                f"multiples of {multiple} px; set resolution and bucket_reso_steps to multiples of {multiple}"
            )


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A generator seeded by ``(seed, *parts)``, e.g. (seed, step, micro-batch, process)."""
    digest = hashlib.blake2b(":".join(map(str, (seed, *parts))).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def epoch_batches(sampler: BucketBatchSampler, epoch: int) -> list[list[int]]:
    """The shuffled batches of one epoch, the same on every process."""
    sampler.set_epoch(epoch)
    return list(sampler)


def step_counts(config: TrainConfig, sampler: BucketBatchSampler, world: int) -> tuple[int, int]:
    """Optimizer steps per epoch (every process reads its own batches) and in the whole run."""
    steps_per_epoch = max(1, len(epoch_batches(sampler, 0)) // (world * config.gradient_accumulation_steps))
    return steps_per_epoch, config.max_train_epochs * steps_per_epoch if config.max_train_epochs else config.max_train_steps


def training_batches(dataset: PairedDataset, sampler: BucketBatchSampler, steps_per_epoch: int, accumulation: int,
                     world: int, rank: int, first_step: int, workers: int) -> Iterator[list[dict]]:
    """For each optimizer step from ``first_step`` on: this process's micro-batches.

    Step ``s`` reads batches ``((s mod steps_per_epoch) * accumulation + micro) * world + rank`` of epoch
    ``s // steps_per_epoch``, so the data of any step is known without replaying earlier ones.
    """
    step = first_step
    while True:
        epoch, position = divmod(step, steps_per_epoch)
        batches = epoch_batches(sampler, epoch)
        mine = [batches[((k * accumulation + micro) * world + rank) % len(batches)]
                for k in range(position, steps_per_epoch) for micro in range(accumulation)]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=mine, collate_fn=collate, num_workers=workers)
        micro_batches: list[dict] = []
        for batch in loader:
            micro_batches.append(batch)
            if len(micro_batches) == accumulation:
                yield micro_batches
                micro_batches = []
                step += 1


def _dataset_configs(config: TrainConfig) -> tuple[list[DatasetConfig], str]:
    source = config.dataset_config
    if source is None:
        raise TrainError("dataset_config is not set: give a kohya dataset TOML with image_dir and conditioning_data_dir")
    if isinstance(source, DatasetConfig):
        configs, name = [source], "dataset_config"
    elif isinstance(source, (list, tuple)) and all(isinstance(c, DatasetConfig) for c in source):
        configs, name = list(source), "dataset_config"
    else:
        configs, name = load_dataset_config(source), str(source)
    if config.train_batch_size is not None:
        configs = [dataclasses.replace(c, batch_size=config.train_batch_size) for c in configs]
    return configs, name


def load_dataset(config: TrainConfig, training, accelerator) -> tuple[PairedDataset, str]:
    """The dataset and the name it goes by in messages, checked against the model's sizes, with latents and
    text embeddings cached as ``config`` asks (the main process fills a disk cache before the others read it)."""
    configs, name = _dataset_configs(config)
    progress = config.progress and accelerator.is_main_process
    dataset = PairedDataset(configs, seed=config.seed, progress=progress)
    check_resolutions(dataset, training.pixel_multiple, name)
    if config.cache_latents:
        folder = Path(config.output_dir) / "cache" / "latents" if config.cache_latents_to_disk else None
        with accelerator.main_process_first():
            dataset.cache_latents(training.vae, folder, progress=progress, encode=training.encode_images)
            if getattr(training, "caches_control_latents", False):
                dataset.cache_latents(training.vae, folder, progress=progress, encode=training.encode_images,
                                      source="conditioning")
    if config.cache_text_encoder_outputs:
        tokenizers, encoders = training.text_models
        dataset.cache_text_encoder_outputs(tokenizers, encoders, progress=progress, encode=training.encode_text)
    return dataset, name
