"""What the notebooks need beyond the library: where they run, which model, pictures, live controls.

The notebooks stay thin (prose, calls, widgets, pictures); everything they compute lives here or in
the rest of the package, where it is tested. Widget callbacks are plain functions that take values
and return a picture, so a test can call them without a browser.

    from lllite.notebook import detect_environment, load_pipeline
    env = detect_environment()        # real SDXL on a GPU, the toy world on a CPU
    pipe = load_pipeline(env)
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .conditioning import canny
from .data import CONDITIONING_BACKGROUND, IMAGE_BACKGROUND, DatasetConfig, PairingReport, SubsetConfig, load_rgb
from .images import to_control_tensor
from .metrics import edge_f_score, shape_iou
from .module import LLLiteModule, token_grid
from .names import find_targets
from .network import create_network
from .sampling import STRENGTHS, generate, image_grid
from .sdxl import SDXL_BASE, SDXL_UNET_CONFIG, sdxl_unet

#: Environment variable for the quick setting (a few samples and steps) that CI runs the notebooks with.
QUICK_ENV = "LLLITE_QUICK"
MODELS = ("auto", "toy", "sdxl")
#: kohya's published canny LLLite for SDXL, the default file of the sampling notebook on real SDXL.
PUBLISHED_REPO = "kohya-ss/controlnet-lllite"
PUBLISHED_FILE = "controllllite_v01032064e_sdxl_canny.safetensors"


# ------------------------------------------------------------------------------------------ environment


def quick_mode(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``LLLITE_QUICK`` asks for the quick setting: ``1``/``true``/``yes`` on, unset/``0``/``false``/``no`` off."""
    value = (os.environ if environ is None else environ).get(QUICK_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{QUICK_ENV}={value!r}: set it to 1 for the quick setting, or to 0 (or leave it unset) for the full one")


@dataclass(frozen=True)
class Environment:
    """Where a notebook runs and what it will use.

    Attributes:
        in_colab: running in Google Colab.
        gpu: the CUDA GPU's name, or None on a CPU.
        device: ``"cuda"`` or ``"cpu"``.
        model: ``"sdxl"`` (stabilityai/stable-diffusion-xl-base-1.0) or ``"toy"`` (the offline tiny SDXL).
        quick: a few samples and steps, to check that everything runs (CI); the results mean nothing.
    """

    in_colab: bool
    gpu: str | None
    device: str
    model: str
    quick: bool

    @property
    def image_size(self) -> int:
        """The side in pixels that the model was trained at: 1024 for SDXL, 128 for the toy."""
        return 1024 if self.model == "sdxl" else 128

    def __str__(self) -> str:
        model = SDXL_BASE if self.model == "sdxl" else "the toy SDXL (offline, a few MB)"
        return (f"Colab: {'yes' if self.in_colab else 'no'} | GPU: {self.gpu or 'none, CPU only'} | "
                f"model: {model} | quick setting: {'on' if self.quick else 'off'} ({QUICK_ENV})")


def detect_environment(model: str = "auto", environ: Mapping[str, str] | None = None) -> Environment:
    """Detect Colab and the GPU, and choose the model.

    Args:
        model: ``"auto"`` (real SDXL on a GPU, the toy world otherwise), ``"toy"`` or ``"sdxl"``.
        environ: environment variables to read ``LLLITE_QUICK`` from (default: the process's).
    """
    if model not in MODELS:
        raise ValueError(f"MODEL = {model!r}: choose 'auto' (real SDXL on a GPU, the toy otherwise), 'toy' or 'sdxl'")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    chosen = ("sdxl" if gpu else "toy") if model == "auto" else model
    if chosen == "sdxl" and gpu is None:
        warnings.warn("MODEL = 'sdxl' without a GPU: every image takes minutes on a CPU", stacklevel=2)
    return Environment("google.colab" in sys.modules, gpu, "cuda" if gpu else "cpu", chosen, quick_mode(environ))


def load_pipeline(env: Environment):
    """The SDXL pipeline the environment asks for, on its device (:func:`lllite.load_pipeline`): real
    SDXL from the hub (in float16 on a GPU), or the pretrained toy shipped with the package."""
    from .pipelines import load_pipeline as load

    half = env.model == "sdxl" and env.device == "cuda"
    return load(SDXL_BASE if env.model == "sdxl" else "toy", dtype=torch.float16 if half else torch.float32,
                device=env.device, variant="fp16" if half else None, what="MODEL")


# ------------------------------------------------------------------------------------------ pictures


def show(*items: Any) -> None:
    """Display PIL images, matplotlib figures or text as ordinary outputs (they stay in a saved notebook)."""
    from IPython.display import display

    for item in items:
        display(as_picture(item))


def as_picture(item: Any) -> Any:
    """A matplotlib figure as a PIL image (and the figure closed); anything else unchanged.

    A picture can be replaced in place by a live view; a figure left open would also be shown a
    second time by the inline backend at the end of the cell.
    """
    if not type(item).__module__.startswith("matplotlib"):
        return item
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    item.savefig(buffer, format="png")
    plt.close(item)
    buffer.seek(0)
    with Image.open(buffer) as opened:
        return opened.convert("RGB")


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]):
    """A table as IPython Markdown; it renders in Jupyter, Colab and saved notebooks alike."""
    from IPython.display import Markdown

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


