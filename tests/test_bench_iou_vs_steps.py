"""benches/iou_vs_steps.py in its --quick setting on the tiny "test" SDXL: one run, a network saved every 2 steps,
each scored at strength 1, and the JSON, plot and table that say so."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from PIL import Image

from lllite.sdxl.toy import build_pipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benches import iou_vs_steps


def test_the_quick_curve_scores_every_saved_network_once(tmp_path, capsys):
    assert iou_vs_steps.main(["--quick", "--out", str(tmp_path)], pipe=build_pipeline("test")) == 0
    report = json.loads((tmp_path / "iou_vs_steps_quick.json").read_text())
    assert report["quick"] and report["train_steps"] == 6 and report["every"] == 2
    assert [p["steps"] for p in report["points"]] == [0, 2, 4, 6]  # step 0: the base model
    assert all(0.0 <= p["iou"] <= 1.0 and 0.0 <= p["edge_f"] <= 1.0 for p in report["points"])
    assert math.isclose(report["steps_per_second"], report["train_steps"] / report["train_seconds"], rel_tol=0.01)
    assert math.isclose(report["samples_per_second"], report["steps_per_second"] * report["total_batch"], rel_tol=0.01)
    assert report["machine"]["threads"] == 1 and report["machine"]["processes"] == 1
    assert Image.open(tmp_path / "iou_vs_steps_quick.png").size == (500, 350)
    printed = capsys.readouterr().out
    assert "| steps | training s | shape IoU at strength 1" in printed and report["table"] in printed


def test_the_saved_networks_are_found_in_step_order_with_the_last_one_replacing_a_save_at_its_step(tmp_path):
    for step in (10, 2, 4):
        (tmp_path / f"lllite_toy_canny-step{step:08d}.safetensors").touch()
    last = tmp_path / "lllite_toy_canny.safetensors"
    assert iou_vs_steps.saved_networks(tmp_path, last, 10) == [
        (2, tmp_path / "lllite_toy_canny-step00000002.safetensors"),
        (4, tmp_path / "lllite_toy_canny-step00000004.safetensors"), (10, last)]
