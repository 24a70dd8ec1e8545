import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benches import bench_toy_step  # noqa: E402


def test_the_toy_step_bench_times_both_ways_of_embedding_and_writes_its_report(tmp_path):
    out = tmp_path / "toy_step.json"
    results = bench_toy_step.main(["--quick", "--threads", "1", "--repeats", "1", "--warmup", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["benchmark"] == "toy_step" and report["results"]["modules"] == results["modules"] == 28
    stats = report["results"]["stats"]
    assert set(stats) == {"together", "one by one"} and stats["one by one"]["ratio"] == 1.0
    assert all(len(s["runs_s"]) == 1 and s["median_s"] > 0 for s in stats.values())
