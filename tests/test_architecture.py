"""The architecture notebook's measurements: shapes, parameter counts, attachment, embedding, zero init."""
from __future__ import annotations

import pytest
import torch

from lllite.architecture import (
    INITS, attachment_table, embedding_channels, first_step_gradients, fresh_network, init_comparison, module_shapes,
    module_shapes_table, parameter_counts,
)
from lllite.conditioning import canny
from lllite.module import LLLiteModule
from lllite.sdxl import sdxl_unet
from lllite.toy import build_pipeline
from lllite.toy.shapes import render_sample


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("test")


def test_module_shapes_follow_the_depth_downscale_to_the_token_grid():
    rows = {row.part: row.shape for row in module_shapes(3, 1280, image_size=1024)}
    assert rows["conditioning1.4"] == (1, 32, 32, 32)
    assert rows["cond_emb"] == (1, 1024, 32) and rows["cat"] == (1, 1024, 96) and rows["up.0"] == (1, 1024, 1280)
    shallow = {row.part: row.shape for row in module_shapes(1, 320, image_size=512, cond_emb_dim=16, network_dim=8)}
    assert shallow["cond_emb"] == (1, 64 * 64, 16) and shallow["down.0"] == (1, 4096, 8) and "conditioning1.4" not in shallow


def test_the_module_shapes_table_uses_sdxls_width_at_the_depth():
    table = module_shapes_table(2, image_size=512).data
    assert "| up.0 | `Linear(in_features=64, out_features=640, bias=True)` | (1, 1024, 640) |" in table


def _lllite_parameters(width: int, depth: int, e: int = 32, m: int = 64) -> int:
    """Parameters of one module, counted from the layer list in the file format's description."""
    half = e // 2
    convs = {1: [(3, half, 4), (half, e, 2)], 2: [(3, half, 4), (half, e, 4)],
             3: [(3, half, 4), (half, half, 4), (half, e, 2)]}[depth]
    conditioning = sum(cin * cout * k * k + cout for cin, cout, k in convs)
    return conditioning + (width * m + m) + ((m + e) * m + m) + (m * width + width)


def test_parameter_counts_match_the_format_and_a_controlnet_is_about_half_the_unet():
    counts = parameter_counts()
    lllite = counts["LLLite (136 modules, E=32, M=64)"]
    # SDXL: 16 modules at depth 2 (width 640) and 120 at depth 3 (width 1280)
    assert lllite == 16 * _lllite_parameters(640, 2) + 120 * _lllite_parameters(1280, 3) == 22_969_600
    assert 0.45 < counts["ControlNet (SDXL)"] / counts["SDXL UNet"] < 0.5
    assert counts["ControlNet (SDXL)"] / lllite > 50


def test_attachment_table_lists_sdxls_five_adapted_blocks_and_136_modules():
    blocks = attachment_table(sdxl_unet("meta"))
    assert [b.sgm for b in blocks] == ["input_blocks.4.1", "input_blocks.5.1", "input_blocks.7.1", "input_blocks.8.1",
                                       "middle_block.1"]
    assert [b.modules for b in blocks] == [8, 8, 40, 40, 40]
    assert [(b.depth, b.in_features, b.tokens) for b in blocks[1:3]] == [(2, 640, (64, 64)), (3, 1280, (32, 32))]


def test_embedding_channels_show_one_tile_per_channel():
    torch.manual_seed(0)
    module = LLLiteModule(16, cond_emb_dim=8, network_dim=4, depth=1)
    picture = embedding_channels(module, canny(render_sample(0, size=64).image), cell=20, columns=4)
    assert picture.width >= 4 * 20 and picture.height >= 2 * 20
    assert picture.width < 5 * 20 + 4 * 10  # four columns, not eight


def test_a_fully_zeroed_network_leaves_the_image_unchanged_and_the_others_do_not(pipe):
    sample = render_sample(0, size=64)
    grid, changes = init_comparison(pipe, canny(sample.image), sample.caption, num_inference_steps=2)
    assert changes["zero up (weight and bias)"] == 0.0
    assert changes["kohya: zero up weight only"] > 0 and changes["no zero init"] > 0
    assert grid.width > 4 * 64


def test_with_up_at_zero_only_up_gets_a_gradient_in_the_first_step(pipe):
    control = canny(render_sample(0, size=64).image)
    zeroed = first_step_gradients(pipe.unet, fresh_network(pipe.unet, "zero up (weight and bias)"), control)
    assert zeroed["up"] > 0 and zeroed["conditioning1"] == zeroed["down"] == zeroed["mid"] == 0
    free = first_step_gradients(pipe.unet, fresh_network(pipe.unet, "no zero init"), control)
    assert min(free.values()) > 0


def test_the_gradient_probe_computes_no_unet_gradients_and_leaves_the_unet_trainable_as_it_was(pipe):
    first_step_gradients(pipe.unet, fresh_network(pipe.unet, "no zero init"), canny(render_sample(0, size=64).image))
    assert all(p.requires_grad and p.grad is None for p in pipe.unet.parameters())


def test_fresh_network_refuses_an_unknown_init(pipe):
    assert len(INITS) == 3
    with pytest.raises(ValueError, match="unknown init 'ones'"):
        fresh_network(pipe.unet, "ones")
