"""Train a ControlNet-LLLite network on a frozen SDXL or Anima: the whole loop, top to bottom.

    python -m lllite.train --config my_lllite.toml
    python -m lllite.train --config my_lllite.toml --resume          # continue from the latest checkpoint
    accelerate launch --num_processes 2 -m lllite.train --config my_lllite.toml   # several GPUs (DDP)

Options carry kohya's names (``TrainConfig``). Only the LLLite network trains; the denoising model,
VAE and text encoders are frozen. The loop is the same for both model families; what differs (the
models, the data's encoding, the network, the objective) is a family's :class:`SDXLTraining` or
:class:`lllite.anima.training.AnimaTraining`. SDXL's objective (:mod:`lllite.objective`): DDPM noise,
epsilon prediction, micro-conditioning time ids; Anima's (:mod:`lllite.anima.objective`): rectified flow.

Every random draw (data order per epoch, flips and caption dropout, noise, timesteps) is a function
of ``seed`` and the step, so a run killed at any point and resumed from a checkpoint ends with the
same weights as a run that was never stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import (BucketBatchSampler, DatasetConfig, PairedDataset, collate, encode_prompts,
                   load_dataset_config, read_toml)
from .errors import LLLiteError
from .files import write_atomic
from .names import find_targets
from .network import LLLiteNetwork, create_network
from .objective import (LR_SCHEDULERS, TIMESTEP_SAMPLINGS, loss_weights, lr_factor, noise_loss, noise_scheduler,
                        sample_noise, sample_timesteps, signal_to_noise)
from .pipelines import load_pipeline

MODEL_FAMILIES = ("auto", "sdxl", "anima")

OPTIMIZERS = ("adamw", "adamw8bit")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}
#: The frozen models' dtype for each mixed precision; the network itself stays float32.
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrainError(LLLiteError):
    """A setting, model or dataset that training cannot use; the message says which and what to do."""


@dataclass
class TrainConfig:
    """Settings of one training run, named as in kohya's sd-scripts; the defaults are the SDXL canny recipe.

    Args:
        pretrained_model_name_or_path: hub id, local diffusers folder, single-file checkpoint
            (``.safetensors``/``.ckpt``), or ``"toy"`` for the pretrained toy SDXL (the toy Anima with
            ``model_family = "anima"``).
        model_family: ``"sdxl"``, ``"anima"``, or ``"auto"``: Anima for a folder saved by diffusers' modular
            pipeline (``modular_model_index.json``) or a pipeline given in memory that is one, else SDXL.
        dataset_config: kohya dataset TOML (``[[datasets]]`` / ``[[datasets.subsets]]``), or
            :class:`lllite.data.DatasetConfig` objects.
        output_dir, output_name: the trained file is ``output_dir/output_name.safetensors``.
        cond_emb_dim: channels of the conditioning embedding (32 for canny).
        network_dim: width of the modules' projections (kohya's rank; 64 for canny, ~half for depth).
        up_path: also adapt the up path's transformer blocks (kohya: down path and middle only; SDXL only).
        lllite_target_layers: Anima: the Linears adapted, a preset (``self_attn_q``, ``self_attn_qkv``,
            ``self_attn_qkv_cross_q``) or a comma list of ``self_attn_q_pre``, ``self_attn_kv_pre``,
            ``cross_attn_q_pre``, ``mlp_fc1_pre``.
        lllite_cond_dim: Anima: width of the shared conditioning trunk (64).
        lllite_cond_resblocks: Anima: ResBlocks in the trunk (1).
        lllite_use_aspp: Anima: end the trunk with ASPP (multi-scale and global context).
        lllite_dropout: Anima: dropout on each module's mid output while training (None: off).
        lllite_cond_in_channels: Anima: 3 (the control image), or 4 to train an inpainting network: each step
            draws a mask per sample (rectangles and ellipses) and the control becomes RGB + mask
            (:func:`lllite.anima.inpaint_condition`).
        lllite_inpaint_masked_input: Anima, inpainting: zero the control's RGB under the mask.
        learning_rate: AdamW learning rate; by default 2e-4 for SDXL (kohya's canny recipe) and 1e-4 for
            Anima (kohya's recommended start).
        max_train_steps: optimizer steps; ``max_train_epochs`` overrides it when set.
        max_train_epochs: passes over the dataset.
        max_train_seconds: stop after this much training time (checked between steps); a resumed run
            goes on from the time its checkpoint had used.
        train_batch_size: samples per step and process; None keeps each dataset's ``batch_size``.
        gradient_accumulation_steps: batches summed into one optimizer step.
        mixed_precision: ``"no"``, ``"fp16"`` (CUDA) or ``"bf16"``; the network stays float32 under autocast
            while the frozen models are stored in the half type.
        gradient_checkpointing: recompute UNet activations in the backward pass (less memory, ~30% slower).
        cache_latents: encode every image once before training; the VAE then leaves the GPU.
        cache_latents_to_disk: keep the latent cache in ``output_dir/cache`` between runs.
        cache_text_encoder_outputs: encode every caption once; the text encoders then leave the GPU.
        optimizer_type: ``"adamw"`` or ``"adamw8bit"`` (bitsandbytes; plain AdamW when it is missing).
        weight_decay: AdamW weight decay.
        lr_scheduler: ``constant``, ``constant_with_warmup``, ``linear`` or ``cosine``. With
            ``max_train_seconds`` the decay follows whichever runs out first, steps or time, so a run
            stopped by its time budget still ends at a low learning rate.
        lr_warmup_steps: steps of linear warmup.
        max_grad_norm: clip the gradient norm to this (0 switches clipping off).
        noise_offset: SDXL: adds ``noise_offset * N(0, 1)`` per image and channel to the noise (0 = off).
        min_snr_gamma: SDXL: min-SNR loss weighting with this gamma (5 is usual); None = off.
        debiased_estimation_loss: SDXL: weight each sample's loss by ``1 / sqrt(SNR)`` (SNR capped at 1000):
            the noise-prediction loss hardly sees the layout at high noise, and this weight restores it.
        timestep_sampling: SDXL: ``"uniform"`` (its objective, the default) or ``"cubic"``: ``t = (1 - u^3) * 1000``
            draws noisy timesteps more often, where the layout of the image is decided (as T2I-Adapter does).
            Anima: ``"sigmoid"`` (kohya's default), ``"uniform"``, ``"shift"``, ``"flux_shift"`` or ``"sigma"``
            (see :mod:`lllite.anima.objective`).
        discrete_flow_shift: Anima: the shift of ``shift`` and ``sigma`` sampling (kohya's default 1.0; 3.0 is
            the scheduler's, favouring noisy levels).
        sigmoid_scale: Anima: scale of the normal draw of ``sigmoid``, ``shift`` and ``flux_shift`` sampling (1.0).
        weighting_scheme: Anima: loss weight of the noise level: ``"none"`` (kohya's default), ``"sigma_sqrt"``
            or ``"cosmap"``.
        seed: seeds the network's init and every random draw of the run.
        save_every_n_steps: write a checkpoint (weights + optimizer state) and a kohya file this often.
        checkpoints_total_limit: checkpoints kept; older ones are deleted.
        save_precision: dtype of the written LLLite files: ``fp16``, ``bf16`` or ``float``; by default fp16
            for SDXL (as published) and bf16 for Anima (as kohya's bf16 training writes).
        sample_every_n_steps: write a validation grid (control, strength 0, strength 1) this often.
        num_validation_images: dataset samples shown in the validation grid.
        sample_num_inference_steps, sample_guidance_scale, sample_seed: how validation images are made.
        logging_dir: TensorBoard folder (when tensorboard is installed); default ``output_dir/logs``.
        resume: ``"latest"`` or a checkpoint folder to continue from.
        overwrite: start over even when ``output_dir`` holds an earlier run's file or checkpoints.
        max_data_loader_n_workers: DataLoader worker processes.
        compile: run the UNet, with the network inside, as one ``torch.compile(fullgraph=True)`` graph:
            the same losses as eager; the first step (and each new bucket size) pays the compile time.
        progress: show progress bars.
    """

    pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-xl-base-1.0"
    model_family: str = "auto"
    dataset_config: str | DatasetConfig | list[DatasetConfig] | None = None
    output_dir: str = "output"
    output_name: str = "lllite"
    cond_emb_dim: int = 32
    network_dim: int = 64
    up_path: bool = False
    lllite_target_layers: str = "self_attn_q"
    lllite_cond_dim: int = 64
    lllite_cond_resblocks: int = 1
    lllite_use_aspp: bool = False
    lllite_dropout: float | None = None
    lllite_cond_in_channels: int = 3
    lllite_inpaint_masked_input: bool = False
    learning_rate: float | None = None
    max_train_steps: int = 1600
    max_train_epochs: int | None = None
    max_train_seconds: float | None = None
    train_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    cache_latents: bool = True
    cache_latents_to_disk: bool = False
    cache_text_encoder_outputs: bool = True
    optimizer_type: str = "adamw8bit"
    weight_decay: float = 0.01
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None
    debiased_estimation_loss: bool = False
    timestep_sampling: str | None = None
    discrete_flow_shift: float = 1.0
    sigmoid_scale: float = 1.0
    weighting_scheme: str = "none"
    seed: int = 42
    save_every_n_steps: int | None = None
    checkpoints_total_limit: int = 2
    save_precision: str | None = None
    sample_every_n_steps: int | None = None
    num_validation_images: int = 4
    sample_num_inference_steps: int = 20
    sample_guidance_scale: float = 5.0
    sample_seed: int = 0
    logging_dir: str | None = None
    resume: str | None = None
    overwrite: bool = False
    max_data_loader_n_workers: int = 0
    compile: bool = False
    progress: bool = True

    def __post_init__(self):
        from .anima.objective import TIMESTEP_SAMPLINGS as FLOW_SAMPLINGS, WEIGHTING_SCHEMES

        choices = {"optimizer_type": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS,
                   "timestep_sampling": (None, *TIMESTEP_SAMPLINGS, *FLOW_SAMPLINGS), "model_family": MODEL_FAMILIES,
                   "mixed_precision": MIXED_PRECISIONS, "save_precision": (None, *SAVE_PRECISIONS),
                   "weighting_scheme": WEIGHTING_SCHEMES}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise TrainError(f"{name} = {value!r} is not one of {list(allowed)}")
        positive = ["cond_emb_dim", "network_dim", "max_train_steps", "gradient_accumulation_steps",
                    "checkpoints_total_limit", "sample_num_inference_steps", "lllite_cond_dim"]
        positive += [n for n in ("max_train_epochs", "train_batch_size", "save_every_n_steps", "sample_every_n_steps")
                     if getattr(self, n) is not None]
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cond_emb_dim % 2:
            raise TrainError(f"cond_emb_dim must be even (the first conv has cond_emb_dim / 2 channels), got {self.cond_emb_dim}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise TrainError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lllite_cond_in_channels not in (3, 4):
            raise TrainError(f"lllite_cond_in_channels must be 3 (RGB) or 4 (RGB + inpainting mask), "
                             f"got {self.lllite_cond_in_channels}")
        if self.lllite_dropout is not None and not 0 <= self.lllite_dropout < 1:
            raise TrainError(f"lllite_dropout must be in [0, 1), got {self.lllite_dropout}")
        for name in ("discrete_flow_shift", "sigmoid_scale"):
            if not getattr(self, name) > 0:
                raise TrainError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lr_warmup_steps", "max_grad_norm", "noise_offset", "weight_decay", "num_validation_images",
                     "max_data_loader_n_workers", "lllite_cond_resblocks"):
            if getattr(self, name) < 0:
                raise TrainError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_train_seconds is not None and not self.max_train_seconds > 0:
            raise TrainError(f"max_train_seconds must be > 0, got {self.max_train_seconds}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise TrainError(f"min_snr_gamma must be > 0, got {self.min_snr_gamma}")


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        network: the trained network (attached to the pipeline's UNet; call ``remove()`` to detach).
        weights: the kohya-format file written (None on processes other than the main one).
        steps: optimizer steps done in total (resumed runs count the earlier steps).
        losses: (step, loss) of every step, including steps before a resume.
        train_seconds: time spent in the training loop by this run (not counting caching and loading).
        stopped_by: ``"max_train_steps"`` or ``"max_train_seconds"``.
    """

    network: LLLiteNetwork
    weights: Path | None
    steps: int
    losses: list[tuple[int, float]]
    train_seconds: float
    stopped_by: str


# ------------------------------------------------------------------------------------------ model


def check_sdxl(pipe, name: str = "the model") -> None:
    """Raise :class:`TrainError` unless ``pipe`` has SDXL's parts: two text encoders, a text_time UNet with transformer blocks."""
    missing = [part for part in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
               if getattr(pipe, part, None) is None]
    if missing:
        raise TrainError(f"{name} is not an SDXL pipeline: it has no {', '.join(missing)} (LLLite needs SDXL's two text encoders)")
    embed = getattr(pipe.unet.config, "addition_embed_type", None)
    if embed != "text_time":
        raise TrainError(f"{name} is not SDXL-shaped: its UNet's addition_embed_type is {embed!r}, SDXL's is 'text_time'")
    try:
        targets = find_targets(pipe.unet, up_path=False)
    except (KeyError, ValueError, AttributeError) as error:
        raise TrainError(f"{name} is not SDXL-shaped: {error}") from None
    if not targets:
        raise TrainError(f"{name} is not SDXL-shaped: its UNet has no transformer blocks on the down path for LLLite")


def pixel_multiple(pipe) -> int:
    """Image sides must be multiples of this: the VAE's factor times the UNet's downsamplings."""
    levels = len(pipe.unet.config.block_out_channels)
    return int(getattr(pipe, "vae_scale_factor", 8)) * 2 ** (levels - 1)


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


def freeze(pipe, device: torch.device, weight_dtype: torch.dtype, gradient_checkpointing: bool) -> torch.dtype:
    """Freeze the UNet, VAE and text encoders and move them to ``device`` in ``weight_dtype``; returns the
    VAE's dtype, float32 for a VAE that overflows in fp16 (SDXL's: diffusers marks it ``force_upcast``)."""
    unet, vae, encoders = pipe.unet, pipe.vae, (pipe.text_encoder, pipe.text_encoder_2)
    for model in (unet, vae, *encoders):
        model.requires_grad_(False).eval()
    vae_dtype = torch.float32 if weight_dtype == torch.float16 and getattr(vae.config, "force_upcast", False) else weight_dtype
    # nn.Module.to: diffusers' own .to() warns about dtype casts meant for from_pretrained.
    nn.Module.to(unet, device, weight_dtype)
    nn.Module.to(vae, device, vae_dtype)
    for encoder in encoders:
        encoder.to(device, weight_dtype)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return vae_dtype


@dataclass
class Draw:
    """One micro-batch's inputs to the denoising model and its target, drawn from the step's generator.

    Attributes:
        noisy: the noised latents, in the model's dtype.
        timesteps: the model's timestep argument (SDXL: int64 in [0, 1000); Anima: the noise level in (0, 1)).
        target: what the model should predict (SDXL: the noise; Anima: the velocity ``noise - latents``).
        weights: per-sample loss weights, or None.
        conditioning: the model's text conditioning by argument name, in the model's dtype.
    """

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor | None
    conditioning: dict[str, torch.Tensor]


class SDXLTraining:
    """What the training loop needs of SDXL: its parts, the data's encoding, the network and the objective.

    Args:
        pipe: an SDXL pipeline.
        config: the run's settings (the family's defaults filled in).
    """

    name = "SDXL"
    defaults = {"learning_rate": 2e-4, "timestep_sampling": "uniform", "save_precision": "fp16"}
    timestep_samplings = TIMESTEP_SAMPLINGS
    #: Options of the other family, which SDXL refuses when they are not at their defaults.
    foreign = ("lllite_target_layers", "lllite_cond_dim", "lllite_cond_resblocks", "lllite_use_aspp", "lllite_dropout",
               "lllite_cond_in_channels", "lllite_inpaint_masked_input", "discrete_flow_shift", "sigmoid_scale",
               "weighting_scheme")

    def __init__(self, pipe, config: TrainConfig):
        self.pipe, self.config = pipe, config
        self.vae_dtype = self.weight_dtype = torch.float32

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.unet

    @staticmethod
    def control(batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The control the network reads in this step: the dataset's conditioning image."""
        return batch["conditioning_image"]

    @staticmethod
    def validation_control(image: torch.Tensor) -> torch.Tensor:
        """The control a validation grid gives the network: the conditioning image."""
        return image

    @property
    def encoders(self) -> tuple[nn.Module, ...]:
        return self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2

    def check(self, name: str) -> None:
        check_sdxl(self.pipe, name)

    def freeze(self, device: torch.device, weight_dtype: torch.dtype) -> None:
        self.weight_dtype = weight_dtype
        self.vae_dtype = freeze(self.pipe, device, weight_dtype, self.config.gradient_checkpointing)

    @property
    def pixel_multiple(self) -> int:
        return pixel_multiple(self.pipe)

    def cache(self, dataset: PairedDataset, accelerator, progress: bool) -> None:
        config, pipe = self.config, self.pipe
        if config.cache_latents:
            cache = Path(config.output_dir) / "cache" / "latents" if config.cache_latents_to_disk else None
            with accelerator.main_process_first():
                dataset.cache_latents(pipe.vae, cache, progress=progress)
        if config.cache_text_encoder_outputs:
            dataset.cache_text_encoder_outputs([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2],
                                               progress=progress)

    def create_network(self) -> LLLiteNetwork:
        config = self.config
        return create_network(self.pipe.unet, config.cond_emb_dim, config.network_dim, up_path=config.up_path)

    def prepare(self, device: torch.device) -> None:
        self.ddpm = noise_scheduler()
        self.alphas_cumprod = self.ddpm.alphas_cumprod.to(device)

    def draw(self, batch: dict, generator: torch.Generator, device: torch.device) -> Draw:
        latents, prompt_embeds, pooled, time_ids = encode_batch(batch, self.pipe, self.vae_dtype, device)
        noise = sample_noise(latents.shape, generator, self.config.noise_offset).to(device)
        timesteps = sample_timesteps(self.config.timestep_sampling, len(latents), generator).to(device)
        noisy = self.ddpm.add_noise(latents, noise, timesteps)
        weights = loss_weights(signal_to_noise(self.alphas_cumprod[timesteps]), min_snr_gamma=self.config.min_snr_gamma,
                               debiased=self.config.debiased_estimation_loss)
        dtype = self.weight_dtype
        conditioning = {"prompt_embeds": prompt_embeds.to(dtype), "pooled_prompt_embeds": pooled.to(dtype),
                        "time_ids": time_ids.to(dtype)}
        return Draw(noisy.to(dtype), timesteps, noise, weights, conditioning)

    @staticmethod
    def denoise(unet: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: dict) -> torch.Tensor:
        added = {"text_embeds": conditioning["pooled_prompt_embeds"], "time_ids": conditioning["time_ids"]}
        return unet(noisy, timesteps, encoder_hidden_states=conditioning["prompt_embeds"], added_cond_kwargs=added).sample

    def metadata(self) -> dict[str, str]:
        config = self.config
        return {"ss_network_module": "networks.control_net_lllite", "ss_noise_offset": str(config.noise_offset),
                "ss_min_snr_gamma": str(config.min_snr_gamma), "ss_debiased_estimation": str(config.debiased_estimation_loss)}


def training_for(config: TrainConfig, pipe=None):
    """The pipeline (loaded from ``config`` when not given) and its family's training: :class:`SDXLTraining` or
    :class:`lllite.anima.training.AnimaTraining`, with the family's defaults filled into the config."""
    from .anima.names import is_anima_pipeline

    if pipe is None:
        pipe = load_pipeline(config.pretrained_model_name_or_path, model_family=config.model_family,
                             what="pretrained_model_name_or_path")
    anima = is_anima_pipeline(pipe)
    if config.model_family != "auto" and anima != (config.model_family == "anima"):
        raise TrainError(f"model_family = {config.model_family!r}, but the pipeline is "
                         f"{'Anima' if anima else 'not Anima'} ({type(pipe).__name__})")
    if anima:
        from .anima.training import AnimaTraining as kind
    else:
        kind = SDXLTraining
    defaults = TrainConfig()
    changed = [option for option in kind.foreign if getattr(config, option) != getattr(defaults, option)]
    if changed:
        raise TrainError(f"{', '.join(changed)}: not an option of {kind.name} training (the model is {kind.name}; "
                         "see TrainConfig for which options belong to which model)")
    filled = {key: value for key, value in kind.defaults.items() if getattr(config, key) is None}
    config = dataclasses.replace(config, **filled)
    if config.timestep_sampling not in kind.timestep_samplings:
        raise TrainError(f"timestep_sampling = {config.timestep_sampling!r} is not one of {kind.name}'s: "
                         f"{list(kind.timestep_samplings)}")
    return pipe, kind(pipe, config)


class ControlledModel(nn.Module):
    """The frozen denoising model and the LLLite network as one module, so that DDP sees a forward and syncs
    the network.

    The network works through hooks inside the model; wrapping the bare network in DDP would never
    call its forward, and its gradients would never be averaged.
    """

    def __init__(self, training, network: nn.Module, compile: bool = False):
        super().__init__()
        # compiled after the network is attached: dynamo does not watch hooks
        self.model = torch.compile(training.denoiser, fullgraph=True) if compile else training.denoiser
        self.network = network
        self.denoise = training.denoise

    def forward(self, noisy, timesteps, control, conditioning: dict):
        self.network.set_cond_image(control)
        return self.denoise(self.model, noisy, timesteps, conditioning)


def restore_encoders(training) -> None:
    """Bring offloaded VAE and text encoders back to the denoising model's device: the pipeline can sample again."""
    for model in training.encoders:
        model.to(training.denoiser.device)


def offload_encoders(training) -> None:
    """On a GPU, move the VAE and the text encoders to the CPU when the dataset caches their outputs."""
    config = training.config
    if training.denoiser.device.type != "cuda":
        return
    vae, *text = training.encoders
    if config.cache_latents:
        vae.to("cpu")
    if config.cache_text_encoder_outputs:
        for model in text:
            model.to("cpu")


# ------------------------------------------------------------------------------------------ randomness and data


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A generator seeded by ``(seed, *parts)``, e.g. (seed, step, micro-batch, process)."""
    digest = hashlib.blake2b(":".join(map(str, (seed, *parts))).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def epoch_batches(sampler: BucketBatchSampler, epoch: int) -> list[list[int]]:
    """The shuffled batches of one epoch, the same on every process."""
    sampler.set_epoch(epoch)
    return list(sampler)


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
    training.cache(dataset, accelerator, progress)
    return dataset, name


def encode_batch(batch: dict, pipe, vae_dtype: torch.dtype, device: torch.device):
    """A batch's UNet inputs: scaled latents (float32), text and pooled embeddings, and micro-conditioning
    time ids, read from the dataset's caches or encoded now."""
    if "latents" in batch:
        latents = batch["latents"].to(device, torch.float32)
    else:
        pixels = batch["image"].to(device, vae_dtype)
        latents = pipe.vae.encode(pixels).latent_dist.mean.float() * pipe.vae.config.scaling_factor
    if "prompt_embeds" in batch:
        prompt_embeds, pooled = batch["prompt_embeds"].to(device), batch["pooled_prompt_embeds"].to(device)
    else:
        prompt_embeds, pooled = encode_prompts([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2],
                                               batch["caption"])
    time_ids = torch.cat([batch["original_size"], batch["crop_top_left"], batch["target_size"]], dim=1).to(device)
    return latents, prompt_embeds, pooled, time_ids


# ------------------------------------------------------------------------------------------ checkpoints


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:08d}"


def find_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / "network.safetensors").is_file() and (p / "training_state.pt").is_file()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(folder: Path, network: LLLiteNetwork, state: dict) -> None:
    """Network (float32) and training state, written to a temporary folder and then renamed into place."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in network.state_dict().items()},
                  str(staging / "network.safetensors"))
        torch.save(state, staging / "training_state.pt")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def load_checkpoint(folder: Path, network: LLLiteNetwork) -> dict:
    from safetensors.torch import load_file

    weights = folder / "network.safetensors"
    state_path = folder / "training_state.pt"
    if not weights.is_file() or not state_path.is_file():
        raise TrainError(f"resume: {folder} is not a checkpoint (it needs network.safetensors and training_state.pt)")
    try:
        network.load_state_dict(load_file(str(weights)))
    except RuntimeError as error:
        raise TrainError(f"resume: {weights} does not fit this network (other cond_emb_dim, network_dim or model?): "
                         f"{str(error).splitlines()[0]}") from None
    return torch.load(state_path, map_location="cpu", weights_only=False)


def checkpoint(accelerator, network: LLLiteNetwork, optimizer, config: TrainConfig, metadata: dict[str, str],
               step: int, steps_per_epoch: int, losses: list[tuple[int, float]], train_seconds: float) -> None:
    """On the main process, write the checkpoint of ``step`` (keeping the newest ``checkpoints_total_limit``)
    and its kohya file; every process waits for it.

    A checkpoint holds what the rest of the run depends on: the network, the optimizer's state, the
    step (the data, the draws and the learning rate follow from it and ``seed``), the losses so far
    and the training time used, which the time budget and the learning rate's decay go on from.
    """
    if accelerator.is_main_process:
        output_dir = Path(config.output_dir)
        state = {"step": step, "losses": losses, "train_seconds": train_seconds, "optimizer": optimizer.state_dict(),
                 "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                 "config": {k: v for k, v in vars(config).items() if isinstance(v, (int, float, str, bool, type(None)))}}
        save_checkpoint(checkpoint_dir(output_dir, step), network, state)
        for old in find_checkpoints(output_dir)[:-config.checkpoints_total_limit]:
            shutil.rmtree(old)
        path = output_dir / f"{config.output_name}-step{step:08d}.safetensors"
        save_network(network, path, config, metadata, step, steps_per_epoch, losses)
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------ outputs


def run_metadata(config: TrainConfig, dataset: PairedDataset, dataset_name: str, mixed_precision: str,
                 family: dict[str, str]) -> dict[str, str]:
    """kohya's ``ss_*`` metadata of the run, with the model family's own keys (``family``); :func:`save_network`
    adds the step and epoch of each file."""
    resolutions = sorted({tuple(c.resolution) for c in dataset.configs})
    return {
        **family,
        "ss_output_name": config.output_name,
        "ss_sd_model_name": str(config.pretrained_model_name_or_path),
        "ss_cond_emb_dim": str(config.cond_emb_dim),
        "ss_network_dim": str(config.network_dim),
        "ss_learning_rate": str(config.learning_rate),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_optimizer": config.optimizer_type,
        "ss_max_train_steps": str(config.max_train_steps),
        "ss_num_train_images": str(len(dataset)),
        "ss_batch_size_per_device": json.dumps(sorted({c.batch_size for c in dataset.configs})),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation_steps),
        "ss_resolution": json.dumps(resolutions[0] if len(resolutions) == 1 else resolutions),
        "ss_mixed_precision": mixed_precision,
        "ss_seed": str(config.seed),
        "ss_timestep_sampling": config.timestep_sampling,
        "ss_dataset_config": dataset_name,
    }


def save_network(network: LLLiteNetwork, path: Path, config: TrainConfig, metadata: dict[str, str], step: int,
                 steps_per_epoch: int, losses: list[tuple[int, float]]) -> Path:
    """The network as a kohya file at ``path`` (in ``save_precision``), and the loss plot so far beside it."""
    metadata = {**metadata, "ss_steps": str(step), "ss_epoch": str(step // steps_per_epoch)}
    network.save(path, dtype=SAVE_PRECISIONS[config.save_precision], metadata=metadata, overwrite=True)
    if losses:
        plot_losses(losses, path.parent / "loss.png")
    return path


# ------------------------------------------------------------------------------------------ pictures


def loss_figure(losses: Sequence[tuple[int, float]]):
    """Loss per step and its moving average, as a PIL image."""
    from .figures import figure_image, new_figure

    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    window = max(1, len(values) // 20)
    cumulative = [0.0]
    for value in values:
        cumulative.append(cumulative[-1] + value)
    smooth = [(cumulative[i + 1] - cumulative[max(0, i - window + 1)]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]
    figure, axes = new_figure(6, 3.5)
    axes.plot(steps, values, color="0.75", linewidth=0.8, label="loss")
    axes.plot(steps, smooth, color="C0", label=f"mean of {window}")
    axes.set_xlabel("step")
    axes.set_ylabel("noise MSE")
    axes.legend()
    return figure_image(figure)


def plot_losses(losses: Sequence[tuple[int, float]], path: Path) -> None:
    """:func:`loss_figure` written as a PNG (atomically)."""
    figure = loss_figure(losses)
    write_atomic(path, lambda temporary: figure.save(temporary, format="PNG"))


def validation_grid(training, network: LLLiteNetwork, dataset: PairedDataset, step: int):
    """Control, strength 0 and strength 1 for the first dataset samples, fixed seed: is the control learned?"""
    from .sampling import image_grid, generate
    from .images import to_pil

    pipe, config = training.pipe, training.config
    count = min(config.num_validation_images, len(dataset))
    indices = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})
    rows, labels = [], []
    for index in indices:
        sample = dataset.items[index]
        control = training.validation_control(dataset[index]["conditioning_image"][None])
        images = [generate(pipe, network, control, sample.pair.caption, seed=config.sample_seed,
                           num_inference_steps=config.sample_num_inference_steps,
                           guidance_scale=config.sample_guidance_scale, multiplier=multiplier)[0]
                  for multiplier in (0.0, 1.0)]
        rows.append([to_pil(control)[0], *images])
        labels.append(sample.pair.caption or "(no caption)")
    return image_grid(rows, ["control", "strength 0", "strength 1"], labels, title=f"step {step}")


def validate(accelerator, training, network: LLLiteNetwork, dataset: PairedDataset, step: int) -> None:
    """On the main process, write the validation grid of ``step`` to ``output_dir/samples`` (offloaded
    encoders visit the GPU for it); every process waits for it."""
    if accelerator.is_main_process:
        from .sampling import save_png

        config = training.config
        restore_encoders(training)
        with accelerator.autocast():
            grid = validation_grid(training, network, dataset, step)
        save_png(grid, Path(config.output_dir) / "samples" / f"{config.output_name}-step{step:08d}.png", overwrite=True)
        offload_encoders(training)
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------ the run


def _reset_accelerate_for(mixed_precision: str) -> None:
    """Allow a new precision in a process that trained before (notebooks); accelerate keeps one global state."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision) and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


def _usable_precision(mixed_precision: str) -> str:
    """The requested mixed precision, or fp16 on a GPU without bf16 arithmetic (a Colab T4)."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    if mixed_precision == "bf16" and torch.cuda.is_available():
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            native = torch.cuda.is_bf16_supported()
        if not native:
            print("mixed_precision bf16: this GPU has no bf16 arithmetic (e.g. a T4); training in fp16 instead")
            return "fp16"
    return mixed_precision


def make_accelerator(config: TrainConfig):
    """accelerate's ``Accelerator`` for the run (its processes, device and mixed precision), and whether it
    logs to TensorBoard (when tensorboard is installed)."""
    from accelerate import Accelerator

    mixed_precision = _usable_precision(config.mixed_precision)
    _reset_accelerate_for(mixed_precision)
    logging_dir = Path(config.logging_dir) if config.logging_dir else Path(config.output_dir) / "logs"
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    # cpu=True is what makes accelerate run several CPU processes as one DDP job (gloo) instead of each alone.
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(),
                              log_with="tensorboard" if tensorboard else None, project_dir=str(logging_dir))
    return accelerator, tensorboard


def make_optimizer(optimizer_type: str, parameters, learning_rate: float, weight_decay: float,
                   device: torch.device | str, say: Callable[[str], None] = print):
    """The optimizer a run trains with: bitsandbytes' AdamW8bit for ``"adamw8bit"`` on a CUDA GPU where it
    is installed (else plain AdamW, and ``say`` tells why), torch's AdamW, fused where it can be."""
    if optimizer_type == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is not None and torch.device(device).type == "cuda":
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(parameters, lr=learning_rate, weight_decay=weight_decay)
        say("optimizer_type adamw8bit needs bitsandbytes and a CUDA GPU "
            "(pip install bitsandbytes); training with plain AdamW instead")
    parameters = list(parameters)
    try:
        # One fused kernel for all parameters: on a CPU the per-tensor loop took 5x as long (28 tensors: 6.7 vs 1.2 ms).
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # a device or torch version without the fused kernel
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)


def _prepare_output(config: TrainConfig, output_dir: Path, final: Path) -> Path | None:
    """The checkpoint to resume from, after refusing to mix a new run into an earlier one's files."""
    checkpoints = find_checkpoints(output_dir)
    if config.resume:
        if config.resume != "latest":
            return Path(config.resume)
        if not checkpoints:
            raise TrainError(f"resume: no checkpoint in {output_dir / 'checkpoints'}; train with save_every_n_steps to write some")
        return checkpoints[-1]
    if (final.exists() or checkpoints) and not config.overwrite:
        raise TrainError(f"{output_dir} already holds a run ({final.name if final.exists() else 'checkpoints'}); "
                         "pass --resume to continue it, --overwrite to start over, or choose another output_dir")
    return None


def time_used(seconds: float, max_train_seconds: float | None, accelerator) -> float:
    """The fraction of ``max_train_seconds`` spent after ``seconds`` of training, the largest over the
    processes so that all of them stop at the same step; 0 without a budget."""
    if max_train_seconds is None:
        return 0.0
    return accelerator.reduce(torch.tensor(seconds, device=accelerator.device), "max").item() / max_train_seconds


def _diverged(loss: float, step: int, output_dir: Path) -> TrainError:
    kept = find_checkpoints(output_dir)
    where = f"the last checkpoint is {kept[-1]}" if kept else "no checkpoint was written (set save_every_n_steps)"
    return TrainError(f"the loss became {loss} at step {step}: training stopped and nothing more was written; "
                      f"{where}. Lower learning_rate, or use bf16 instead of fp16")


def train(config: TrainConfig, pipe=None, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train an LLLite network as ``config`` says and write it in kohya's format.

    Args:
        config: the run's settings.
        pipe: an SDXL or Anima pipeline already in memory (e.g. a toy); by default it is loaded from
            ``config.pretrained_model_name_or_path``. Its models are frozen and moved to the training device.
        on_step: called on the main process after every optimizer step with the step number and its
            loss (averaged over processes), e.g. to redraw a loss plot in a notebook.

    Raises:
        TrainError: a setting, the model or the dataset cannot be used; a NaN loss (the message names
            the last checkpoint written).
        DatasetConfigError: the dataset TOML or its folders are wrong.
        PipelineLoadError, InputMissingError: ``pretrained_model_name_or_path`` does not load.
    """
    # 0. The processes (one, or those of `accelerate launch`), and the output folder.
    accelerator, tensorboard = make_accelerator(config)
    device, world, rank, main = (accelerator.device, accelerator.num_processes, accelerator.process_index,
                                 accelerator.is_main_process)
    output_dir = Path(config.output_dir)
    final = output_dir / f"{config.output_name}.safetensors"
    resume_from = _prepare_output(config, output_dir, final)
    if main and config.overwrite and not config.resume:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()

    # 1. The frozen model (SDXL or Anima: its family fills in its defaults), in the half type when mixed
    # precision is on (the network stays float32).
    pipe, training = training_for(config, pipe)
    config = training.config
    training.check(repr(config.pretrained_model_name_or_path))
    weight_dtype = WEIGHT_DTYPES[accelerator.mixed_precision]
    training.freeze(device, weight_dtype)

    # 2. The data, checked against the model; caches let the VAE and text encoders leave the GPU.
    dataset, dataset_name = load_dataset(config, training, accelerator)
    offload_encoders(training)
    sampler = BucketBatchSampler(dataset, shuffle=True, seed=config.seed)
    accumulation = config.gradient_accumulation_steps
    steps_per_epoch = max(1, len(epoch_batches(sampler, 0)) // (world * accumulation))
    max_steps = config.max_train_epochs * steps_per_epoch if config.max_train_epochs else config.max_train_steps
    metadata = run_metadata(config, dataset, dataset_name, accelerator.mixed_precision, training.metadata())

    # 3. The network: seeded, attached through hooks, float32 whatever the model's dtype.
    torch.manual_seed(config.seed)
    network = training.create_network().to(device)
    network.apply_to(training.denoiser)
    network.train()
    model = ControlledModel(training, network, compile=config.compile)
    optimizer = make_optimizer(config.optimizer_type, network.parameters(), config.learning_rate, config.weight_decay,
                               device, accelerator.print)
    step, losses, seconds_before = 0, [], 0.0
    if resume_from is not None:
        state = load_checkpoint(resume_from, network)
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], [tuple(x) for x in state["losses"]]
        seconds_before = state.get("train_seconds", 0.0)  # absent from checkpoints of older versions
        accelerator.print(f"resuming from {resume_from} at step {step}")
    model, optimizer = accelerator.prepare(model, optimizer)
    if resume_from is not None and accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    if tensorboard:
        accelerator.init_trackers("lllite", config={k: v for k, v in vars(config).items() if isinstance(v, (int, float, str, bool))})
    training.prepare(device)

    # 4. The loop: one optimizer step per iteration; its data and draws depend on (seed, step) alone,
    # its learning rate on the step and the share of the time budget used.
    batches = training_batches(dataset, sampler, steps_per_epoch, accumulation, world, rank, step,
                               config.max_data_loader_n_workers)
    budget = f" (at most {config.max_train_seconds:g} s)" if config.max_train_seconds else ""
    bar = tqdm(total=max_steps, initial=step, desc=f"training LLLite{budget}", unit="step", disable=not (config.progress and main))
    started = time.monotonic()
    used = time_used(seconds_before, config.max_train_seconds, accelerator)
    stopped_by = "max_train_steps"
    while step < max_steps:
        if used >= 1:
            stopped_by = "max_train_seconds"
            break
        lr = config.learning_rate * lr_factor(config.lr_scheduler, step, config.lr_warmup_steps, max_steps, used)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro, batch in enumerate(next(batches)):
            generator = step_generator(config.seed, step, micro, rank)
            with torch.no_grad():
                draw = training.draw(batch, generator, device)
            # Gradients are averaged over the processes once per step, in the last micro-batch's backward.
            with contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(model):
                control = training.control(batch, generator).to(device)
                prediction = model(draw.noisy, draw.timesteps, control, draw.conditioning)
                loss = noise_loss(prediction, draw.target, draw.weights) / accumulation
                accelerator.backward(loss)
            step_loss += loss.detach()
        step_loss = accelerator.reduce(step_loss, "mean").item()
        if not math.isfinite(step_loss):
            raise _diverged(step_loss, step + 1, output_dir)
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(network.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append((step, step_loss))
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        if on_step is not None and main:
            on_step(step, step_loss)
        if tensorboard:
            accelerator.log({"loss": step_loss, "lr": lr}, step=step)
        if config.save_every_n_steps and step % config.save_every_n_steps == 0 and step < max_steps:
            checkpoint(accelerator, network, optimizer, config, metadata, step, steps_per_epoch, losses,
                       seconds_before + time.monotonic() - started)
        if config.sample_every_n_steps and step % config.sample_every_n_steps == 0:
            validate(accelerator, training, network, dataset, step)
        used = time_used(seconds_before + time.monotonic() - started, config.max_train_seconds, accelerator)
    bar.close()
    train_seconds = time.monotonic() - started

    weights = save_network(network, final, config, metadata, step, steps_per_epoch, losses) if main else None
    if config.sample_every_n_steps and step % config.sample_every_n_steps:
        validate(accelerator, training, network, dataset, step)
    accelerator.wait_for_everyone()
    if tensorboard:
        accelerator.end_training()
    restore_encoders(training)  # a notebook samples from the same pipeline next
    network.eval()
    return TrainResult(network, weights, step, losses, train_seconds, stopped_by)


# ------------------------------------------------------------------------------------------ command line


def _field_type(name: str) -> type:
    """The scalar type of a config field: ``int | None`` -> int."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint


def config_from_toml(path: str | Path) -> dict:
    """Settings from a kohya-style TOML: flat keys, or keys grouped in tables (their names are ignored)."""
    path = Path(path)
    document = read_toml(path, TrainError, "training config")
    flat = {}
    for key, value in document.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    known = {f.name: f for f in fields(TrainConfig)}
    settings = {}
    for key, value in flat.items():
        if key not in known:
            raise TrainError(f"{path}: unknown key {key!r}; known keys: {', '.join(known)}")
        expected = _field_type(key)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TrainError(f"{path}: {key} should be {expected.__name__}, got {value!r}")
        settings[key] = value
    if "dataset_config" in settings and not Path(settings["dataset_config"]).is_absolute():
        settings["dataset_config"] = str(path.parent / settings["dataset_config"])
    return settings


def _option_help() -> dict[str, str]:
    """Each option's help, read from the ``Args:`` of :class:`TrainConfig` (one place to document it)."""
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in TrainConfig.__doc__.split("Args:")[1].splitlines():
        text = line.strip()
        head, _, rest = text.partition(": ")
        if line.startswith(" " * 8) and not line.startswith(" " * 12) and rest:
            names = [n.strip() for n in head.split(",")]
            for name in names:
                helps[name] = rest
        elif text:
            for name in names:
                helps[name] += " " + text
    return helps


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m lllite.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="training TOML with any of the options below (flags override it)")
    helps = _option_help()
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        kind = _field_type(f.name)
        flag = f"--{f.name}"
        help_text = f"{helps.get(f.name, '')} (default: {getattr(defaults, f.name)})".replace("%", "%%")
        if f.name == "resume":
            parser.add_argument(flag, nargs="?", const="latest", default=argparse.SUPPRESS,
                                help="continue from the latest checkpoint, or from the given checkpoint folder")
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=kind.__name__.upper(), help=help_text)
    args = vars(parser.parse_args(argv))
    toml = args.pop("config", None)
    settings = config_from_toml(toml) if toml else {}
    settings.update(args)
    return TrainConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        result = train(config)
    except LLLiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.weights is not None:
        print(f"wrote {result.weights} after {result.steps} steps ({result.train_seconds:.0f} s of training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
