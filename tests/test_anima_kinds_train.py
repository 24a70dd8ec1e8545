"""kohya's v2.1 and v3 Anima LLLite through the trainer, sampling and the network's own API: the options under
kohya's names, the control latents cached like image latents, files that say their kind, resume refusing another
kind, gate pictures, and the errors a user meets."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_anima_train import config as anima_train_config

import lllite
from lllite.anima import create_network
from lllite.anima.config import KINDS, TRAINING_OPTIONS, AnimaLLLiteConfig
from lllite.anima.pipeline import encode_images
from lllite.anima.toy import ToyRecipe, build_pipeline
from lllite.data import DatasetConfig, PairedDataset, SubsetConfig
from lllite.errors import LLLiteError
from lllite.sampling import gate_map_picture
from lllite.toy.shapes import write_dataset
from lllite.train import TrainConfig, TrainError, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"), 6, size=64)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("test")


def config(shapes: Path, out: Path, **changes) -> TrainConfig:
    """test_anima_train's small run, two steps unless told otherwise."""
    return anima_train_config(shapes, out, **{"max_train_steps": 2, **changes})


def run(settings: TrainConfig, pipe):
    """Train, then detach the network: the module's pipeline is shared by the tests."""
    result = train(settings, pipe)
    result.network.remove()
    return result


def test_the_kinds_and_their_training_options_carry_kohyas_names():
    assert TRAINING_OPTIONS == {"v2": {}, "v2.1": {"lllite_cond_input": "latent"},
                                "v3": {"lllite_cond_input": "latent", "lllite_trunk": "semantic"}}
    assert [AnimaLLLiteConfig(**fields).kind for fields in KINDS.values()] == list(KINDS)
    assert [AnimaLLLiteConfig(**fields).version for fields in KINDS.values()] == ["2", "2", "3"]
    assert ToyRecipe.architecture("v2.1").training_settings()["lllite_cond_input"] == "latent"


@pytest.mark.parametrize("options, named", [
    ({"cond_input_space": "rgb"}, "cond_input_space='rgb'"),
    ({"trunk": "conv"}, "trunk='conv'"),
    ({"cond_input_space": "latent", "trunk": "semantic", "gate": "full"}, "gate='full'"),
    ({"cond_input_space": "latent", "trunk": "semantic", "ref_context": "prompt"}, "ref_context='prompt'"),
    ({"trunk": "semantic"}, "needs cond_input_space='latent'"),
    ({"cond_input_space": "latent", "trunk": "semantic", "cond_in_channels": 4}, "inpainting"),
    ({"ref_context": "uncond"}, "belongs to the semantic trunk"),
    ({"cond_input_space": "latent", "trunk": "semantic", "ref_block": "2,2"}, "twice"),
])
def test_values_no_code_of_kohyas_implements_are_refused_by_name(options, named):
    with pytest.raises(LLLiteError, match=named):
        AnimaLLLiteConfig(**options)


def test_a_training_option_of_another_value_is_a_train_error_naming_it(shapes, tmp_path, pipe):
    with pytest.raises(TrainError, match="trunk='semantic'"):
        train(config(shapes, tmp_path, lllite_trunk="semantic"), pipe)


def test_v21_caches_the_control_latents_and_trains_on_them(shapes, tmp_path, pipe):
    dataset = PairedDataset([DatasetConfig([SubsetConfig(shapes / "images", shapes / "conditioning")], resolution=64,
                                           batch_size=2)], progress=False)
    encoded = dataset.cache_latents(pipe.vae, encode=lambda pixels: encode_images(pipe, pixels), source="conditioning",
                                    progress=False)
    assert encoded == len(dataset)
    sample = dataset[0]
    expected = encode_images(pipe, sample["conditioning_image"][None])[0]
    assert sample["control_latents"].shape == (16, 8, 8)
    assert torch.allclose(sample["control_latents"], expected, atol=1e-5)
    assert "latents" not in sample  # the images' own latents are a separate cache

    result = run(config(shapes, tmp_path, **TRAINING_OPTIONS["v2.1"]), pipe)
    with safe_open(str(result.weights), framework="pt") as f:
        metadata, keys = f.metadata(), set(f.keys())
    assert metadata["lllite.cond_input_space"] == "latent" and metadata["lllite.trunk"] == "stem"
    assert metadata["lllite.version"] == "2"
    assert "lllite_conditioning1.lat_conv1.weight" in keys and "lllite_conditioning1.conv1.weight" not in keys
    loaded = lllite.load(result.weights)
    assert loaded.config.kind == "v2.1"
    assert not torch.equal(loaded.state_dict()["lllite_conditioning1.lat_conv1.weight"],
                           torch.zeros_like(loaded.state_dict()["lllite_conditioning1.lat_conv1.weight"]))


