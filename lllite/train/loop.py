"""The training loop, top to bottom: one function, :func:`train`, and the step it repeats.

Only the LLLite network trains; the denoising model, VAE and text encoders are frozen. The loop is the
same for every model family; what differs (the models, the data's encoding, the network, the objective)
is the family's ``Training`` (:mod:`lllite.families`). Every random draw (data order per epoch, flips and
caption dropout, noise, timesteps) is a function of ``seed`` and the step, so a run killed at any point and
resumed from a checkpoint ends with the same weights as a run that was never stopped.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..controls import ControlledNetwork
from ..data import BucketBatchSampler
from ..objective import lr_factor, noise_loss
from .batches import load_dataset, step_counts, step_generator, training_batches
from .checkpoints import checkpoint, diverged, prepare_output, resume, run_metadata, save_network
from .config import WEIGHT_DTYPES, TrainConfig
from .parts import (ControlledModel, make_accelerator, make_optimizer, offload_encoders, restore_encoders, time_used,
                    training_for)
from .validation import validate


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        network: the trained network (attached to the pipeline's denoising model; call ``remove()`` to detach).
        weights: the kohya-format file written (None on processes other than the main one).
        steps: optimizer steps done in total (resumed runs count the earlier steps).
        losses: (step, loss) of every step, including steps before a resume.
        train_seconds: time spent in the training loop by this run (not counting caching and loading).
        stopped_by: ``"max_train_steps"`` or ``"max_train_seconds"``.
    """

    network: ControlledNetwork
    weights: Path | None
    steps: int
    losses: list[tuple[int, float]]
    train_seconds: float
    stopped_by: str


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
    # 0. The processes (one, or those of `accelerate launch`), in the precision the model's family computes in
    # on this device, and the output folder.
    accelerator, tensorboard = make_accelerator(config, pipe)
    device, world, rank, main = (accelerator.device, accelerator.num_processes, accelerator.process_index,
                                 accelerator.is_main_process)
    output_dir = Path(config.output_dir)
    final = output_dir / f"{config.output_name}.safetensors"
    resume_from = prepare_output(config, output_dir, final, accelerator)

    # 1. The frozen model (its family fills in its defaults), in the half type when mixed precision is on.
    pipe, training = training_for(config, pipe)
    config = training.config
    training.check(repr(config.pretrained_model_name_or_path))
    training.freeze(device, WEIGHT_DTYPES[accelerator.mixed_precision])

    # 2. The data, checked against the model; caches let the VAE and text encoders leave the GPU.
    dataset, dataset_name = load_dataset(config, training, accelerator)
    offload_encoders(training)
    sampler = BucketBatchSampler(dataset, shuffle=True, seed=config.seed)
    steps_per_epoch, max_steps = step_counts(config, sampler, world)
    metadata = run_metadata(config, dataset, dataset_name, accelerator.mixed_precision, training.metadata())

    # 3. The network (seeded, attached through hooks, float32 whatever the model's dtype) and its optimizer.
    torch.manual_seed(config.seed)
    network = training.create_network().to(device).apply_to(training.denoiser)
    network.train()
    model = ControlledModel(training, network, compile=config.compile)
    optimizer = make_optimizer(config.optimizer_type, network.parameters(), config.learning_rate, config.weight_decay,
                               device, accelerator.print)
    step, losses, seconds_before, scaler = resume(resume_from, network, optimizer, accelerator.print)
    model, optimizer = accelerator.prepare(model, optimizer)
    if scaler and accelerator.scaler is not None:  # the mixed precision's loss scale, where it has one
        accelerator.scaler.load_state_dict(scaler)
    if tensorboard:
        accelerator.init_trackers("lllite", config={k: v for k, v in vars(config).items() if isinstance(v, (int, float, str, bool))})
    training.prepare(device)

    # 4. The loop: one optimizer step per iteration; its data and draws depend on (seed, step) alone,
    # its learning rate on the step and the share of the time budget used.
    batches = training_batches(dataset, sampler, steps_per_epoch, config.gradient_accumulation_steps, world, rank, step,
                               config.max_data_loader_n_workers)
    budget = f" (at most {config.max_train_seconds:g} s)" if config.max_train_seconds else ""
    bar = tqdm(total=max_steps, initial=step, desc=f"training LLLite{budget}", unit="step", disable=not (config.progress and main))
    started = time.monotonic()
    used = time_used(seconds_before, config.max_train_seconds, accelerator)
    while step < max_steps and used < 1:
        lr = config.learning_rate * lr_factor(config.lr_scheduler, step, config.lr_warmup_steps, max_steps, used)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = step_loss(model, training, next(batches), accelerator, config.seed, step)
        if not math.isfinite(loss):
            raise diverged("loss", loss, step + 1, output_dir)
        norm = float(accelerator.clip_grad_norm_(network.parameters(), config.max_grad_norm or math.inf))
        if not math.isfinite(norm) and accelerator.scaler is None:  # with fp16, the scaler skips such a step
            raise diverged("gradient norm", norm, step + 1, output_dir)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append((step, loss))
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if on_step is not None and main:
            on_step(step, loss)
        if tensorboard:
            accelerator.log({"loss": loss, "lr": lr}, step=step)
        if config.save_every_n_steps and step % config.save_every_n_steps == 0 and step < max_steps:
            checkpoint(accelerator, network, optimizer, config, metadata, step, steps_per_epoch, losses,
                       seconds_before + time.monotonic() - started)
        if config.sample_every_n_steps and step % config.sample_every_n_steps == 0:
            validate(accelerator, training, network, dataset, step)
        used = time_used(seconds_before + time.monotonic() - started, config.max_train_seconds, accelerator)
    bar.close()
    train_seconds, stopped_by = time.monotonic() - started, "max_train_steps" if step >= max_steps else "max_train_seconds"

    # 5. The file, a last validation grid, and the pipeline as it was (a notebook samples from it next).
    weights = save_network(network, final, config, metadata, step, steps_per_epoch, losses) if main else None
    if config.sample_every_n_steps and step % config.sample_every_n_steps:
        validate(accelerator, training, network, dataset, step)
    accelerator.wait_for_everyone()
    if tensorboard:
        accelerator.end_training()
    restore_encoders(training)
    network.eval()
    return TrainResult(network, weights, step, losses, train_seconds, stopped_by)


def step_loss(model: torch.nn.Module, training, micro_batches: list[dict], accelerator, seed: int, step: int) -> float:
    """One optimizer step's forward and backward passes, micro-batch by micro-batch, and its loss averaged over
    the processes. Gradients are averaged over the processes once per step, in the last micro-batch's backward."""
    device, rank = accelerator.device, accelerator.process_index
    total = torch.zeros((), device=device)
    for micro, batch in enumerate(micro_batches):
        generator = step_generator(seed, step, micro, rank)
        with torch.no_grad():
            draw = training.draw(batch, generator, device)
        with contextlib.nullcontext() if micro == len(micro_batches) - 1 else accelerator.no_sync(model):
            control = training.control(batch, generator).to(device)
            prediction = model(draw.noisy, draw.timesteps, control, draw.conditioning)
            loss = noise_loss(prediction, draw.target, draw.weights) / len(micro_batches)
            accelerator.backward(loss)
        total += loss.detach()
    return accelerator.reduce(total, "mean").item()
