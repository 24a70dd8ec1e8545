"""Where LLLite modules attach, and the one name mapping between diffusers and kohya's files.

kohya names a module after the target Linear's path in the original (SGM/LDM) SDXL UNet, with every
``.`` replaced by ``_``; diffusers names the same Linear differently above the transformer level.
:func:`attention_blocks` is the single table of corresponding transformer blocks; both directions of
the mapping read it, and nothing ever parses an underscored name back into a path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

#: The Linears kohya adapts in every transformer block (attn2's k/v read text, a different width).
TARGET_LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q")
MODULE_PREFIX = "lllite_unet_"


@dataclass(frozen=True)
class Block:
    """One transformer block position of an SDXL-layout UNet, under both naming schemes."""

    diffusers: str  # "down_blocks.1.attentions.0"
    sgm: str  # "input_blocks.4.1"
    depth: int  # 1, 2, 3: the conditioning embedding's downscale (latent, latent/2, latent/4)
    path: str  # "down", "mid" or "up"


def attention_blocks(num_levels: int = 3, layers_per_block: int = 2) -> list[Block]:
    """Every transformer-block position a UNet of this layout can have, in kohya's module order.

    In the SGM layout each resolution level holds ``layers_per_block`` entries in ``input_blocks``
    plus a downsampler, and ``layers_per_block + 1`` entries in ``output_blocks``; ``input_blocks.0``
    is ``conv_in``. SDXL: 3 levels, 2 layers, so ``down_blocks.i.attentions.j`` is
    ``input_blocks.(3i+j+1).1`` and ``up_blocks.i.attentions.j`` is ``output_blocks.(3i+j).1``.
    """
    stride = layers_per_block + 1
    blocks = [
        Block(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{stride * i + j + 1}.1", i + 1, "down")
        for i in range(num_levels)
        for j in range(layers_per_block)
    ]
    blocks.append(Block("mid_block.attentions.0", "middle_block.1", num_levels, "mid"))
    blocks += [
        Block(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{stride * i + j}.1", num_levels - i, "up")
        for i in range(num_levels)
        for j in range(stride)
    ]
    return blocks


def _split(path: str, blocks: list[Block], attr: str) -> tuple[Block, str]:
    for block in blocks:
        prefix = getattr(block, attr) + "."
        if path.startswith(prefix):
            return block, path[len(prefix):]
    raise KeyError(f"{path!r} is not inside a transformer block of an SDXL-layout UNet")


def diffusers_to_sgm(path: str, num_levels: int = 3, layers_per_block: int = 2) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` -> ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``."""
    block, rest = _split(path, attention_blocks(num_levels, layers_per_block), "diffusers")
    return f"{block.sgm}.{rest}"


def sgm_to_diffusers(path: str, num_levels: int = 3, layers_per_block: int = 2) -> str:
    """The inverse of :func:`diffusers_to_sgm`."""
    block, rest = _split(path, attention_blocks(num_levels, layers_per_block), "sgm")
    return f"{block.diffusers}.{rest}"


def is_up_path(name: str) -> bool:
    """Whether a kohya module name adapts a block of the up path (``output_blocks``)."""
    return name.startswith(MODULE_PREFIX + "output_blocks_")


def module_name(sgm_path: str) -> str:
    """kohya's module name (the key prefix in LLLite files) for a target Linear's SGM path."""
    return MODULE_PREFIX + sgm_path.replace(".", "_")


@dataclass(frozen=True)
class Target:
    """A Linear of a UNet that an LLLite module can adapt."""

    name: str  # kohya module name, e.g. "lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    path: str  # the Linear's path in the diffusers UNet
    depth: int
    block: Block
    in_features: int


def unet_layout(unet: nn.Module) -> tuple[int, int]:
    """(num_levels, layers_per_block) of a diffusers UNet, checked to be SDXL's block layout."""
    config = getattr(unet, "config", None)
    down = tuple(getattr(config, "down_block_types", ()) or ())
    up = tuple(getattr(config, "up_block_types", ()) or ())
    layers = getattr(config, "layers_per_block", None)
    sdxl_down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    sdxl_up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    if down != sdxl_down or up != sdxl_up or not isinstance(layers, int):
        raise ValueError(
            "LLLite needs a diffusers UNet2DConditionModel with SDXL's block layout "
            f"(down_block_types={sdxl_down}, up_block_types={sdxl_up}, an int layers_per_block); "
            f"got down_block_types={down}, up_block_types={up}, layers_per_block={layers!r}"
        )
    return len(down), layers


def is_model(model) -> bool:
    """Whether ``model`` (or a pipeline's ``unet``) is a diffusers UNet with SDXL's block layout."""
    unet = getattr(model, "unet", model)
    unet = getattr(unet, "_orig_mod", unet)
    try:
        unet_layout(unet)
    except ValueError:
        return False
    return True


def find_targets(unet: nn.Module, up_path: bool = True) -> dict[str, Target]:
    """All LLLite targets of an SDXL-layout UNet, keyed by kohya module name, in kohya's order.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` with SDXL's block layout (any width or depth of
            transformer stacks). PEFT-wrapped Linears (``pipe.load_lora_weights``) count as targets.
        up_path: include the up path (kohya's default networks have none).
    """
    num_levels, layers = unet_layout(unet)
    targets: dict[str, Target] = {}
    for block in attention_blocks(num_levels, layers):
        if block.path == "up" and not up_path:
            continue
        try:
            transformer = unet.get_submodule(block.diffusers)
        except AttributeError:
            continue
        for k in range(len(transformer.transformer_blocks)):
            for linear in TARGET_LINEARS:
                rest = f"transformer_blocks.{k}.{linear}"
                module = transformer.get_submodule(rest)
                name = module_name(f"{block.sgm}.{rest}")
                targets[name] = Target(name, f"{block.diffusers}.{rest}", block.depth, block, module.in_features)
    return targets