@pytest.mark.parametrize("context", ["zero", "uncond", "caption"])
def test_v3_trains_with_every_reference_context_and_writes_kohyas_v3_metadata(shapes, tmp_path, pipe, context):
    result = run(config(shapes, tmp_path, lllite_ref_context=context, lllite_ref_block="-1,0", lllite_gate="vector",
                          lllite_ref_timestep=0.25, **TRAINING_OPTIONS["v3"]), pipe)
    with safe_open(str(result.weights), framework="pt") as f:
        metadata, keys = f.metadata(), set(f.keys())
    assert {k: metadata[k] for k in ("lllite.version", "lllite.trunk", "lllite.cond_input_space", "lllite.ref_block",
                                     "lllite.ref_timestep", "lllite.ref_context", "lllite.gate")} == {
        "lllite.version": "3", "lllite.trunk": "semantic", "lllite.cond_input_space": "latent",
        "lllite.ref_block": "-1,0", "lllite.ref_timestep": "0.25", "lllite.ref_context": context, "lllite.gate": "vector"}
    assert {"lllite_conditioning1.ln_in.0.weight", "lllite_conditioning1.ln_in.1.weight",
            "lllite_conditioning1.t_proj.weight", "lllite_dit_blocks_0_self_attn_q_proj.gate.weight"} <= keys
    trained = result.network.state_dict()
    assert trained["lllite_conditioning1.t_proj.weight"].abs().sum() > 0  # t-FiLM learned from zero
    assert lllite.load(result.weights).config.ref_block == (-1, 0)


def test_resuming_a_run_of_another_kind_is_refused_naming_the_input_space(shapes, tmp_path, pipe):
    run(config(shapes, tmp_path, save_every_n_steps=1), pipe)
    with pytest.raises(TrainError, match="cond input space mismatch"):
        train(config(shapes, tmp_path, max_train_steps=3, resume="latest", **TRAINING_OPTIONS["v2.1"]), pipe)


def test_set_cond_latent_is_for_latent_networks_and_checks_its_mask(pipe):
    latent = torch.randn(1, 16, 8, 8)
    with pytest.raises(LLLiteError, match="reads the control image"):
        create_network(pipe.transformer).set_cond_latent(latent)
    network = create_network(pipe.transformer, cond_input_space="latent")
    with pytest.raises(LLLiteError, match=r"\(B, 16, h, w\)"):
        network.set_cond_latent(torch.randn(1, 3, 8, 8))
    with pytest.raises(LLLiteError, match="takes no mask"):
        network.set_cond_latent(latent, torch.ones(1, 1, 64, 64))
    inpaint = create_network(pipe.transformer, cond_input_space="latent", cond_in_channels=4)
    with pytest.raises(LLLiteError, match="needs the mask"):
        inpaint.set_cond_latent(latent)
    with pytest.raises(LLLiteError, match=r"\(B, 1, 64, 64\)"):
        inpaint.set_cond_latent(latent, torch.ones(1, 1, 8, 8))
    network.set_cond_image(latent)  # a latent given as the image goes to set_cond_latent, as kohya's network takes it
    assert network._latent_given and torch.equal(network.cond_image, latent)


def test_a_latent_network_on_a_bare_transformer_asks_for_the_pipeline_or_a_latent(pipe):
    network = create_network(pipe.transformer, cond_input_space="latent").apply_to(pipe.transformer)
    network.set_cond_image(torch.zeros(1, 3, 64, 64))
    inputs = dict(hidden_states=torch.randn(1, 16, 1, 8, 8), timestep=torch.tensor([0.5]),
                  encoder_hidden_states=torch.randn(1, 4, pipe.transformer.config.text_embed_dim))
    try:
        with pytest.raises(LLLiteError, match="set_cond_latent"):
            pipe.transformer(**inputs)
        network.set_encoders(pipe.vae)
        pipe.transformer(**inputs)
        assert not any(name.startswith("_encoders") for name in network.state_dict())
    finally:
        network.remove()


def test_gate_pictures_show_every_module_of_a_v3_network_and_networks_without_gates_say_so(pipe):
    network = create_network(pipe.transformer, cond_input_space="latent", trunk="semantic")
    picture = gate_map_picture(pipe, network, torch.zeros(1, 3, 64, 64), "a red circle", num_inference_steps=2,
                               height=64, width=64)
    assert picture.width > 2 * 160 and picture.height > 2 * 160
    assert all(m.last_gate is None and not m.capture_gate for _, m in network.lllite_modules())
    with pytest.raises(LLLiteError, match="no gate"):
        create_network(pipe.transformer, cond_input_space="latent", trunk="semantic", gate="none").record_gates()
    with pytest.raises(LLLiteError, match="no gate"):
        create_network(pipe.transformer).record_gates()


def test_gate_maps_are_the_modules_gates_on_the_token_grid(pipe):
    network = create_network(pipe.transformer, cond_input_space="latent", trunk="semantic").apply_to(pipe)
    torch.manual_seed(0)
    for name, parameter in network.named_parameters():
        if ".gate." in name:
            torch.nn.init.normal_(parameter, std=1.0)
    network.set_cond_image(torch.rand(1, 3, 64, 64) * 2 - 1)
    network.record_gates()
    try:
        from lllite.anima.pipeline import generate
        generate(pipe, "a red circle", num_inference_steps=2, height=64, width=64, seed=0)
        maps = network.gate_maps()
    finally:
        network.record_gates(False)
        network.remove()
    assert set(maps) == {name for name, _ in network.lllite_modules()}
    gate = next(iter(maps.values()))
    assert gate.shape == (1, 4, 4)  # 64 px: latent 8x8, tokens 4x4
    assert 0 < gate.min() < gate.max() < 1  # random gate weights: not the uniform open start
