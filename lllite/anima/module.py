"""The math of Anima's LLLite (kohya's architecture "v2"): one shared conditioning trunk, and the module of one Linear.

The trunk (``lllite_conditioning1`` in files) turns the control image into one embedding per DiT token:

    conv 4x4/4 -> GN -> SiLU -> conv 3x3 -> GN -> SiLU -> conv 4x4/4 -> GN -> SiLU
    -> ResBlocks -> (ASPP) -> conv 1x1 to E -> tokens (B, S, E) -> LayerNorm

Its stride of 16 is the VAE's 8 times the DiT's patch of 2: a control image at the generated image's
pixel size gives one cell per token, in the row-major order of the DiT's tokens.

Each module adapts the input ``x`` (B, S, D) of one Linear, with ``cond = embedding + depth_embed``:

    h = silu(down(x));  gamma, beta = cond_to_film(cond);  m = mid(cat(cond, h))
    x' = x + multiplier * up(silu(m * (1 + gamma) + beta))

``up``, ``cond_to_film`` and ``depth_embed`` start at zero, so a fresh network changes nothing.
Compared with SDXL's LLLite (:mod:`lllite.sdxl.module`): one trunk for all modules instead of one per
module, SiLU instead of ReLU, FiLM on ``mid``, and a learned per-module offset of the embedding.
Parameter names match kohya's files.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ASPP_DILATIONS, AnimaLLLiteConfig

#: The trunk's stride: VAE 8 x patch 2, one embedding cell per DiT token.
STRIDE = 16


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 8 groups, halved until they divide the channels (kohya's rule)."""
    groups = 8
    while groups > 1 and channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def _conv_norm_silu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, group_norm(conv.out_channels), nn.SiLU())


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(silu(gn(conv(silu(gn(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel dilated branches and a global-average branch, fused by a 1x1 conv."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = ASPP_DILATIONS):
        super().__init__()
        self.branches = nn.ModuleList(
            _conv_norm_silu(nn.Conv2d(channels, channels, 1) if d == 1
                            else nn.Conv2d(channels, channels, 3, padding=d, dilation=d))
            for d in dilations
        )
        self.global_conv = _conv_norm_silu(nn.Conv2d(channels, channels, 1))
        self.proj = _conv_norm_silu(nn.Conv2d(channels * (len(dilations) + 1), channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.global_conv(F.adaptive_avg_pool2d(x, 1))
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class ConditioningTrunk(nn.Module):
    """The shared trunk: control image (B, C_in, H, W) -> embeddings (B, H/16 * W/16, E), row-major."""

    def __init__(self, config: AnimaLLLiteConfig):
        super().__init__()
        if config.cond_dim < 2 or config.cond_dim % 2:
            raise ValueError(f"cond_dim must be an even number >= 2, got {config.cond_dim}")
        half = config.cond_dim // 2
        self.conv1 = nn.Conv2d(config.cond_in_channels, half, 4, stride=4)
        self.norm1 = group_norm(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1)
        self.norm2 = group_norm(half)
        self.conv3 = nn.Conv2d(half, config.cond_dim, 4, stride=4)
        self.norm3 = group_norm(config.cond_dim)
        self.resblocks = nn.ModuleList(ResBlock(config.cond_dim) for _ in range(config.cond_resblocks))
        self.aspp = ASPP(config.cond_dim, tuple(config.aspp_dilations)) if config.use_aspp else None
        self.proj = nn.Conv2d(config.cond_dim, config.cond_emb_dim, 1)
        self.out_norm = nn.LayerNorm(config.cond_emb_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(image)))
        h = F.silu(self.norm2(self.conv2(h)))
        h = F.silu(self.norm3(self.conv3(h)))
        for block in self.resblocks:
            h = block(h)
        if self.aspp is not None:
            h = self.aspp(h)
        return self.out_norm(self.proj(h).flatten(2).transpose(1, 2))


class AnimaLLLiteModule(nn.Module):
    """The adapter of one Linear of the DiT (its input width ``in_dim``)."""

    def __init__(self, in_dim: int, cond_emb_dim: int = 32, network_dim: int = 64, dropout: float | None = None):
        super().__init__()
        self.down = nn.Linear(in_dim, network_dim)
        self.mid = nn.Linear(network_dim + cond_emb_dim, network_dim)
        self.cond_to_film = nn.Linear(cond_emb_dim, 2 * network_dim)
        self.up = nn.Linear(network_dim, in_dim)
        self.depth_embed = nn.Parameter(torch.zeros(cond_emb_dim))
        for zero in (self.cond_to_film.weight, self.cond_to_film.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(zero)
        self.in_dim, self.cond_emb_dim, self.network_dim, self.dropout = in_dim, cond_emb_dim, network_dim, dropout

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The change to the Linear's input before the multiplier, (B, S, in_dim), from ``x`` (B, S, in_dim)
        and the trunk's embedding (B, S, E)."""
        cond = embedding + self.depth_embed
        h = F.silu(self.down(x))
        gamma, beta = self.cond_to_film(cond).chunk(2, dim=-1)
        m = F.silu(self.mid(torch.cat([cond, h], dim=-1)) * (1 + gamma) + beta)
        if self.dropout is not None and self.training:
            m = F.dropout(m, p=self.dropout)
        return self.up(m)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, cond_emb_dim={self.cond_emb_dim}, network_dim={self.network_dim}"


def inpaint_condition(image: torch.Tensor, mask: torch.Tensor, masked_input: bool = False) -> torch.Tensor:
    """The 4-channel control of an inpainting network (``cond_in_channels`` 4).

    Built as kohya's scripts and the ComfyUI Anima LLLite node build it: the mask binarized at 0.5 and
    rescaled to [-1, 1] like the RGB (+1 where to paint, -1 where to keep); with ``masked_input`` (the
    network's ``inpaint_masked_input``) the RGB is zeroed where the mask paints.

    Args:
        image: RGB (B, 3, H, W) in [-1, 1].
        mask: (B, 1, H, W) in [0, 1], 1 where to paint.
    """
    paint = (mask >= 0.5).to(image.dtype)
    if masked_input:
        image = image * (1 - paint)
    return torch.cat([image, paint * 2 - 1], dim=1)
