"""The settings of a training run (:class:`TrainConfig`, kohya's names) and reading them from a TOML file."""
from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from .. import families
from ..data import DatasetConfig, read_toml
from ..errors import TrainError
from ..objective import LR_SCHEDULERS

MODEL_FAMILIES = (families.AUTO, *families.names())
OPTIMIZERS = ("adamw", "adamw8bit")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}
#: The frozen models' dtype for each mixed precision; the network itself stays float32.
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@functools.cache
def option_choices() -> dict[str, tuple]:
    """Every option with fixed choices and the values it takes: the trainer's own, and each family's
    (``OPTION_CHOICES`` of its objective), joined; ``timestep_sampling`` may also be None (the family's default)."""
    choices: dict[str, tuple] = {"optimizer_type": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS,
                                 "model_family": MODEL_FAMILIES, "mixed_precision": MIXED_PRECISIONS,
                                 "save_precision": (None, *SAVE_PRECISIONS), "timestep_sampling": (None,)}
    for family in families.FAMILIES:
        for option, values in family.role("objective").OPTION_CHOICES.items():
            choices[option] = tuple(dict.fromkeys((*choices.get(option, ()), *values)))
    return choices


@dataclass
class TrainConfig:
    """Settings of one training run, named as in kohya's sd-scripts; the defaults are the SDXL canny recipe.

    Args:
        pretrained_model_name_or_path: hub id, local diffusers folder, single-file checkpoint
            (``.safetensors``/``.ckpt``), or ``"toy"`` for the pretrained toy SDXL (the toy Anima with
            ``model_family = "anima"``).
        model_family: ``"sdxl"``, ``"anima"``, or ``"auto"``: the family of the pipeline given in memory, or of the
            folder's layout (Anima for a folder saved by diffusers' modular pipeline, ``modular_model_index.json``),
            else SDXL (:mod:`lllite.families`).
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
        lllite_cond_input: Anima: ``"pixel"`` (kohya's v2: the trunk reads the control image) or ``"latent"`` (v2.1:
            its VAE latent, encoded without gradients; cached with the image latents when ``cache_latents``).
        lllite_trunk: Anima: ``"stem"`` (v2, v2.1) or ``"semantic"`` (v3: the frozen DiT's hidden states of the
            control latent; needs ``lllite_cond_input = "latent"``; kohya suggests ``cond_emb_dim`` 128 or so).
        lllite_ref_block: Anima v3: the reference blocks, a number or a comma list such as ``"-1,14"``
            (-1: the patch embedding's output); None: the middle block.
        lllite_ref_timestep: Anima v3: the reference forward's timestep in [0, 1] (0: clean).
        lllite_ref_context: Anima v3: ``"zero"``, ``"uncond"`` (the empty prompt's context) or ``"caption"``
            (the caption's own context, caption dropout included).
        lllite_gate: Anima v3: ``"scalar"``, ``"vector"`` or ``"none"``.
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
    lllite_cond_input: str = "pixel"
    lllite_trunk: str = "stem"
    lllite_ref_block: str | int | None = None
    lllite_ref_timestep: float = 0.0
    lllite_ref_context: str = "zero"
    lllite_gate: str = "scalar"
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
        for name, allowed in option_choices().items():
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


def field_type(name: str) -> type:
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
        expected = field_type(key)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TrainError(f"{path}: {key} should be {expected.__name__}, got {value!r}")
        settings[key] = value
    if "dataset_config" in settings and not Path(settings["dataset_config"]).is_absolute():
        settings["dataset_config"] = str(path.parent / settings["dataset_config"])
    return settings
