"""Every Anima LLLite file kind kohya's tools write (v2 pixel stem, v2.1 latent stem, v3 semantic trunk): read from
kohya's metadata, read from the tensors' shapes alone, contradictions named by their metadata key, written back."""
from dataclasses import replace

import pytest
import torch

from lllite.anima.config import AnimaLLLiteConfig
from lllite.anima.fileformat import (
    check_input_space,
    config_from_file,
    file_metadata,
    module_widths,
)
from lllite.anima.module import AnimaLLLiteModule, build_trunk
from lllite.anima.names import module_names, parse_target_layers
from lllite.errors import LLLiteError
from lllite.fileformat import LLLiteFileError

MODEL_DIM = 64
BLOCKS = 3
SMALL = {"cond_emb_dim": 16, "network_dim": 8, "cond_dim": 32}

KINDS = {
    "v2": AnimaLLLiteConfig(**SMALL, target_layers="self_attn_qkv", cond_resblocks=2, use_aspp=True),
    "v2 inpainting": AnimaLLLiteConfig(**SMALL, cond_in_channels=4, cond_resblocks=0),
    "v2.1": AnimaLLLiteConfig(**SMALL, cond_input_space="latent", target_layers="self_attn_q_pre,mlp_fc1_pre"),
    "v2.1 inpainting": AnimaLLLiteConfig(**SMALL, cond_input_space="latent", cond_in_channels=4,
                                         use_aspp=True, aspp_dilations=(1, 1)),
    "v3": AnimaLLLiteConfig(**SMALL, cond_input_space="latent", trunk="semantic", ref_block=1, gate="scalar"),
    "v3 two taps vector": AnimaLLLiteConfig(**SMALL, cond_input_space="latent", trunk="semantic", ref_block="-1,2",
                                            gate="vector", target_layers="self_attn_qkv_cross_q", use_aspp=True),
    "v3 no gate": AnimaLLLiteConfig(**SMALL, cond_input_space="latent", trunk="semantic", gate="none",
                                    cond_resblocks=3),
}
SEMANTIC_KEYS = {"lllite.ref_block", "lllite.ref_timestep", "lllite.ref_context", "lllite.gate"}
KOHYA_KEYS = {"modelspec.architecture", "lllite.version", "lllite.cond_emb_dim", "lllite.mlp_dim",
              "lllite.target_layers", "lllite.target_atomics", "lllite.cond_dim", "lllite.cond_resblocks",
              "lllite.use_aspp", "lllite.cond_input_space", "lllite.cond_in_channels", "lllite.inpaint_masked_input",
              "lllite.trunk"}


def taps_of(config):
    return len(config.ref_blocks(BLOCKS))


def state_dict(config, taps=None):
    """The tensors of a file of ``config``'s kind, under kohya's keys."""
    torch.manual_seed(0)
    trunk = build_trunk(config, MODEL_DIM, taps or taps_of(config))
    tensors = {f"lllite_conditioning1.{k}": v for k, v in trunk.state_dict().items()}
    for name in module_names(BLOCKS, parse_target_layers(config.target_layers)):
        module = AnimaLLLiteModule(MODEL_DIM, config.cond_emb_dim, config.network_dim, gate=config.gate_mode)
        tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return tensors


def kohya_metadata(config, **changes):
    """kohya's metadata for ``config``, with keys changed (None: removed)."""
    metadata = {k: v for k, v in file_metadata(config).items() if k.startswith(("lllite.", "modelspec.arch"))}
    for key, value in changes.items():
        key = "lllite." + key
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    return metadata


def refused(tensors, metadata, *words):
    with pytest.raises(LLLiteFileError) as error:
        config_from_file(tensors, metadata, "f.safetensors")
    message = str(error.value)
    assert message.startswith("f.safetensors: ")
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("kind", KINDS)
def test_kohyas_metadata_reads_back_every_kind(kind):
    config = KINDS[kind]
    metadata = file_metadata(config)
    expected = KOHYA_KEYS | ({"lllite.aspp_dilations"} if config.use_aspp else set())
    expected |= SEMANTIC_KEYS - ({"lllite.ref_block"} if config.ref_block is None else set())
    assert {k for k in metadata if k.startswith("lllite.") or k == "modelspec.architecture"} == (
        expected if config.trunk == "semantic" else expected - SEMANTIC_KEYS)
    assert metadata["lllite.version"] == ("3" if config.trunk == "semantic" else "2")
    got = config_from_file(state_dict(config), metadata, "f.safetensors")
    assert got == config
    assert got.kind == kind.split()[0]


