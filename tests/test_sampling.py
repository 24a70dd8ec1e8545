"""Sampling helpers on the tiny "test" SDXL: generation, grids, and PNGs that remember their parameters."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import lllite
from lllite.conditioning import canny
from lllite.sampling import generate, image_grid, save_png, side_by_side, step_range_grid, strength_grid
from lllite.sdxl.toy import build_pipeline
from lllite.toy.shapes import render_sample

from conftest import randomize

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("test")


@pytest.fixture
def network(pipe):
    return randomize(lllite.create_network(pipe.unet, cond_emb_dim=8, network_dim=8), scale=0.3)


def control(index: int = 0) -> np.ndarray:
    return canny(render_sample(index, size=64).image)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_generate_makes_one_image_per_seed_with_its_parameters(pipe, network):
    images = generate(pipe, network, control(), "a red circle", seed=[3, 4], num_inference_steps=STEPS, multiplier=0.5)
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    params = [json.loads(im.info["parameters"]) for im in images]
    assert [p["seed"] for p in params] == [3, 4]
    assert params[0]["multiplier"] == 0.5 and params[0]["prompt"] == "a red circle"
    assert params[0]["num_inference_steps"] == STEPS and (params[0]["height"], params[0]["width"]) == (64, 64)
    again = generate(pipe, network, control(), "a red circle", seed=3, num_inference_steps=STEPS, multiplier=0.5)[0]
    # The same seed alone draws the same image, up to rounding: the modules' batched matmuls see 2 rows alone and
    # 4 in the batch, and a BLAS may sum in another order for each (one level in one value, on some machines).
    difference = np.abs(pixels(again) - pixels(images[0]))
    assert difference.max() <= 1 and difference.mean() < 1e-3


def test_strength_zero_is_the_base_model_and_strength_one_changes_the_image(pipe, network):
    base = pipe("a red circle", height=64, width=64, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0)).images[0]
    off, on = (generate(pipe, network, control(), "a red circle", seed=0, num_inference_steps=STEPS, multiplier=s)[0]
               for s in (0.0, 1.0))
    assert np.array_equal(pixels(off), pixels(base))
    assert np.abs(pixels(on) - pixels(base)).mean() > 1


def test_generate_leaves_the_network_as_it_found_it(pipe, network):
    generate(pipe, network, control(), "a red circle", num_inference_steps=STEPS, multiplier=0.3, control_guidance_start=0.2,
             control_guidance_end=0.8)
    assert not network.is_attached and network.cond_image is None
    network.apply_to(pipe)
    network.set_multiplier(0.7)
    generate(pipe, network, control(), "a red circle", num_inference_steps=STEPS, multiplier=0.3)
    assert network.is_attached and network.multiplier == 0.7
    network.remove()


def test_two_networks_at_once_and_one_switched_off_equal_the_other_alone(pipe, network):
    other = randomize(lllite.create_network(pipe.unet, cond_emb_dim=8, network_dim=8), seed=1, scale=0.3)
    both = generate(pipe, [network, other], [control(0), control(1)], "a blue square", num_inference_steps=STEPS,
                    multiplier=[1.0, 0.0])[0]
    alone = generate(pipe, network, control(0), "a blue square", num_inference_steps=STEPS, multiplier=1.0)[0]
    assert np.array_equal(pixels(both), pixels(alone))
    assert json.loads(both.info["parameters"])["multiplier"] == [1.0, 0.0]


def test_generate_refuses_mismatched_lists(pipe, network):
    with pytest.raises(ValueError, match="2 networks need one control image and one strength each"):
        generate(pipe, [network, network], control(), "a red circle")
    with pytest.raises(ValueError, match="seed: give one or 3 values"):
        generate(pipe, network, control(), ["a", "b", "c"], seed=[1, 2])


def test_strength_grid_has_prompts_and_seeds_in_rows_and_strengths_in_columns(pipe, network):
    grid = strength_grid(pipe, network, [control(0), control(1)], ["a red circle", "a blue square"], seeds=[0, 1],
                         multipliers=[0.0, 0.5, 1.0], num_inference_steps=STEPS, progress=False)
    cells = json.loads(grid.info["parameters"])
    assert [[c["multiplier"] for c in row] for row in cells] == [[0.0, 0.5, 1.0]] * 4
    assert [(row[0]["prompt"], row[0]["seed"]) for row in cells] == [
        ("a red circle", 0), ("a red circle", 1), ("a blue square", 0), ("a blue square", 1)]
    # Four columns of 64 px (control + 3 strengths) and four rows, plus labels.
    assert grid.width > 4 * 64 and grid.height > 4 * 64


def test_grid_cells_equal_single_generations(pipe, network):
    grid = strength_grid(pipe, network, control(), "a red circle", seeds=[5], multipliers=[1.0],
                         num_inference_steps=STEPS, progress=False)
    single = generate(pipe, network, control(), "a red circle", seed=5, num_inference_steps=STEPS)[0]
    # The generated cell is the bottom-right 64x64 block, above a margin of a few pixels.
    cells = [pixels(grid.crop((grid.width - 64, grid.height - 64 - m, grid.width, grid.height - m))) for m in range(9)]
    assert any(np.array_equal(cell, pixels(single)) for cell in cells)


def test_step_range_grid_and_side_by_side_record_what_each_cell_used(pipe, network):
    grid = step_range_grid(pipe, network, control(), "a red circle", seeds=[0],
                           control_guidance_ranges=[(0.0, 1.0), (0.5, 1.0)], num_inference_steps=4, progress=False)
    assert [(c["control_guidance_start"], c["control_guidance_end"]) for c in json.loads(grid.info["parameters"])[0]] == [
        (0.0, 1.0), (0.5, 1.0)]
    pair = side_by_side(pipe, network, control(), "a red circle", seed=2, multiplier=0.8, num_inference_steps=STEPS)
    without, with_ = json.loads(pair.info["parameters"])
    assert (without["multiplier"], with_["multiplier"], with_["seed"]) == (0.0, 0.8, 2)


def test_save_png_keeps_the_parameters_and_never_overwrites_silently(pipe, network, tmp_path):
    image = generate(pipe, network, control(), "a red circle", seed=9, num_inference_steps=STEPS)[0]
    path = save_png(image, tmp_path / "out" / "cat.png")
    assert json.loads(Image.open(path).info["parameters"])["seed"] == 9
    with pytest.raises(FileExistsError, match="cat.png exists"):
        save_png(image, path)
    save_png(image_grid([[image]], ["x"]), path, overwrite=True)
    assert "parameters" not in Image.open(path).info
    assert [p.name for p in path.parent.iterdir()] == ["cat.png"]
