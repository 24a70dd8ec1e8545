"""The trainer on the tiny "test" SDXL: outputs, exact resume, DDP, NaN, memory options and clear errors."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lllite
from lllite.data import DatasetConfig, DatasetConfigError, SubsetConfig
from lllite.launch import launch
from lllite.objective import lr_factor
from lllite.sdxl.toy import build_pipeline
from lllite.toy.shapes import write_dataset
from lllite.sdxl.training import check_sdxl
from lllite.train import TrainConfig, TrainError, main, train
from lllite.train.batches import step_generator
from lllite.train.checkpoints import read_training_state, write_training_state


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"), 8, size=64)


def dataset(shapes: Path, batch_size: int = 2, resolution: int = 64, **changes) -> DatasetConfig:
    return DatasetConfig([SubsetConfig(shapes / "images", shapes / "conditioning")], resolution=resolution,
                         batch_size=batch_size, **changes)


def config(shapes: Path, out: Path, **changes) -> TrainConfig:
    """Small and fast: float32, plain AdamW, caches on, no pictures."""
    settings = dict(dataset_config=dataset(shapes), output_dir=str(out), cond_emb_dim=8, network_dim=8,
                    learning_rate=1e-3, max_train_steps=4, mixed_precision="no", gradient_checkpointing=False,
                    optimizer_type="adamw", progress=False)
    settings.update(changes)
    return TrainConfig(**settings)


def weights_of(network) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def kill_at_unet_call(pipe, call: int):
    """Stop a run as a kill would, in the middle of a step: at the UNet's ``call``-th forward (one per step here)."""
    calls = {"n": 0}

    def kill(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("killed")

    return pipe.unet.register_forward_pre_hook(kill, with_kwargs=True)


def test_training_writes_a_kohya_file_with_metadata_a_loss_plot_and_validation_grids(shapes, tmp_path):
    pipe = build_pipeline("test")
    result = train(config(shapes, tmp_path, sample_every_n_steps=2, sample_num_inference_steps=2,
                          num_validation_images=2), pipe)
    assert result.steps == 4 and len(result.losses) == 4 and result.stopped_by == "max_train_steps"
    assert result.weights == tmp_path / "lllite.safetensors"
    loaded = lllite.load(result.weights)
    assert (loaded.cond_emb_dim, loaded.network_dim, len(loaded)) == (8, 8, 12)
    assert loaded.metadata["ss_steps"] == "4"
    assert loaded.metadata["ss_network_dim"] == "8"
    assert loaded.metadata["ss_num_train_images"] == "8"
    assert loaded.metadata["modelspec.architecture"].endswith("control-net-lllite")
    # Zero-initialised up projections have moved: the network learned something.
    assert any(v.abs().max() > 0 for k, v in load_file(result.weights).items() if k.endswith("up.0.weight"))
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["lllite-step00000002.png", "lllite-step00000004.png"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    # The UNet itself did not train.
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_training_logs_loss_and_learning_rate_per_step_to_tensorboard(shapes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(config(shapes, tmp_path), build_pipeline("test"))
    events = EventAccumulator(str(tmp_path / "logs" / "lllite"))
    events.Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([value for _, value in result.losses])
    assert len(events.Scalars("lr")) == 4


def test_a_run_killed_mid_step_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(shapes, tmp_path):
    whole = train(config(shapes, tmp_path / "whole", max_train_steps=6), build_pipeline("test"))

    pipe = build_pipeline("test")
    handle = kill_at_unet_call(pipe, 5)
    with pytest.raises(KeyboardInterrupt):
        train(config(shapes, tmp_path / "cut", max_train_steps=6, save_every_n_steps=2), pipe)
    handle.remove()
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]

    resumed = train(config(shapes, tmp_path / "cut", max_train_steps=6, save_every_n_steps=2, resume="latest"),
                    build_pipeline("test"))
    assert resumed.steps == 6
    assert [s for s, _ in resumed.losses] == [1, 2, 3, 4, 5, 6]
    for key, value in weights_of(whole.network).items():
        torch.testing.assert_close(resumed.network.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_a_resumed_run_follows_the_learning_rate_schedule_of_an_uninterrupted_one(shapes, tmp_path):
    # No scheduler state is saved: the rate of every step follows from the step (and the time used).
    settings = dict(max_train_steps=5, lr_scheduler="cosine", lr_warmup_steps=2, learning_rate=3e-3)
    whole = train(config(shapes, tmp_path / "whole", **settings), build_pipeline("test"))
    pipe = build_pipeline("test")
    handle = kill_at_unet_call(pipe, 4)
    with pytest.raises(KeyboardInterrupt):
        train(config(shapes, tmp_path / "cut", save_every_n_steps=3, **settings), pipe)
    handle.remove()
    resumed = train(config(shapes, tmp_path / "cut", save_every_n_steps=3, resume="latest", **settings),
                    build_pipeline("test"))
    assert resumed.steps == 5
    for key, value in weights_of(whole.network).items():
        torch.testing.assert_close(resumed.network.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_holds_the_training_time_used_and_a_resumed_run_counts_it_against_its_budget(shapes, tmp_path):
    train(config(shapes, tmp_path, max_train_steps=3, save_every_n_steps=2), build_pipeline("test"))
    folder = tmp_path / "checkpoints" / "step-00000002"
    state = read_training_state(folder)
    assert state["step"] == 2 and 0 < state["train_seconds"] < 120 and "lr_scheduler" not in state
    write_training_state(folder, {**state, "train_seconds": 100.0})
    resumed = train(config(shapes, tmp_path, max_train_steps=3, resume="latest", max_train_seconds=50.0),
                    build_pipeline("test"))
    assert resumed.stopped_by == "max_train_seconds" and resumed.steps == 2
    # A checkpoint without the time used (as earlier versions wrote them) resumes with none used.
    write_training_state(folder, {key: value for key, value in state.items() if key != "train_seconds"})
    resumed = train(config(shapes, tmp_path, max_train_steps=3, resume="latest", max_train_seconds=50.0),
                    build_pipeline("test"))
    assert resumed.stopped_by == "max_train_steps" and resumed.steps == 3


def test_checkpoints_keep_only_the_newest_and_hold_optimizer_state(shapes, tmp_path):
    train(config(shapes, tmp_path, max_train_steps=4, save_every_n_steps=1, checkpoints_total_limit=2), build_pipeline("test"))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000003"]
    state = read_training_state(tmp_path / "checkpoints" / "step-00000003")
    assert state["step"] == 3 and state["optimizer"]["state"]
    assert (tmp_path / "lllite-step00000003.safetensors").is_file()


def test_a_nan_loss_stops_the_run_with_a_clear_message_and_keeps_the_last_checkpoint(shapes, tmp_path):
    with pytest.raises(TrainError, match=r"loss became nan.*last checkpoint is .*step-0000000\d"):
        train(config(shapes, tmp_path, learning_rate=1e30, max_train_steps=20, save_every_n_steps=1), build_pipeline("test"))
    assert not (tmp_path / "lllite.safetensors").exists()
    last = sorted((tmp_path / "checkpoints").iterdir())[-1]
    assert all(torch.isfinite(v).all() for v in load_file(last / "network.safetensors").values())


def test_bf16_mixed_precision_keeps_the_network_in_float32_and_learns(shapes, tmp_path):
    pipe = build_pipeline("test")
    result = train(config(shapes, tmp_path, mixed_precision="bf16", max_train_steps=2), pipe)
    assert pipe.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in result.network.parameters())
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    assert any(p.abs().max() > 0 for n, p in result.network.named_parameters() if n.endswith("up.0.weight"))


def test_gradient_checkpointing_and_uncached_inputs_train_the_same_weights(shapes, tmp_path):
    plain = weights_of(train(config(shapes, tmp_path / "a", max_train_steps=2), build_pipeline("test")).network)
    checkpointed = train(config(shapes, tmp_path / "b", max_train_steps=2, gradient_checkpointing=True), build_pipeline("test"))
    # Checkpointed blocks embed the control one module at a time, plain training all modules in one matmul per
    # layer: sums in another order, which Adam's first steps turn into differences of under 1% of a step (lr 1e-3).
    for key, value in plain.items():
        torch.testing.assert_close(checkpointed.network.state_dict()[key], value, rtol=0, atol=1e-5)
    # Encoding per batch instead of once sums in another order; Adam turns that into small step differences.
    uncached = train(config(shapes, tmp_path / "c", max_train_steps=2, cache_latents=False,
                            cache_text_encoder_outputs=False), build_pipeline("test"))
    for key, value in plain.items():
        torch.testing.assert_close(uncached.network.state_dict()[key], value, rtol=0, atol=1e-4)


def test_a_compiled_unet_trains_as_one_graph_with_the_losses_and_weights_of_eager(shapes, tmp_path, monkeypatch):
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    eager = train(config(shapes, tmp_path / "eager", max_train_steps=3), build_pipeline("test"))
    # aot_eager traces the forward and the backward as inductor does, without its minutes of code generation
    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend("aot_eager")
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: compile(model, backend=counter, **options))
    compiled = train(config(shapes, tmp_path / "compiled", max_train_steps=3, compile=True), build_pipeline("test"))
    torch._dynamo.reset()
    assert counter.frame_count == 1 and not counters["graph_break"]
    assert [s for s, _ in compiled.losses] == [1, 2, 3]
    torch.testing.assert_close([v for _, v in compiled.losses], [v for _, v in eager.losses], rtol=1e-5, atol=0)
    for key, value in weights_of(eager.network).items():
        torch.testing.assert_close(weights_of(compiled.network)[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_min_snr_weighting_never_raises_the_loss_and_noise_offset_changes_it(shapes, tmp_path):
    plain = train(config(shapes, tmp_path / "a", max_train_steps=2), build_pipeline("test")).losses
    weighted = train(config(shapes, tmp_path / "b", max_train_steps=2, min_snr_gamma=0.05), build_pipeline("test")).losses
    offset = train(config(shapes, tmp_path / "c", max_train_steps=2, noise_offset=0.1), build_pipeline("test")).losses
    # Same first step, same draws; each weight min(snr, gamma) / snr is <= 1, and < 1 wherever snr > gamma.
    assert weighted[0][1] < plain[0][1]
    assert offset[0][1] != plain[0][1]


def test_debiased_estimation_divides_each_loss_by_the_square_root_of_its_snr(shapes, tmp_path):
    pipe = build_pipeline("test")
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    one = dict(max_train_steps=1, train_batch_size=1)
    plain = train(config(shapes, tmp_path / "a", **one), pipe).losses[0][1]
    debiased = train(config(shapes, tmp_path / "b", **one, debiased_estimation_loss=True), pipe).losses[0][1]
    handle.remove()
    assert torch.equal(seen[0], seen[1])  # the same draws: only the weighting differs
    # SDXL's noise schedule: scaled_linear betas 0.00085..0.012 over 1000 steps.
    alphas_cumprod = (1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64).square()).cumprod(0)
    snr = float(alphas_cumprod[seen[0][0]] / (1 - alphas_cumprod[seen[0][0]]))
    assert debiased == pytest.approx(plain / min(snr, 1000.0) ** 0.5, rel=1e-4)


def test_the_learning_rate_schedules_match_diffusers_and_a_time_budget_brings_the_decay_forward():
    from diffusers.optimization import get_scheduler

    for kind in ("constant", "constant_with_warmup", "linear", "cosine"):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        reference = get_scheduler(kind, optimizer, num_warmup_steps=10, num_training_steps=100)
        for step in range(100):
            assert lr_factor(kind, step, 10, 100) == pytest.approx(reference.get_last_lr()[0], abs=1e-9), (kind, step)
            optimizer.step()
            reference.step()
    # Halfway through the steps but with 90% of the time spent, the decay is where 90% of the steps would put it.
    assert lr_factor("cosine", 55, 10, 100, time_used=0.9) == pytest.approx(lr_factor("cosine", 91, 10, 100))
    assert lr_factor("linear", 55, 10, 100, time_used=0.2) == lr_factor("linear", 55, 10, 100)  # steps lead here
    assert lr_factor("cosine", 5, 10, 100, time_used=0.9) == 0.5  # warmup goes by steps
    assert lr_factor("cosine", 60, 10, 100, time_used=1.5) == 0.0


def test_a_time_budget_stops_the_run_and_anneals_the_learning_rate_by_its_end(shapes, tmp_path, monkeypatch):
    import lllite.train.loop as trainer

    factors = []

    def recording(*args):
        factors.append(lr_factor(*args))
        return factors[-1]

    monkeypatch.setattr(trainer, "lr_factor", recording)
    result = train(config(shapes, tmp_path, max_train_steps=100_000, max_train_seconds=3.0, lr_scheduler="cosine"),
                   build_pipeline("test"))
    assert result.stopped_by == "max_train_seconds" and 2 < result.steps < 100_000
    assert result.train_seconds == pytest.approx(3.0, abs=1.5)
    # By steps alone the rate would still be at its peak; by time it has decayed to almost nothing.
    assert factors[0] == 1.0 and factors[-1] < 0.05


def test_cubic_timestep_sampling_draws_noisier_timesteps(shapes, tmp_path):
    pipe = build_pipeline("test")
    means = {}
    for sampling in ("uniform", "cubic"):
        seen = []
        handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
        train(config(shapes, tmp_path / sampling, max_train_steps=8, train_batch_size=8, timestep_sampling=sampling), pipe)
        handle.remove()
        timesteps = torch.cat(seen).float()
        assert 0 <= timesteps.min() and timesteps.max() <= 999
        means[sampling] = timesteps.mean()
    assert 350 < means["uniform"] < 650
    assert means["cubic"] > 650  # E[1 - u^3] = 0.75


def test_gradient_accumulation_counts_optimizer_steps(shapes, tmp_path):
    seen = []
    result = train(config(shapes, tmp_path, max_train_steps=3, gradient_accumulation_steps=2), build_pipeline("test"),
                   on_step=lambda step, loss: seen.append((step, loss)))
    assert result.steps == 3 and [s for s, _ in result.losses] == [1, 2, 3]
    # on_step sees every optimizer step, with the loss the run records.
    assert seen == result.losses


def test_adamw8bit_without_bitsandbytes_says_so_and_trains_with_adamw(shapes, tmp_path, capsys):
    result = train(config(shapes, tmp_path, optimizer_type="adamw8bit", max_train_steps=1), build_pipeline("test"))
    assert "plain AdamW" in capsys.readouterr().out
    assert result.steps == 1


def test_the_same_seed_draws_the_same_noise_and_another_step_draws_other_noise():
    first = torch.randn(4, generator=step_generator(42, 7, 0, 0))
    assert torch.equal(first, torch.randn(4, generator=step_generator(42, 7, 0, 0)))
    assert not torch.equal(first, torch.randn(4, generator=step_generator(42, 8, 0, 0)))
    assert not torch.equal(first, torch.randn(4, generator=step_generator(42, 7, 0, 1)))


# ------------------------------------------------------------------------------------------ errors


def test_an_empty_dataset_is_refused_naming_the_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "conditioning").mkdir()
    with pytest.raises(DatasetConfigError, match="no usable image/conditioning pair in .*images"):
        train(config(tmp_path, tmp_path / "out"), build_pipeline("test"))


def test_a_model_that_is_not_sdxl_shaped_is_refused():
    pipe = build_pipeline("test")
    pipe.unet.register_to_config(addition_embed_type=None)
    with pytest.raises(TrainError, match="not SDXL-shaped.*addition_embed_type is None"):
        check_sdxl(pipe, "'sd15'")
    pipe = build_pipeline("test")
    pipe.text_encoder_2 = None
    with pytest.raises(TrainError, match="not an SDXL pipeline: it has no text_encoder_2"):
        check_sdxl(pipe)


def test_a_resolution_the_model_cannot_take_is_refused_before_training(shapes, tmp_path):
    pipe = build_pipeline("test")
    pipe.vae_scale_factor = 16  # a model whose VAE downsamples 16x needs sides in multiples of 64 px
    with pytest.raises(TrainError, match="96x96 px.*multiples of 64"):
        train(config(shapes, tmp_path, dataset_config=dataset(shapes, resolution=96, bucket_reso_steps=32)), pipe)


def test_an_earlier_run_is_never_overwritten_without_asking(shapes, tmp_path):
    train(config(shapes, tmp_path, max_train_steps=1), build_pipeline("test"))
    with pytest.raises(TrainError, match="already holds a run.*--resume.*--overwrite"):
        train(config(shapes, tmp_path, max_train_steps=1), build_pipeline("test"))
    with pytest.raises(TrainError, match="no checkpoint"):
        train(config(shapes, tmp_path, max_train_steps=1, resume="latest"), build_pipeline("test"))


def test_bad_settings_name_the_option(shapes, tmp_path):
    with pytest.raises(TrainError, match="optimizer_type = 'sgd' is not one of"):
        TrainConfig(optimizer_type="sgd")
    with pytest.raises(TrainError, match="cond_emb_dim must be even"):
        TrainConfig(cond_emb_dim=7)
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="fp16 needs a CUDA GPU; use bf16 or no"):
            train(config(shapes, tmp_path, mixed_precision="fp16"), build_pipeline("test"))


# ------------------------------------------------------------------------------------------ command line


def test_the_command_line_trains_from_a_toml_and_a_local_diffusers_folder(shapes, tmp_path, capsys, monkeypatch):
    build_pipeline("test").save_pretrained(tmp_path / "model")
    (tmp_path / "data.toml").write_text(
        f'[[datasets]]\nresolution = 64\nbatch_size = 2\n[[datasets.subsets]]\n'
        f'image_dir = "{shapes / "images"}"\nconditioning_data_dir = "{shapes / "conditioning"}"\n')
    (tmp_path / "train.toml").write_text(
        '[model]\npretrained_model_name_or_path = "model"\n'
        '[training]\ndataset_config = "data.toml"\ncond_emb_dim = 8\nnetwork_dim = 8\nmax_train_steps = 2\n'
        'mixed_precision = "no"\noptimizer_type = "adamw"\nlearning_rate = 1e-3\n')
    monkeypatch.chdir(tmp_path)
    code = main(["--config", "train.toml", "--output_dir", "out", "--no-gradient_checkpointing", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert lllite.load(tmp_path / "out" / "lllite.safetensors").metadata["ss_steps"] == "2"


def test_the_command_line_reports_a_user_mistake_in_one_line(tmp_path, capsys):
    (tmp_path / "train.toml").write_text("learnign_rate = 1e-4\n")
    assert main(["--config", str(tmp_path / "train.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown key 'learnign_rate'" in err and len(err.strip().splitlines()) == 1
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "training config file not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ DDP


def _ddp_worker(shapes: Path, out: Path) -> None:
    result = train(config(shapes, out, max_train_steps=3), build_pipeline("test"))
    torch.save({"weights": weights_of(result.network), "losses": result.losses, "file": result.weights},
               out.parent / f"rank{os.environ['RANK']}.pt")


def test_two_cpu_processes_train_as_one_ddp_job_with_identical_weights_and_one_writer(shapes, tmp_path):
    # The environment of `accelerate launch`, in forked processes that inherit the imported libraries.
    launch(_ddp_worker, shapes, tmp_path / "out", processes=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(ranks[1]["weights"][key], value), key
    assert any(v.abs().max() > 0 for k, v in ranks[0]["weights"].items() if k.endswith("up.0.weight"))
    # The logged loss is the mean over both processes, so both report the same numbers.
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["file"] == tmp_path / "out" / "lllite.safetensors" and ranks[1]["file"] is None
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    if importlib.util.find_spec("tensorboard") is None:
        assert written == ["lllite.safetensors", "loss.png"]
    else:
        # TensorBoard too logs from the main process only.
        assert written == ["lllite.safetensors", "logs", "loss.png"]
        # Event files are named events.out.tfevents.TIME.HOST.PID.N: every one from the same process.
        events = list((tmp_path / "out" / "logs").rglob("events.out.tfevents.*"))
        assert events and len({p.name.split(".")[-2] for p in events}) == 1