def test_a_v3_files_metadata_is_exactly_kohyas():
    config = replace(KINDS["v3 two taps vector"], ref_timestep=0.25, ref_context="uncond")
    metadata = file_metadata(config)
    assert metadata["modelspec.architecture"] == "anima-preview/control-net-lllite"
    assert {k: v for k, v in metadata.items() if k.startswith("lllite.")} == {
        "lllite.version": "3", "lllite.cond_emb_dim": "16", "lllite.mlp_dim": "8",
        "lllite.target_layers": "self_attn_qkv_cross_q",
        "lllite.target_atomics": "self_attn_q_pre,self_attn_kv_pre,cross_attn_q_pre", "lllite.cond_dim": "32",
        "lllite.cond_resblocks": "1", "lllite.use_aspp": "true", "lllite.aspp_dilations": "1,2,4,8",
        "lllite.cond_input_space": "latent", "lllite.cond_in_channels": "3", "lllite.inpaint_masked_input": "false",
        "lllite.trunk": "semantic", "lllite.ref_block": "-1,2", "lllite.ref_timestep": "0.25",
        "lllite.ref_context": "uncond", "lllite.gate": "vector",
    }
    assert list(metadata).index("lllite.trunk") < list(metadata).index("lllite.ref_block")
    assert config_from_file(state_dict(config), metadata, "f") == config


def test_ref_timestep_is_written_as_pythons_float_and_read_as_a_number():
    config = replace(KINDS["v3"], ref_timestep=1)
    metadata = file_metadata(config)
    assert metadata["lllite.ref_timestep"] == "1.0"
    assert config_from_file(state_dict(config), kohya_metadata(config, ref_timestep="0.5"), "f").ref_timestep == 0.5
    refused(state_dict(config), kohya_metadata(config, ref_timestep="late"), "lllite.ref_timestep='late'")


def test_resolved_taps_are_written_where_the_config_says_the_middle_block():
    config = KINDS["v3 no gate"]
    assert config.ref_block is None
    assert "lllite.ref_block" not in file_metadata(config)  # the loaders read a missing key as the middle block
    assert config_from_file(state_dict(config), file_metadata(config), "f").ref_block is None
    metadata = file_metadata(config, ref_blocks=(BLOCKS // 2,))
    assert metadata["lllite.ref_block"] == "1"
    assert config_from_file(state_dict(config), metadata, "f") == replace(config, ref_block=(1,))
    assert file_metadata(KINDS["v3"], ref_blocks=[1])["lllite.ref_block"] == "1"
    with pytest.raises(ValueError, match="differ"):
        file_metadata(KINDS["v3"], ref_blocks=(2,))
    assert "lllite.ref_block" not in file_metadata(KINDS["v2"], ref_blocks=(1,))


def test_pixel_and_stem_metadata_load_and_the_made_up_names_are_refused():
    config = KINDS["v2"]
    metadata = kohya_metadata(config)
    assert metadata["lllite.cond_input_space"] == "pixel" and metadata["lllite.trunk"] == "stem"
    assert config_from_file(state_dict(config), metadata, "f") == config
    refused(state_dict(config), kohya_metadata(config, cond_input_space="rgb"), "lllite.cond_input_space='rgb'",
            "pixel, latent")
    refused(state_dict(config), kohya_metadata(config, trunk="conv"), "lllite.trunk='conv'", "stem, semantic")


@pytest.mark.parametrize("kind", ["v2", "v2.1", "v3"])
def test_versions_2_and_3_only_and_each_with_its_trunk(kind):
    config = KINDS[kind]
    refused(state_dict(config), kohya_metadata(config, version="4"), "lllite.version='4'", "versions 2", "3")
    other = "2" if config.trunk == "semantic" else "3"
    refused(state_dict(config), kohya_metadata(config, version=other), f"lllite.version='{other}'",
            f"lllite.trunk='{config.trunk}'")


def test_version_3_without_a_trunk_key_is_the_loaders_stem():
    config = KINDS["v3"]
    message = refused(state_dict(config), kohya_metadata(config, trunk=None), "lllite.version='3'",
                      "lllite.trunk='stem'")
    assert "the loaders' default" in message


def shapes_only(config):
    """What a file of ``config`` says without metadata: what shapes cannot tell is the loaders' default."""
    return replace(config, inpaint_masked_input=False, ref_timestep=0.0, ref_context="zero",
                   ref_block=None if taps_of(config) == 1 else config.ref_block)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "v3 two taps vector"])
