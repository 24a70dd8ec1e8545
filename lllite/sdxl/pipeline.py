"""SDXL through diffusers' ``StableDiffusionXLPipeline``: loading, the pipeline's own call, the text encoding
training uses, and SDXL's UNet known by its configuration alone (no download needed for shapes, counts or tests).

    from lllite.sdxl.pipeline import load_pipeline, sdxl_unet
    pipe = load_pipeline("toy")              # the pretrained toy SDXL in lllite/sdxl/weights
    unet = sdxl_unet("meta")                 # SDXL base's UNet on the meta device: shapes without memory
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from PIL import Image

from ..errors import PipelineLoadError
from ..toy import TOY

#: ``unet/config.json`` of stabilityai/stable-diffusion-xl-base-1.0 (the fields that shape the model).
SDXL_UNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"

#: Generated images' sides are multiples of this, and why.
PIXEL_MULTIPLE, PIXEL_MULTIPLE_REASON = 8, "SDXL's VAE"
#: The side in pixels SDXL was trained at.
IMAGE_SIZE = 1024
#: The real model, from the hub, and how to get it.
REAL_MODEL = SDXL_BASE
HOWTO = f"it downloads from the Hugging Face hub as {SDXL_BASE}"
#: The half types its UNet computes in without overflowing, best first (:mod:`lllite.precision`), and the hub's
#: variant of half weights (half the download).
HALF_DTYPES, GPU_VARIANT = (torch.float16, torch.bfloat16), "fp16"


def sdxl_unet(device: str | torch.device = "meta", dtype: torch.dtype = torch.float32):
    """SDXL's UNet architecture with no weights loaded.

    On the ``meta`` device (default) it costs no memory and suits counting and name mapping; on
    another device its parameters hold whatever memory held (``to_empty``): fill them before use,
    e.g. with :func:`fill_weights`.
    """
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    # cast on the meta device, then allocate: memory in ``dtype`` only (nn.Module.to: diffusers' own .to()
    # warns about dtype casts meant for from_pretrained)
    unet = torch.nn.Module.to(unet, dtype)
    return unet if torch.device(device).type == "meta" else unet.to_empty(device=device)


@torch.no_grad()
def fill_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Deterministic weights that keep activations in range: N(0, 1/fan_in) matrices, zero biases, unit norms."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() == 1:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
            continue
        fan_in = param[0].numel()
        values = torch.randn(param.shape, generator=generator, dtype=torch.float32) / fan_in**0.5
        param.copy_(values)
    return model


# ------------------------------------------------------------------------------------------ the pipeline


def claims_folder(path: Path) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (``model_index.json``) or a single-file checkpoint."""
    return path.is_file() or (path / "model_index.json").is_file()


def is_pipeline(pipe) -> bool:
    """Whether ``pipe`` denoises with a UNet (SDXL's, or one whose checks will say why it is not)."""
    return isinstance(getattr(pipe, "unet", None), nn.Module)


def load_pipeline(name_or_path: str | os.PathLike = TOY, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", variant: str | None = None, what: str = "name_or_path"):
    """A diffusers ``StableDiffusionXLPipeline`` on ``device``, with diffusers' own progress bar off
    (:func:`lllite.load_pipeline` documents the arguments; the pretrained toy is :func:`lllite.sdxl.toy.load_pretrained`)."""
    from diffusers import StableDiffusionXLPipeline

    path = Path(name_or_path).expanduser()
    try:
        if path.is_file():
            pipe = StableDiffusionXLPipeline.from_single_file(str(path), dtype=dtype, add_watermarker=False)
        else:
            source = str(path) if path.is_dir() else str(name_or_path)
            pipe = StableDiffusionXLPipeline.from_pretrained(source, dtype=dtype, variant=variant,
                                                             add_watermarker=False)
    except (OSError, ValueError) as error:
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        raise PipelineLoadError(
            f"{what} {str(name_or_path)!r} could not be loaded as an SDXL pipeline ({reason}); give a hub id "
            f"(with internet access), a local diffusers folder, a .safetensors checkpoint, or {TOY!r}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(pipe, prompt: str | list[str], *, negative_prompt: str | list[str] | None = None,
             num_inference_steps: int = 20, guidance_scale: float = 5.0, height: int | None = None,
             width: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None
             ) -> list[Image.Image]:
    """Images from the pipeline's own call (``pipe(...)``), as PIL images."""
    return pipe(prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
                output_type="pil").images


def encode_prompts(tokenizers, text_encoders, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning for a list of captions.

    Args:
        tokenizers: (tokenizer, tokenizer_2) of the pipeline.
        text_encoders: (text_encoder, text_encoder_2); the second one has the text projection.

    Returns:
        prompt_embeds (B, 77, 768 + 1280 for SDXL): both encoders' penultimate hidden states,
        concatenated; pooled_prompt_embeds (B, 1280 for SDXL): text_encoder_2's projected output.
    """
    hidden = []
    pooled = None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(encoder.device)
        output = encoder(ids, output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
        pooled = getattr(output, "text_embeds", None)
    if pooled is None:
        raise ValueError("the last text encoder must have a text projection (CLIPTextModelWithProjection, SDXL's text_encoder_2)")
    return torch.cat(hidden, dim=-1), pooled
