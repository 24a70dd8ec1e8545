"""Strength that varies over the steps (keyframes) and over the image (masks): the identities that define them."""
import json

import numpy as np
import pytest
import torch
from conftest import edges, make_tiny_unet, randomize, unet_inputs
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import lllite
from lllite.errors import LLLiteError
from lllite.images import region_mask
from lllite.sampling import generate as sample, mask_grid, schedule_grid
from lllite.sdxl.toy import build_pipeline

SIZE = 64
FIRST_HALF = [(0.0, 1.0), (0.5, 0.0)]


@pytest.fixture
def pipe():
    return build_pipeline("test", seed=0)


def network_for(unet, seed=0):
    return randomize(lllite.create_network(unet, cond_emb_dim=8, network_dim=8), seed=seed, scale=0.3).eval()


def generate(pipe, steps=4, size=(SIZE, SIZE), prompts=("a red circle",), **kwargs):
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(list(prompts), num_inference_steps=steps, guidance_scale=5.0, generator=generators,
                  height=size[0], width=size[1], **kwargs).images
    return np.stack([np.asarray(im, dtype=np.float32) for im in images])


# ------------------------------------------------------------------------------------------ keyframes


@pytest.mark.parametrize("steps", [2, 4, 6])
def test_first_half_keyframes_equal_strength_1_with_the_step_range_0_to_half(pipe, steps):
    network = network_for(pipe.unet).apply_to(pipe)
    network.set_cond_image(edges(0))
    network.set_multiplier(FIRST_HALF)
    keyframed = generate(pipe, steps)
    network.set_multiplier(1.0)
    network.set_step_range(0.0, 0.5)
    ranged = generate(pipe, steps)
    network.set_step_range(0.0, 1.0)
    assert np.array_equal(keyframed, ranged)
    assert not np.array_equal(keyframed, generate(pipe, steps))  # the second half is not controlled


def test_at_step_i_the_last_keyframe_started_by_i_over_n_decides(pipe):
    # The same schedule set by hand between the steps: strength 0.4 from the first step, 1.3 from step 2 of 5
    # (2/5 >= 0.3) and 0 from step 4 (4/5 >= 0.8).
    network = network_for(pipe.unet).apply_to(pipe)
    network.set_cond_image(edges(1))
    network.set_multiplier([(0.0, 0.4), (0.3, 1.3), (0.8, 0.0)])
    keyframed = generate(pipe, 5)
    by_hand = {0: 0.4, 2: 1.3, 4: 0.0}

    def set_next(pipeline, i, t, kwargs):
        if i + 1 in by_hand:
            network.set_multiplier(by_hand[i + 1])
        return kwargs

    network.set_multiplier(0.4)
    manual = generate(pipe, 5, callback_on_step_end=set_next)
    assert np.array_equal(keyframed, manual)


def test_nothing_acts_before_the_first_keyframe(pipe):
    network = network_for(pipe.unet).apply_to(pipe)
    network.set_cond_image(edges(2))
    network.set_multiplier([(0.5, 1.0)])
    late = generate(pipe, 4)
    network.set_multiplier(1.0)
    network.set_step_range(0.5, 1.0)
    assert np.array_equal(late, generate(pipe, 4))


def test_the_network_reports_what_was_set():
    network = network_for(make_tiny_unet())
    network.set_multiplier(0.7)
    assert network.multiplier == 0.7 and network.keyframes == ((0.0, 0.7),)
    network.set_multiplier(FIRST_HALF)
    assert network.multiplier == ((0.0, 1.0), (0.5, 0.0)) == network.keyframes
    with pytest.raises(LLLiteError, match=r"multiplier\[1\]: start 0.2 must be after the previous keyframe's 0.5"):
        network.set_multiplier([(0.5, 1.0), (0.2, 0.0)])
    assert network.keyframes == ((0.0, 1.0), (0.5, 0.0))  # a refused setting changes nothing


# ------------------------------------------------------------------------------------------ masks


