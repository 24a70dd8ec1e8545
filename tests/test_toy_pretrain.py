"""The pretraining command end to end, at a size that runs in seconds (the real run takes about an hour)."""
import torch
from diffusers import StableDiffusionXLPipeline

from lllite.sdxl.toy import build_pipeline
from lllite.sdxl.pretrain import main
from lllite.toy.pretraining import image_gradients, outline_band

TINY = ["--train-samples", "8", "--image-size", "64", "--vae-steps", "2", "--vae-batch", "2", "--vae-crop", "64",
        "--unet-steps", "3", "--unet-batch", "2", "--warmup-steps", "1", "--gate-seeds", "1", "--gate-steps", "1",
        "--processes", "1"]


def test_pretraining_writes_a_loadable_pipeline_trains_all_models_and_reports_the_gate(tmp_path, capsys):
    out = tmp_path / "weights"
    # Three steps cannot pass the gate: the command says so and exits 2, but the pipeline is written.
    assert main([*TINY, "--out-dir", str(out)]) == 2
    printed = capsys.readouterr().out
    assert "VAE round trip" in printed and "quality gate: worst caption" in printed and "FAIL" in printed
    assert printed.count("%\n") == 12  # one rate per caption
    trained = StableDiffusionXLPipeline.from_pretrained(out)
    initial = build_pipeline("toy", seed=0)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        before, after = getattr(initial, name).state_dict(), getattr(trained, name).state_dict()
        assert any(not torch.equal(before[key], after[key]) for key in before), f"{name} did not train"
    assert trained.vae.config.scaling_factor != initial.vae.config.scaling_factor
    # Package data: every file readable by every user, whatever the writing libraries chose.
    assert all(path.stat().st_mode & 0o444 == 0o444 for path in out.rglob("*") if path.is_file())


def test_pretraining_never_replaces_a_pipeline_without_overwrite(tmp_path, capsys):
    out = tmp_path / "weights"
    build_pipeline("test").save_pretrained(out)
    before = (out / "model_index.json").read_bytes()
    assert main([*TINY, "--out-dir", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "model_index.json").read_bytes() == before


def test_the_same_seed_pretrains_the_same_weights_and_another_seed_does_not(tmp_path):
    runs = {}
    for run, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main([*TINY, "--seed", seed, "--out-dir", str(tmp_path / run)]) == 2
        pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / run)
        runs[run] = {f"{name}.{key}": value for name in ("unet", "vae", "text_encoder", "text_encoder_2")
                     for key, value in getattr(pipe, name).state_dict().items()}
    assert all(torch.equal(runs["a"][key], runs["b"][key]) for key in runs["a"])
    assert not all(torch.equal(runs["a"][key], runs["c"][key]) for key in runs["a"])


def _weights(folder):
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    return {f"{name}.{key}": value for name in ("unet", "vae", "text_encoder", "text_encoder_2")
            for key, value in getattr(pipe, name).state_dict().items()}


def _fraction_changed(a, b, tolerance=1e-5):
    changed = sum(int(((a[key] - b[key]).abs() > tolerance).sum()) for key in a)
    return changed / sum(value.numel() for value in a.values())


def test_two_processes_train_the_same_weights_as_one_up_to_float_rounding(tmp_path):
    # Each process takes its half of every batch drawn whole, and the gradients are summed: the updates
    # are one process's. What differs is summation order, which AdamW turns into +-lr steps only where a
    # gradient is rounding noise (attention key biases, whose true gradient is 0): a few in 10,000.
    sizes = ["--vae-steps", "3", "--unet-batch", "4"]
    for run, processes, seed in (("one", "1", "0"), ("two", "2", "0"), ("other", "2", "1")):
        assert main([*TINY, *sizes, "--processes", processes, "--seed", seed, "--out-dir", str(tmp_path / run)]) == 2
    one, two, other = (_weights(tmp_path / run) for run in ("one", "two", "other"))
    assert _fraction_changed(one, two) < 1e-3
    assert _fraction_changed(one, other) > 0.5  # what a real difference looks like


