"""Run the demo again and again, each run a fresh ``python -m lllite demo`` process, and report every failure
with its cause: does the two-process demo fail now and then?

    python benches/repeat_demo.py                          # 20 quick demos, then 3 full ones (about 35 minutes)
    python benches/repeat_demo.py --quick-runs 3 --full-runs 0 --model anima

Each run writes into its own folder under ``--out``; a failed run keeps its folder and its whole output
(``run.log``), and the report (``report.json`` and the last lines printed) carries its exit status and the
lines of its error. The quick demos train in two processes, as the full ones do, so that the launcher's
start and teardown are exercised as often as possible.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lllite.files import write_text_atomic  # noqa: E402

#: Lines of a failed run's output kept in the report: enough for the error and its traceback's last frames.
TAIL_LINES = 25


def run_once(out: Path, quick: bool, model: str, processes: int, timeout: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lllite", "demo", "--model", model, "--processes", str(processes),
               "--out", str(out / "demo"), "--overwrite"] + (["--quick"] if quick else [])
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=out)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status = "timeout"
        output = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
    seconds = time.monotonic() - started
    (out / "run.log").write_text(output)
    result = {"quick": quick, "status": status, "seconds": round(seconds, 1)}
    metrics = out / "demo" / "metrics.json"
    if status == 0 and metrics.is_file():
        data = json.loads(metrics.read_text())
        result.update(train_steps=data["train_steps"], strength_iou=data["strength_iou"])
        shutil.rmtree(out)  # a run that passed keeps nothing
    else:
        result["error"] = [line for line in output.splitlines() if line.strip()][-TAIL_LINES:]
        result["folder"] = str(out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick-runs", type=int, default=20)
    parser.add_argument("--full-runs", type=int, default=3)
    parser.add_argument("--model", default="sdxl", help="the demo's --model")
    parser.add_argument("--processes", type=int, default=2, help="training processes of every run (default 2)")
    parser.add_argument("--out", type=Path, default=Path("repeat-demo"), help="runs' folders and report.json")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds after which a run counts as hung")
    args = parser.parse_args(argv)
    runs = [True] * args.quick_runs + [False] * args.full_runs
    results = []
    for index, quick in enumerate(runs):
        result = run_once(args.out / f"run-{index:02d}", quick, args.model, args.processes, args.timeout)
        results.append(result)
        kind = "quick" if quick else "full"
        line = f"run {index + 1}/{len(runs)} ({kind}): "
        if result["status"] == 0:
            print(line + f"ok in {result['seconds']:.0f} s, {result['train_steps']} steps, "
                  f"IoU at strength 1 {result['strength_iou'].get('1.0', float('nan')):.3f}", flush=True)
        else:
            print(line + f"FAILED ({result['status']}) in {result['seconds']:.0f} s: {result['error'][-1]}", flush=True)
        report = {"model": args.model, "processes": args.processes, "runs": results,
                  "failures": sum(r["status"] != 0 for r in results)}
        write_text_atomic(args.out / "report.json", json.dumps(report, indent=2) + "\n")
    failures = [r for r in results if r["status"] != 0]
    print(f"{len(results) - len(failures)} of {len(results)} runs passed; report in {args.out / 'report.json'}")
    for failure in failures:
        print(f"\n{failure['folder']} ({failure['status']}):\n  " + "\n  ".join(failure["error"]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