@pytest.mark.parametrize("metadata", [{}, {"modelspec.architecture": "anima-preview/control-net-lllite"}])
def test_without_lllite_metadata_the_shapes_give_the_architecture(kind, metadata):
    config = KINDS[kind]
    got = config_from_file(state_dict(config), metadata, "f")
    assert got == shapes_only(config)
    assert got.kind == kind.split()[0]


def test_shapes_give_the_loaders_default_for_what_they_cannot_tell():
    config = replace(KINDS["v3"], ref_timestep=0.5, ref_context="caption")
    got = config_from_file(state_dict(config), {}, "f")
    assert (got.ref_timestep, got.ref_context, got.ref_block) == (0.0, "zero", None)
    inpainting = replace(KINDS["v2.1 inpainting"], inpaint_masked_input=True)
    assert config_from_file(state_dict(inpainting), {}, "f").inpaint_masked_input is False


def test_several_taps_without_ref_block_name_the_key_to_add():
    config = KINDS["v3 two taps vector"]
    tensors = state_dict(config)
    refused(tensors, {}, "2 reference tap(s)", "lllite.ref_block", "cannot tell", "add lllite.ref_block")
    refused(tensors, kohya_metadata(config, ref_block=None), "2 reference tap(s)", "add lllite.ref_block")
    got = config_from_file(tensors, {"lllite.ref_block": "2,-1"}, "f")  # the key the message asks for
    assert got == replace(shapes_only(config), ref_block=(-1, 2))


def test_aspp_dilations_are_inferred_only_where_the_shapes_tell_them():
    for dilations in ((1, 2, 4, 8), (1, 1, 1)):
        config = replace(KINDS["v2"], aspp_dilations=dilations)
        assert config_from_file(state_dict(config), {}, "f").aspp_dilations == dilations
    config = replace(KINDS["v2"], aspp_dilations=(1, 3, 6))
    refused(state_dict(config), {}, "1x1, 3x3, 3x3", "cannot be inferred", "lllite.aspp_dilations")
    assert config_from_file(state_dict(config), {"lllite.aspp_dilations": "1,3,6"}, "f") == config
    refused(state_dict(config), kohya_metadata(config, aspp_dilations="1,2,4,8"), "lllite.aspp_dilations='1,2,4,8'")
    refused(state_dict(config), kohya_metadata(config, aspp_dilations="1,3,6,9"), "lllite.aspp_dilations='1,3,6,9'")
    refused(state_dict(config), kohya_metadata(config, aspp_dilations="3,1,6"), "lllite.aspp_dilations='3,1,6'")
    missing = refused(state_dict(config), kohya_metadata(config, aspp_dilations=None),
                      "lllite.aspp_dilations='1,2,4,8'")
    assert "the loaders' default" in missing


@pytest.mark.parametrize(("kind", "key", "value", "evidence"), [
    ("v2.1", "cond_input_space", "pixel", "lat_conv1"),
    ("v2", "cond_input_space", "latent", "conv1"),
    ("v3", "cond_input_space", "pixel", "semantic"),
    ("v3", "trunk", "stem", "proj_in"),
    ("v2.1", "trunk", "semantic", "lat_conv1"),
    ("v3", "gate", "vector", "gate.weight has shape (1, 24)"),
    ("v3", "gate", "none", "gate.weight"),
    ("v3 two taps vector", "gate", "scalar", "gate.weight has shape (8, 24)"),
    ("v3 no gate", "gate", "scalar", "no gate.weight"),
    ("v3", "ref_block", "-1,2", "1 reference tap(s)"),
    ("v3 two taps vector", "ref_block", "0,1,2", "2 reference tap(s)"),
    ("v2.1", "cond_in_channels", "4", "no inpainting mask pyramid"),
    ("v2.1 inpainting", "cond_in_channels", "3", "holds the inpainting mask pyramid"),
    ("v2", "cond_in_channels", "4", "conv1.weight has shape (16, 3, 4, 4)"),
    ("v2", "cond_dim", "64", "conv3.weight has shape (32, 16, 4, 4)"),
    ("v2.1", "cond_dim", "64", "lat_conv1.weight has shape (32, 16, 3, 3)"),
    ("v3", "cond_dim", "64", "proj_in.weight has shape (32, 64)"),
    ("v3", "cond_emb_dim", "32", "proj.weight has shape (16, 32, 1, 1)"),
    ("v2", "cond_resblocks", "1", "2 ResBlock(s)"),
    ("v3 no gate", "mlp_dim", "16", "8 wide"),
    ("v2", "use_aspp", "false", "holds ASPP"),
    ("v2.1", "use_aspp", "true", "no ASPP"),
])
def test_metadata_the_tensors_contradict_is_named(kind, key, value, evidence):
    config = KINDS[kind]
    metadata = kohya_metadata(config, **{key: value})
    if key == "trunk":  # the version agrees, so that the trunk is what is wrong
        metadata["lllite.version"] = "3" if value == "semantic" else "2"
    shown = value if value.isdigit() or value in ("true", "false") else repr(value)
    refused(state_dict(config), metadata, f"lllite.{key}={shown}", evidence, f"correct lllite.{key}")


