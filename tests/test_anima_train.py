"""Anima through the shared trainer and sampling: kohya's objective and defaults, files kohya reads, exact
resume, the control acting through the modular pipeline's guidance calls."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import lllite
from lllite.anima import AnimaLLLiteNetwork, create_network
from lllite.anima.toy import build_pipeline
from lllite.data import DatasetConfig, SubsetConfig
from lllite.sampling import generate
from lllite.toy.shapes import write_dataset
from lllite.train import TrainConfig, TrainError, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"), 6, size=64)


def config(shapes: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(dataset_config=DatasetConfig([SubsetConfig(shapes / "images", shapes / "conditioning")],
                                                 resolution=64, batch_size=2),
                    output_dir=str(out), cond_emb_dim=8, network_dim=8, lllite_cond_dim=8, max_train_steps=3,
                    mixed_precision="no", gradient_checkpointing=False, optimizer_type="adamw", progress=False)
    settings.update(changes)
    return TrainConfig(**settings)


def test_anima_trains_with_kohyas_defaults_and_writes_a_file_kohya_reads(shapes, tmp_path):
    pipe = build_pipeline("test")
    result = train(config(shapes, tmp_path, sample_every_n_steps=3, sample_num_inference_steps=2,
                          num_validation_images=1, lllite_target_layers="self_attn_qkv"), pipe)
    assert isinstance(result.network, AnimaLLLiteNetwork) and result.steps == 3
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    with safe_open(str(result.weights), framework="pt") as f:
        metadata, dtypes = f.metadata(), {f.get_tensor(k).dtype for k in f.keys()}
    assert metadata["modelspec.architecture"] == "anima-preview/control-net-lllite"
    assert metadata["lllite.target_layers"] == "self_attn_qkv" and metadata["lllite.mlp_dim"] == "8"
    assert metadata["ss_timestep_sampling"] == "sigmoid" and metadata["ss_learning_rate"] == "0.0001"
    assert metadata["ss_weighting_scheme"] == "none" and metadata["ss_discrete_flow_shift"] == "1.0"
    assert dtypes == {torch.bfloat16}
    assert (tmp_path / "samples").is_dir() and list((tmp_path / "samples").glob("*.png"))
    loaded = lllite.load(result.weights)
    assert loaded.config.target_layers == "self_attn_qkv" and len(loaded) == 3 * len(pipe.transformer.transformer_blocks)
    trained = {k: v.to(torch.bfloat16).float() for k, v in result.network.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())
    assert not torch.equal(trained["lllite_dit_blocks_0_self_attn_q_proj.up.weight"], torch.zeros(1))


def test_an_anima_run_resumed_from_a_checkpoint_ends_with_the_same_weights(shapes, tmp_path):
    straight = train(config(shapes, tmp_path / "a", max_train_steps=4, timestep_sampling="shift",
                            discrete_flow_shift=3.0, weighting_scheme="cosmap"), build_pipeline("test"))
    first = config(shapes, tmp_path / "b", max_train_steps=3, save_every_n_steps=2, timestep_sampling="shift",
                   discrete_flow_shift=3.0, weighting_scheme="cosmap")
    train(first, build_pipeline("test"))
    resumed = train(config(shapes, tmp_path / "b", max_train_steps=4, save_every_n_steps=2, timestep_sampling="shift",
                           discrete_flow_shift=3.0, weighting_scheme="cosmap", resume="latest"), build_pipeline("test"))
    assert resumed.losses == straight.losses
    for key, value in straight.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[key], value), key


def test_options_of_the_other_family_are_refused_by_name(shapes, tmp_path):
    with pytest.raises(TrainError, match="min_snr_gamma: not an option of Anima"):
        train(config(shapes, tmp_path, min_snr_gamma=5.0), build_pipeline("test"))
    with pytest.raises(TrainError, match="timestep_sampling = 'cubic' is not one of Anima's"):
        train(config(shapes, tmp_path, timestep_sampling="cubic"), build_pipeline("test"))
    from lllite.sdxl.toy import build_pipeline as build_sdxl
    with pytest.raises(TrainError, match="lllite_target_layers, lllite_cond_dim: not an option of SDXL"):
        train(config(shapes, tmp_path, lllite_target_layers="self_attn_qkv"), build_sdxl("test"))


def test_the_control_acts_through_the_modular_pipelines_guidance_calls():
    """Both guidance branches get the control (batch B each), and multiplier 0 is the base model exactly."""
    pipe = build_pipeline("test")
    network = create_network(pipe.transformer, cond_emb_dim=8, network_dim=8, cond_dim=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.3)
    batches = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, k: batches.append(k["hidden_states"].shape[0]),
                                                        with_kwargs=True)
    control = torch.rand(2, 3, 64, 96) * 2 - 1
    settings = dict(seed=[1, 2], num_inference_steps=2, guidance_scale=3.0, width=96, height=64)
    base = generate(pipe, network, control, ["a red circle", "a blue square"], multiplier=0.0, **settings)
    assert batches == [2] * 4  # two steps, two guidance branches, batch 2 each
    acted = []
    after = pipe.transformer.register_forward_hook(lambda m, a, k, o: acted.append(network._acted), with_kwargs=True)
    controlled = generate(pipe, network, control, ["a red circle", "a blue square"], multiplier=1.0, **settings)
    after.remove()
    assert acted == [True] * 4
    again = generate(pipe, network, control, ["a red circle", "a blue square"], multiplier=0.0, **settings)
    handle.remove()
    assert not network.is_attached
    differs = [a.tobytes() != b.tobytes() for a, b in zip(base, controlled)]
    assert all(differs)
    assert [a.tobytes() for a in base] == [a.tobytes() for a in again]
    assert base[0].size == (96, 64)


def test_the_command_line_trains_anima_from_a_toml_and_a_local_modular_folder(shapes, tmp_path, capsys, monkeypatch):
    from lllite.anima.pipeline import save_pipeline
    from lllite.train import main

    save_pipeline(build_pipeline("test"), tmp_path / "anima")
    (tmp_path / "data.toml").write_text(
        f'[[datasets]]\nresolution = 64\nbatch_size = 2\n[[datasets.subsets]]\n'
        f'image_dir = "{shapes / "images"}"\nconditioning_data_dir = "{shapes / "conditioning"}"\n')
    (tmp_path / "train.toml").write_text(
        '[model]\npretrained_model_name_or_path = "anima"\n'
        '[network]\ncond_emb_dim = 8\nnetwork_dim = 8\nlllite_cond_dim = 8\nlllite_target_layers = "self_attn_q_pre,mlp_fc1_pre"\n'
        '[training]\ndataset_config = "data.toml"\nmax_train_steps = 2\nmixed_precision = "no"\noptimizer_type = "adamw"\n'
        'timestep_sampling = "shift"\ndiscrete_flow_shift = 3.0\n')
    monkeypatch.chdir(tmp_path)
    code = main(["--config", "train.toml", "--output_dir", "out", "--no-gradient_checkpointing", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    network = lllite.load(tmp_path / "out" / "lllite.safetensors")
    assert isinstance(network, AnimaLLLiteNetwork)
    assert network.metadata["lllite.target_atomics"] == "self_attn_q_pre,mlp_fc1_pre"
    assert network.metadata["ss_timestep_sampling"] == "shift" and network.metadata["ss_steps"] == "2"


def test_an_inpainting_network_trains_on_drawn_masks_and_says_so_in_its_file(shapes, tmp_path):
    result = train(config(shapes, tmp_path, lllite_cond_in_channels=4, lllite_inpaint_masked_input=True,
                          sample_every_n_steps=2, sample_num_inference_steps=2, num_validation_images=1,
                          max_train_steps=2), build_pipeline("test"))
    network = lllite.load(result.weights)
    assert network.config.cond_in_channels == 4 and network.config.inpaint_masked_input
    assert network.metadata["lllite.cond_in_channels"] == "4" and network.metadata["lllite.inpaint_masked_input"] == "true"
    assert network.trunk.conv1.weight.shape[1] == 4
    assert list((tmp_path / "samples").glob("*.png"))


def test_drawn_inpainting_masks_are_binary_regions_that_follow_the_generator():
    from lllite.images import random_region_masks

    first = random_region_masks(4, 48, 64, torch.Generator().manual_seed(0))
    again = random_region_masks(4, 48, 64, torch.Generator().manual_seed(0))
    assert first.shape == (4, 1, 48, 64) and torch.equal(first, again)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    coverage = first.mean(dim=(1, 2, 3))
    assert (coverage > 0.005).all() and (coverage < 0.9).all()


def test_the_step_range_counts_the_modular_pipelines_steps_as_diffusers_does():
    pipe = build_pipeline("test")
    network = create_network(pipe.transformer, cond_emb_dim=8, network_dim=8, cond_dim=8)
    active = []
    pipe.transformer.register_forward_hook(lambda m, a, k, o: active.append(network._step_active), with_kwargs=True)
    generate(pipe, network, torch.zeros(1, 3, 64, 64), "a red circle", num_inference_steps=4, guidance_scale=3.0,
             control_guidance_start=0.25, control_guidance_end=0.75)
    # step i of 4 is controlled when i / 4 >= 0.25 and (i + 1) / 4 <= 0.75; two guidance calls per step
    assert active == [False, False, True, True, True, True, False, False]