def test_batches_that_processes_cannot_share_equally_are_refused(tmp_path, capsys):
    assert main([*TINY, "--unet-batch", "3", "--processes", "2", "--out-dir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "unet_batch (3) must be a multiple of processes (2)" in err
    assert not (tmp_path / "w").exists()


def test_the_outline_band_covers_pixels_near_the_outline_on_both_sides_and_nothing_else():
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 4:8, 4:8] = 1  # a 4x4 square
    band = outline_band(mask, width=1)
    expected = torch.zeros(12, 12)
    expected[3:9, 3:9] = 1  # one pixel outside the square ...
    expected[5:7, 5:7] = 0  # ... and one inside it; the square's centre stays out
    assert torch.equal(band[0, 0], expected)
    assert not outline_band(torch.zeros(1, 1, 6, 6), width=2).any()


def test_image_gradients_are_neighbour_differences_and_vanish_on_a_flat_image():
    ramp = torch.arange(4.0).repeat(3, 1)[None, None]  # rises by 1 per column
    vertical, horizontal = image_gradients(ramp)
    assert vertical.shape == (1, 1, 2, 4) and horizontal.shape == (1, 1, 3, 3)
    assert torch.equal(vertical, torch.zeros_like(vertical)) and torch.equal(horizontal, torch.ones_like(horizontal))


def test_timestep_weights_follow_min_snr_and_debiased_definitions():
    from lllite.sdxl.pretrain import timestep_weights

    # SNR 1/3, 1 and 9: alpha_cumprod / (1 - alpha_cumprod).
    alpha_cumprod = torch.tensor([0.25, 0.5, 0.9])
    snr = torch.tensor([1 / 3, 1.0, 9.0])
    assert torch.equal(timestep_weights(alpha_cumprod, "uniform"), torch.ones(3))
    # Noisy timesteps (SNR below gamma) keep weight 1, clean ones get gamma / SNR.
    assert torch.allclose(timestep_weights(alpha_cumprod, "min-snr", min_snr_gamma=5.0), torch.tensor([1.0, 1.0, 5 / 9]))
    assert torch.allclose(timestep_weights(alpha_cumprod, "debiased"), snr.rsqrt())


def test_an_unknown_loss_weighting_is_refused_by_name(tmp_path, capsys):
    assert main([*TINY, "--loss-weighting", "snr", "--out-dir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "loss_weighting must be one of uniform, min-snr, debiased, got 'snr'" in err
    assert not (tmp_path / "w").exists()


def test_each_loss_weighting_trains_its_own_weights(tmp_path):
    unets = {}
    for weighting in ("uniform", "min-snr", "debiased"):
        assert main([*TINY, "--loss-weighting", weighting, "--out-dir", str(tmp_path / weighting)]) == 2
        unets[weighting] = StableDiffusionXLPipeline.from_pretrained(tmp_path / weighting).unet.state_dict()
    for a, b in (("uniform", "min-snr"), ("uniform", "debiased"), ("min-snr", "debiased")):
        assert not all(torch.equal(unets[a][key], unets[b][key]) for key in unets[a]), f"{a} and {b} trained alike"


def test_a_run_can_continue_from_a_saved_toy_keeping_its_vae_and_training_the_rest(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*TINY, "--out-dir", str(first)]) == 2
    assert main([*TINY, "--start-from", str(first), "--loss-weighting", "uniform", "--out-dir", str(second)]) == 2
    printed = capsys.readouterr().out
    assert f"continuing from {first}" in printed and "shapes read right:" in printed
    # The run's settings, as the flags that differ from the defaults, for the record of how it was made.
    assert "--loss-weighting uniform" in printed and f"--start-from {first}" in printed and "--unet-steps 3" in printed
    before, after = _weights(first), _weights(second)
    vae = [key for key in before if key.startswith("vae.")]
    assert all(torch.equal(before[key], after[key]) for key in vae)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(name + ".")), name
    scaling = [StableDiffusionXLPipeline.from_pretrained(f).vae.config.scaling_factor for f in (first, second)]
    assert scaling[0] == scaling[1]
    # The folder it started from is not recorded in what it wrote.
    assert not [path for path in second.rglob("*.json") if str(tmp_path) in path.read_text()]


def test_a_start_folder_without_a_toy_is_refused_by_name(tmp_path, capsys):
    assert main([*TINY, "--start-from", str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "start_from" in err and "model_index.json" in err
    assert not (tmp_path / "w").exists()