@pytest.mark.parametrize(("kind", "key", "evidence"), [
    ("v3 no gate", "gate", "lllite.gate='scalar'"),
    ("v2.1", "cond_input_space", "lllite.cond_input_space='pixel'"),
    ("v2", "use_aspp", "lllite.use_aspp=false"),
    ("v3", "cond_emb_dim", "lllite.cond_emb_dim=32"),
])
def test_a_missing_key_is_the_loaders_default_in_a_kohya_file(kind, key, evidence):
    config = KINDS[kind]
    message = refused(state_dict(config), kohya_metadata(config, **{key: None}), evidence)
    assert "the loaders' default for a missing key" in message


def test_a_semantic_file_without_an_input_space_key_reads_latents():
    config = KINDS["v3"]
    assert config_from_file(state_dict(config), kohya_metadata(config, cond_input_space=None), "f") == config


def test_a_semantic_file_never_takes_an_inpainting_mask():
    config = KINDS["v3"]
    refused(state_dict(config), kohya_metadata(config, cond_in_channels="4"), "cond_in_channels 4")


def test_a_stem_file_with_gates_mixes_two_networks():
    tensors = state_dict(KINDS["v2"])
    tensors.update({k: v for k, v in state_dict(KINDS["v3"]).items() if ".gate." in k})
    for metadata in ({}, kohya_metadata(KINDS["v2"])):
        refused(tensors, metadata, ".gate.weight", "only the semantic trunk", "mixes two networks")


def test_a_latent_stem_that_reads_the_wrong_channels_is_named():
    tensors = state_dict(KINDS["v2.1"])
    tensors["lllite_conditioning1.lat_conv1.weight"] = torch.zeros(32, 32, 3, 3)
    refused(tensors, {}, "lat_conv1.weight has shape (32, 32, 3, 3)", "lacks")


def test_a_file_without_a_trunk_is_named():
    tensors = {k: v for k, v in state_dict(KINDS["v2"]).items() if not k.startswith("lllite_conditioning1.")}
    refused(tensors, {}, "no trunk", "proj_in for v3")
    incomplete = {k: v for k, v in state_dict(KINDS["v3"]).items() if "ln_in" not in k}
    refused(incomplete, {}, "lllite_conditioning1.ln_in")


@pytest.mark.parametrize("kind", KINDS)
def test_module_widths_read_every_kind(kind):
    config = KINDS[kind]
    widths = module_widths(state_dict(config), config, "f")
    assert list(widths) == list(module_names(BLOCKS, parse_target_layers(config.target_layers)))
    assert set(widths.values()) == {MODEL_DIM}


def test_the_input_space_asked_for_is_checked_as_kohyas_loader_does():
    pixel, latent = KINDS["v2"], KINDS["v2.1"]
    check_input_space(pixel, "pixel", "f")
    check_input_space(KINDS["v3"], "latent", "f")
    with pytest.raises(LLLiteFileError, match="f: cond input space mismatch: the file was trained with "
                                              "cond_input_space='pixel' .* but 'latent'"):
        check_input_space(pixel, "latent", "f")
    with pytest.raises(LLLiteFileError, match="trained with cond_input_space='latent' .* but 'pixel'"):
        check_input_space(latent, "pixel", "f")
    with pytest.raises(LLLiteError, match="'rgb'.*pixel, latent"):
        check_input_space(pixel, "rgb", "f")
