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
# # 04 · Sampling: strength, step range, seed, schedules and masks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lllite/lllite/blob/main/notebooks/04_sampling.ipynb)
#
# Load an LLLite file (one you trained in notebook 03, or a published one such as kohya's
# `controllllite_v01032064e_sdxl_canny.safetensors`), apply it to an SDXL pipeline (or an Anima LLLite
# to Anima's, with `MODEL = "anima-toy"` or `"anima"`: the same cells), and see what its
# settings do: the **strength** (`multiplier`, kohya's name: how much of each module's change is
# applied), the **step range** (the fractions of the denoising steps where it acts:
# `control_guidance_start` and `control_guidance_end`, diffusers' names) and the **seed**; then vary
# the strength over the steps (**keyframes**) and over the image (**masks**). Compare strengths and
# schedules side by side, and measure how closely the images follow the control.

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
# ## The pipeline and the LLLite file
#
# `WEIGHTS` empty: on SDXL, kohya's published canny model is downloaded from the Hugging Face hub (set
# `WEIGHTS = "runs/sdxl/03_training/lllite_sdxl_canny.safetensors"` for the one notebook 03 trained); on the
# toy, the file notebook 03 wrote is used, and if there is none yet a toy network is trained here first
# (about five minutes on a CPU). On Anima the file notebook 03 wrote is used too (kohya's published
# files are SDXL's); on real Anima, train one there first or set `WEIGHTS`.

# %%
import lllite
from lllite.environment import find_weights, load_pipeline
from lllite.recipes import shapes_dataset, trained_files, training_config
from lllite.train import train

WEIGHTS = None  # e.g. "/content/drive/MyDrive/controllllite_v01032064e_sdxl_canny.safetensors"

pipe = load_pipeline(env)
path = find_weights(env, WEIGHTS, trained_files(env, [env.runs / "03_training", env.runs / "04_sampling"]))
if path is None:
    print("no trained toy network yet: training one (notebook 03 shows how)")
    config = training_config(env, shapes_dataset(env, env.runs / "shapes"), env.runs / "04_sampling",
                             save_every_n_steps=None, sample_every_n_steps=None)
    result = train(config, pipe)
    result.network.remove()
    path = result.weights
network = lllite.load(path)
print(f"{path}: {network}")

# %% [markdown]
# ## The control image and the prompt
#
# A held-out shape's canny edges (white on black, as the canny models expect) and its caption. To use
# your own picture, set `IMAGE` to its path: its canny edges become the control.

# %%
import numpy as np
from PIL import Image

from lllite.conditioning import canny
from lllite.notebook import show
from lllite.sampling import image_grid
from lllite.toy.shapes import eval_samples

IMAGE = None  # a path to a picture of your own
PROMPT = None  # by default the held-out shape's caption

sample = eval_samples(1, seed=1, size=env.image_size)[0]
source = np.asarray(Image.open(IMAGE).convert("RGB").resize((env.image_size, env.image_size))) if IMAGE else sample.image
control = canny(source)
prompt = PROMPT or sample.caption
steps = 2 if env.quick else (20 if env.toy else 30)
batch = 8 if env.toy else 2  # images per pipeline call; SDXL and Anima at 1024 px need GPU memory
show(image_grid([[Image.fromarray(source), Image.fromarray(control)]], ["source", "control: canny 100/200"], title=prompt))

# %% [markdown]
# ## Strength, step range and seed, live
#
# Each change re-renders the control, the image without the network and the image with it (same
# seed). Strength 0 is the base model; above 1 the control is exaggerated. A range that ends early
# (say 0-0.5) fixes the layout and leaves the details free; one that starts late changes only details.

# %%
from functools import partial

from ipywidgets import FloatRangeSlider, FloatSlider, IntSlider

from lllite.notebook import LiveView, control_view

LiveView(partial(control_view, pipe, network, control, prompt, num_inference_steps=steps),
         multiplier=FloatSlider(value=1.0, min=0.0, max=1.5, step=0.05, description="strength", continuous_update=False),
         control_guidance=FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.05, description="steps",
                                           continuous_update=False),
         seed=IntSlider(value=0, min=0, max=99, description="seed", continuous_update=False))

# %% [markdown]
# ## The guidance-strength comparison
#
# Strengths in columns, prompts and seeds in rows, the control first. Every cell's settings are stored
# in the picture: `save_png` writes them into the PNG's metadata.

# %%
import json

from lllite.notebook import unused_path
from lllite.sampling import save_png, strength_grid

rows = eval_samples(2 if env.quick else 3, seed=2, size=env.image_size)
grid = strength_grid(pipe, network, [canny(s.image) for s in rows], [s.caption for s in rows],
                     seeds=[0] if env.quick else [0, 1], num_inference_steps=steps, batch_size=batch)
show(grid)
saved = save_png(grid, unused_path(env.runs / "04_sampling" / "strength_grid.png"))
print(f"{saved}: the first cell was made with {json.loads(Image.open(saved).info['parameters'])[0][0]}")

# %% [markdown]
# ## Where in the denoising the control acts
#
# The same prompt and seeds with the control on for different parts of the steps (strength 1).

# %%
from lllite.sampling import step_range_grid

show(step_range_grid(pipe, network, control, prompt, seeds=[0] if env.quick else [0, 1], num_inference_steps=steps))