def first_linear_input(unet, network_settings, inputs):
    """The input the first adapted Linear receives, and the bare UNet's, for one UNet call."""
    target = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    seen = []
    handle = target.register_forward_hook(lambda module, args, output: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for settings in network_settings:
                for network, mask in settings:
                    network.set_mask(mask)
                unet(**inputs)
    finally:
        handle.remove()
    return seen


def test_all_ones_is_unmasked_all_zeros_is_off_and_tokens_under_zero_keep_their_input():
    unet = make_tiny_unet()
    inputs = unet_inputs(batch=2, latent=(8, 8))
    network = network_for(unet).apply_to(unet)
    network.set_cond_image(torch.rand(1, 3, 64, 64) * 2 - 1)
    with torch.no_grad():
        unmasked = unet(**inputs).sample
        network.set_mask(np.ones((64, 64), np.float32))
        assert torch.equal(unet(**inputs).sample, unmasked)
        network.set_mask(torch.zeros(64, 64))
        zeros = unet(**inputs).sample
        network.set_cond_image(None)
        assert torch.equal(zeros, unet(**inputs).sample)
    network.set_cond_image(torch.rand(1, 3, 64, 64) * 2 - 1)
    left = region_mask(64, 64, "rectangle", (0.0, 0.0, 0.5, 1.0))  # depth 2: an 4x4 token grid, left 2 columns
    bare, masked = first_linear_input(unet, [[(network, torch.zeros(64, 64))], [(network, left)]], inputs)
    tokens = masked.view(2, 4, 4, -1) - bare.view(2, 4, 4, -1)
    assert torch.equal(tokens[:, :, 2:], torch.zeros_like(tokens[:, :, 2:]))
    assert bool((tokens[:, :, :2].abs().amax(-1) > 0).all())


def test_two_networks_with_their_own_images_and_masks_add_up():
    unet = make_tiny_unet()
    inputs = unet_inputs(batch=2, latent=(8, 8))
    left, right = (region_mask(64, 64, "rectangle", box) for box in ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)))
    a, b = network_for(unet, seed=1).apply_to(unet), network_for(unet, seed=2).apply_to(unet)
    a.set_cond_image(torch.rand(1, 3, 64, 64) * 2 - 1)
    b.set_cond_image(torch.rand(1, 3, 64, 64) * 2 - 1)
    b.set_multiplier(0.6)
    off = torch.zeros(64, 64)
    bare, only_a, only_b, both = first_linear_input(
        unet, [[(a, off), (b, off)], [(a, left), (b, off)], [(a, off), (b, right)], [(a, left), (b, right)]], inputs)
    torch.testing.assert_close(both - bare, (only_a - bare) + (only_b - bare), rtol=0, atol=1e-6)
    assert not torch.equal(only_a, bare) and not torch.equal(only_b, bare)


def test_masks_work_with_classifier_free_guidance_one_per_image_and_any_size(pipe):
    network = network_for(pipe.unet).apply_to(pipe)
    size = (72, 104)  # latent 9 x 13: odd token grids at every depth
    network.set_cond_image([edges(3, size), edges(4, size)])
    network.set_mask(torch.stack([torch.ones(1, *size), torch.zeros(1, *size)]))
    masked = generate(pipe, 2, size, prompts=("a red circle", "a blue square"))
    network.set_mask(None)
    unmasked = generate(pipe, 2, size, prompts=("a red circle", "a blue square"))
    network.set_cond_image(None)
    bare = generate(pipe, 2, size, prompts=("a red circle", "a blue square"))
    assert np.array_equal(masked[0], unmasked[0]) and np.array_equal(masked[1], bare[1])
    with pytest.raises(LLLiteError, match="3 masks for a UNet batch of 4"):
        network.set_cond_image(edges(3, size))
        network.set_mask(torch.ones(3, 1, *size))
        generate(pipe, 2, size, prompts=("a red circle", "a blue square"))


# ------------------------------------------------------------------------------------------ compiled


