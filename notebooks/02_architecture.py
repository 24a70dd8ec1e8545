# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The architecture: one small module per attention input
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lllite/lllite/blob/main/notebooks/02_architecture.ipynb)
#
# A ControlNet copies half of the UNet. ControlNet-**LLLite** instead puts a tiny module in front of
# some Linears of the UNet's attention layers and changes their *input*:
#
# $$y = \mathrm{target}\big(x + s \cdot \mathrm{up}(\mathrm{mid}([\mathrm{emb}(c),\ \mathrm{down}(x)]))\big)$$
#
# where $c$ is the control image, $\mathrm{emb}$ a few strided convolutions that bring it to the
# block's token grid, and $s$ the strength. This notebook shows the shapes inside a module, counts
# parameters against a full ControlNet, pictures the embedding, maps where the 136 modules attach in
# SDXL, and shows why the `up` projection starts at zero. Then it sets **Anima's LLLite** (kohya's
# "v2", for a DiT) beside SDXL's. Counts and shapes come from SDXL's and Anima's configurations
# alone: nothing is downloaded.

# %%
# Setup: in Colab, install the project; everywhere, find the GPU and choose the model.
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "lllite @ git+https://github.com/lllite/lllite"], check=True)

MODEL = "auto"  # "auto": real SDXL on a GPU, the offline toy world on a CPU; or "toy", "sdxl", "anima-toy", "anima"
ANIMA = None  # for "anima": a diffusers-format Anima folder or hub id (diffusers' convert_anima_to_diffusers.py)

from lllite.environment import detect_environment

env = detect_environment(MODEL, anima=ANIMA)
print(env)

# %% [markdown]
# ## One module, layer by layer
#
# Every module has the same four parts (the names are those of kohya's files): `conditioning1`
# turns the control image into an embedding of `E` channels (`cond_emb_dim`, 32 in the published
# canny model) on the block's token grid; `down` projects the block's tokens to `M` (`network_dim`,
# 64); `mid` mixes both; `up` projects back to the Linear's width. How far `conditioning1` shrinks the
# image depends on the block's **depth**: 8x for blocks at the latent's resolution (depth 1), 16x at
# half of it (2), 32x at a quarter (3). Pick a depth and an image size:

# %%
from ipywidgets import Dropdown, ToggleButtons

from lllite.architecture import module_shapes_table
from lllite.notebook import LiveView

LiveView(module_shapes_table,
         depth=ToggleButtons(options=[1, 2, 3], value=3, description="depth"),
         image_size=Dropdown(options=[512, 768, 1024, 1536], value=1024, description="image px"))

# %% [markdown]
# The three depths side by side, for a 1024 px image. SDXL has transformer blocks only at depths 2
# and 3 (its full-resolution level has none), so a kohya SDXL file holds depth-2 and depth-3 modules;
# depth 1 is what a block at the latent's own resolution would get.

# %%
from lllite.sdxl.module import conditioning_stride, token_grid
from lllite.architecture import SDXL_WIDTH_AT_DEPTH
from lllite.notebook import markdown_table

