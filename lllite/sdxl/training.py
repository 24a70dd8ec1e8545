"""What the training loop (:mod:`lllite.train`) needs of SDXL: its parts, the data's encoding, the network and
the objective, as kohya's ``sdxl_train_control_net_lllite.py`` trains them.

The loop itself, its checkpoints, resume, validation grids and progress are the trainer's, shared by every
family. Here: the UNet, the VAE and both text encoders are frozen; a step noises the latents with SDXL's DDPM
schedule (:mod:`lllite.sdxl.objective`) and the UNet, with the network inside, predicts the noise.

:class:`Training` is also the reference for what a family's ``Training`` provides (:mod:`lllite.families`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import TrainError
from ..objective import Draw
from ..precision import native_bf16
from .network import LLLiteNetwork, create_network
from .names import find_targets
from .objective import loss_weights, noise_scheduler, sample_noise, sample_timesteps, signal_to_noise
from .pipeline import SDXL_BASE, encode_prompts

#: The ``TrainConfig`` options only SDXL's training reads; another family refuses them when they are not at
#: their defaults.
OPTIONS = ("up_path", "noise_offset", "min_snr_gamma", "debiased_estimation_loss")
#: What notebook 03 shows of a run's settings.
SHOWN_SETTINGS = ("pretrained_model_name_or_path", "cond_emb_dim", "network_dim", "learning_rate", "train_batch_size",
                  "max_train_steps", "max_train_seconds", "timestep_sampling", "debiased_estimation_loss",
                  "mixed_precision", "optimizer_type", "sample_every_n_steps")


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


class Training:
    """What the training loop needs of SDXL: its parts, the data's encoding, the network and the objective.

    Every family's ``Training`` has these members; the loop calls them in this order: :meth:`check`,
    :meth:`freeze`, the caches (:attr:`vae`, :meth:`encode_images`, :attr:`text_models`, :meth:`encode_text`),
    :meth:`create_network`, :meth:`prepare`, then in every step :meth:`draw`, :meth:`control` and
    :meth:`denoise`; :meth:`validation_control` for the validation grids and :meth:`metadata` for the files.

    Args:
        pipe: an SDXL pipeline.
        config: the run's settings (:class:`lllite.train.TrainConfig`, the family's defaults filled in).
    """

    name = "SDXL"
    #: The defaults of options whose default depends on the family.
    defaults = {"learning_rate": 2e-4, "timestep_sampling": "uniform", "save_precision": "fp16"}

    def __init__(self, pipe, config):
        self.pipe, self.config = pipe, config
        self.vae_dtype = self.weight_dtype = torch.float32

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.unet

    @property
    def vae(self) -> nn.Module:
        return self.pipe.vae

    @property
    def text_models(self) -> tuple[list, list[nn.Module]]:
        """The tokenizers and text encoders whose outputs the text cache keeps (and offloading moves)."""
        pipe = self.pipe
        return [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2]

    @property
    def pixel_multiple(self) -> int:
        """Training images' sides must be multiples of this many pixels."""
        return pixel_multiple(self.pipe)

    @staticmethod
    def control(batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The control the network reads in this step: the dataset's conditioning image."""
        return batch["conditioning_image"]

    @staticmethod
    def validation_control(image: torch.Tensor) -> torch.Tensor:
        """The control a validation grid gives the network: the conditioning image."""
        return image

    def check(self, name: str) -> None:
        """Raise :class:`TrainError` unless the pipeline has every part training needs (``name`` names it)."""
        check_sdxl(self.pipe, name)

    def freeze(self, device: torch.device, weight_dtype: torch.dtype) -> None:
        """Freeze the models and move them to ``device`` in ``weight_dtype`` (the mixed precision's)."""
        self.weight_dtype = weight_dtype
        self.vae_dtype = freeze(self.pipe, device, weight_dtype, self.config.gradient_checkpointing)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of images in [-1, 1] on the VAE's device and dtype, as the UNet reads them."""
        vae = self.pipe.vae
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The UNet's text conditioning of captions, one row per caption, by argument name."""
        prompt_embeds, pooled = encode_prompts(*self.text_models, captions)
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    def create_network(self) -> LLLiteNetwork:
        config = self.config
        return create_network(self.pipe.unet, config.cond_emb_dim, config.network_dim, up_path=config.up_path)

    def prepare(self, device: torch.device) -> None:
        """Before the first step, on the training device."""
        self.ddpm = noise_scheduler()
        self.alphas_cumprod = self.ddpm.alphas_cumprod.to(device)

    def draw(self, batch: dict, generator: torch.Generator, device: torch.device) -> Draw:
        """A micro-batch's noised latents, timesteps, target, loss weights and text conditioning."""
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
        """The denoising model's prediction (the UNet may be compiled)."""
        added = {"text_embeds": conditioning["pooled_prompt_embeds"], "time_ids": conditioning["time_ids"]}
        return unet(noisy, timesteps, encoder_hidden_states=conditioning["prompt_embeds"], added_cond_kwargs=added).sample

    def metadata(self) -> dict[str, str]:
        """The family's own ``ss_*`` keys of the files the run writes."""
        config = self.config
        return {"ss_network_module": "networks.control_net_lllite", "ss_noise_offset": str(config.noise_offset),
                "ss_min_snr_gamma": str(config.min_snr_gamma), "ss_debiased_estimation": str(config.debiased_estimation_loss)}


def colab_settings(pretrained_model_name_or_path: str = SDXL_BASE) -> dict:
    """kohya's SDXL canny recipe (E 32, M 64, lr 2e-4, AdamW 8-bit, mixed precision, gradient checkpointing)
    with a batch that fits one Colab GPU and a 45-minute budget, as :class:`lllite.train.TrainConfig` settings."""
    # bf16 natively from Ampere (compute capability 8) on, and on a CPU (where fp16 cannot train); a T4 only
    # emulates it, slowly, and trains in fp16 with loss scaling
    bf16 = not torch.cuda.is_available() or native_bf16("cuda")
    return dict(pretrained_model_name_or_path=str(pretrained_model_name_or_path), output_name="lllite_sdxl_canny",
                cond_emb_dim=32, network_dim=64, learning_rate=2e-4, train_batch_size=2,
                mixed_precision="bf16" if bf16 else "fp16", gradient_checkpointing=True, optimizer_type="adamw8bit",
                max_train_steps=3000, max_train_seconds=45 * 60, cache_latents=True, cache_text_encoder_outputs=True)
