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
# # 01 · A paired dataset, checked and browsed
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lllite/lllite/blob/main/notebooks/01_dataset_pairing.ipynb)
#
# An LLLite learns from **pairs**: a training image with its caption, and a *conditioning image* (here:
# canny edges) that says where things should go. kohya's layout keeps them in two folders that share
# basenames:
#
# ```
# my_dataset/
#   images/        000001.png  000001.txt  (the caption)  ...
#   conditioning/  000001.png                             ...
# ```
#
# This notebook builds such a dataset (coloured shapes, or your own folder), runs the **pairing report**
# that training itself uses to decide what is usable, lets you browse the pairs, and tries canny
# thresholds live. Sliders work in a live kernel; every picture is also an ordinary output.

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
# ## The dataset
#
# Leave `DATA_DIR` empty to get the toy **shapes** dataset: a coloured circle, square or triangle per
# image, captioned `"a red circle"`, with its canny edges as the conditioning image. It is written at
# the model's size (128 px for the toy, 1024 px for SDXL) the first time and reused afterwards.
#
# To use your own data, point `DATA_DIR` at a folder with `images/` and `conditioning/` as above. In
# Colab, mount Google Drive first (`from google.colab import drive; drive.mount("/content/drive")`)
# and use a path such as `"/content/drive/MyDrive/my_dataset"`. No conditioning images yet? Make them:
# `python -m data_tools make-conditioning canny my_dataset/images my_dataset/conditioning`.

# %%
from pathlib import Path

from lllite.recipes import shapes_dataset

DATA_DIR = None  # e.g. "/content/drive/MyDrive/my_dataset"

if DATA_DIR is None:
    dataset = shapes_dataset(env, env.runs / "shapes")
    image_dir, conditioning_dir = dataset.subsets[0].image_dir, dataset.subsets[0].conditioning_data_dir
else:
    image_dir, conditioning_dir = Path(DATA_DIR) / "images", Path(DATA_DIR) / "conditioning"
print(f"images: {image_dir}\nconditioning: {conditioning_dir}")

# %% [markdown]
# ## The pairing report
#
# `pair_subset` reads every file once and decides, file by file, what training will use. It never
# stops at a bad file: each one becomes a *problem* with an action (`converted`: used after a change
# made in memory; `skipped`: left out; `error`: the folder cannot be used). The command line runs the
# same code: `python -m data_tools check IMAGE_DIR --conditioning COND_DIR`.

# %%
from data_tools.check import format_table, summary
from lllite.data import SubsetConfig, pair_subset

report = pair_subset(SubsetConfig(image_dir, conditioning_dir))
print(summary(report))
print(format_table(report, image_dir.parent) or "no problems")

# %% [markdown]
# Real folders are messier. Here is a small shapes folder with typical mistakes: a conditioning image
# that is missing, one of another aspect ratio, an empty caption, and a stray file.

# %%
import shutil

from PIL import Image

from lllite.toy.shapes import write_dataset

messy = Path("runs/messy")  # this notebook's own scratch folder, remade on every run
shutil.rmtree(messy, ignore_errors=True)
write_dataset(messy, 4, size=128)
(messy / "conditioning" / "000000.png").unlink()
Image.open(messy / "conditioning" / "000001.png").resize((64, 32)).save(messy / "conditioning" / "000001.png")
(messy / "images" / "000002.txt").write_text("")
(messy / "images" / "notes.docx").write_text("not an image")

messy_report = pair_subset(SubsetConfig(messy / "images", messy / "conditioning"), progress=False)
print(summary(messy_report))
print(format_table(messy_report, messy))

# %% [markdown]
# ## Browse the pairs
#
# Move the slider to see any usable pair: the image, its conditioning image and its caption.

# %%
from ipywidgets import IntSlider

from lllite.notebook import LiveView, pair_view

LiveView(lambda index: pair_view(report, index),
         index=IntSlider(value=0, min=0, max=len(report.pairs) - 1, description="pair", continuous_update=False))

# %% [markdown]
# ## Canny thresholds, live
#
# Canny keeps a pixel as an edge when its gradient passes the *high* threshold, and extends edges
# through pixels above the *low* one. The published SDXL canny LLLite was trained with 100/200: lower
# thresholds add texture and noise, higher ones break outlines apart. Drag the sliders (a low
# threshold above the high one is refused with a message).

# %%
from lllite.notebook import canny_view

sample = Image.open(report.pairs[0].image).convert("RGB")
LiveView(lambda low_threshold, high_threshold: canny_view(sample, low_threshold, high_threshold),
         low_threshold=IntSlider(value=100, min=0, max=500, step=10, description="low", continuous_update=False),
         high_threshold=IntSlider(value=200, min=0, max=800, step=10, description="high", continuous_update=False))

# %% [markdown]
# The same image at three settings, for a saved copy of this notebook. The toy shapes have crisp,
# high-contrast outlines, so every setting finds them; on photographs the thresholds matter far more.

# %%
import numpy as np

from lllite.conditioning import canny
from lllite.notebook import show
from lllite.sampling import image_grid

settings = ((20, 40), (100, 200), (400, 800))
edges = [Image.fromarray(canny(np.asarray(sample), low, high)) for low, high in settings]
show(image_grid([[sample, *edges]], ["image"] + [f"canny {low}/{high}" for low, high in settings]))

# %% [markdown]
# ## Next
#
# The pairs pass the report, so training can use them as they are. Notebook **02** shows what an
# LLLite module does with the conditioning image; notebook **03** trains one on this dataset.
