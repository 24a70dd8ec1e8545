"""LLLite modules whose targets read one input, computed together: fewer, larger kernels.

diffusers' attention calls attn1's ``to_q``, ``to_k`` and ``to_v`` one after another on the same
tensor. Their three LLLite modules then run as one: one ``down`` matmul on the concatenated
weights, one batched matmul each for ``mid`` and ``up``. ``mid``'s input is ``cat(e, h)``, and the
half that reads the conditioning embedding ``e`` is split off:

    mid(cat(e, h)) = relu(e @ W_e^T + b + h @ W_h^T)        with W = [W_e | W_h]

``e @ W_e^T + b`` (the *embedding term*) is fixed for as long as the control image is, so at
inference it is computed once per image, like the embedding itself.

In training, where the embeddings train and so are computed in every step, the embedding terms of all
groups are computed together (:func:`embedding_terms_together`): the conditioning convolutions, whose
kernel is their stride, as matmuls over patches (the first layer of every module in one, each later layer
of all modules in one batched matmul), and ``mid``'s embedding halves as one batched matmul.

Grouping changes how the modules are computed, never what: each module keeps its parameters and
kohya's names, and a group of one is a single module.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..controls import token_grid
from ..precision import float32_region
from .module import LLLiteModule, crop_to_grid
from .names import TARGET_LINEARS


class GroupWeights(NamedTuple):
    """The parameters of a group's modules, stacked for batched matmuls (g modules, width M, C channels)."""

    down_weight: torch.Tensor  # (g*M, C)
    down_bias: torch.Tensor  # (g*M,)
    mid_weight: torch.Tensor  # (g, M, M): each module's W_h, transposed
    up_weight: torch.Tensor  # (g, M, C): each module's up weight, transposed
    up_bias: torch.Tensor  # (g, 1, C)


