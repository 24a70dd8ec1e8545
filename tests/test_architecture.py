"""The architecture notebook's measurements: shapes, parameter counts, attachment, embedding, zero init."""
from __future__ import annotations

import pytest
import torch

from lllite.architecture import (
    INITS, anima_module_shapes, anima_module_shapes_table, anima_parameter_counts, anima_targets, attachment_table,
    embedding_channels, family_differences, family_parameter_counts, first_step_gradients, fresh_network,
    init_comparison, module_shapes, module_shapes_table, parameter_counts, trunk_embedding_channels,
)
from lllite.conditioning import canny
from lllite.errors import LLLiteError
from lllite.sdxl.module import LLLiteModule
from lllite.sdxl.pipeline import sdxl_unet
from lllite.sdxl.toy import build_pipeline
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


# ------------------------------------------------------------------------------------------ Anima (kohya's v2)


def _group_norm(channels: int) -> int:
    return 2 * channels


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _anima_trunk(e: int = 32, c: int = 64, resblocks: int = 1, aspp: bool = False) -> int:
    """The trunk's parameters, counted from the layer list of kohya's v2 file format."""
    half = c // 2
    count = _conv(3, half, 4) + _group_norm(half) + _conv(half, half, 3) + _group_norm(half) + _conv(half, c, 4)
    count += _group_norm(c) + resblocks * 2 * (_group_norm(c) + _conv(c, c, 3))
    if aspp:  # dilations 1, 2, 4, 8: a 1x1 branch, three 3x3 ones, a global 1x1 branch, a 1x1 fusion; each + GN
        count += _conv(c, c, 1) + 3 * _conv(c, c, 3) + _conv(c, c, 1) + _conv(5 * c, c, 1) + 6 * _group_norm(c)
    return count + _conv(c, e, 1) + 2 * e  # proj, LayerNorm


def _anima_module(width: int = 2048, e: int = 32, m: int = 64) -> int:
    return (width * m + m) + ((m + e) * m + m) + (e * 2 * m + 2 * m) + (m * width + width) + e


def test_anima_parameter_counts_match_the_v2_format_for_each_preset_and_aspp():
    counts = anima_parameter_counts()
    assert counts["Anima LLLite self_attn_q (28 modules)"] == _anima_trunk() + 28 * _anima_module() == 7_812_320
    assert counts["Anima LLLite self_attn_qkv (84 modules)"] == _anima_trunk() + 84 * _anima_module()
    assert counts["Anima LLLite self_attn_qkv_cross_q (112 modules)"] == _anima_trunk() + 112 * _anima_module()
    assert counts["Anima LLLite self_attn_q + ASPP (28 modules)"] == _anima_trunk(aspp=True) + 28 * _anima_module()
    assert 1.9e9 < counts["Anima DiT"] < 2.0e9  # Cosmos-Predict2-2B without the LLM adapter


def test_family_parameter_counts_put_sdxls_lllite_and_controlnet_beside_animas():
    counts = family_parameter_counts()
    assert counts["SDXL LLLite (136 modules, E=32, M=64)"] == 22_969_600 and "SDXL UNet" not in counts
    assert counts["ControlNet (SDXL)"] == parameter_counts()["ControlNet (SDXL)"]
    assert counts["Anima LLLite self_attn_q (28 modules)"] == anima_parameter_counts()["Anima LLLite self_attn_q (28 modules)"]


def test_anima_shapes_go_through_one_trunk_to_the_token_grid_and_one_module_at_animas_width():
    rows = {row.part: row.shape for row in anima_module_shapes(1024)}
    assert rows["lllite_conditioning1.conv1"] == (1, 32, 256, 256) and rows["lllite_conditioning1.conv3"] == (1, 64, 64, 64)
    assert rows["lllite_conditioning1.resblocks.0"] == (1, 64, 64, 64)
    assert rows["lllite_conditioning1.out_norm"] == (1, 64 * 64, 32) and rows["x"] == (1, 4096, 2048)
    assert rows["depth_embed"] == (32,) and rows["cond_to_film"] == (1, 4096, 128) and rows["cat"] == (1, 4096, 96)
    assert rows["down"] == rows["mid"] == (1, 4096, 64) and rows["up"] == (1, 4096, 2048)
    small = {row.part: row.shape for row in anima_module_shapes(512, "self_attn_qkv", use_aspp=True, cond_resblocks=2)}
    assert small["lllite_conditioning1.aspp"] == (1, 64, 32, 32) and "lllite_conditioning1.resblocks.1" in small
    assert small["up"] == (1, 32 * 32, 2048)
    with pytest.raises(ValueError, match="multiple of 16"):
        anima_module_shapes(520)


def test_the_anima_shapes_table_names_the_presets_linears_and_module_count():
    text = anima_module_shapes_table(512, "self_attn_qkv_cross_q").data
    assert text.startswith("`self_attn_qkv_cross_q`: 112 modules") and "`attn2.to_q`" in text
    assert anima_targets("self_attn_q") == (["attn1.to_q"], 28, 28)


def test_the_differences_are_read_off_both_default_networks():
    rows = {aspect: (sdxl, anima) for aspect, sdxl, anima in family_differences(1024)}
    assert rows["modules at kohya's defaults"] == ("136", "28 (`self_attn_q`)")
    assert rows["parameters at kohya's defaults"] == ("22,969,600", "7,812,320")
    assert rows["activation"][0].startswith("ReLU") and rows["activation"][1] == "SiLU in the trunk, SiLU in the modules"
    assert rows["token grid at 1024 px"][0] == "64x64 (depth 2), 32x32 (depth 3)"
    assert rows["token grid at 1024 px"][1].startswith("64x64 for every module")
    assert rows["FiLM"][0] == "none" and "`cond_to_film` 32 -> 128" in rows["FiLM"][1]
    assert "the 136 modules" in rows["conditioning"][0] and "120,160 parameters" in rows["conditioning"][1]
    assert "34 transformer blocks" in rows["targets"][0] and "28 DiT blocks" in rows["targets"][1]
    assert family_differences(512)[4][2].startswith("32x32")


def test_the_trunk_embedding_shows_one_tile_per_channel_on_the_token_grid():
    from lllite.anima import AnimaLLLiteConfig, ConditioningTrunk

    torch.manual_seed(0)
    trunk = ConditioningTrunk(AnimaLLLiteConfig(cond_emb_dim=8, cond_dim=16))
    picture = trunk_embedding_channels(trunk, canny(render_sample(0, size=64).image), cell=20, columns=4)
    assert 4 * 20 <= picture.width < 5 * 20 + 4 * 10 and picture.height >= 2 * 20
    with pytest.raises(LLLiteError, match="multiples of 16"):
        trunk_embedding_channels(trunk, torch.zeros(1, 3, 40, 48))