def _enlarged(image: Image.Image, height: int) -> Image.Image:
    """Small images scaled up with visible pixels, so that a 128-px toy image is readable."""
    if image.height >= height:
        return image
    scale = height / image.height
    return image.resize((round(image.width * scale), height), Image.NEAREST)


class LiveView:
    """Controls above a picture that is re-rendered in place whenever a control changes.

    The picture is an ordinary output with a display id, so a saved or executed notebook keeps it
    where widgets do not render; in a live kernel the controls replace it with each new rendering.
    A render function that raises ``ValueError`` (say, canny's low threshold above the high one)
    shows the message instead of the picture.

    Args:
        render: called with the controls' values as keyword arguments; returns something displayable.
        **controls: ipywidgets value widgets (sliders, text, dropdowns), named as ``render``'s arguments.
    """

    def __init__(self, render: Callable[..., Any], **controls):
        if not controls:
            raise ValueError("LiveView needs at least one control")
        self.render = render
        self.controls = controls
        self.current: Any = None
        self.error: str | None = None
        self._handle = None
        for control in controls.values():
            control.observe(self._changed, names="value")

    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def update(self) -> Any:
        """Render with the controls' current values, replace the displayed picture, and return it."""
        from IPython.display import Markdown

        try:
            self.current, self.error = as_picture(self.render(**self.values())), None
        except ValueError as error:
            self.error = str(error)
            self.current = Markdown(f"**Cannot render these settings:** {error}")
        if self._handle is not None:
            self._handle.update(self.current)
        return self.current

    def _changed(self, change) -> None:
        self.update()

    def _ipython_display_(self) -> None:
        from IPython.display import display
        from ipywidgets import VBox

        display(VBox(list(self.controls.values())))
        self._handle = display(self.update(), display_id=True)


# ------------------------------------------------------------------------------------------ 01: data


def shapes_dataset(env: Environment, folder: str | os.PathLike, count: int | None = None) -> DatasetConfig:
    """The toy shapes in kohya's layout at the model's size, written once and reused afterwards.

    Args:
        env: decides the image size (128 px for the toy, 1024 px for SDXL) and, in quick mode, the count.
        folder: dataset folder; when ``folder/images`` already holds files they are used as they are.
        count: samples to write (default 16 in quick mode, else the demo's 2000 for the toy and 200 for SDXL).
    """
    from .demo import DemoConfig
    from .toy.shapes import write_dataset

    folder = Path(folder)
    if count is None:
        count = 16 if env.quick else (200 if env.model == "sdxl" else DemoConfig().train_samples)
    images = folder / "images"
    if not (images.is_dir() and any(images.iterdir())):
        write_dataset(folder, count, size=env.image_size)
    return DatasetConfig([SubsetConfig(images, folder / "conditioning")], resolution=env.image_size, enable_bucket=False)


def pair_view(report: PairingReport, index: int, height: int = 256) -> Image.Image:
    """One usable pair of a pairing report: the image beside its conditioning image, the caption above.

    Args:
        report: from :func:`lllite.data.pair_subset`.
        index: which pair (0-based, in the report's order).
        height: display height in pixels; smaller images are enlarged to it.
    """
    if not report.pairs:
        raise ValueError("the report has no usable pair; see its problems")
    if not 0 <= index < len(report.pairs):
        raise ValueError(f"pair index {index} is out of range: the report has {len(report.pairs)} usable pairs (0..{len(report.pairs) - 1})")
    pair = report.pairs[index]
    image, _ = load_rgb(pair.image, IMAGE_BACKGROUND)
    conditioning, _ = load_rgb(pair.conditioning, CONDITIONING_BACKGROUND)
    if conditioning.size != image.size:
        conditioning = conditioning.resize(image.size, Image.BICUBIC)
    cells = [_enlarged(image, height), _enlarged(conditioning, height)]
    return image_grid([cells], [pair.image.name, f"conditioning {pair.conditioning.name}"],
                      title=f"pair {index}: {pair.caption or '(empty caption)'}")


