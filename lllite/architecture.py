"""The architecture, measured and pictured (notebook 02): one module's shapes layer by layer, parameters
against a full ControlNet, where the modules attach in SDXL, what the conditioning embedding sees, and
why ``up`` starts at zero; then Anima's LLLite (kohya's v2) beside SDXL's: what differs, the shapes inside
its shared trunk and one module, its parameters for each ``target_layers`` preset, and the trunk's embedding;
and kohya's three Anima architectures (v2, v2.1, v3) side by side, with their cost per call at Anima's size.

Counts and shapes come from SDXL's and Anima's configurations alone, on PyTorch's ``meta`` device: nothing
is downloaded. Plots are :mod:`lllite.figures` Figures; tables are :class:`lllite.figures.Table`.

    from lllite.architecture import attachment_table, parameter_counts
    from lllite.sdxl.pipeline import sdxl_unet
    parameter_counts()["ControlNet (SDXL)"]        # 1.25e9, against 2.3e7 for kohya's LLLite
    attachment_table(sdxl_unet("meta"))           # five adapted blocks, 136 modules
    anima_parameter_counts()                      # Anima's DiT and its LLLite for each target_layers preset
    anima_kinds_table()                           # v2, v2.1, v3: inputs, parameters, FLOPs per call
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from PIL import Image

from .anima import create_network as create_anima_network
from .anima.fileformat import TRUNK
from .anima.module import STRIDE
from .anima.names import PRESETS, TARGETS
from .anima.names import find_targets as find_anima_targets
from .anima.names import parse_target_layers
from .anima.pipeline import anima_transformer
from .errors import LLLiteError
from .figures import Table, new_figure
from .images import to_control_tensor
from .sampling import generate, image_grid
from .sdxl.module import LLLiteModule, token_grid
from .sdxl.names import attention_blocks, find_targets, unet_layout
from .sdxl.network import create_network
from .sdxl.pipeline import SDXL_UNET_CONFIG, sdxl_unet


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
    return Table([(r.part, f"`{r.layer}`", r.shape) for r in rows], ["part", "layer", "output shape"])


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
    """Horizontal bars on a log scale, each labelled with its count and its size in float16 (a Figure): base
    models blue, ControlNets orange, LLLites green."""
    names, values = list(counts), list(counts.values())
    figure, axes = new_figure(max(7.0, 0.2 * max(map(len, names))), 0.6 * len(names) + 1.2)  # long labels: wider
    colours = ["C1" if "ControlNet" in name else "C2" if "LLLite" in name else "C0" for name in names]
    axes.barh(names[::-1], values[::-1], color=colours[::-1])
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
    height, width = emb.shape[1:]
    return _channel_tiles(emb, cell, columns, f"{len(emb)} channels of {height}x{width} (depth {module.depth}), "
                                              "each scaled to its range")


def _channel_tiles(emb: torch.Tensor, cell: int, columns: int, title: str) -> Image.Image:
    """Channels (C, H, W) as a grid of grey tiles, each channel scaled to its own range."""
    low = emb.flatten(1).min(dim=1).values[:, None, None]
    high = emb.flatten(1).max(dim=1).values[:, None, None]
    scaled = ((emb - low) / (high - low).clamp_min(1e-8) * 255).round().to(torch.uint8).numpy()
    tiles = [Image.fromarray(channel).resize((cell, cell), Image.NEAREST) for channel in scaled]
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    return image_grid(rows, title=title)


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


# ------------------------------------------------------------------------------------------ Anima (kohya's v2)


@functools.lru_cache(maxsize=1)
def _anima_transformer():
    return anima_transformer()  # built once: a notebook's live views ask for it again and again


def anima_network(**options):
    """An Anima LLLite network (:func:`lllite.anima.create_network`) for real Anima's DiT, on the ``meta`` device.

    Args:
        **options: :class:`lllite.anima.AnimaLLLiteConfig` fields, e.g. ``target_layers="self_attn_qkv"``.
    """
    with torch.device("meta"):
        return create_anima_network(_anima_transformer(), **options)


def _traced(model: torch.nn.Module, run, parts: list[tuple[str, torch.nn.Module]]) -> list[tuple[str, torch.nn.Module, tuple, tuple]]:
    """(name, layer, input shape, output shape) of each listed layer, in the order ``run()`` calls them."""
    seen: list = []
    handles = [layer.register_forward_hook(lambda m, args, out, name=name: seen.append(
        (name, m, tuple(args[0].shape), tuple(out.shape)))) for name, layer in parts]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


#: What follows each traced layer of the trunk (kohya's v2: its activations are functions, not layers).
_AFTER = {"norm1": " + SiLU", "norm2": " + SiLU", "norm3": " + SiLU", "proj": ", then flatten to tokens, row-major"}
#: The trunk's composite layers, in one line each.
_COMPOSITE = {"ResBlock": "ResBlock: x + conv3x3(SiLU(GN(conv3x3(SiLU(GN(x))))))",
              "ASPP": "ASPP: 1x1 and dilated 3x3 branches + a global-pool branch, concatenated, 1x1 conv + GN + SiLU"}


def anima_module_shapes(image_size: int = 1024, target_layers: str = "self_attn_q", **options) -> list[ShapeRow]:
    """Every layer of Anima's shared trunk and of one module with the shape it outputs, for a batch of one at
    real Anima's width (traced on the meta device).

    Args:
        image_size: side of the square image in pixels (a multiple of 16: VAE 8 x patch 2).
        target_layers: the preset or atomics; every target of real Anima is 2048 wide, so the shapes do not
            depend on it, only the module count does (:func:`anima_targets`).
        **options: other :class:`lllite.anima.AnimaLLLiteConfig` fields (``cond_emb_dim``, ``cond_dim``, ...).
    """
    if image_size % STRIDE:
        raise ValueError(f"image_size {image_size} is not a multiple of {STRIDE} (the VAE's 8 x the DiT's 2x2 patches)")
    network = anima_network(target_layers=target_layers, **options)
    trunk = network.trunk
    name, module = next(network.lllite_modules())
    with torch.device("meta"):
        image = torch.empty(1, network.cond_in_channels, image_size, image_size)
        parts = [(part, layer) for part, layer in trunk.named_children() if not isinstance(layer, torch.nn.ModuleList)]
        parts += [(f"resblocks.{i}", block) for i, block in enumerate(trunk.resblocks)]
        traced = _traced(trunk, lambda: trunk(image), parts)
        rows = [ShapeRow("control image", f"{network.cond_in_channels} channels in [-1, 1]", tuple(image.shape))]
        rows += [ShapeRow(f"{TRUNK}.{part}", _COMPOSITE.get(type(layer).__name__, repr(layer)) + _AFTER.get(part, ""), shape)
                 for part, layer, _, shape in traced]
        embedding = trunk(image)
        x = torch.empty(1, embedding.shape[1], module.in_dim)
        rows.append(ShapeRow("x", f"the input of {name}'s Linear", tuple(x.shape)))
        rows.append(ShapeRow("depth_embed", "this module's own offset, added: cond = embedding + depth_embed",
                             tuple(module.depth_embed.shape)))
        parts = [(part, getattr(module, part)) for part in ("down", "cond_to_film", "mid", "up")]
        traced = {part: (layer, shape_in, shape) for part, layer, shape_in, shape in
                  _traced(module, lambda: module(x, embedding), parts)}
        after = {"down": " + SiLU", "cond_to_film": ": gamma, beta = chunk(2)",
                 "mid": ", m * (1 + gamma) + beta, SiLU"}
        for part in ("down", "cond_to_film", "mid", "up"):
            layer, shape_in, shape = traced[part]
            if part == "mid":
                rows.append(ShapeRow("cat", "[cond, down(x)]", shape_in))
            rows.append(ShapeRow(part, repr(layer) + after.get(part, ""), shape))
    return rows


def anima_targets(target_layers: str = "self_attn_q") -> tuple[list[str], int, int]:
    """The Linears a preset adapts in one block (diffusers' paths within the block), the modules in all of
    real Anima's blocks, and the number of blocks."""
    transformer = _anima_transformer()
    targets = find_anima_targets(transformer, parse_target_layers(target_layers))
    paths = [t.path.split(".", 2)[2] for t in targets.values() if t.path.startswith("transformer_blocks.0.")]
    return paths, len(targets), len(transformer.transformer_blocks)


def anima_module_shapes_table(image_size: int = 1024, target_layers: str = "self_attn_q"):
    """:func:`anima_module_shapes` as a Markdown table, under a line that says which Linears the preset adapts."""
    paths, modules, blocks = anima_targets(target_layers)
    rows = anima_module_shapes(image_size, target_layers)
    head = (f"`{target_layers}`: {modules} modules, one for each of " + ", ".join(f"`{p}`" for p in paths)
            + f" in each of the {blocks} blocks; every one reads the same trunk output.")
    return Table([(r.part, f"`{r.layer}`", r.shape) for r in rows], ["part", "layer", "output shape"], caption=head)


def anima_parameter_counts(cond_emb_dim: int = 32, network_dim: int = 64) -> dict[str, int]:
    """Parameters of real Anima's DiT and of its LLLite for each ``target_layers`` preset (and the lightest
    with ASPP), from the configuration alone; ``cond_emb_dim`` and ``network_dim`` as kohya's options."""
    return dict(_anima_parameter_counts(cond_emb_dim, network_dim))


@functools.lru_cache(maxsize=32)
def _anima_parameter_counts(cond_emb_dim: int, network_dim: int) -> tuple[tuple[str, int], ...]:
    sizes = dict(cond_emb_dim=cond_emb_dim, network_dim=network_dim)
    rows = [("Anima DiT", sum(p.numel() for p in _anima_transformer().parameters()))]
    for preset, use_aspp in [*((preset, False) for preset in PRESETS), (next(iter(PRESETS)), True)]:
        network = anima_network(target_layers=preset, use_aspp=use_aspp, **sizes)
        label = f"Anima LLLite {preset}{' + ASPP' if use_aspp else ''} ({len(network)} modules)"
        rows.append((label, sum(p.numel() for p in network.parameters())))
    return tuple(rows)


def family_parameter_counts(cond_emb_dim: int = 32, network_dim: int = 64) -> dict[str, int]:
    """:func:`anima_parameter_counts` next to SDXL's LLLite and a full SDXL ControlNet (:func:`parameter_counts`)."""
    sdxl = {("SDXL " + name if name.startswith("LLLite") else name): count
            for name, count in parameter_counts(cond_emb_dim, network_dim).items() if name != "SDXL UNet"}
    return {**sdxl, **anima_parameter_counts(cond_emb_dim, network_dim)}


def _activations(module: torch.nn.Module) -> list[str]:
    """The activations a module applies: its activation layers, and the activation functions its forward calls."""
    layers = {type(m).__name__ for m in module.modules() if type(m).__module__ == "torch.nn.modules.activation"}
    called = {name for name in type(module).forward.__code__.co_names if name in ("relu", "silu", "gelu", "tanh", "sigmoid")}
    return sorted(layers | {{"relu": "ReLU", "silu": "SiLU", "gelu": "GELU"}.get(n, n) for n in called})


def family_differences(image_size: int = 1024) -> list[tuple[str, str, str]]:
    """What differs between SDXL's LLLite and Anima's (kohya's v2), as (aspect, SDXL, Anima) rows, read off
    kohya's default networks for both models' configurations (meta device).

    Args:
        image_size: the generated image's side in pixels, for the token grids.
    """
    unet = sdxl_unet("meta")
    with torch.device("meta"):
        sdxl = create_network(unet)
    anima = anima_network()
    sdxl_modules = [module for _, module in sdxl.lllite_modules()]
    sdxl_module, (_, anima_module) = sdxl_modules[0], next(anima.lllite_modules())
    trunk_count = sum(p.numel() for p in anima.trunk.parameters())
    own = sum(hasattr(module, "conditioning1") for module in sdxl_modules)
    latent = (image_size // 8, image_size // 8)
    grids = sorted({(m.depth, token_grid(latent, m.depth)) for m in sdxl_modules})
    targets = list(find_targets(unet, up_path=False).values())
    linears = list(dict.fromkeys(t.path.split(".transformer_blocks.")[-1].split(".", 1)[1] for t in targets))
    sdxl_blocks = len({t.path.rsplit(".", 2)[0] for t in targets})
    where = sorted({t.block.sgm.split(".")[0] for t in targets})
    transformer = _anima_transformer()
    presets = "; ".join(f"`{name}`: " + ", ".join(d for atomic in atomics for _, d in TARGETS[atomic])
                        for name, atomics in PRESETS.items())
    film = getattr(anima_module, "cond_to_film", None)
    depth = getattr(anima_module, "depth_embed", None)

    def describe(activations: list[str]) -> str:
        return ", ".join(activations) or "none"

    return [
        ("conditioning", f"one `conditioning1` in each of the {own} modules",
         f"one shared trunk `{TRUNK}` ({trunk_count:,} parameters) for all {len(anima)} modules"),
        ("activation", f"{describe(_activations(sdxl_module))} (modules and their conditioning)",
         f"{describe(_activations(anima.trunk))} in the trunk, {describe(_activations(anima_module))} in the modules"),
        ("FiLM", "none" if not hasattr(sdxl_module, "cond_to_film") else "yes",
         "none" if film is None else f"on `mid`: `cond_to_film` {film.in_features} -> {film.out_features} "
                                     "(gamma, beta), zero at the start"),
        ("depth embedding", "none: a module's depth sets its own conv stack" if not hasattr(sdxl_module, "depth_embed")
         else "yes", "none" if depth is None else f"`depth_embed` {tuple(depth.shape)} per module, added to the "
                                                  "shared embedding, zero at the start"),
        (f"token grid at {image_size} px", ", ".join(f"{g[0]}x{g[1]} (depth {d})" for d, g in grids),
         f"{image_size // STRIDE}x{image_size // STRIDE} for every module (stride {STRIDE} = VAE 8 x patch 2)"),
        ("targets", ", ".join(f"`{p}`" for p in linears) + f" in the {sdxl_blocks} transformer blocks of "
         + " and ".join(f"`{w}`" for w in where),
         f"`target_layers` presets over all {len(transformer.transformer_blocks)} DiT blocks: {presets}"),
        ("modules at kohya's defaults", str(len(sdxl)), f"{len(anima)} (`self_attn_q`)"),
        ("parameters at kohya's defaults", f"{sum(p.numel() for p in sdxl.parameters()):,}",
         f"{sum(p.numel() for p in anima.parameters()):,}"),
    ]


def family_differences_table(image_size: int = 1024):
    """:func:`family_differences` as a Markdown table."""
    return Table(family_differences(image_size), ["", "SDXL's LLLite", "Anima's LLLite (kohya's v2)"])


@torch.no_grad()
def trunk_embedding_channels(trunk, control, cell: int = 64, columns: int = 8) -> Image.Image:
    """The shared trunk's embedding of a control image as pictures: one tile per channel of E, each scaled
    to its own range, on the DiT's token grid (the image's side / 16).

    Args:
        trunk: an Anima network's :class:`lllite.anima.ConditioningTrunk` (``network.trunk``).
        control: the control image (PIL, uint8 numpy or tensor in [-1, 1]), its sides multiples of 16.
        cell, columns: tile side in pixels; tiles per row.
    """
    parameter = next(trunk.parameters())
    image = to_control_tensor(control)[:1].to(parameter.device, parameter.dtype)
    height, width = image.shape[-2] // STRIDE, image.shape[-1] // STRIDE
    if (height * STRIDE, width * STRIDE) != tuple(image.shape[-2:]):
        raise LLLiteError(f"control of {tuple(image.shape[-2:])} pixels: give sides that are multiples of {STRIDE}")
    tokens = trunk(image)[0].float().cpu()  # (S, E), row-major
    emb = tokens.transpose(0, 1).reshape(-1, height, width)
    return _channel_tiles(emb, cell, columns, f"{len(emb)} channels of the shared embedding, {height}x{width} tokens, "
                                              "each scaled to its range")


#: kohya's Anima architectures, as :class:`lllite.anima.AnimaLLLiteConfig` settings.
ANIMA_KINDS = {"v2": {}, "v2.1": dict(cond_input_space="latent"),
               "v3": dict(cond_input_space="latent", trunk="semantic")}


def _flops(run) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@functools.lru_cache(maxsize=8)
def anima_kinds(image_size: int = 1024) -> tuple[tuple[str, str, str, str, str, str], ...]:
    """kohya's three Anima architectures at real Anima's size, kohya's defaults otherwise (``self_attn_q``, v3 at the
    middle block): what the trunk reads, parameters, and floating-point operations counted on the ``meta`` device
    (PyTorch's FLOP counter; nothing runs) for one control image (VAE encode, reference forward, trunk) and per DiT
    call (the modules), beside the 28 DiT blocks' own."""
    from diffusers import AutoencoderKLQwenImage

    from .anima.reference import reference_hidden_states

    transformer = _anima_transformer()
    latent_size = image_size // 8
    blocks = len(transformer.transformer_blocks)
    with torch.device("meta"):
        vae = AutoencoderKLQwenImage()
        image = torch.empty(1, 3, image_size, image_size)
        latent = torch.empty(1, 16, latent_size, latent_size)
        encode = _flops(lambda: vae.encode(image.unsqueeze(2)))
        dit = _flops(lambda: reference_hidden_states(transformer, latent, (blocks - 1,), 0.0))
        rows = []
        for kind, options in ANIMA_KINDS.items():
            network = anima_network(**options)
            trunk = network.trunk
            if trunk.kind == "pixel":
                reads, inputs, before = "the control image", (image,), 0
            elif trunk.kind == "latent":
                reads, inputs, before = "its VAE latent", (latent,), encode
            else:
                taps = network.config.ref_block
                hidden = reference_hidden_states(transformer, latent, taps, 0.0)
                reads = f"the DiT's hidden states after block {','.join(map(str, taps))}"
                inputs = (hidden, (latent_size // 2, latent_size // 2))
                before = encode + _flops(lambda: reference_hidden_states(transformer, latent, taps, 0.0))
            per_control = before + _flops(lambda: trunk(*inputs))
            embedding = trunk(*inputs)
            x = torch.empty(1, embedding.shape[1], 2048)
            time = torch.empty(1, 1, embedding.shape[-1]) if trunk.kind == "semantic" else None
            per_call = _flops(lambda: [m(x, embedding, time) for _, m in network.lllite_modules()])
            rows.append((kind, f"{reads} {tuple(inputs[0].shape)}", f"{sum(p.numel() for p in trunk.parameters()):,}",
                         f"{sum(p.numel() for p in network.parameters()):,}", f"{per_control / 1e9:,.1f}",
                         f"{per_call / 1e9:,.1f} ({100 * per_call / dit:.2f}% of the DiT's {dit / 1e12:.1f} T)"))
    return tuple(rows)


def anima_kinds_table(image_size: int = 1024):
    """:func:`anima_kinds` as a Markdown table."""
    return Table(list(anima_kinds(image_size)),
                 ["kohya's", "the trunk reads", "trunk parameters", "network parameters",
                  "GFLOP per control image", "GFLOP per DiT call (modules)"],
                 caption=f"At {image_size} px, kohya's defaults: 28 modules (self_attn_q); v3's reference forward runs "
                         "the DiT up to its middle block once per control image (per guidance branch with "
                         "ref_context 'caption').")
