"""benches/anima_kinds.py in its --quick setting: kohya's Anima architectures trained by the demo one after the
other, each reported with its IoU by strength and speed, a rerun of some keeping the others."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benches import anima_kinds  # noqa: E402


def test_the_quick_comparison_reports_each_kind_and_a_rerun_keeps_the_others(tmp_path):
    out = tmp_path / "kinds" / "runs"
    assert anima_kinds.main(["--quick", "--out", str(out), "--kinds", "v2.1,v3"]) == 0
    report = json.loads((out.parent / "anima_kinds_quick.json").read_text())
    assert list(report) == ["v2.1", "v3"]
    for row in report.values():
        assert set(row["strength_iou"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
        assert row["train_steps"] == 3 and row["steps_per_second"] > 0
    assert (out / "v3" / "train" / "lllite_toy_anima_canny.safetensors").is_file()
    first = report["v3"]
    assert anima_kinds.main(["--quick", "--out", str(out), "--kinds", "v2"]) == 0
    report = json.loads((out.parent / "anima_kinds_quick.json").read_text())
    assert list(report) == ["v2", "v2.1", "v3"] and report["v3"] == first
    assert Image.open(out.parent / "anima_kinds_quick.png").size == (600, 400)