def canny_view(image, low_threshold: int = 100, high_threshold: int = 200, height: int = 256) -> Image.Image:
    """An image beside its canny edges at the given hysteresis thresholds.

    Args:
        image: RGB uint8 array (H, W, 3) or a PIL image.
        low_threshold, high_threshold: as in :func:`lllite.conditioning.canny` (0 <= low <= high).
        height: display height in pixels; smaller images are enlarged to it.
    """
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    edges = canny(array, low_threshold, high_threshold)
    share = (edges[..., 0] > 0).mean()
    cells = [_enlarged(Image.fromarray(array), height), _enlarged(Image.fromarray(edges), height)]
    return image_grid([cells], ["image", f"canny {low_threshold}/{high_threshold}: {share:.1%} edge pixels"])


# ------------------------------------------------------------------------------------------ 02: architecture


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
    """Horizontal bars on a log scale, each labelled with its count and its size in float16."""
    import matplotlib.pyplot as plt

    names, values = list(counts), list(counts.values())
    figure, axes = plt.subplots(figsize=(7, 0.6 * len(names) + 1.2), dpi=100)
    axes.barh(names[::-1], values[::-1], color=["C2", "C1", "C0"][-len(names):])
    axes.set_xscale("log")
    axes.set_xlabel("parameters (log scale)")
    for y, value in enumerate(values[::-1]):
        axes.text(value, y, f" {value / 1e6:,.1f} M ({2 * value / 2**20:,.0f} MiB in fp16)", va="center", fontsize=9)
    axes.set_xlim(right=max(values) * 60)
    figure.tight_layout()
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
    """SDXL's U drawn as its transformer-block positions by resolution level, adapted blocks marked with their module count."""
    import matplotlib.pyplot as plt

    from .names import attention_blocks, unet_layout

    counts = {row.sgm: row.modules for row in attachment_table(unet, up_path=up_path)}
    blocks = attention_blocks(*unet_layout(unet))
    figure, axes = plt.subplots(figsize=(9, 3.2), dpi=100)
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
    figure.tight_layout()
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
        raise ValueError(f"unknown init {init!r}; choose one of {list(INITS)}")
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
    base = generate(pipe, probe, control, prompt, strength=0.0, **settings)[0]
    images, differences = [base], {}
    for init in INITS:
        image = generate(pipe, fresh_network(pipe.unet, init, seed), control, prompt, strength=1.0, **settings)[0]
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


# ------------------------------------------------------------------------------------------ 03: training


def training_config(env: Environment, dataset: DatasetConfig, output_dir: str | os.PathLike, **changes):
    """The training recipe for the environment: the toy uses the demo's (``python -m lllite demo``), about
    5 minutes on a CPU; real SDXL uses kohya's canny recipe sized for one Colab GPU. Quick mode trains a
    handful of steps.

    Args:
        env: the model and the quick setting.
        dataset: what to train on.
        output_dir: where the kohya file, checkpoints, validation grids and the loss plot go.
        **changes: any :class:`lllite.train.TrainConfig` field, to override the recipe.
    """
    from .train import TrainConfig

    common = dict(dataset_config=dataset, output_dir=str(output_dir), cond_emb_dim=32, network_dim=64,
                  cache_latents=True, cache_text_encoder_outputs=True, num_validation_images=4, sample_seed=0)
    if env.model == "sdxl":
        # bf16 natively from Ampere (compute capability 8) on; a T4 only emulates it, slowly
        bf16 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
        recipe = dict(pretrained_model_name_or_path=SDXL_BASE, output_name="lllite_sdxl_canny", learning_rate=2e-4,
                      train_batch_size=2, mixed_precision="bf16" if bf16 else "fp16", gradient_checkpointing=True,
                      optimizer_type="adamw8bit", max_train_steps=3000, max_train_seconds=45 * 60,
                      save_every_n_steps=100, sample_every_n_steps=100, sample_num_inference_steps=20)
    else:
        from .demo import DemoConfig

        # the demo's recipe is the one measured to learn the toy's control
        recipe = dict(DemoConfig().training_settings(), save_every_n_steps=100, sample_every_n_steps=100,
                      sample_num_inference_steps=20)
    if env.quick:
        recipe.update(train_batch_size=4, max_train_steps=4, lr_warmup_steps=0, save_every_n_steps=2,
                      sample_every_n_steps=4, num_validation_images=2, sample_num_inference_steps=2)
    return TrainConfig(**{**common, **recipe, **changes})


