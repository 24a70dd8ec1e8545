"""The demo job, in its quick setting on the tiny "test" SDXL: every output is there and says what it should."""
from __future__ import annotations

import json
import math
import time

import pytest
from PIL import Image

import lllite
import lllite.auto
from lllite.__main__ import main
from lllite.demo import DemoConfig, run_demo
from lllite.sdxl.names import find_targets
from lllite.sdxl.toy import build_pipeline


def quick(out, **changes) -> DemoConfig:
    return DemoConfig.quick(out=str(out), size=64, cond_emb_dim=8, network_dim=8, **changes)


def assert_speed_is_consistent(metrics: dict, total_batch: int) -> None:
    """steps_per_second is the steps over the training loop's seconds, as far as their rounding allows, and
    samples_per_second that times every process's batch together."""
    steps, seconds = metrics["train_steps"], metrics["train_seconds"]  # seconds rounded to 0.01
    assert steps / (seconds + 0.005) - 0.001 <= metrics["steps_per_second"] <= steps / (seconds - 0.005) + 0.001
    assert math.isclose(metrics["samples_per_second"], metrics["steps_per_second"] * total_batch, abs_tol=0.01)


def test_the_quick_demo_writes_metrics_weights_grid_and_plot(tmp_path):
    pipe = build_pipeline("test")
    result = run_demo(quick(tmp_path), pipe)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["strength_iou"]) == ["0.0", "0.25", "0.5", "0.75", "1.0"]
    assert all(0.0 <= v <= 1.0 for v in metrics["strength_iou"].values())
    assert metrics["strength_iou"] == result.strength_iou
    assert set(metrics["strength_iou_by_colour"]["1.0"]) <= {"red", "green", "blue", "yellow"}
    assert metrics["train_steps"] == 3 and metrics["train_seconds"] > 0
    assert metrics["total_seconds"] >= metrics["train_seconds"]
    assert_speed_is_consistent(metrics, total_batch=4)
    assert metrics["machine"]["threads"] == 1 and metrics["machine"]["processes"] == 1
    assert metrics["machine"]["cpu"] and metrics["machine"]["cpu_count"] >= 1
    assert list(metrics["strength_edge_f"]) == list(metrics["strength_iou"])
    assert 0.0 <= metrics["unseen_iou"] <= 1.0 and metrics["unseen_iou"] == result.unseen_iou
    assert all(0.0 <= v <= 1.0 for v in metrics["strength_edge_f"].values())
    assert len(lllite.load(metrics["weights"])) == len(find_targets(pipe.unet, up_path=True))
    grid = Image.open(tmp_path / "comparison.png")
    assert grid.width > 7 * 64 and grid.height > 2 * 64  # control, target, 5 strengths; 2 rows
    assert Image.open(tmp_path / "iou_vs_strength.png").size == (500, 350)
    assert len(list((tmp_path / "data" / "conditioning").iterdir())) == 16


def test_the_demo_refuses_to_replace_an_earlier_demo_unless_asked(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds an earlier demo.*--overwrite"):
        run_demo(quick(tmp_path), build_pipeline("test"))
    (tmp_path / "notes.txt").write_text("mine")
    run_demo(quick(tmp_path, overwrite=True), build_pipeline("test"))
    assert json.loads((tmp_path / "metrics.json").read_text())["train_steps"] == 3
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_demo_command_prints_the_iou_per_strength(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lllite.auto, "load_pipeline", lambda name, **options: build_pipeline("test"))
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "shape IoU by strength: 0.0:" in printed and "1.0:" in printed
    assert "shape IoU at strength 1 on shapes of sizes never trained on: " in printed
    # The last line: the scores at strength 1 beside the steps done and their speed, as metrics.json has them.
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    last = printed.strip().splitlines()[-1]
    assert last.startswith(f"strength 1: shape IoU {metrics['strength_iou']['1.0']:.3f}, "
                           f"edge F-score {metrics['strength_edge_f']['1.0']:.3f} after 3 steps in ")
    assert f"({metrics['steps_per_second']:.2f} steps/s, {metrics['samples_per_second']:.1f} samples/s; 1 thread)" in last
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "error: " in capsys.readouterr().err


def test_two_training_processes_write_one_network_that_the_demo_evaluates(tmp_path):
    result = run_demo(quick(tmp_path, processes=2), build_pipeline("test"))
    assert result.train_processes == 2 and result.train_steps == 3
    # The first process alone writes; the latent cache it shared with the other is gone afterwards.
    assert sorted(p.name for p in (tmp_path / "train").iterdir() if p.name != "logs") == [
        "lllite_toy_canny.safetensors", "loss.png"]
    network = lllite.load(result.weights)
    assert any(m.up[0].weight.abs().max() > 0 for _, m in network.lllite_modules())  # it trained
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_processes"] == 2 and metrics["machine"]["processes"] == 2
    assert_speed_is_consistent(metrics, total_batch=2 * 4)  # two processes of batch 4


def test_the_demo_refuses_zero_processes_or_threads(tmp_path):
    for name in ("processes", "threads"):
        with pytest.raises(ValueError, match=f"{name} must be at least 1"):
            run_demo(quick(tmp_path, **{name: 0}), build_pipeline("test"))


def test_a_failing_training_process_is_reported_and_the_others_are_not_waited_for(tmp_path, monkeypatch):
    import os

    import lllite.demo

    train = lllite.demo.train

    def second_process_fails(config, pipe):
        if os.environ["RANK"] == "1":
            raise RuntimeError("out of memory")
        return train(config, pipe)  # waits for the second process to join, which never comes

    monkeypatch.setattr(lllite.demo, "train", second_process_fails)  # the forked processes inherit it
    started = time.monotonic()
    with pytest.raises(lllite.demo.TrainError, match="training process 1 failed.*processes=1") as raised:
        run_demo(quick(tmp_path, processes=2), build_pipeline("test"))
    assert time.monotonic() - started < 60
    # The failed process's own error, not "see its error above": that had scrolled away.
    assert "RuntimeError: out of memory" in str(raised.value) and "in second_process_fails" in str(raised.value)


def test_the_anima_demo_trains_kohyas_v2_network_on_the_toy_anima(tmp_path, monkeypatch, capsys):
    from lllite.anima import AnimaLLLiteNetwork
    from lllite.anima.toy import build_pipeline as build_anima

    loaded = []
    monkeypatch.setattr(lllite.auto, "load_pipeline",
                        lambda name, **options: loaded.append((name, options)) or build_anima("test"))
    assert main(["demo", "--quick", "--model", "anima", "--out", str(tmp_path)]) == 0
    assert loaded == [("toy", {"model_family": "anima"})]
    assert "shape IoU by strength: 0.0:" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["config"]["model"] == "anima"
    network = lllite.load(metrics["weights"])
    from lllite.anima.toy import ToyRecipe as AnimaToyRecipe

    assert isinstance(network, AnimaLLLiteNetwork)
    assert network.config.target_layers == AnimaToyRecipe().lllite_target_layers
    assert Image.open(tmp_path / "comparison.png").height > 2 * 128
    assert Image.open(tmp_path / "data" / "images" / "000000.png").size == (128, 128)  # the toy Anima's size
