"""What the training loop (:mod:`lllite.train`) needs of Anima: its parts, the data's encoding, the network
and the objective, as kohya's ``anima_train_control_net_lllite.py`` trains them.

The loop itself, its checkpoints, resume, validation grids and progress are the trainer's, shared with
SDXL. Here: the DiT, the Qwen-Image VAE, the Qwen3 text encoder and the LLM adapter are frozen; a step
noises the latents by rectified flow (:mod:`lllite.anima.objective`) and the DiT, with the network
inside, predicts the velocity at the noise level it is given as its timestep.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..images import random_region_masks, region_mask, to_mask_tensor
from .module import AnimaLLLiteConfig, inpaint_condition
from .names import is_anima_pipeline
from .network import AnimaLLLiteNetwork, create_network
from .objective import TIMESTEP_SAMPLINGS, loss_weights, noisy_latents, sample_sigmas, velocity
from .pipeline import encode_images, encode_prompts, transformer_inputs

#: The VAE's 8 pixels per latent cell times the DiT's 2x2 patches.
PIXEL_MULTIPLE = 16


class AnimaTraining:
    """Anima's side of :func:`lllite.train.train` (see :class:`lllite.train.SDXLTraining` for the contract).

    Args:
        pipe: an Anima pipeline (``AnimaModularPipeline``).
        config: the run's settings (the family's defaults filled in).
    """

    name = "Anima"
    defaults = {"learning_rate": 1e-4, "timestep_sampling": "sigmoid", "save_precision": "bf16"}
    timestep_samplings = TIMESTEP_SAMPLINGS
    #: SDXL's options, which Anima refuses when they are not at their defaults.
    foreign = ("up_path", "noise_offset", "min_snr_gamma", "debiased_estimation_loss")

    def __init__(self, pipe, config):
        self.pipe, self.config = pipe, config
        self.weight_dtype = torch.float32

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.transformer

    def control(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The control the network reads in this step: the conditioning image, or for an inpainting network
        the conditioning image and a mask drawn for each sample (as kohya's trainer draws them)."""
        image = batch["conditioning_image"]
        if self.config.lllite_cond_in_channels != 4:
            return image
        masks = random_region_masks(image.shape[0], image.shape[-2], image.shape[-1], generator)
        return inpaint_condition(image, masks, self.config.lllite_inpaint_masked_input)

    def validation_control(self, image: torch.Tensor) -> torch.Tensor:
        """The control a validation grid gives the network: the conditioning image, and for an inpainting network
        the centre quarter of the image to paint."""
        if self.config.lllite_cond_in_channels != 4:
            return image
        box = region_mask(image.shape[-1], image.shape[-2], "rectangle", (0.25, 0.25, 0.75, 0.75))
        return inpaint_condition(image, to_mask_tensor(box), self.config.lllite_inpaint_masked_input)

    @property
    def encoders(self) -> tuple[nn.Module, ...]:
        return self.pipe.vae, self.pipe.text_encoder, self.pipe.text_conditioner

    def check(self, name: str) -> None:
        from ..train import TrainError

        missing = [part for part in ("transformer", "vae", "text_encoder", "text_conditioner", "tokenizer", "t5_tokenizer")
                   if getattr(self.pipe, part, None) is None]
        if missing:
            raise TrainError(f"{name} is not an Anima pipeline: it has no {', '.join(missing)}")
        if not is_anima_pipeline(self.pipe):
            raise TrainError(f"{name} is not an Anima pipeline: its transformer is a {type(self.pipe.transformer).__name__}")

    def freeze(self, device: torch.device, weight_dtype: torch.dtype) -> None:
        self.weight_dtype = weight_dtype
        for model in (self.denoiser, *self.encoders):
            model.requires_grad_(False).eval()
            nn.Module.to(model, device, weight_dtype)  # diffusers' own .to() warns about dtype casts
        if self.config.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()

    pixel_multiple = PIXEL_MULTIPLE

    def cache(self, dataset, accelerator, progress: bool) -> None:
        config, pipe = self.config, self.pipe
        if config.cache_latents:
            cache = Path(config.output_dir) / "cache" / "latents" if config.cache_latents_to_disk else None
            with accelerator.main_process_first():
                dataset.cache_latents(pipe.vae, cache, progress=progress, encode=lambda pixels: encode_images(pipe, pixels))
        if config.cache_text_encoder_outputs:
            dataset.cache_text_encoder_outputs([pipe.tokenizer, pipe.t5_tokenizer], [pipe.text_encoder, pipe.text_conditioner],
                                               progress=progress, encode=lambda captions: encode_prompts(pipe, captions))

    def create_network(self) -> AnimaLLLiteNetwork:
        c = self.config
        return create_network(self.denoiser, AnimaLLLiteConfig(
            cond_emb_dim=c.cond_emb_dim, network_dim=c.network_dim, target_layers=c.lllite_target_layers,
            cond_dim=c.lllite_cond_dim, cond_resblocks=c.lllite_cond_resblocks, use_aspp=c.lllite_use_aspp,
            dropout=c.lllite_dropout, cond_in_channels=c.lllite_cond_in_channels,
            inpaint_masked_input=c.lllite_inpaint_masked_input))

    def prepare(self, device: torch.device) -> None:
        pass

    def draw(self, batch: dict, generator: torch.Generator, device: torch.device):
        from ..train import Draw

        c, dtype = self.config, self.weight_dtype
        if "latents" in batch:
            latents = batch["latents"].to(device, torch.float32)
        else:
            latents = encode_images(self.pipe, batch["image"].to(device)).float()
        if "encoder_hidden_states" in batch:
            text = batch["encoder_hidden_states"].to(device)
        else:
            text = encode_prompts(self.pipe, list(batch["caption"]))["encoder_hidden_states"]
        noise = torch.randn(latents.shape, generator=generator).to(device)
        sigmas = sample_sigmas(c.timestep_sampling, len(latents), generator, sigmoid_scale=c.sigmoid_scale,
                               discrete_flow_shift=c.discrete_flow_shift, latent_size=tuple(latents.shape[-2:])).to(device)
        noisy = noisy_latents(latents, noise, sigmas)
        return Draw(noisy.to(dtype), sigmas.to(dtype), velocity(latents, noise), loss_weights(c.weighting_scheme, sigmas),
                    {"encoder_hidden_states": text.to(dtype)})

    @staticmethod
    def denoise(transformer: nn.Module, noisy: torch.Tensor, sigmas: torch.Tensor, conditioning: dict) -> torch.Tensor:
        inputs = transformer_inputs(noisy, sigmas, conditioning["encoder_hidden_states"])
        return transformer(**inputs, return_dict=False)[0][:, :, 0]

    def metadata(self) -> dict[str, str]:
        c = self.config
        return {"ss_discrete_flow_shift": str(c.discrete_flow_shift), "ss_sigmoid_scale": str(c.sigmoid_scale),
                "ss_weighting_scheme": c.weighting_scheme}
