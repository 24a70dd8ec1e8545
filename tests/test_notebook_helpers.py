"""The notebooks' helpers and widget callbacks, called as plain functions."""
from __future__ import annotations

import functools
import json
import os
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from ipywidgets import IntSlider
from PIL import Image

from lllite.conditioning import canny
from lllite.data import SubsetConfig, pair_subset
from lllite.environment import Environment, detect_environment, find_weights, load_pipeline, quick_mode
from lllite.notebook import (
    LiveView, TrainingMonitor, canny_view, control_view, file_summary, markdown_table, pair_view, schedule_view,
    settings_table, unused_path, validation_grids,
)
from lllite.recipes import trained_files
from lllite.errors import LLLiteError
from lllite.sdxl.toy import build_pipeline
from lllite.toy.shapes import render_sample, write_dataset

TOY_CPU = Environment(in_colab=False, gpu=None, device="cpu", model="toy", quick=True)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("test")


@pytest.fixture
def shapes(tmp_path):
    return write_dataset(tmp_path / "shapes", 3, size=64)


# ------------------------------------------------------------------------------------------ environment


@pytest.mark.parametrize("value, quick", [("", False), ("0", False), ("no", False), ("1", True), ("TRUE", True), (" yes ", True)])
def test_quick_mode_reads_lllite_quick(value, quick):
    assert quick_mode({"LLLITE_QUICK": value}) is quick


