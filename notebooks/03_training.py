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
# # 03 · Train an LLLite
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lllite/lllite/blob/main/notebooks/03_training.ipynb)
#
# Training keeps SDXL frozen and teaches only the LLLite modules (23 M parameters for kohya's canny
# network) to predict SDXL's noise better when they see the control image. On a CPU this notebook
# trains on the **toy world** and learns the canny control of the coloured shapes in about five
# minutes; on a Colab GPU it trains on **real SDXL** with kohya's canny recipe. With
# `MODEL = "anima-toy"` or `"anima"` the same cells train kohya's **Anima** LLLite (v2, notebook 02)
# on a frozen Anima DiT, which learns to predict the flow's velocity instead of the noise. Either way
# it writes a kohya-format `.safetensors` file that kohya's scripts, ComfyUI and notebook 04 can load.
#
# The loss plot and validation grids (control, strength 0, strength 1) appear below the training
# cell while it runs and stay as ordinary outputs.

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
# ## The data
#
# Leave `DATA_DIR` empty for the toy shapes at the model's size (notebook 01 explains them), or give a
# folder in kohya's layout (`images/` with `.txt` captions, `conditioning/` with the same basenames),
# or a kohya dataset TOML. kohya's recipe for your own control: generate the images with the base
# model itself and derive the conditioning images from them (`python -m data_tools synthesize`).

# %%
from pathlib import Path

from lllite.data import DatasetConfig, SubsetConfig, load_dataset_config
from lllite.recipes import shapes_dataset

DATA_DIR = None  # a folder, e.g. "/content/drive/MyDrive/my_dataset", or a dataset .toml

if DATA_DIR is None:
    dataset = shapes_dataset(env, env.runs / "shapes")
elif str(DATA_DIR).endswith(".toml"):
    dataset = load_dataset_config(DATA_DIR)
else:
    dataset = DatasetConfig([SubsetConfig(Path(DATA_DIR) / "images", Path(DATA_DIR) / "conditioning")],
                            resolution=env.image_size)

# %% [markdown]
# ## The model and the recipe
#
# `training_config` returns a `TrainConfig` (options carry kohya's names) for this environment; pass
# any field to change it, e.g. `max_train_seconds=600`. The toy recipe is the one of
# `python -m lllite demo`: a larger learning rate than kohya's because the toy model and data are tiny,
# up-path modules too, timesteps drawn towards the noisy end, where the layout is decided
# (`timestep_sampling="cubic"`), and each sample's loss weighed by 1/sqrt(SNR)
# (`debiased_estimation_loss`), without which those noisy steps hardly move the network; in five
# minutes on a CPU that weighting took the shape IoU at strength 1 from 0.46 to 0.70. The SDXL
# recipe is kohya's canny recipe (E 32, M 64, lr 2e-4, AdamW 8-bit, mixed precision, gradient
# checkpointing, cached latents and text embeddings) with a batch that fits a Colab GPU. Anima's are
# the toy Anima's recipe (`AnimaToyRecipe`: all self-attention inputs, a larger learning rate) and
# kohya's recommended Anima start (E 32, trunk width 64, one ResBlock, M 64, `self_attn_q`, lr 1e-4,
# AdamW 8-bit, bf16, gradient checkpointing, cached latents and text outputs).
# For Anima, `ARCHITECTURE` picks kohya's kind (notebook 02): `"v2.1"` trains the latent stem (the control
# images' latents are cached with the images'), `"v3"` the semantic trunk (kohya suggests a wider
# embedding for it, e.g. `cond_emb_dim=128`); those runs go to `03_training/v2.1` and `03_training/v3`.
# `OVERWRITE = True` starts over in a folder that already holds a run.

# %%
from lllite.anima.config import TRAINING_OPTIONS
from lllite.environment import load_pipeline
from lllite.notebook import settings_table
from lllite.recipes import training_config

OUTPUT_DIR = env.runs / "03_training"
OVERWRITE = False
ARCHITECTURE = "v2"  # Anima only: kohya's "v2" (pixel stem), "v2.1" (latent stem) or "v3" (semantic trunk)

pipe = load_pipeline(env)
architecture = TRAINING_OPTIONS[ARCHITECTURE] if env.family == "anima" else {}
if architecture:  # v2.1 and v3 runs keep their own folders
    OUTPUT_DIR = OUTPUT_DIR / ARCHITECTURE
config = training_config(env, dataset, OUTPUT_DIR, overwrite=OVERWRITE, **architecture)
settings_table(config, env.family)

# %% [markdown]
# ## Train
#
# Above the progress bars: the loss plot (redrawn every few seconds) and the newest validation
# grid. The loss of diffusion training is noisy by nature (it depends on the random timestep or noise
# level more than on the model); watch its moving average, and the validation grids. The stop
# button stops training; the last checkpoint stays in `OUTPUT_DIR`, and
# `training_config(..., resume="latest")` continues from it.

# %%
from lllite.notebook import TrainingMonitor, show
from lllite.train import train

with TrainingMonitor(config.output_dir) as monitor:
    result = train(config, pipe, on_step=monitor.on_step)
result.network.remove()  # the trained network stays attached after train(); the file is what we use below
print(f"{result.steps} steps in {result.train_seconds:.0f} s (stopped by {result.stopped_by}); wrote {result.weights}")

# %% [markdown]
# Slide through the validation grids to see the control being learned, step by step:

# %%
from ipywidgets import IntSlider

from lllite.notebook import LiveView, open_picture, validation_grids

grids = validation_grids(config.output_dir)
LiveView(lambda index: open_picture(grids[index]),
         index=IntSlider(value=len(grids) - 1, min=0, max=len(grids) - 1, description="grid", continuous_update=False))

# %% [markdown]
# ## The kohya file
#
# Module names, tensor names and metadata follow kohya's format, so the file loads wherever kohya's
# LLLite files do (an Anima file carries its architecture in `lllite.*` metadata, which loaders read).
# `python -m lllite inspect FILE` prints the same summary.

# %%
import lllite
from lllite.notebook import file_summary, markdown_table

network = lllite.load(result.weights)
markdown_table(file_summary(network), ["", "value"])

# %% [markdown]
# ## A first look
#
# A shape the network never saw: its canny edges as the control, the image without the network and
# with it. Notebook 04 compares strengths and step ranges properly.

# %%
from lllite.conditioning import canny
from lllite.sampling import side_by_side
from lllite.toy.shapes import eval_samples

held_out = eval_samples(1, size=env.image_size)[0]
show(side_by_side(pipe, network, canny(held_out.image), held_out.caption, seed=0,
                  num_inference_steps=config.sample_num_inference_steps))