def test_changing_keyframes_and_masks_recompiles_nothing_and_matches_eager():
    torch._dynamo.reset()
    counters.clear()
    unet = make_tiny_unet()
    inputs = unet_inputs(batch=2, latent=(8, 8))
    network = network_for(unet).apply_to(unet)
    network.set_cond_image(torch.rand(1, 3, 64, 64) * 2 - 1)
    counter = CompileCounter()
    fast = torch.compile(unet, backend=counter, fullgraph=True)
    settings = [(1.0, None), (FIRST_HALF, region_mask(64, 64, "ellipse", (0.1, 0.1, 0.9, 0.9))),
                ([(0.0, 0.2), (0.3, 1.5)], np.ones((64, 64), np.uint8) * 255), (0.0, torch.zeros(64, 64))]
    for timestep in (100, 700):
        for multiplier, mask in settings:
            network.set_multiplier(multiplier)
            network.set_mask(mask)
            with torch.no_grad():
                eager = unet(**{**inputs, "timestep": torch.tensor(timestep)}).sample
                result = fast(**{**inputs, "timestep": torch.tensor(timestep)}).sample
            torch.testing.assert_close(result, eager, rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1 and not counters["graph_break"]
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ sampling


def test_generate_takes_keyframes_and_masks_per_network_and_records_them(pipe):
    a, b = network_for(pipe.unet, 1), network_for(pipe.unet, 2)
    left = region_mask(SIZE, SIZE, "rectangle", (0.0, 0.0, 0.5, 1.0))
    image, = sample(pipe, [a, b], [edges(5), edges(6)], "a red circle", num_inference_steps=2,
                    multiplier=[FIRST_HALF, 0.5], mask=[left, None])
    record = json.loads(image.info["parameters"])
    assert record["multiplier"] == [[[0.0, 1.0], [0.5, 0.0]], 0.5]
    assert record["mask"] == [{"height": SIZE, "width": SIZE, "coverage": 0.5}, None]
    assert not a.is_attached and a.multiplier == 1.0 and a.mask is None  # left as they were
    with pytest.raises(LLLiteError, match=r"mask\[0\]: values must lie in \[0, 1\]"):
        sample(pipe, [a, b], [edges(5), edges(6)], "a", mask=[np.full((8, 8), 3.0), None])
    with pytest.raises(LLLiteError, match=r"multiplier: give one for every network, or a list with one per network \(2\)"):
        sample(pipe, [a, b], [edges(5), edges(6)], "a", multiplier=[1.0, 0.5, 0.2])
    with pytest.raises(LLLiteError, match=r"multiplier\[0\]: start 2.0 is not a fraction"):
        sample(pipe, a, edges(5), "a", multiplier=[(2.0, 1.0)])


def test_schedule_and_mask_grids_compare_by_columns_and_keep_their_settings(pipe):
    network = network_for(pipe.unet)
    schedules = {"constant": 1.0, "strong early": [(0.0, 1.0), (0.5, 0.3)], "strong late": [(0.0, 0.3), (0.5, 1.0)]}
    grid = schedule_grid(pipe, network, edges(7), "a red circle", schedules=schedules, seeds=[0, 1],
                         num_inference_steps=2, progress=False)
    cells = json.loads(grid.info["parameters"])
    assert [c["multiplier"] for c in cells[0]] == [1.0, [[0.0, 1.0], [0.5, 0.3]], [[0.0, 0.3], [0.5, 1.0]]]
    assert json.loads(grid.info["columns"]) == ["constant: 1", "strong early: 1 → 0.3 at 50%",
                                                "strong late: 0.3 → 1 at 50%"]
    assert grid.width > 4 * SIZE and grid.height > 2 * SIZE
    left = region_mask(SIZE, SIZE, "rectangle", (0.0, 0.0, 0.5, 1.0))
    grid = mask_grid(pipe, network, edges(7), "a red circle", left, seeds=[0], num_inference_steps=2, progress=False)
    without, everywhere, masked = json.loads(grid.info["parameters"])[0]
    assert (without["multiplier"], everywhere["mask"], masked["mask"]["coverage"]) == (0.0, None, 0.5)
    assert json.loads(grid.info["columns"]) == ["without", "everywhere (1)", "masked (1)"]
    assert grid.width > 5 * SIZE  # control, mask, three images
