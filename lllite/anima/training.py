"""What the training loop (:mod:`lllite.train`) needs of Anima: its parts, the data's encoding, the network
and the objective, as kohya's ``anima_train_control_net_lllite.py`` trains them.

The loop itself, its checkpoints, resume, validation grids and progress are the trainer's, shared by every
family (:class:`lllite.sdxl.training.Training` describes what a family's ``Training`` provides). Here: the DiT, the Qwen-Image VAE, the Qwen3 text encoder and the LLM adapter are frozen; a step
noises the latents by rectified flow (:mod:`lllite.anima.objective`) and the DiT, with the network
inside, predicts the velocity at the noise level it is given as its timestep.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import LLLiteError, TrainError
from ..images import random_region_masks, region_mask, to_mask_tensor
from ..objective import Draw
from ..precision import mixed_precision
from .config import AnimaLLLiteConfig
from .module import inpaint_condition
from .network import AnimaLLLiteNetwork, create_network
from .objective import loss_weights, noisy_latents, sample_sigmas, velocity
from .pipeline import (
    HALF_DTYPES,
    encode_images,
    encode_prompts,
    is_pipeline,
    transformer_inputs,
)

#: The ``TrainConfig`` options only Anima's training reads (kohya's Anima options); another family refuses them
#: when they are not at their defaults.
OPTIONS = ("lllite_target_layers", "lllite_cond_dim", "lllite_cond_resblocks", "lllite_use_aspp", "lllite_dropout",
           "lllite_cond_in_channels", "lllite_inpaint_masked_input", "discrete_flow_shift", "sigmoid_scale",
           "weighting_scheme")
#: What notebook 03 shows of a run's settings.
SHOWN_SETTINGS = ("pretrained_model_name_or_path", "model_family", "cond_emb_dim", "network_dim", "lllite_target_layers",
                  "lllite_cond_dim", "lllite_cond_resblocks", "learning_rate", "train_batch_size", "max_train_steps",
                  "max_train_seconds", "timestep_sampling", "mixed_precision", "optimizer_type", "sample_every_n_steps")
#: The VAE's 8 pixels per latent cell times the DiT's 2x2 patches.
PIXEL_MULTIPLE = 16


class Training:
    """Anima's side of :func:`lllite.train.train` (:class:`lllite.sdxl.training.Training` describes the contract).

    Args:
        pipe: an Anima pipeline (``AnimaModularPipeline``).
        config: the run's settings (the family's defaults filled in).
    """

    name = "Anima"
    defaults = {"learning_rate": 1e-4, "timestep_sampling": "sigmoid", "save_precision": "bf16"}
    pixel_multiple = PIXEL_MULTIPLE

    def __init__(self, pipe, config):
        self.pipe, self.config = pipe, config
        self.weight_dtype = torch.float32

    @property
    def denoiser(self) -> nn.Module:
        return self.pipe.transformer

    @property
    def vae(self) -> nn.Module:
        return self.pipe.vae

    @property
    def text_models(self) -> tuple[list, list[nn.Module]]:
        """The tokenizers and text models whose outputs the text cache keeps: Qwen3 and the LLM adapter."""
        pipe = self.pipe
        return [pipe.tokenizer, pipe.t5_tokenizer], [pipe.text_encoder, pipe.text_conditioner]

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised latents of images in [-1, 1] (:func:`lllite.anima.pipeline.encode_images`)."""
        return encode_images(self.pipe, pixels)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The DiT's ``encoder_hidden_states`` for captions (:func:`lllite.anima.pipeline.encode_prompts`)."""
        return encode_prompts(self.pipe, captions)

    def control(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The control the network reads in this step: the conditioning image, or for an inpainting network
        the conditioning image and a mask drawn for each sample (as kohya's trainer draws them)."""
        if "control_latents" in batch:  # v2.1 / v3: the cached latent of the control image
            return batch["control_latents"]
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

    def check(self, name: str) -> None:
        missing = [part for part in ("transformer", "vae", "text_encoder", "text_conditioner", "tokenizer", "t5_tokenizer")
                   if getattr(self.pipe, part, None) is None]
        if missing:
            raise TrainError(f"{name} is not an Anima pipeline: it has no {', '.join(missing)}")
        if not is_pipeline(self.pipe):
            raise TrainError(f"{name} is not an Anima pipeline: its transformer is a {type(self.pipe.transformer).__name__}")

    def freeze(self, device: torch.device, weight_dtype: torch.dtype) -> None:
        self.weight_dtype = weight_dtype
        for model in (self.denoiser, self.vae, *self.text_models[1]):
            model.requires_grad_(False).eval()
            nn.Module.to(model, device, weight_dtype)  # diffusers' own .to() warns about dtype casts
        if self.config.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()

    def network_config(self) -> AnimaLLLiteConfig:
        """The architecture the run's options ask for (kohya's option names; a wrong value is named)."""
        c = self.config
        try:
            return AnimaLLLiteConfig(
                cond_emb_dim=c.cond_emb_dim, network_dim=c.network_dim, target_layers=c.lllite_target_layers,
                cond_dim=c.lllite_cond_dim, cond_resblocks=c.lllite_cond_resblocks, use_aspp=c.lllite_use_aspp,
                dropout=c.lllite_dropout, cond_in_channels=c.lllite_cond_in_channels,
                inpaint_masked_input=c.lllite_inpaint_masked_input, cond_input_space=c.lllite_cond_input,
                trunk=c.lllite_trunk, ref_block=c.lllite_ref_block, ref_timestep=c.lllite_ref_timestep,
                ref_context=c.lllite_ref_context, gate=c.lllite_gate)
        except LLLiteError as error:
            raise TrainError(f"Anima LLLite options: {error}") from None

    @property
    def caches_control_latents(self) -> bool:
        """Whether the dataset caches the control images' latents: a network reading latents, whose control does not
        change from step to step (an inpainting network's does: its masks are drawn every step)."""
        c = self.config
        return c.lllite_cond_input == "latent" and c.lllite_cond_in_channels == 3

    def create_network(self) -> AnimaLLLiteNetwork:
        network = create_network(self.denoiser, self.network_config())
        network.set_encoders(self.pipe.vae, self.pipe.text_conditioner)
        return network

    def prepare(self, device: torch.device) -> None:
        pass

    def draw(self, batch: dict, generator: torch.Generator, device: torch.device) -> Draw:
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


def colab_settings(pretrained_model_name_or_path: str) -> dict:
    """kohya's recommended start for an Anima LLLite (docs/anima_train_control_net_lllite.md, 3.2: E 32,
    ``lllite_cond_dim`` 64, one ResBlock, M 64, ``self_attn_q``, lr 1e-4, AdamW 8-bit, bf16, gradient
    checkpointing, cached latents and text outputs) with a batch that fits one Colab GPU and a 45-minute
    budget, as :class:`lllite.train.TrainConfig` settings.

    Anima's DiT is trained in bf16, native from Ampere on (L4, A100); on a GPU without it (a T4) in float32, as
    :func:`lllite.precision.mixed_precision` chooses (it overflows in fp16).

    Args:
        pretrained_model_name_or_path: real Anima in diffusers' format (a local folder or a hub id).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return dict(pretrained_model_name_or_path=str(pretrained_model_name_or_path), model_family="anima",
                output_name="lllite_anima_canny", cond_emb_dim=32, network_dim=64, lllite_target_layers="self_attn_q",
                lllite_cond_dim=64, lllite_cond_resblocks=1, lllite_use_aspp=False, learning_rate=1e-4,
                train_batch_size=2, mixed_precision=mixed_precision("bf16", HALF_DTYPES, device, "Anima")[0],
                gradient_checkpointing=True, optimizer_type="adamw8bit",
                max_train_steps=3000, max_train_seconds=45 * 60, cache_latents=True, cache_text_encoder_outputs=True)