def _cat(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


class ModuleGroup:
    """Modules of one network that adapt Linears reading the same input, in call order.

    Args:
        names: kohya module names, in the order the UNet calls their Linears.
        modules: the modules; all of one ``in_dim``, ``cond_emb_dim``, ``network_dim`` and ``depth``.
    """

    def __init__(self, names: list[str], modules: list[LLLiteModule]):
        shapes = {(m.in_dim, m.cond_emb_dim, m.network_dim, m.depth) for m in modules}
        if len(shapes) != 1:
            raise ValueError(f"the modules of a group must share their dimensions, got {sorted(shapes)} for {names}")
        self.names, self.modules = list(names), list(modules)
        self.depth = modules[0].depth
        #: the stacked weights (None for a group of one: views cost nothing) and the embedding terms,
        #: kept at inference (see LLLiteNetwork)
        self.cached: tuple[GroupWeights | None, torch.Tensor] | None = None
        #: (input, changes) from the group's first Linear, for the others in the same UNet call
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        #: training: this UNet call's embedding terms, with gradients (:func:`embedding_terms_together`)
        self.step_terms: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.modules)

    def weights(self) -> GroupWeights:
        """The modules' parameters stacked: copies for a group of several, views for a group of one.

        Differentiable; training stacks them anew in every step, inference keeps the copies.
        """
        e = self.modules[0].cond_emb_dim
        return GroupWeights(
            _cat([m.down[0].weight for m in self.modules]),
            _cat([m.down[0].bias for m in self.modules]),
            _stack([m.mid[0].weight[:, e:].t() for m in self.modules]),
            _stack([m.up[0].weight.t() for m in self.modules]),
            _stack([m.up[0].bias for m in self.modules]).unsqueeze(1),
        )

    def embedding_terms(self, image: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """``e @ W_e^T + b`` of every module for a prepared control image: (g, B_image, N, M).

        Args:
            image: the control image at the generated size, padded (see ``LLLiteNetwork``).
            latent_size: the UNet's latent (rows, cols), which sets this depth's token grid.
        """
        grid = token_grid(latent_size, self.depth)
        return _stack([m.mid_embedding(m.embed(image, grid)) for m in self.modules])

    @staticmethod
    def changes(x: torch.Tensor, terms: torch.Tensor, weights: GroupWeights) -> torch.Tensor:
        """Every module's change to the shared input, before scaling: (g, B, N, C).

        Args:
            x: the input of the group's Linears, (B, N, C).
            terms: the embedding terms repeated for the UNet batch, (g, B, N, M).
            weights: :meth:`weights`.
        """
        batch, tokens, channels = x.shape
        g, width, _ = weights.mid_weight.shape
        h = F.relu(F.linear(x, weights.down_weight, weights.down_bias))  # (B, N, g*M): one matmul
        h = h.view(batch * tokens, g, width).transpose(0, 1)  # (g, B*N, M)
        h = F.relu(torch.baddbmm(terms.flatten(1, 2), h, weights.mid_weight))
        return torch.baddbmm(weights.up_bias, h, weights.up_weight).view(g, batch, tokens, channels)


def embedding_terms_together(groups: list[ModuleGroup], image: torch.Tensor,
                             latent_size: tuple[int, int]) -> list[torch.Tensor]:
    """Every group's :meth:`ModuleGroup.embedding_terms` for one control image, computed together: per depth, one
    matmul over the image's patches for every module's first layer, one batched matmul for each later layer (in
    float32, as :func:`lllite.precision.in_float32` computes one module's), and one for ``mid``'s embedding
    halves. Training computes them so, in every step; the values are those of the groups one by one.

    Returns:
        one tensor per group, (g, B_image, N, M), in ``groups``' order.
    """
    dtype = groups[0].modules[0].down[0].weight.dtype
    members: dict[tuple[int, int], list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault((group.depth, group.modules[0].cond_emb_dim), []).append(i)
    terms: list[torch.Tensor | None] = [None] * len(groups)
    for (depth, width), indices in members.items():
        modules = [m for i in indices for m in groups[i].modules]
        emb = _embed_together(modules, image, token_grid(latent_size, depth)).to(dtype)  # (n, B, N, E)
        weight = torch.stack([m.mid[0].weight[:, :width].t() for m in modules])  # (n, E, M)
        bias = torch.stack([m.mid[0].bias for m in modules]).unsqueeze(1)  # (n, 1, M)
        n, batch, tokens, _ = emb.shape
        mid = torch.baddbmm(bias, emb.flatten(1, 2), weight).view(n, batch, tokens, -1)
        for i, part in zip(indices, mid.split([len(groups[i]) for i in indices])):  # one backward for all
            terms[i] = part
    return terms


def _embed_together(modules: list[LLLiteModule], image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``module.embed(image, grid)`` of modules of one depth and width, stacked: (n, B, N, E), in float32.

    Every convolution of the conditioning stack has its kernel as its stride and no padding, so each output cell
    reads its own block of pixels and a layer is a matmul over its input's patches. The pixels are put once in
    the order the layers read them (each layer's kernel offsets ahead of the next layer's, then the cells), so
    that every layer is one matmul of all modules' weights over the previous layer's output as it lies.
    """
    n = len(modules)
    layers = [i for i, layer in enumerate(modules[0].conditioning1) if isinstance(layer, nn.Conv2d)]
    strides = []
    for i in layers:
        conv = modules[0].conditioning1[i]
        if conv.kernel_size != conv.stride or conv.stride[0] != conv.stride[1] or conv.padding != (0, 0):
            raise ValueError(f"conditioning layer {conv} is not a patch embedding (kernel = stride, no padding)")
        strides.append(conv.stride[0])
    levels, cell = len(strides), math.prod(strides)
    batch, channels = image.shape[:2]
    rows, cols = image.shape[-2] // cell, image.shape[-1] // cell
    # (B, C, rows, o_L .. o_1, cols, o_L .. o_1), o_k the offset inside layer k's kernel, to
    # (C, o_1 y, o_1 x, .., o_L y, o_L x, B, rows, cols)
    pixels = image[..., : rows * cell, : cols * cell].float().reshape(
        batch, channels, rows, *strides[::-1], cols, *strides[::-1])
    order = [1, *(d for k in range(levels) for d in (2 + levels - k, 3 + 2 * levels - k)), 0, 2, 3 + levels]
    x = pixels.permute(order).reshape(channels * strides[0] ** 2, -1)
    with float32_region(image.device.type):
        for k, i in enumerate(layers):
            weight = torch.stack([m.conditioning1[i].weight.float() for m in modules])  # (n, out, in, s, s)
            bias = torch.stack([m.conditioning1[i].bias.float() for m in modules]).unsqueeze(-1)  # (n, out, 1)
            if k == 0:  # every module reads the same pixels: one matmul
                x = torch.addmm(bias.flatten(0, 1), weight.flatten(0, 1).flatten(1), x)
            else:  # (n, in * s * s, rest): this layer's patches, as the previous layer left them
                x = torch.baddbmm(bias, weight.flatten(2), x.reshape(n, weight[0, 0].numel(), -1))
            if k + 1 < levels:
                x = F.relu(x)
    emb = crop_to_grid(x.reshape(n, -1, batch, rows, cols), image, grid)
    return emb.flatten(3).permute(0, 2, 3, 1)


def group_modules(modules: dict[str, LLLiteModule], paths: dict[str, str]) -> list[ModuleGroup]:
    """Group modules whose targets sit in one attention layer (``...attn1``), each group in call order.

    Args:
        modules: kohya name -> module (files list them alphabetically: to_k before to_q).
        paths: kohya name -> the target Linear's path in the UNet.

    Modules of one layer with different dimensions (possible in a hand-made file) get groups of their own.
    """
    def call_order(name: str) -> int:  # attn1's to_q, to_k, to_v, then attn2's to_q
        return TARGET_LINEARS.index(".".join(paths[name].split(".")[-2:]))

    layers: dict[tuple, list[str]] = {}
    for name in sorted(modules, key=call_order):
        module = modules[name]
        key = (paths[name].rsplit(".", 1)[0], module.in_dim, module.cond_emb_dim, module.network_dim, module.depth)
        layers.setdefault(key, []).append(name)
    return [ModuleGroup(names, [modules[n] for n in names]) for names in layers.values()]
