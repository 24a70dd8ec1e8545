"""Training recipes: the toys' (measured; used by the demo and notebook 03 on a CPU), kohya's SDXL canny
recipe and kohya's recommended Anima start, each sized for one Colab GPU (notebook 03 on a GPU).

    from lllite.recipes import ToyRecipe, shapes_dataset, training_config
    settings = ToyRecipe().training_settings()     # TrainConfig fields, all but the data and the output
    config = training_config(env, shapes_dataset(env, "runs/shapes"), "runs/my_run")
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data import DatasetConfig, SubsetConfig
from .sdxl import SDXL_BASE
from .train import TrainConfig

if TYPE_CHECKING:
    from .notebook import Environment


@dataclass
class ToyRecipe:
    """How to train an LLLite on the toy world's shapes: at most 5 minutes on a CPU.

    Args:
        train_samples: shapes in the training set.
        max_train_seconds: training time budget.
        max_train_steps: most training steps; the cosine learning rate anneals over these steps or over
            ``max_train_seconds``, whichever runs out first.
        train_batch_size, learning_rate, cond_emb_dim, network_dim, up_path, timestep_sampling,
            debiased_estimation_loss: see :class:`lllite.train.TrainConfig`. Tuned on the earlier base
            weights (16000 pretraining steps; the shipped 6000-step base scores 0.68 with these
            settings in two processes). Measured on the held-out shapes after 5 minutes (about 950
            steps) in one process, mean IoU at strength 1: the noise loss alone 0.46, weighted by
            1/sqrt(SNR) 0.70, and with the learning rate doubled to 4e-3 0.72; batch 4 and 16, uniform
            timesteps, no up path, a learning rate of 8e-3 and network_dim 128 all scored lower. In two
            processes of batch 8 (about 780 steps of 16): 0.75, and 0.67 at a learning rate of 6e-3;
            two processes of batch 4 made no more steps than one process of batch 8 (0.68).
        compile: train the UNet as one ``torch.compile`` graph (see :class:`lllite.train.TrainConfig`).
            Off: in the demo's two CPU processes compiling took 2.5 of its 5 minutes and the compiled
            step was about 8% faster, so it made 833 steps (IoU 0.56 at strength 1) against eager's
            1519 and 1552 (0.79 in both runs).
        seed: seeds the dataset and the training.
    """

    train_samples: int = 2000
    max_train_seconds: float = 300.0
    max_train_steps: int = 4000
    train_batch_size: int = 8
    learning_rate: float = 4e-3
    cond_emb_dim: int = 32
    network_dim: int = 64
    up_path: bool = True
    timestep_sampling: str = "cubic"
    debiased_estimation_loss: bool = True
    compile: bool = False
    seed: int = 0

    def training_settings(self) -> dict:
        """The :class:`lllite.train.TrainConfig` settings of this recipe (all but the dataset and output folder)."""
        return dict(
            pretrained_model_name_or_path="toy", output_name="lllite_toy_canny", cond_emb_dim=self.cond_emb_dim,
            network_dim=self.network_dim, up_path=self.up_path, learning_rate=self.learning_rate,
            train_batch_size=self.train_batch_size, lr_scheduler="cosine", lr_warmup_steps=min(50, self.max_train_steps // 10),
            timestep_sampling=self.timestep_sampling, debiased_estimation_loss=self.debiased_estimation_loss,
            max_train_steps=self.max_train_steps, max_train_seconds=self.max_train_seconds, mixed_precision="no",
            gradient_checkpointing=False, cache_latents=True, cache_text_encoder_outputs=True, optimizer_type="adamw",
            seed=self.seed, save_precision="float", compile=self.compile,
        )


@dataclass
class AnimaToyRecipe:
    """How to train an Anima LLLite (kohya's v2) on the toy Anima's shapes: at most 5 minutes on a CPU.

    Args:
        train_samples: shapes in the training set.
        size: image side in pixels (the toy Anima is pretrained at 64).
        max_train_seconds, max_train_steps: the time budget and the most steps (the learning rate's cosine
            decay follows whichever runs out first).
        train_batch_size, learning_rate, cond_emb_dim, network_dim, lllite_target_layers, lllite_cond_dim,
            timestep_sampling: see :class:`lllite.train.TrainConfig`; kohya's Anima defaults otherwise
            (one ResBlock, no ASPP, no loss weighting, flow shift 1). Measured in the demo (two processes of
            batch 8; mean IoU at strength 1 on 32 held-out shapes): ``self_attn_qkv`` at 2e-3 0.745 (3228
            steps in 5 minutes, the CPU partly busy with other work) and at 4e-3 0.724 (3002 steps); every
            atomic target (adding cross-attention's q and the MLP's first Linear) at 2e-3 0.774 and, in a second
            run with these defaults, 0.783 (its 4000 steps in 290 s on the idle CPU).
        seed: seeds the dataset and the training.
    """

    train_samples: int = 2000
    size: int = 64
    max_train_seconds: float = 300.0
    max_train_steps: int = 4000
    train_batch_size: int = 8
    learning_rate: float = 2e-3
    cond_emb_dim: int = 32
    network_dim: int = 64
    lllite_target_layers: str = "self_attn_q_pre,self_attn_kv_pre,cross_attn_q_pre,mlp_fc1_pre"
    lllite_cond_dim: int = 64
    timestep_sampling: str = "sigmoid"
    seed: int = 0

    def training_settings(self) -> dict:
        """The :class:`lllite.train.TrainConfig` settings of this recipe (all but the dataset and output folder)."""
        return dict(
            pretrained_model_name_or_path="toy", model_family="anima", output_name="lllite_toy_anima_canny",
            cond_emb_dim=self.cond_emb_dim, network_dim=self.network_dim, lllite_target_layers=self.lllite_target_layers,
            lllite_cond_dim=self.lllite_cond_dim, learning_rate=self.learning_rate, train_batch_size=self.train_batch_size,
            lr_scheduler="cosine", lr_warmup_steps=min(50, self.max_train_steps // 10),
            timestep_sampling=self.timestep_sampling, max_train_steps=self.max_train_steps,
            max_train_seconds=self.max_train_seconds, mixed_precision="no", gradient_checkpointing=False,
            cache_latents=True, cache_text_encoder_outputs=True, optimizer_type="adamw", seed=self.seed,
            save_precision="float",
        )


def sdxl_colab_settings() -> dict:
    """kohya's SDXL canny recipe (E 32, M 64, lr 2e-4, AdamW 8-bit, mixed precision, gradient checkpointing)
    with a batch that fits one Colab GPU and a 45-minute budget, as :class:`lllite.train.TrainConfig` settings."""
    # bf16 natively from Ampere (compute capability 8) on; a T4 only emulates it, slowly
    bf16 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    return dict(pretrained_model_name_or_path=SDXL_BASE, output_name="lllite_sdxl_canny", cond_emb_dim=32,
                network_dim=64, learning_rate=2e-4, train_batch_size=2, mixed_precision="bf16" if bf16 else "fp16",
                gradient_checkpointing=True, optimizer_type="adamw8bit", max_train_steps=3000,
                max_train_seconds=45 * 60, cache_latents=True, cache_text_encoder_outputs=True)


def anima_colab_settings(pretrained_model_name_or_path: str) -> dict:
    """kohya's recommended start for an Anima LLLite (docs/anima_train_control_net_lllite.md, 3.2: E 32,
    ``lllite_cond_dim`` 64, one ResBlock, M 64, ``self_attn_q``, lr 1e-4, AdamW 8-bit, bf16, gradient
    checkpointing, cached latents and text outputs) with a batch that fits one Colab GPU and a 45-minute
    budget, as :class:`lllite.train.TrainConfig` settings.

    Anima's DiT is trained in bf16, native from Ampere on (L4, A100); a T4 emulates it, slowly.

    Args:
        pretrained_model_name_or_path: real Anima in diffusers' format (a local folder or a hub id).
    """
    return dict(pretrained_model_name_or_path=str(pretrained_model_name_or_path), model_family="anima",
                output_name="lllite_anima_canny", cond_emb_dim=32, network_dim=64, lllite_target_layers="self_attn_q",
                lllite_cond_dim=64, lllite_cond_resblocks=1, lllite_use_aspp=False, learning_rate=1e-4,
                train_batch_size=2, mixed_precision="bf16", gradient_checkpointing=True, optimizer_type="adamw8bit",
                max_train_steps=3000, max_train_seconds=45 * 60, cache_latents=True, cache_text_encoder_outputs=True)


def recipe_settings(env: Environment) -> dict:
    """The recipe of the environment's model as :class:`lllite.train.TrainConfig` settings (all but the data
    and the output): :class:`ToyRecipe` for the toy SDXL, :class:`AnimaToyRecipe` for the toy Anima,
    :func:`sdxl_colab_settings` for SDXL and :func:`anima_colab_settings` for Anima."""
    if env.model == "sdxl":
        return sdxl_colab_settings()
    if env.model == "anima":
        return anima_colab_settings(env.anima)
    return AnimaToyRecipe().training_settings() if env.model == "anima-toy" else ToyRecipe().training_settings()


def shapes_dataset(env: Environment, folder: str | os.PathLike, count: int | None = None) -> DatasetConfig:
    """The toy shapes in kohya's layout at the model's size, written once and reused afterwards.

    Args:
        env: where it runs (:class:`lllite.notebook.Environment`): the model decides the image size
            (128 px for the toy SDXL, 64 px for the toy Anima, 1024 px for SDXL and Anima), quick mode the count.
        folder: dataset folder; when ``folder/images`` already holds files they are used as they are.
        count: samples to write (default 16 in quick mode, else the toy recipe's 2000 for a toy and
            200 for SDXL and Anima).
    """
    from .toy.shapes import write_dataset

    folder = Path(folder)
    if count is None:
        toy_samples = AnimaToyRecipe().train_samples if env.model == "anima-toy" else ToyRecipe().train_samples
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
        env: where it runs (:class:`lllite.notebook.Environment`): its model and quick setting.
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
