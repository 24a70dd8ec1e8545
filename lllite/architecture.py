"""The architecture, measured and pictured (notebook 02): one module's shapes layer by layer, parameters
against a full ControlNet, where the modules attach in SDXL, what the conditioning embedding sees, and
why ``up`` starts at zero.

Counts and shapes come from SDXL's configuration alone, on PyTorch's ``meta`` device: nothing is
downloaded. Plots are :mod:`lllite.figures` Figures; tables are Markdown (:func:`lllite.notebook.markdown_table`).

    from lllite.architecture import attachment_table, parameter_counts
    from lllite.sdxl import sdxl_unet
    parameter_counts()["ControlNet (SDXL)"]        # 1.25e9, against 2.3e7 for kohya's LLLite
    attachment_table(sdxl_unet("meta"))           # five adapted blocks, 136 modules
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from PIL import Image

from .errors import LLLiteError
from .figures import new_figure
from .images import to_control_tensor
from .module import LLLiteModule, token_grid
from .names import attention_blocks, find_targets, unet_layout
from .network import create_network
from .notebook import markdown_table
from .sampling import generate, image_grid
from .sdxl import SDXL_UNET_CONFIG, sdxl_unet


@dataclass(frozen=True)
class ShapeRow:
    """One layer of a module and the shape of its output."""

    part: str
    layer: str
    shape: tuple[int, ...]


def module_shapes(depth: int, in_dim: int, image_size: int = 1024, cond_emb_dim: int = 32, network_dim: int = 64) -> list[ShapeRow]:
    """Every layer of one LLLite module with the shape it outputs, for a batch of one (traced on the meta device).

    Args:
        depth: 1, 2 or 3 (the block's resolution level: latent, /2, /4).
        in_dim: the target Linear's width (SDXL: 640 at depth 2, 1280 at depth 3).
        image_size: side of the square control image in pixels.
        cond_emb_dim, network_dim: E and M.
    """
    with torch.device("meta"):
        module = LLLiteModule(in_dim, cond_emb_dim, network_dim, depth)
        x = torch.empty(1, 3, image_size, image_size)
        rows = [ShapeRow("control image", "RGB in [-1, 1]", tuple(x.shape))]
        for index, layer in enumerate(module.conditioning1):
            x = layer(x)
            rows.append(ShapeRow(f"conditioning1.{index}", repr(layer), tuple(x.shape)))
        grid = token_grid((image_size // 8, image_size // 8), depth)
        emb = module.embed(torch.empty(1, 3, image_size, image_size), grid)
        rows.append(ShapeRow("cond_emb", "flatten to tokens, row-major", tuple(emb.shape)))
        tokens = torch.empty(1, emb.shape[1], in_dim)
        rows.append(ShapeRow("x", "the target Linear's input", tuple(tokens.shape)))
        down = module.down(tokens)
        rows.append(ShapeRow("down.0", repr(module.down[0]) + " + ReLU", tuple(down.shape)))
        joined = torch.cat([emb, down], dim=-1)
        rows.append(ShapeRow("cat", "[cond_emb, down(x)]", tuple(joined.shape)))
        mid = module.mid(joined)
        rows.append(ShapeRow("mid.0", repr(module.mid[0]) + " + ReLU", tuple(mid.shape)))
        rows.append(ShapeRow("up.0", repr(module.up[0]), tuple(module.up(mid).shape)))
    return rows


#: SDXL's Linear width (its channels) at each depth, from its configuration.
SDXL_WIDTH_AT_DEPTH = dict(zip((1, 2, 3), SDXL_UNET_CONFIG["block_out_channels"]))


def module_shapes_table(depth: int, image_size: int = 1024):
    """:func:`module_shapes` of a module at SDXL's width for ``depth``, as a Markdown table."""
    rows = module_shapes(depth, SDXL_WIDTH_AT_DEPTH[depth], image_size)
    return markdown_table([(r.part, f"`{r.layer}`", r.shape) for r in rows], ["part", "layer", "output shape"])


def parameter_counts(cond_emb_dim: int = 32, network_dim: int = 64) -> dict[str, int]:
    """Parameters of SDXL's UNet, of a full SDXL ControlNet and of kohya's default LLLite, from configs alone."""
    return dict(_parameter_counts(cond_emb_dim, network_dim))


@functools.lru_cache(maxsize=32)
def _parameter_counts(cond_emb_dim: int, network_dim: int) -> tuple[tuple[str, int], ...]:
    # Cached: the answer depends on the two dimensions only, and a slider asks again for the same ones.
    from diffusers import ControlNetModel

    unet = sdxl_unet("meta")
    with torch.device("meta"):
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        network = create_network(unet, cond_emb_dim=cond_emb_dim, network_dim=network_dim)
    return (
        ("SDXL UNet", sum(p.numel() for p in unet.parameters())),
        ("ControlNet (SDXL)", sum(p.numel() for p in controlnet.parameters())),
        (f"LLLite ({len(network)} modules, E={cond_emb_dim}, M={network_dim})", sum(p.numel() for p in network.parameters())),
    )


def plot_parameter_counts(counts: Mapping[str, int]):
    """Horizontal bars on a log scale, each labelled with its count and its size in float16 (a Figure)."""
    names, values = list(counts), list(counts.values())
    figure, axes = new_figure(7, 0.6 * len(names) + 1.2)
    axes.barh(names[::-1], values[::-1], color=["C2", "C1", "C0"][-len(names):])
    axes.set_xscale("log")
    axes.set_xlabel("parameters (log scale)")
    for y, value in enumerate(values[::-1]):
        axes.text(value, y, f" {value / 1e6:,.1f} M ({2 * value / 2**20:,.0f} MiB in fp16)", va="center", fontsize=9)
    axes.set_xlim(right=max(values) * 60)
    return figure


@dataclass(frozen=True)
class BlockRow:
    """The LLLite modules that attach inside one transformer block."""

    sgm: str
    diffusers: str
    depth: int
    modules: int
    in_features: int
    tokens: tuple[int, int]


def attachment_table(unet, image_size: int = 1024, up_path: bool = False) -> list[BlockRow]:
    """Where LLLite modules attach, block by block, with the token grid each block sees at ``image_size``."""
    rows: dict[str, BlockRow] = {}
    latent = (image_size // 8, image_size // 8)
    for target in find_targets(unet, up_path=up_path).values():
        block = target.block
        row = rows.get(block.sgm)
        count = 1 if row is None else row.modules + 1
        rows[block.sgm] = BlockRow(block.sgm, block.diffusers, block.depth, count, target.in_features,
                                   token_grid(latent, block.depth))
    return list(rows.values())


def plot_attachment(unet, up_path: bool = False):
    """SDXL's U drawn as its transformer-block positions by resolution level, adapted blocks marked with
    their module count (a Figure)."""
    counts = {row.sgm: row.modules for row in attachment_table(unet, up_path=up_path)}
    blocks = attention_blocks(*unet_layout(unet))
    figure, axes = new_figure(9, 3.2)
    for x, block in enumerate(blocks):
        adapted = block.sgm in counts
        present = _has_block(unet, block.diffusers)
        colour = "C0" if adapted else ("0.75" if present else "white")
        axes.scatter([x], [block.depth], s=260, color=colour, edgecolors="0.4", zorder=2)
        if adapted:
            axes.annotate(str(counts[block.sgm]), (x, block.depth), xytext=(0, 12), textcoords="offset points",
                          ha="center", fontsize=9)
    axes.plot(range(len(blocks)), [b.depth for b in blocks], color="0.85", zorder=1)
    axes.set_xticks(range(len(blocks)), [b.sgm.rsplit(".", 1)[0].replace("_blocks", "") for b in blocks],
                    rotation=60, fontsize=8)
    axes.set_yticks([1, 2, 3], ["1: latent", "2: latent/2", "3: latent/4"])
    axes.set_ylim(3.6, 0.5)
    axes.set_title(f"{sum(counts.values())} LLLite modules (blue, with counts); grey: transformer blocks left alone; "
                   "white: no transformer", fontsize=9)
    return figure


def _has_block(unet, path: str) -> bool:
    try:
        unet.get_submodule(path)
    except AttributeError:
        return False
    return True


@torch.no_grad()
def embedding_channels(module: LLLiteModule, control, cell: int = 96, columns: int = 8) -> Image.Image:
    """The conditioning embedding of one module as pictures: one tile per channel, each scaled to its own range.

    Args:
        module: the LLLite module whose ``conditioning1`` is shown.
        control: the control image (PIL, uint8 numpy or tensor in [-1, 1]; see :func:`lllite.images.to_control_tensor`).
        cell: tile side in pixels.
        columns: tiles per row.
    """
    image = to_control_tensor(control)[:1].to(next(module.parameters()).device, next(module.parameters()).dtype)
    emb = module.conditioning1(image)[0].float().cpu()
    low = emb.flatten(1).min(dim=1).values[:, None, None]
    high = emb.flatten(1).max(dim=1).values[:, None, None]
    scaled = ((emb - low) / (high - low).clamp_min(1e-8) * 255).round().to(torch.uint8).numpy()
    tiles = [Image.fromarray(channel).resize((cell, cell), Image.NEAREST) for channel in scaled]
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    height, width = emb.shape[1:]
    return image_grid(rows, title=f"{len(tiles)} channels of {height}x{width} (depth {module.depth}), each scaled to its range")


#: The three ways a fresh network can start, compared in notebook 02.
INITS = {
    "zero up (weight and bias)": "an exact identity: the base model's image, bit for bit",
    "kohya: zero up weight only": "up's bias keeps PyTorch's init: a small constant shift",
    "no zero init": "random up: the base model is disturbed before any training",
}


def fresh_network(unet, init: str, seed: int = 0, cond_emb_dim: int = 32, network_dim: int = 64):
    """A new network started one of the :data:`INITS` ways (seeded)."""
    if init not in INITS:
        raise LLLiteError(f"unknown init {init!r}; choose one of {list(INITS)}")
    torch.manual_seed(seed)
    network = create_network(unet, cond_emb_dim=cond_emb_dim, network_dim=network_dim, zero_init=init == "zero up (weight and bias)")
    if init == "kohya: zero up weight only":
        for _, module in network.lllite_modules():
            torch.nn.init.zeros_(module.up[0].weight)
    return network


@torch.no_grad()
def init_comparison(pipe, control, prompt: str, seed: int = 0, num_inference_steps: int = 20,
                    guidance_scale: float = 5.0) -> tuple[Image.Image, dict[str, float]]:
    """The base model's image beside the images of fresh networks started each of the :data:`INITS` ways.

    Returns:
        The labelled grid, and each init's mean absolute pixel difference (0..255) from the base image.
    """
    settings = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed)
    probe = fresh_network(pipe.unet, "zero up (weight and bias)")
    base = generate(pipe, probe, control, prompt, multiplier=0.0, **settings)[0]
    images, differences = [base], {}
    for init in INITS:
        image = generate(pipe, fresh_network(pipe.unet, init, seed), control, prompt, multiplier=1.0, **settings)[0]
        differences[init] = float(np.abs(np.asarray(image, np.float32) - np.asarray(base, np.float32)).mean())
        images.append(image)
    labels = ["base model"] + [f"{init}: {differences[init]:.2f}" for init in INITS]
    return image_grid([images], labels, title=f"{prompt} | seed {seed} | mean pixel change from the base model"), differences


def first_step_gradients(unet, network, control, seed: int = 0) -> dict[str, float]:
    """Gradient norm of each part of the network (conditioning1, down, mid, up) after one backward pass.

    With ``up`` at zero only ``up`` itself receives a gradient at the first step: the other parts start
    learning once ``up`` is no longer zero, so training begins exactly at the base model.
    """
    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    latent = min(config.sample_size, 32)  # a 256 px probe: the pattern does not depend on the size
    time_ids = torch.tensor([[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]], dtype=torch.float32)
    text = torch.randn(1, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim, generator=generator)
    inputs = dict(sample=torch.randn(1, config.in_channels, latent, latent, generator=generator),
                  encoder_hidden_states=torch.randn(1, 4, config.cross_attention_dim, generator=generator),
                  text_embeds=text, time_ids=time_ids)
    inputs = {name: value.to(unet.device, unet.dtype) for name, value in inputs.items()}
    # Only the network's gradients are wanted; the UNet's would double its memory (5 GB for SDXL in fp16).
    trainable = [p for p in unet.parameters() if p.requires_grad]
    unet.requires_grad_(False)
    network.apply_to(unet)
    try:
        network.train()
        network.zero_grad()
        network.set_cond_image(control)
        network.set_multiplier(1.0)
        output = unet(inputs["sample"], torch.tensor(500), encoder_hidden_states=inputs["encoder_hidden_states"],
                      added_cond_kwargs={"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}).sample
        output.float().square().mean().backward()
        norms: dict[str, float] = {}
        for name, parameter in network.named_parameters():
            part = name.split(".")[1]
            grad = 0.0 if parameter.grad is None else float(parameter.grad.square().sum())
            norms[part] = norms.get(part, 0.0) + grad
    finally:
        network.remove()
        network.eval()
        network.set_cond_image(None)
        for parameter in trainable:
            parameter.requires_grad_(True)
    return {part: value ** 0.5 for part, value in norms.items()}
