"""The parts a run is made of: the model and its family's training, the accelerator (processes, device, mixed
precision), the optimizer, and where the frozen encoders live while the network trains."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .. import families, precision
from ..auto import load_pipeline
from ..errors import TrainError
from .config import TrainConfig


def training_for(config: TrainConfig, pipe=None):
    """The pipeline (loaded from ``config`` when not given) and its family's ``Training`` (:mod:`lllite.families`),
    with the family's defaults filled into the config; options of another family are refused by name."""
    if pipe is None:
        pipe = load_pipeline(config.pretrained_model_name_or_path, model_family=config.model_family,
                             what="pretrained_model_name_or_path")
    family = families.of_pipeline(pipe)
    if config.model_family != families.AUTO and family is not families.get(config.model_family):
        raise TrainError(f"model_family = {config.model_family!r}, but the pipeline is "
                         f"{family.title}'s ({type(pipe).__name__})")
    kind = family.role("training").Training
    foreign = [option for other in families.FAMILIES if other is not family
               for option in other.role("training").OPTIONS]
    defaults = TrainConfig()
    changed = [option for option in foreign if getattr(config, option) != getattr(defaults, option)]
    if changed:
        raise TrainError(f"{', '.join(changed)}: not an option of {kind.name} training (the model is {kind.name}; "
                         "see TrainConfig for which options belong to which model)")
    filled = {key: value for key, value in kind.defaults.items() if getattr(config, key) is None}
    config = dataclasses.replace(config, **filled)
    samplings = family.role("objective").OPTION_CHOICES["timestep_sampling"]
    if config.timestep_sampling not in samplings:
        raise TrainError(f"timestep_sampling = {config.timestep_sampling!r} is not one of {kind.name}'s: "
                         f"{list(samplings)}")
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
    for model in (training.vae, *training.text_models[1]):
        model.to(training.denoiser.device)


def offload_encoders(training) -> None:
    """On a GPU, move the VAE and the text encoders to the CPU when the dataset caches their outputs."""
    config = training.config
    if training.denoiser.device.type != "cuda":
        return
    if config.cache_latents:
        training.vae.to("cpu")
    if config.cache_text_encoder_outputs:
        for model in training.text_models[1]:
            model.to("cpu")


def _reset_accelerate_for(mixed_precision: str) -> None:
    """Allow a new precision in a process that trained before (notebooks); accelerate keeps one global state."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision) and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


def make_accelerator(config: TrainConfig, pipe=None):
    """accelerate's ``Accelerator`` for the run (its processes, device and mixed precision: the one the model's
    family computes in on this device, :func:`lllite.precision.mixed_precision`), and whether it logs to
    TensorBoard (when tensorboard is installed). The family is the pipeline's, or read off the model's name."""
    from accelerate import Accelerator

    family = families.of_pipeline(pipe) if pipe is not None else families.of_source(
        config.pretrained_model_name_or_path, config.model_family)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mixed_precision, why = precision.mixed_precision(config.mixed_precision, family.role("pipeline").HALF_DTYPES,
                                                     device, family.title)
    if why:
        print(why)
        note = precision.fit_decoder(pipe, torch.float32, device) if mixed_precision == "no" else None
        if note:
            print(note)
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


def time_used(seconds: float, max_train_seconds: float | None, accelerator) -> float:
    """The fraction of ``max_train_seconds`` spent after ``seconds`` of training, the largest over the
    processes so that all of them stop at the same step; 0 without a budget."""
    if max_train_seconds is None:
        return 0.0
    return accelerator.reduce(torch.tensor(seconds, device=accelerator.device), "max").item() / max_train_seconds