def validation_grids(output_dir: str | os.PathLike) -> list[Path]:
    """The validation grids a run wrote (``samples/*.png``), oldest first: their names carry the zero-padded step."""
    folder = Path(output_dir) / "samples"
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def open_picture(path: str | os.PathLike) -> Image.Image:
    """An image file read into memory (the file is closed at once)."""
    with Image.open(path) as opened:
        return opened.convert("RGB")


class TrainingMonitor:
    """Shows a run's loss plot and newest validation grid while :func:`lllite.train.train` writes them.

    Use it around the call to ``train`` and pass :meth:`on_step` to it: the training runs in the
    notebook's own thread (so the stop button stops it); ``on_step`` redraws the loss plot at most every
    ``interval`` seconds, and a helper thread watches ``output_dir`` for ``samples/*.png`` (written every
    ``sample_every_n_steps``) and, when ``on_step`` is not used, for ``loss.png`` (written at every
    checkpoint), updating two outputs in place::

        with TrainingMonitor(config.output_dir) as monitor:
            result = train(config, pipe, on_step=monitor.on_step)

    Args:
        output_dir: the run's folder (``TrainConfig.output_dir``).
        interval: seconds between looks at the folder, and between redraws of the loss plot.
    """

    def __init__(self, output_dir: str | os.PathLike, interval: float = 2.0):
        self.output_dir = Path(output_dir)
        self.interval = interval
        self.shown: dict[str, Path | None] = {"loss": None, "samples": None}
        self._stamps: dict[str, int] = {}
        self._handles: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.losses: list[tuple[int, float]] = []
        self._drawn_at: float | None = None

    def on_step(self, step: int, loss: float) -> None:
        """Record a step's loss; redraw the loss plot when ``interval`` seconds have passed since the last."""
        self.losses.append((step, loss))
        now = time.monotonic()
        if self._drawn_at is None or now - self._drawn_at >= self.interval:
            self._draw_losses()
            self._drawn_at = now

    def _draw_losses(self) -> None:
        from .train import loss_figure

        handle = self._handles.get("loss")
        if handle is not None and self.losses:
            handle.update(loss_figure(self.losses))

    def latest(self) -> dict[str, Path | None]:
        """The newest loss plot and validation grid in the folder (None where there is none yet)."""
        loss = self.output_dir / "loss.png"
        grids = validation_grids(self.output_dir)
        return {"loss": loss if loss.is_file() else None, "samples": grids[-1] if grids else None}

    def poll(self) -> list[str]:
        """Show what changed since the last look; returns the names of the outputs that were updated."""
        updated = []
        for name, path in self.latest().items():
            if path is None or (name == "loss" and self.losses):  # drawn live from on_step instead
                continue
            stamp = path.stat().st_mtime_ns
            if self.shown[name] == path and self._stamps.get(name) == stamp:
                continue
            try:
                picture = open_picture(path)
            except OSError:  # caught mid-write by another process; the next look gets it
                continue
            self.shown[name], self._stamps[name] = path, stamp
            handle = self._handles.get(name)
            if handle is not None:
                handle.update(picture)
            updated.append(name)
        return updated

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "TrainingMonitor":
        from IPython.display import Markdown, display

        self._handles = {
            "loss": display(Markdown("*The loss plot appears once training has begun.*"), display_id=True),
            "samples": display(Markdown("*Validation grids appear every `sample_every_n_steps`.*"), display_id=True),
        }
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._draw_losses()
        self.poll()


# ------------------------------------------------------------------------------------------ 04: sampling


