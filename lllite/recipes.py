"""Training recipes by environment (notebook 03, and 04 when it trains first): each family's toy recipe on a CPU
(the demo's, measured), and each family's recipe for one Colab GPU (kohya's SDXL canny recipe; kohya's
recommended Anima start), asked of :mod:`lllite.families`; and the toy shapes at the model's size.

    from lllite.recipes import shapes_dataset, training_config
    config = training_config(env, shapes_dataset(env, "runs/shapes"), "runs/my_run")
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from . import families
from .data import DatasetConfig, SubsetConfig
from .environment import Environment
from .train import TrainConfig


def recipe_settings(env: Environment) -> dict:
    """The recipe of the environment's model as :class:`lllite.train.TrainConfig` settings (all but the data
    and the output): a toy's ``ToyRecipe`` (:class:`lllite.sdxl.toy.ToyRecipe`, :class:`lllite.anima.toy.ToyRecipe`),
    or the family's recipe for one Colab GPU (:func:`lllite.sdxl.training.colab_settings`,
    :func:`lllite.anima.training.colab_settings`)."""
    family = families.of_choice(env.model)
    if env.toy:
        return family.role("toy").ToyRecipe().training_settings()
    return family.role("training").colab_settings(env.source)


def shapes_dataset(env: Environment, folder: str | os.PathLike, count: int | None = None) -> DatasetConfig:
    """The toy shapes in kohya's layout at the model's size, written once and reused afterwards.

    Args:
        env: where it runs (:class:`lllite.environment.Environment`): the model decides the image size
            (128 px for either toy, 1024 px for SDXL and Anima), quick mode the count.
        folder: dataset folder; when ``folder/images`` already holds files they are used as they are.
        count: samples to write (default 16 in quick mode, else the toy recipe's 2000 for a toy and
            200 for SDXL and Anima).
    """
    from .toy.shapes import write_dataset

    folder = Path(folder)
    if count is None:
        toy_samples = families.of_choice(env.model).role("toy").ToyRecipe().train_samples
        count = 16 if env.quick else (toy_samples if env.toy else 200)
    images = folder / "images"
    if not (images.is_dir() and any(images.iterdir())):
        write_dataset(folder, count, size=env.image_size)
    return DatasetConfig([SubsetConfig(images, folder / "conditioning")], resolution=env.image_size, enable_bucket=False)


def training_config(env: Environment, dataset: DatasetConfig, output_dir: str | os.PathLike, **changes) -> TrainConfig:
    """The training recipe for the environment (:func:`recipe_settings`), with a checkpoint and a validation
    grid every 100 steps: about 5 minutes on a CPU for the toys, a 45-minute budget on a GPU for SDXL and Anima.
    Quick mode trains a handful of steps.

    Args:
        env: where it runs (:class:`lllite.environment.Environment`): its model and quick setting.
        dataset: what to train on.
        output_dir: where the kohya file, checkpoints, validation grids and the loss plot go.
        **changes: any :class:`lllite.train.TrainConfig` field, to override the recipe.
    """
    recipe = recipe_settings(env)
    recipe.update(dataset_config=dataset, output_dir=str(output_dir), num_validation_images=4, sample_seed=0,
                  save_every_n_steps=100, sample_every_n_steps=100, sample_num_inference_steps=20)
    if env.quick:
        recipe.update(train_batch_size=4, max_train_steps=4, lr_warmup_steps=0, save_every_n_steps=2,
                      sample_every_n_steps=4, num_validation_images=2, sample_num_inference_steps=2)
    return TrainConfig(**{**recipe, **changes})


def trained_files(env: Environment, folders: Sequence[str | os.PathLike]) -> list[Path]:
    """Where the environment's training recipe (:func:`lllite.recipes.training_config`) writes its file in
    each of ``folders``, in their order: the files :func:`lllite.environment.find_weights` looks for."""
    name = recipe_settings(env)["output_name"]
    return [Path(folder) / f"{name}.safetensors" for folder in folders]
