import os

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

# The unit tests run tiny models, where one thread beats a thread pool (whose start-up and spinning
# cost seconds when the cores are busy); full-size checks ask for every core themselves.
torch.set_num_threads(1)


@pytest.fixture
def all_cores():
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(1)

# A UNet with SDXL's block layout at a size that runs in milliseconds: three levels, transformers at
# the lower two and in the middle, text_time micro-conditioning, two layers per block.
TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(16, 32, 48),
    layers_per_block=2,
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 4, 6),
    cross_attention_dim=24,
    norm_num_groups=8,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=6 * 4 + 16,
)


def make_tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG).eval()
    # diffusers zero-inits some output layers; random weights everywhere make comparisons meaningful
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        for param in unet.parameters():
            if param.dim() > 1 and not param.abs().sum():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return unet


def unet_inputs(batch: int = 2, latent: tuple[int, int] = (8, 8), seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, 4, *latent, generator=generator),
        timestep=torch.tensor(500),
        encoder_hidden_states=torch.randn(batch, 7, 24, generator=generator),
        added_cond_kwargs=dict(
            text_embeds=torch.randn(batch, 16, generator=generator),
            time_ids=torch.tensor([[latent[0] * 8, latent[1] * 8, 0, 0, latent[0] * 8, latent[1] * 8]] * batch,
                                  dtype=torch.float32),
        ),
    )


def randomize(network, seed: int = 0, scale: float = 0.2):
    """Non-zero weights everywhere, so that a network visibly changes the UNet's output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return network


@pytest.fixture
def tiny_unet():
    return make_tiny_unet()


def edges(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A canny-like control: the white outline of a 16-pixel square on black, placed by ``seed``."""
    rng = np.random.default_rng(seed)
    array = np.zeros((*size, 3), dtype=np.uint8)
    y, x = rng.integers(8, min(size) - 24, 2)
    array[y:y + 16, x] = array[y:y + 16, x + 16] = array[y, x:x + 16] = array[y + 16, x:x + 17] = 255
    return Image.fromarray(array)


# Anima's DiT (diffusers' CosmosTransformer3DModel) at a size that runs in milliseconds: Anima's
# patch, blocks and targets; concat_padding_mask off (it needs torchvision) and no learnable
# positional table (its size follows max_size).
TINY_ANIMA_CONFIG = dict(
    in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=24, num_layers=2, mlp_ratio=2.0,
    text_embed_dim=32, adaln_lora_dim=8, max_size=(4, 64, 64), patch_size=(1, 2, 2),
    concat_padding_mask=False, extra_pos_embed_type=None,
)


@pytest.fixture
def anima_transformer():
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    return CosmosTransformer3DModel(**TINY_ANIMA_CONFIG).eval()


def pytest_addoption(parser):
    parser.addoption("--realsize", action="store_true",
                     help="also run the realsize tier: SDXL base and Anima at full size with random weights (about 12 minutes)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--realsize"):
        return
    skip = pytest.mark.skip(reason="the realsize tier runs with --realsize (python benches/realsize.py runs it too)")
    for item in items:
        if "realsize" in item.keywords:
            item.add_marker(skip)