def find_weights(env: Environment, path: str | os.PathLike | None, trained: Sequence[str | os.PathLike] = ()) -> Path | None:
    """The LLLite file the sampling notebook loads.

    Args:
        env: on real SDXL with no ``path``, kohya's published canny file is downloaded from the hub.
        path: a file the user chose; it must exist.
        trained: files a training run may have written, in order of preference; the first that
            exists is used for the toy.

    Returns:
        The file, or None when the toy has no trained file yet (train one first).
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"WEIGHTS = {str(path)!r}: no such file; give a kohya-format LLLite .safetensors")
        return path
    if env.model == "sdxl":
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(PUBLISHED_REPO, PUBLISHED_FILE))
    return next((Path(p) for p in trained if Path(p).is_file()), None)


def control_view(pipe, network, control, prompt: str, strength: float, steps_range: tuple[float, float], seed: int,
                 num_inference_steps: int = 20) -> Image.Image:
    """The control, the image without the network and the image with it (:func:`lllite.sampling.side_by_side`).

    Args:
        strength: the network's multiplier.
        steps_range: (start, end) fractions of the denoising steps where the network acts, as a range slider gives them.
        seed: the seed of both images.
    """
    from .sampling import side_by_side

    start, end = steps_range
    return side_by_side(pipe, network, control, prompt, seed=seed, strength=strength, start=start, end=end,
                        num_inference_steps=num_inference_steps)


def unused_path(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there yet, else the first free ``stem-N.suffix`` beside it: earlier pictures are kept."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


@dataclass
class FidelityCurve:
    """Control fidelity by strength over held-out shapes: the caption colour's IoU with the target
    shape, and the F-score of the image's edges against the control's."""

    strengths: list[float]
    iou: dict[float, list[float]]
    edge_f: dict[float, list[float]]

    def means(self, metric: str) -> list[float]:
        return [float(np.mean(getattr(self, metric)[s])) for s in self.strengths]

    def stds(self, metric: str) -> list[float]:
        return [float(np.std(getattr(self, metric)[s])) for s in self.strengths]


@torch.no_grad()
def fidelity_by_strength(pipe, network, samples, strengths: Sequence[float] = STRENGTHS,
                         num_inference_steps: int = 20, guidance_scale: float = 5.0, batch_size: int = 8,
                         progress: bool = True) -> FidelityCurve:
    """Generate every held-out shape at every strength (canny control, its caption, seed = its index) and score it.

    Args:
        pipe, network: an SDXL pipeline and the LLLite network to measure.
        samples: :class:`lllite.toy.shapes.ShapeSample` objects, e.g. ``eval_samples(16, size=...)``.
        strengths: the multipliers compared.
        num_inference_steps, guidance_scale: sampling settings.
        batch_size: images generated at once.
        progress: show a progress bar.
    """
    from tqdm.auto import tqdm

    if not samples:
        raise ValueError("fidelity_by_strength needs at least one sample")
    strengths = [float(s) for s in strengths]
    controls = torch.cat([to_control_tensor(canny(s.image)) for s in samples])
    curve = FidelityCurve(strengths, {}, {})
    bar = tqdm(total=len(strengths) * len(samples), desc="fidelity by strength", unit="image", disable=not progress)
    for strength in strengths:
        curve.iou[strength], curve.edge_f[strength] = [], []
        for first in range(0, len(samples), batch_size):
            chunk = samples[first:first + batch_size]
            images = generate(pipe, network, controls[first:first + len(chunk)], [s.caption for s in chunk],
                              seed=list(range(first, first + len(chunk))), num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, strength=strength)
            for sample, image in zip(chunk, images):
                array = np.asarray(image.convert("RGB"))
                curve.iou[strength].append(shape_iou(array, sample.mask, sample.colour))
                curve.edge_f[strength].append(edge_f_score(array, canny(sample.image)))
            bar.update(len(chunk))
    bar.close()
    return curve


def plot_fidelity(curve: FidelityCurve):
    """Shape IoU and edge F-score (mean, one standard deviation) against strength; strength 0 is the base model."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=100)
    for metric, label in (("iou", "shape IoU"), ("edge_f", "edge F-score")):
        axes.errorbar(curve.strengths, curve.means(metric), yerr=curve.stds(metric), marker="o", capsize=4, label=label)
    axes.axhline(curve.means("iou")[0], color="0.6", linestyle="--", linewidth=0.8,
                 label="IoU at strength 0 (no control)")
    axes.set_xlabel("LLLite strength (multiplier)")
    axes.set_ylabel("control fidelity")
    axes.set_ylim(0, 1)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