# %% [markdown]
# ## Strength over the steps and over the image, live
#
# Keyframes vary the strength over the denoising steps: `early` from the first step, `late` from
# `switch at` (a fraction of the steps) on, as `network.set_multiplier([(0.0, early), (switch, late)])`.
# A mask confines the control to a region, as `network.set_mask(mask)`: a rectangle or an ellipse set
# by `x` and `y`, or a picture of your own (`MASK`: white where the control acts, black where not).
# The second picture shows where the control acts.

# %%
from ipywidgets import Checkbox, Dropdown

from lllite.notebook import REGIONS, schedule_view

MASK = None  # a path to a mask picture of your own, for the region "your mask"

LiveView(partial(schedule_view, pipe, network, control, prompt, mask_image=MASK, num_inference_steps=steps),
         early=FloatSlider(value=1.0, min=0.0, max=1.5, step=0.05, description="early", continuous_update=False),
         switch=FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="switch at", continuous_update=False),
         late=FloatSlider(value=0.2, min=0.0, max=1.5, step=0.05, description="late", continuous_update=False),
         region=Dropdown(options=REGIONS, value="rectangle", description="region"),
         x=FloatRangeSlider(value=(0.0, 0.5), min=0.0, max=1.0, step=0.05, description="x", continuous_update=False),
         y=FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.05, description="y", continuous_update=False),
         invert=Checkbox(value=False, description="invert"),
         seed=IntSlider(value=0, min=0, max=99, description="seed", continuous_update=False))

# %% [markdown]
# ## Schedules and masks compared
#
# The same prompt and seeds under strength schedules (constant, strong early, strong late, the first
# half only), then masked against unmasked: the control everywhere against the control on the left
# half only. Each cell's schedule and mask are stored in the picture's metadata.

# %%
from lllite.images import region_mask
from lllite.sampling import mask_grid, schedule_grid

seeds = [0] if env.quick else [0, 1]
show(schedule_grid(pipe, network, control, prompt, seeds=seeds, num_inference_steps=steps, batch_size=batch))
left = region_mask(env.image_size, env.image_size, "rectangle", (0.0, 0.0, 0.5, 1.0))
show(mask_grid(pipe, network, control, prompt, left, seeds=seeds, num_inference_steps=steps, batch_size=batch))

# %% [markdown]
# ## Control fidelity against strength
#
# Held-out shapes generated at each strength (their canny edges as control, their caption as prompt)
# and scored: the **shape IoU** of the caption's colour with the true shape, and the **edge F-score**
# of the image's canny edges against the control. At strength 0 the base model puts the shape
# anywhere: that is the level the control has to beat.

# %%
from lllite.evaluate import fidelity_by_strength, plot_fidelity
from lllite.notebook import markdown_table

held_out = eval_samples(2 if env.quick else (32 if env.toy else 8), size=env.image_size)
fidelity = fidelity_by_strength(pipe, network, held_out, num_inference_steps=steps, batch_size=batch)
show(plot_fidelity(fidelity))
iou, edge_f = fidelity.means("iou"), fidelity.means("edge_f")
markdown_table([(m, f"{a:.3f}", f"{b:.3f}") for m, a, b in zip(fidelity.multipliers, iou, edge_f)],
               ["strength", "shape IoU", "edge F-score"])

# %% [markdown]
# ## kohya's Anima architectures compared
#
# On Anima, files of kohya's three kinds (v2, v2.1, v3; notebook 02) trained on the same data side by
# side: notebook 03 with `ARCHITECTURE = "v2"`, `"v2.1"` and `"v3"` writes them to `03_training`,
# `03_training/v2.1` and `03_training/v3`. Each file found is drawn at every strength on the same control
# and seed, and scored like the strength comparison above; v3's gates are drawn last. On the toy world,
# `python benches/anima_kinds.py` trains all three under the demo's budget (benches/RESULTS.md has its
# numbers).

# %%
from lllite.anima.config import TRAINING_OPTIONS
from lllite.sampling import MULTIPLIERS, gate_map_picture

folders = {kind: env.runs / "03_training" / ("" if kind == "v2" else kind) for kind in TRAINING_OPTIONS}
kind_files = {kind: trained_files(env, [folder])[0] for kind, folder in folders.items()}
kind_files = {kind: file for kind, file in kind_files.items() if file.is_file() and env.family == "anima"}
if env.family != "anima":
    print("kohya's three architectures are Anima's: with MODEL = 'anima-toy' or 'anima' this cell compares them")
elif not kind_files:
    print("no trained files of kohya's Anima kinds yet: train them in notebook 03 (ARCHITECTURE = 'v2', 'v2.1', 'v3')")
for kind, file in kind_files.items():
    kind_network = lllite.load(file)
    show(strength_grid(pipe, kind_network, control, prompt, num_inference_steps=steps,
                       multipliers=MULTIPLIERS))
    scores = fidelity_by_strength(pipe, kind_network, held_out, num_inference_steps=steps, batch_size=batch)
    print(kind, "shape IoU by strength:", ", ".join(f"{m:g}: {v:.3f}" for m, v in
                                                     zip(scores.multipliers, scores.means("iou"))))
    if kind_network.config.gate_mode != "none":
        show(gate_map_picture(pipe, kind_network, control, prompt, num_inference_steps=steps))

# %% [markdown]
# ## More than one network
#
# Several LLLite files can act at once, each with its own control image, strength (or keyframes) and
# mask, and their changes add up: canny on the left, depth on the right is
# `generate(pipe, [canny_net, depth_net], [canny_image, depth_image], prompt, multiplier=[0.8, 0.5],
# mask=[left, right])`.
# LoRAs loaded with `pipe.load_lora_weights` work alongside.
