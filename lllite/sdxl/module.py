"""One ControlNet-LLLite module: the math of adapting a single Linear of the UNet.

    y = target(x + multiplier * up(mid(cat(cond_emb, down(x)))))

``cond_emb`` comes from ``conditioning1``, a small strided-conv stack that maps the control image to
the token grid of the block the target lives in. Parameter names match kohya's files exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..controls import token_grid
from ..precision import in_float32

__all__ = ["LLLiteModule", "conditioning_stride", "token_grid"]


def conditioning_stride(depth: int) -> int:
    """Pixels of control image per embedding cell: 8 (the latent grid), 16 or 32."""
    return 8 * 2 ** (depth - 1)


def crop_to_grid(emb: torch.Tensor, image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A conditioning embedding ``(..., rows, cols)`` of ``image`` cropped to the block's token ``grid``.

    Raises:
        ValueError: the embedding is smaller than the grid (the image was too small for the block).
    """
    emb = emb[..., : grid[0], : grid[1]]
    if tuple(emb.shape[-2:]) != tuple(grid):
        raise ValueError(
            f"control image of {tuple(image.shape[-2:])} pixels gives a {tuple(emb.shape[-2:])} embedding, "
            f"smaller than the block's {grid} token grid"
        )
    return emb


class LLLiteModule(nn.Module):
    """The LLLite adapter of one Linear.

    Args:
        in_dim: the target Linear's ``in_features``.
        cond_emb_dim: channels E of the conditioning embedding (even; 32 in kohya's canny model).
        network_dim: width M of the down/mid projections (kohya's training option ``network_dim``; its module
            code and Anima's file metadata call it ``mlp_dim``; 64 for canny).
        depth: 1, 2 or 3, the resolution level of the target's block (latent, /2, /4).
        zero_init: zero ``up`` (weight and bias) so that a fresh module changes nothing.
    """

    def __init__(self, in_dim: int, cond_emb_dim: int = 32, network_dim: int = 64, depth: int = 1, zero_init: bool = True):
        super().__init__()
        if cond_emb_dim < 2 or cond_emb_dim % 2:
            raise ValueError(f"cond_emb_dim must be an even number >= 2, got {cond_emb_dim}")
        if network_dim < 1 or in_dim < 1:
            raise ValueError(f"network_dim and in_dim must be positive, got network_dim={network_dim}, in_dim={in_dim}")
        if depth not in (1, 2, 3):
            raise ValueError(f"depth must be 1, 2 or 3, got {depth}")
        half = cond_emb_dim // 2
        layers: list[nn.Module] = [nn.Conv2d(3, half, kernel_size=4, stride=4), nn.ReLU()]
        if depth == 1:
            layers.append(nn.Conv2d(half, cond_emb_dim, kernel_size=2, stride=2))
        elif depth == 2:
            layers.append(nn.Conv2d(half, cond_emb_dim, kernel_size=4, stride=4))
        else:
            layers += [nn.Conv2d(half, half, kernel_size=4, stride=4), nn.ReLU(),
                       nn.Conv2d(half, cond_emb_dim, kernel_size=2, stride=2)]
        self.conditioning1 = nn.Sequential(*layers)
        self.down = nn.Sequential(nn.Linear(in_dim, network_dim), nn.ReLU())
        self.mid = nn.Sequential(nn.Linear(network_dim + cond_emb_dim, network_dim), nn.ReLU())
        self.up = nn.Sequential(nn.Linear(network_dim, in_dim))
        self.in_dim, self.cond_emb_dim, self.network_dim, self.depth = in_dim, cond_emb_dim, network_dim, depth
        if zero_init:
            nn.init.zeros_(self.up[0].weight)
            nn.init.zeros_(self.up[0].bias)

    def embed(self, image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Conditioning embedding as tokens (B, rows*cols, E), row-major like diffusers' transformers.

        Args:
            image: (B, 3, H, W) in [-1, 1], at least ``grid * conditioning_stride(depth)`` pixels.
            grid: the token grid of the target's block; the embedding is cropped to it.
        """
        emb = crop_to_grid(in_float32(self.conditioning1, image), image, grid)
        return emb.flatten(2).transpose(1, 2)

    def mid_embedding(self, cond_emb: torch.Tensor) -> torch.Tensor:
        """The part of ``mid``'s pre-activation that reads only the embedding: (B, N, network_dim).

        ``mid(cat(e, h)) = relu(e @ W_e^T + b + h @ W_h^T)`` with ``W = [W_e | W_h]``: this is
        ``e @ W_e^T + b``, which stays fixed for as long as the control image does.
        """
        return F.linear(cond_emb, self.mid[0].weight[:, : self.cond_emb_dim], self.mid[0].bias)

    def forward(self, x: torch.Tensor, cond_emb: torch.Tensor) -> torch.Tensor:
        """The change to the target's input, before the multiplier: (B, N, in_dim)."""
        return self.up(self.mid(torch.cat([cond_emb, self.down(x)], dim=-1)))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, cond_emb_dim={self.cond_emb_dim}, network_dim={self.network_dim}, depth={self.depth}"