def test_quick_mode_is_off_when_the_variable_is_unset_and_refuses_other_values():
    assert quick_mode({}) is False
    with pytest.raises(ValueError, match="LLLITE_QUICK='maybe'"):
        quick_mode({"LLLITE_QUICK": "maybe"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")
def test_without_a_gpu_auto_chooses_the_toy_and_sdxl_can_still_be_forced():
    env = detect_environment("auto", {"LLLITE_QUICK": "1"})
    assert (env.model, env.device, env.gpu, env.quick, env.image_size) == ("toy", "cpu", None, True, 128)
    with pytest.warns(UserWarning, match="without a GPU"):
        forced = detect_environment("sdxl", {})
    assert (forced.model, forced.image_size, forced.quick) == ("sdxl", 1024, False)


def test_an_unknown_model_choice_names_the_variable():
    with pytest.raises(ValueError, match="MODEL = 'sd15'"):
        detect_environment("sd15")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")
def test_the_toy_anima_is_a_128_pixel_anima_model_and_sdxls_choices_keep_their_family():
    env = detect_environment("anima-toy", {})
    assert (env.model, env.family, env.toy, env.image_size, env.anima) == ("anima-toy", "anima", True, 128, None)
    toy = detect_environment("toy", {})
    assert (toy.family, toy.toy, toy.image_size) == ("sdxl", True, 128)
    assert "toy Anima" in str(env)


def test_real_anima_comes_from_the_anima_argument_or_lllite_anima_and_is_1024_pixels():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no GPU here
        given = detect_environment("anima", {}, anima="/models/anima")
        from_environ = detect_environment("anima", {"LLLITE_ANIMA": "circlestone-labs/anima-diffusers"})
    assert (given.family, given.toy, given.image_size, given.anima) == ("anima", False, 1024, "/models/anima")
    assert from_environ.anima == "circlestone-labs/anima-diffusers" and "anima-diffusers" in str(from_environ)


def test_real_anima_without_a_model_says_how_to_get_one():
    with pytest.raises(LLLiteError, match="set ANIMA .*LLLITE_ANIMA.*convert_anima_to_diffusers.py"):
        detect_environment("anima", {})


def test_lllite_model_chooses_the_model_where_the_notebook_says_auto():
    assert detect_environment("auto", {"LLLITE_MODEL": "anima-toy"}).model == "anima-toy"
    assert detect_environment("toy", {"LLLITE_MODEL": "anima-toy"}).model == "toy"
    with pytest.raises(LLLiteError, match="LLLITE_MODEL='sd3'"):
        detect_environment("auto", {"LLLITE_MODEL": "sd3"})


def test_load_pipeline_loads_the_toy_anima_as_an_anima_pipeline_in_float32(monkeypatch):
    calls = []
    monkeypatch.setattr("lllite.auto.load_pipeline", lambda name, **options: calls.append((name, options)))
    load_pipeline(Environment(False, None, "cpu", "anima-toy", True))
    load_pipeline(Environment(False, "H100", "cuda", "anima", False, anima="/models/anima"))
    load_pipeline(TOY_CPU)
    assert [(name, o.get("model_family", "auto"), o["dtype"]) for name, o in calls] == [
        ("toy", "anima", torch.float32), ("/models/anima", "anima", torch.bfloat16), ("toy", "auto", torch.float32)]


# ------------------------------------------------------------------------------------------ live views


def test_a_live_view_renders_the_controls_values_and_re_renders_when_one_changes():
    calls = []
    slider = IntSlider(value=3, min=0, max=10)
    view = LiveView(lambda index: calls.append(index) or f"picture {index}", index=slider)
    assert view.update() == "picture 3"
    slider.value = 7
    assert calls == [3, 7] and view.current == "picture 7" and view.error is None


def test_a_live_view_shows_the_message_of_a_value_error_instead_of_a_picture():
    view = LiveView(lambda low, high: canny_view(np.zeros((32, 32, 3), np.uint8), low, high),
                    low=IntSlider(value=300, max=500), high=IntSlider(value=200, max=500))
    view.update()
    assert "low <= high" in view.error and "Cannot render" in view.current.data
    view.controls["high"].value = 400
    assert view.error is None and isinstance(view.current, Image.Image)


def test_a_live_view_turns_figures_into_pictures_and_closes_them():
    import matplotlib.pyplot as plt

    view = LiveView(lambda size: plt.figure(figsize=(size, 2), dpi=50), size=IntSlider(value=4, min=1, max=8))
    picture = view.update()
    assert isinstance(picture, Image.Image) and picture.size == (200, 100)
    assert plt.get_fignums() == []


def test_a_live_view_needs_a_control():
    with pytest.raises(ValueError, match="at least one control"):
        LiveView(lambda: None)


def test_markdown_table_has_a_header_a_rule_and_one_line_per_row():
    table = markdown_table([(1, "a"), (2, "b")], ["n", "letter"])
    assert table.data.splitlines() == ["| n | letter |", "|---|---|", "| 1 | a |", "| 2 | b |"]


# ------------------------------------------------------------------------------------------ 01: data


def test_pair_view_shows_the_image_beside_its_conditioning_with_the_caption(shapes):
    report = pair_subset(SubsetConfig(shapes / "images", shapes / "conditioning"), progress=False)
    view = pair_view(report, 1, height=128)
    assert view.width >= 2 * 128 and view.height > 128
    # the right-hand cell is the canny control: white edges on black
    right = np.asarray(view.convert("L"))[-128:, -128:]
    assert right.max() == 255 and np.median(right) == 0


def test_pair_view_names_the_range_of_a_wrong_index(shapes):
    report = pair_subset(SubsetConfig(shapes / "images", shapes / "conditioning"), progress=False)
    with pytest.raises(ValueError, match=r"3 usable pairs \(0..2\)"):
        pair_view(report, 3)


def test_canny_view_shows_more_edges_at_lower_thresholds():
    image = render_sample(0, size=64).image
    rng = np.random.default_rng(0)
    noisy = np.clip(image.astype(int) + rng.integers(-40, 41, image.shape), 0, 255).astype(np.uint8)

    def edge_share(low, high):
        edges = np.asarray(canny_view(noisy, low, high, height=64).convert("L"))[-64:, -64:]
        return (edges > 127).mean()

    assert edge_share(10, 20) > edge_share(100, 200) > 0


# ------------------------------------------------------------------------------------------ 03: training


def test_the_training_monitor_shows_the_newest_loss_plot_and_validation_grid_once(tmp_path):
    monitor = TrainingMonitor(tmp_path)
    assert monitor.poll() == []
    Image.new("RGB", (8, 8)).save(tmp_path / "loss.png")
    (tmp_path / "samples").mkdir()
    for step in (1, 2):
        Image.new("RGB", (8, 8)).save(tmp_path / "samples" / f"run-step{step:08d}.png")
    assert sorted(monitor.poll()) == ["loss", "samples"]
    assert monitor.shown["samples"].name == "run-step00000002.png"
    assert monitor.poll() == []
    time.sleep(0.01)
    Image.new("RGB", (8, 8), "white").save(tmp_path / "loss.png")
    os.utime(tmp_path / "loss.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert monitor.poll() == ["loss"]
    assert validation_grids(tmp_path) == [tmp_path / "samples" / f"run-step{step:08d}.png" for step in (1, 2)]
    assert validation_grids(tmp_path / "nothing") == []


def test_on_step_draws_the_loss_plot_live_at_most_once_per_interval(tmp_path):
    class Handle:
        def __init__(self):
            self.pictures = []

        def update(self, picture):
            self.pictures.append(picture)

    monitor = TrainingMonitor(tmp_path, interval=3600)
    monitor._handles = {"loss": Handle(), "samples": Handle()}
    for step in range(1, 6):
        monitor.on_step(step, 1.0 / step)
    pictures = monitor._handles["loss"].pictures
    assert len(pictures) == 1 and pictures[0].size[0] > 100  # the first step draws, the next four wait
    assert monitor.losses == [(step, 1.0 / step) for step in range(1, 6)]
    # A loss.png from checkpoints no longer replaces the live plot.
    Image.new("RGB", (8, 8)).save(tmp_path / "loss.png")
    assert monitor.poll() == []
    monitor.__exit__(None, None, None)  # the last draw shows every step
    assert len(pictures) == 2


# ------------------------------------------------------------------------------------------ 04: sampling


def test_trained_files_name_each_recipes_file_in_the_given_folders(tmp_path):
    anima_toy = Environment(False, None, "cpu", "anima-toy", True)
    assert trained_files(anima_toy, ["runs/03", "runs/04"]) == [Path("runs/03/lllite_toy_anima_canny.safetensors"),
                                                                Path("runs/04/lllite_toy_anima_canny.safetensors")]
    assert trained_files(TOY_CPU, ["runs/03"]) == [Path("runs/03/lllite_toy_canny.safetensors")]


def test_real_anima_without_a_trained_file_asks_for_one_and_the_toy_anima_trains_first(tmp_path):
    anima = Environment(False, "H100", "cuda", "anima", False, anima="/models/anima")
    with pytest.raises(LLLiteError, match="no Anima LLLite file yet .*notebook 03.*WEIGHTS"):
        find_weights(anima, None, [tmp_path / "a.safetensors"])
    assert find_weights(Environment(False, None, "cpu", "anima-toy", True), None, [tmp_path / "a.safetensors"]) is None
    trained = tmp_path / "b.safetensors"
    trained.write_bytes(b"")
    assert find_weights(anima, None, [tmp_path / "a.safetensors", trained]) == trained


def test_find_weights_prefers_the_users_file_then_the_first_trained_one(tmp_path):
    later = tmp_path / "b.safetensors"
    later.write_bytes(b"")
    assert find_weights(TOY_CPU, None, [tmp_path / "a.safetensors", later]) == later
    assert find_weights(TOY_CPU, None, [tmp_path / "a.safetensors"]) is None
    assert find_weights(TOY_CPU, later, []) == later
    with pytest.raises(FileNotFoundError, match="WEIGHTS = .*missing.safetensors"):
        find_weights(TOY_CPU, tmp_path / "missing.safetensors", [later])


def test_the_control_view_shows_control_without_and_with_and_refuses_an_empty_step_range(pipe):
    import lllite

    network = lllite.create_network(pipe.unet, cond_emb_dim=8, network_dim=8)
    control = canny(render_sample(0, size=64).image)
    picture = control_view(pipe, network, control, "a red circle", 0.5, (0.2, 0.8), 3, num_inference_steps=2)
    parameters = json.loads(picture.info["parameters"])
    assert [(p["multiplier"], p["seed"]) for p in parameters] == [(0.0, 3), (0.5, 3)]
    assert (parameters[1]["control_guidance_start"], parameters[1]["control_guidance_end"]) == (0.2, 0.8) and picture.width > 3 * 64
    with pytest.raises(ValueError, match="0 <= start < end <= 1"):
        control_view(pipe, network, control, "a red circle", 1.0, (0.5, 0.5), 0, num_inference_steps=2)


def test_the_schedule_view_turns_two_keyframes_and_a_region_into_settings(pipe, tmp_path):
    import lllite

    network = lllite.create_network(pipe.unet, cond_emb_dim=8, network_dim=8)
    control = canny(render_sample(0, size=64).image)
    view = functools.partial(schedule_view, pipe, network, control, "a red circle", num_inference_steps=2)
    picture = view(1.0, 0.5, 0.2, "ellipse", (0.25, 0.75), (0.0, 0.5), False, 4)
    without, with_ = json.loads(picture.info["parameters"])[0]
    assert without["multiplier"] == 0.0 and with_["multiplier"] == [[0.0, 1.0], [0.5, 0.2]] and with_["seed"] == 4
    assert 0 < with_["mask"]["coverage"] < 0.25 and picture.width > 4 * 64  # control, where, without, with
    everywhere = json.loads(view(1.0, 0.0, 0.7, "everywhere", (0.0, 1.0), (0.0, 1.0), False, 0).info["parameters"])
    assert everywhere[0][1]["multiplier"] == 0.7 and everywhere[0][1]["mask"] is None  # switch at 0: one keyframe
    with pytest.raises(ValueError, match="set MASK to the path of a picture"):
        view(1.0, 0.5, 0.2, "your mask", (0.0, 1.0), (0.0, 1.0), False, 0)
    own = tmp_path / "mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(own)
    inverted = view(1.0, 0.5, 0.2, "your mask", (0.0, 1.0), (0.0, 1.0), True, 0, mask_image=own)
    assert json.loads(inverted.info["parameters"])[0][1]["mask"]["coverage"] == 0.0


def test_unused_path_never_points_at_an_existing_file(tmp_path):
    first = tmp_path / "grid.png"
    assert unused_path(first) == first
    first.write_bytes(b"")
    (tmp_path / "grid-1.png").write_bytes(b"")
    assert unused_path(first) == tmp_path / "grid-2.png"


def test_the_file_summary_shows_the_v2_architecture_keys_of_an_anima_file(anima_transformer, tmp_path):
    import lllite
    from lllite.anima import create_network

    path = create_network(anima_transformer, target_layers="self_attn_qkv").save(tmp_path / "anima.safetensors",
                                                                                 metadata={"ss_steps": "7"})
    rows = dict(file_summary(lllite.load(path)))
    assert rows["modules"] == 2 * 3 and rows["`lllite.target_atomics`"] == "self_attn_q_pre,self_attn_kv_pre"
    assert rows["`modelspec.architecture`"] == "anima-preview/control-net-lllite" and rows["`ss_steps`"] == "7"


def test_the_settings_table_shows_the_anima_options_for_anima():
    from lllite.anima.toy import ToyRecipe as AnimaToyRecipe
    from lllite.train import TrainConfig

    recipe = AnimaToyRecipe()
    table = settings_table(TrainConfig(**recipe.training_settings()), "anima").data
    assert f"| `lllite_target_layers` | {recipe.lllite_target_layers} |" in table and "debiased" not in table
