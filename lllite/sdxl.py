"""SDXL's UNet, known by its configuration alone: no download needed for shapes, counts or tests."""
from __future__ import annotations

import torch

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


def sdxl_unet(device: str | torch.device = "meta", dtype: torch.dtype = torch.float32):
    """SDXL's UNet architecture with no weights loaded.

    On the ``meta`` device (default) it costs no memory and suits counting and name mapping; on
    another device its parameters hold whatever memory held (``to_empty``): fill them before use,
    e.g. with :func:`fill_weights`.
    """
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    if torch.device(device).type != "meta":
        unet = unet.to_empty(device=device)
    # nn.Module.to: diffusers' own .to() warns about dtype casts meant for from_pretrained
    return torch.nn.Module.to(unet, dtype)


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
