import re

import pytest

import lllite
from lllite.sdxl.names import diffusers_to_sgm, find_targets, module_name, sgm_to_diffusers
from lllite.sdxl.pipeline import sdxl_unet

# The table of the format facts, for SDXL, written out instead of computed.
SDXL_BLOCKS = {
    "input_blocks.4.1": "down_blocks.1.attentions.0",
    "input_blocks.5.1": "down_blocks.1.attentions.1",
    "input_blocks.7.1": "down_blocks.2.attentions.0",
    "input_blocks.8.1": "down_blocks.2.attentions.1",
    "middle_block.1": "mid_block.attentions.0",
    "output_blocks.0.1": "up_blocks.0.attentions.0",
    "output_blocks.1.1": "up_blocks.0.attentions.1",
    "output_blocks.2.1": "up_blocks.0.attentions.2",
    "output_blocks.3.1": "up_blocks.1.attentions.0",
    "output_blocks.4.1": "up_blocks.1.attentions.1",
    "output_blocks.5.1": "up_blocks.1.attentions.2",
}


def kohya_depth(sgm: str) -> int:
    n = int(re.search(r"\d+", sgm)[0]) if not sgm.startswith("middle") else None
    if sgm.startswith("input_blocks"):
        return 1 if n <= 2 else 2 if n <= 5 else 3
    if sgm.startswith("middle_block"):
        return 3
    return 3 if n <= 2 else 2 if n <= 5 else 1


@pytest.fixture(scope="module")
def sdxl():
    return sdxl_unet(device="meta")


def test_sdxl_default_targets_are_kohyas_136(sdxl):
    targets = find_targets(sdxl, up_path=False)
    assert len(targets) == 136
    assert len(lllite.create_network(sdxl)) == 136
    assert {t.path.rsplit(".", 2)[-2] + "." + t.path.rsplit(".", 1)[-1] for t in targets.values()} == {
        "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q"}


def test_up_path_adds_every_up_block_transformer(sdxl):
    # up_blocks.0: 3 attentions x 10 layers, up_blocks.1: 3 x 2 -> 36 more transformer layers
    assert len(find_targets(sdxl, up_path=True)) == 136 + 36 * 4


def test_every_sdxl_target_maps_both_ways_as_the_table_says(sdxl):
    targets = find_targets(sdxl, up_path=True)
    for name, target in targets.items():
        sgm_block = next(s for s, d in SDXL_BLOCKS.items() if target.path.startswith(d + "."))
        rest = target.path[len(SDXL_BLOCKS[sgm_block]) + 1:]
        sgm = f"{sgm_block}.{rest}"
        assert diffusers_to_sgm(target.path) == sgm
        assert sgm_to_diffusers(sgm) == target.path
        assert name == module_name(sgm) == "lllite_unet_" + sgm.replace(".", "_")
        assert target.depth == kohya_depth(sgm_block)
        assert sdxl.get_submodule(target.path).in_features == target.in_features


def test_known_published_module_name_maps_to_its_diffusers_linear(sdxl):
    targets = find_targets(sdxl)
    target = targets["lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"]
    assert target.path == "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert target.in_features == 640
    assert targets["lllite_unet_middle_block_1_transformer_blocks_9_attn2_to_q"].in_features == 1280


def test_paths_outside_transformer_blocks_are_refused():
    with pytest.raises(KeyError, match="conv_in"):
        diffusers_to_sgm("conv_in.weight")


def test_a_unet_without_sdxls_layout_is_refused():
    from diffusers import UNet2DConditionModel
    import torch

    with torch.device("meta"):
        sd15_like = UNet2DConditionModel(
            block_out_channels=(8, 8, 8, 8), norm_num_groups=8, cross_attention_dim=8, attention_head_dim=2)
    with pytest.raises(ValueError, match="SDXL's block layout"):
        lllite.create_network(sd15_like)