summary = []
for depth in (1, 2, 3):
    grid = token_grid((1024 // 8, 1024 // 8), depth)
    summary.append((depth, f"{conditioning_stride(depth)}x", f"{grid[0]}x{grid[1]}", grid[0] * grid[1], SDXL_WIDTH_AT_DEPTH[depth]))
markdown_table(summary, ["depth", "downscale", "embedding grid", "tokens", "Linear width"])

# %% [markdown]
# ## Parameters: LLLite against a full ControlNet
#
# Both counted from SDXL's UNet configuration on PyTorch's `meta` device (shapes without memory): the
# ControlNet is diffusers' `ControlNetModel.from_unet`, the LLLite is kohya's default network.

# %%
from lllite.architecture import parameter_counts, plot_parameter_counts
from lllite.notebook import show

counts = parameter_counts()
show(plot_parameter_counts(counts))
lllite_count = counts[next(name for name in counts if name.startswith("LLLite"))]
print(f"the ControlNet has {counts['ControlNet (SDXL)'] / lllite_count:.0f}x the parameters of the LLLite")

# %% [markdown]
# `E` and `M` set the size. kohya's advice: 32/64 for canny, about half for depth-like controls.

# %%
from ipywidgets import IntSlider

LiveView(lambda cond_emb_dim, network_dim: plot_parameter_counts(parameter_counts(cond_emb_dim, network_dim)),
         cond_emb_dim=IntSlider(value=32, min=8, max=128, step=8, description="E", continuous_update=False),
         network_dim=IntSlider(value=64, min=8, max=256, step=8, description="M", continuous_update=False))

# %% [markdown]
# ## What the embedding sees
#
# The control image of a toy shape (its canny edges) through `conditioning1` at each depth. These
# modules are freshly initialised, so the channels are random mixtures of edge filters; training
# turns them into the features the UNet needs. Each channel is scaled to its own range.

# %%
import torch

from lllite.conditioning import canny
from lllite.sdxl.module import LLLiteModule
from lllite.architecture import embedding_channels
from lllite.toy.shapes import render_sample

shape = render_sample(3, size=512)
control = canny(shape.image)
torch.manual_seed(0)
modules = {depth: LLLiteModule(SDXL_WIDTH_AT_DEPTH[depth], depth=depth) for depth in (1, 2, 3)}
LiveView(lambda depth: embedding_channels(modules[depth], control, cell=64),
         depth=ToggleButtons(options=[1, 2, 3], value=2, description="depth"))

# %% [markdown]
# The deepest embedding, for a saved copy of this notebook:

# %%
from PIL import Image

from lllite.sampling import image_grid

show(image_grid([[Image.fromarray(shape.image).resize((256, 256)), Image.fromarray(control).resize((256, 256))]],
                [shape.caption, "control (canny)"]),
     embedding_channels(modules[3], control, cell=64))

# %% [markdown]
# ## Where the 136 modules attach
#
# kohya adapts `attn1.to_q`, `attn1.to_k`, `attn1.to_v` and `attn2.to_q` in every transformer block
# of the down path and the middle (`attn2`'s `k`/`v` read the text encoders, not the image). SDXL
# stacks 2 transformer blocks in each of `input_blocks.4.1` and `.5.1`, 10 in each of `input_blocks.7.1`
# and `.8.1`, and 10 in the middle: 34 blocks x 4 = 136 modules. The up path is left alone by default
# (the file format can hold up-path modules too; the toy recipe of notebook 03 uses them).

# %%
from lllite.architecture import attachment_table, plot_attachment
from lllite.sdxl.pipeline import sdxl_unet

unet = sdxl_unet("meta")
blocks = attachment_table(unet)
show(plot_attachment(unet))
markdown_table([(f"`{b.sgm}`", f"`{b.diffusers}`", b.depth, b.modules, b.in_features, f"{b.tokens[0]}x{b.tokens[1]}")
                for b in blocks] + [("**total**", "", "", sum(b.modules for b in blocks), "", "")],
               ["kohya (SGM) block", "diffusers block", "depth", "modules", "width", "tokens at 1024 px"])

# %% [markdown]
# A module's name in a kohya file is the target's SGM path with `.` turned into `_`; `lllite.names`
# holds the one mapping between both namings:

# %%
from lllite.sdxl.names import find_targets

targets = list(find_targets(unet, up_path=False).values())
markdown_table([(f"`{t.name}`", f"`{t.path}`") for t in (targets[0], targets[8], targets[-1])],
               ["module name in the file", "Linear in diffusers' UNet"])

# %% [markdown]
# ## Why `up` starts at zero
#
# With `up` at zero a fresh network adds exactly nothing, so training starts *at* the base model and
# can only improve on it. kohya zeroes `up`'s weight but keeps PyTorch's random bias: a small constant
# shift at every adapted Linear. Without zero init the base model is disturbed before training starts.
# The same prompt and seed, base model against three fresh networks at strength 1 (on the toy here,
# on SDXL with a GPU):

# %%
from lllite.architecture import init_comparison
from lllite.environment import load_pipeline

if env.family != "sdxl":
    print(f"skipped on {env.family}: this comparison runs SDXL's UNet and its modules (MODEL = 'toy' or 'sdxl')")
else:
    pipe = load_pipeline(env)
    steps = 2 if env.quick else 20
    sample = render_sample(7, size=env.image_size)
    grid, changes = init_comparison(pipe, canny(sample.image), sample.caption, num_inference_steps=steps)
    show(grid)

# %% [markdown]
# Zero init also decides what learns first. With `up` at zero, the gradient reaches only `up` in the
# first step (everything before it is multiplied by zero); the other parts start learning once `up`
# has moved. Gradient norms of one backward pass through the UNet:

# %%
from lllite.architecture import INITS, first_step_gradients, fresh_network

if env.family != "sdxl":
    print(f"skipped on {env.family}: the gradient probe runs SDXL's UNet (MODEL = 'toy' or 'sdxl')")
else:
    rows = []
    for init in INITS:
        norms = first_step_gradients(pipe.unet, fresh_network(pipe.unet, init), canny(sample.image))
        rows.append((init, *(f"{norms[part]:.2e}" for part in ("conditioning1", "down", "mid", "up"))))
    show(markdown_table(rows, ["init", "conditioning1", "down", "mid", "up"]))

# %% [markdown]
# ## Anima's LLLite (kohya's v2) beside SDXL's
#
# Anima is a DiT (Cosmos-Predict2-2B: 28 transformer blocks of width 2048, one token per 2x2 latent
# patch) where SDXL is a UNet. kohya's LLLite for it keeps the idea (a small module changes the input
# of some Linears) and changes the parts around it: the control image is embedded **once**, by one
# deeper trunk, and every module reads that embedding, plus a small per-module offset (`depth_embed`);
# each module modulates its `mid` with FiLM (a scale and a shift from the embedding). What differs,
# read off kohya's default network for each model's configuration:

# %%
from lllite.architecture import family_differences_table

family_differences_table()

# %% [markdown]
# Inside the trunk (`lllite_conditioning1`) and one module, at Anima's width: the trunk's stride is 16,
# the VAE's 8 times the DiT's 2x2 patches, so a control image at the generated image's size gives one
# embedding row per DiT token (64x64 tokens at 1024 px). `target_layers` chooses which Linears get a
# module: all of them are 2048 wide, so it changes the number of modules, not their shapes.

# %%
from lllite.anima.names import PRESETS
from lllite.architecture import anima_module_shapes_table

LiveView(anima_module_shapes_table,
         image_size=Dropdown(options=[512, 768, 1024, 1536], value=1024, description="image px"),
         target_layers=ToggleButtons(options=list(PRESETS), value="self_attn_q", description="targets"))

# %% [markdown]
# Parameters at real Anima's size for each preset (and the lightest with the trunk's optional ASPP
# tail), beside SDXL's LLLite and a full SDXL ControlNet: Anima's DiT built from its configuration on
# the `meta` device, then kohya's network created for it.

# %%
from lllite.architecture import family_parameter_counts

counts = family_parameter_counts()
show(plot_parameter_counts(counts))
markdown_table([(name, f"{count:,}", f"{2 * count / 2**20:,.1f} MiB") for name, count in counts.items()],
               ["", "parameters", "in bf16"])

# %% [markdown]
# What the shared trunk makes of the toy shape's canny edges: 32 channels on the token grid (a 512 px
# control, 32x32 tokens). A fresh trunk, so random mixtures again; after its LayerNorm each token's
# 32 values have mean 0 and spread 1.

# %%
from lllite.anima import AnimaLLLiteConfig, ConditioningTrunk
from lllite.architecture import trunk_embedding_channels

torch.manual_seed(0)
show(trunk_embedding_channels(ConditioningTrunk(AnimaLLLiteConfig()), control, cell=48))

# %% [markdown]
# ## kohya's three Anima architectures: v2, v2.1, v3
#
# kohya's Anima LLLite comes in three kinds, and files carry which one in their metadata
# (`lllite.cond_input_space`, `lllite.trunk`); lllite reads and trains all three.
#
# - **v2** (`pixel`, `stem`): everything above. The trunk reads the control image at pixel size.
# - **v2.1** (`latent`, `stem`): the control image is first encoded by the pipeline's VAE (no gradients),
#   and a shorter stem reads its 16-channel latent (`lat_conv1` 3x3, `lat_conv2` 2x2/2). The VAE has
#   already done the work of seeing the image; kohya reports about 10x faster convergence.
# - **v3** (`latent`, `semantic`): the control latent goes through the frozen DiT itself, once per control
#   image (the *reference forward*), and the trunk reads the DiT's hidden states after one or more blocks
#   (`ref_block`; -1 is the patch embedding's output). Each module also reads the denoising step's time
#   embedding (`t_proj`, zero at the start), and a gate decides per token how much of its change to let in.
#
# Shapes, parameters and the cost of each at Anima's real size (counted on the `meta` device: nothing
# runs): the modules cost the same for all three; what differs is what is done once per control image.

# %%
from lllite.architecture import anima_kinds_table

anima_kinds_table()

# %% [markdown]
# v3's gates, as pictures: each module's gate on the DiT's token grid (white: the change is let in,
# black: held back). A fresh gate is open everywhere at sigmoid(2) = 0.88, so a fresh network shows flat
# grey tiles; training teaches the gates where to close. Notebook 04 draws the gates of a trained v3
# network (and `lllite.sampling.gate_map_picture` does it for any).

# %%
from lllite.anima import create_network as create_anima_network
from lllite.anima.toy import IMAGE_SIZE as TOY_ANIMA_SIZE
from lllite.anima.toy import load_pretrained as load_toy_anima
from lllite.sampling import gate_map_picture

toy_anima = load_toy_anima()
v3 = create_anima_network(toy_anima.transformer, cond_input_space="latent", trunk="semantic")
show(gate_map_picture(toy_anima, v3, canny(render_sample(7, size=TOY_ANIMA_SIZE).image), "a red circle",
                      num_inference_steps=2 if env.quick else 8, height=TOY_ANIMA_SIZE, width=TOY_ANIMA_SIZE))

# %% [markdown]
# ## Next
#
# Notebook **03** trains a network like these (SDXL's, or Anima's with `MODEL = "anima-toy"` or
# `"anima"`); notebook **04** loads one and compares strengths.
