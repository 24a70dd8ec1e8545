"""How the demo's IoU grows with training steps: what a faster machine would give in the same 5 minutes.

    python benches/iou_vs_steps.py --threads 1                 # the demo's recipe and budget: about 8 minutes
    python benches/iou_vs_steps.py --quick                     # a few steps: a smoke test, not a result

One training run with the demo's recipe (``lllite.demo.DemoConfig``: the family's toy recipe, the demo's
processes and threads, its time budget) saves the network every ``--checkpoints`` steps
(``TrainConfig.save_every_n_steps``) and at its end. Each saved network is then scored by the demo's
evaluation (the same held-out shapes and sampling) at strength 1 only; step 0 is the base model alone
(strength 0 of the last network: an LLLite scores the same before it trains, its up layers start at zero).

The networks saved along the way stop while the learning rate is still decaying: the cosine schedule
anneals over the whole budget, so only the last point is a finished run. A run stopped at N steps (a slower
machine) anneals earlier, and may score higher than the curve's point at N (unmeasured).

Writes ``iou_vs_steps.json`` (``iou_vs_steps_quick.json`` with ``--quick``) and the plot beside it in ``--out``
(default ``benches/results``), and prints the table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lllite
from lllite import auto, families
from lllite.demo import DemoConfig, evaluate_demo, machine, speed, train_demo
from lllite.figures import Table, new_figure, save_figure
from lllite.files import write_text_atomic
from lllite.toy import TOY

RESULTS_DIR = ROOT / "benches" / "results"
#: Steps between saved networks, by default: about 15 points over the demo's 5 minutes on 2 cores.
EVERY = 100


def demo_config(args: argparse.Namespace) -> DemoConfig:
    """The demo's settings, with this run's model, budget, threads and processes (the quick demo's with ``--quick``)."""
    settings = {"model": args.model, "threads": args.threads}
    if args.processes is not None:
        settings["processes"] = args.processes
    if args.budget is not None:
        settings["max_train_seconds"] = args.budget
    return DemoConfig.quick(**settings, max_train_steps=6) if args.quick else DemoConfig(**settings)


def saved_networks(folder: Path, last: Path, steps: int) -> list[tuple[int, Path]]:
    """(step, file) of every network the run saved, in order of steps: the ones along the way and the last
    (which replaces one saved at the same step, where the budget ran out just after a save)."""
    found = {int(path.stem.rsplit("-step", 1)[1]): path for path in folder.glob("*-step*.safetensors")}
    return sorted({**found, steps: last}.items())


def measure(config: DemoConfig, every: int, work: Path, pipe=None) -> dict:
    """Train once (saving every ``every`` steps), then score every saved network at strength 1."""
    if pipe is None:
        pipe = auto.load_pipeline(TOY, model_family=config.model)
    trained = train_demo(config, pipe, work, save_every_n_steps=every)
    result = trained.result
    result.network.remove()
    evaluated = time.monotonic()
    # Step 0: the base model alone, i.e. strength 0 (an untrained LLLite adds nothing: its up layers are zero).
    _, base = evaluate_demo(config, pipe, result.network, multipliers=[0.0], progress=False)
    points = [{"steps": 0, "iou": base.means("iou")[0], "iou_std": base.stds("iou")[0],
               "edge_f": base.means("edge_f")[0]}]
    for steps, path in saved_networks(Path(result.weights).parent, Path(result.weights), result.steps):
        _, fidelity = evaluate_demo(config, pipe, lllite.load(path), multipliers=[1.0], progress=False)
        points.append({"steps": steps, "iou": fidelity.means("iou")[0], "iou_std": fidelity.stds("iou")[0],
                       "edge_f": fidelity.means("edge_f")[0]})
        print(f"  {steps:>5} steps: shape IoU at strength 1 {points[-1]['iou']:.3f}", flush=True)
    return {"model": config.model, "every": every, "train_steps": result.steps,
            "train_seconds": round(result.train_seconds, 2), "stopped_by": result.stopped_by,
            **speed(result, trained.total_batch), "total_batch": trained.total_batch,
            "machine": machine(trained.processes), "eval_seconds": round(time.monotonic() - evaluated, 1),
            "eval_samples": config.eval_samples, "num_inference_steps": config.num_inference_steps,
            "max_train_seconds": config.max_train_seconds, "points": points}


def table(report: dict) -> Table:
    """The curve as a Markdown table: steps, the training seconds they took at this run's speed, IoU and edge F."""
    rows = [[p["steps"], f"{p['steps'] / report['steps_per_second']:.0f}" if report["steps_per_second"] else "-",
             f"{p['iou']:.3f} ± {p['iou_std']:.3f}", f"{p['edge_f']:.3f}"] for p in report["points"]]
    return Table(rows, ["steps", "training s", "shape IoU at strength 1 (± std)", "edge F-score"],
                 caption=f"toy {report['model']}, {report['train_steps']} steps in {report['train_seconds']:.0f} s "
                         f"({report['steps_per_second']:.2f} steps/s); step 0 is the base model (strength 0)")


def plot(report: dict):
    """Shape IoU at strength 1 against steps, with one standard deviation: a 500 x 350 px Figure."""
    figure, axes = new_figure(5, 3.5)
    steps = [p["steps"] for p in report["points"]]
    axes.errorbar(steps, [p["iou"] for p in report["points"]], yerr=[p["iou_std"] for p in report["points"]],
                  marker="o", capsize=4, label="shape IoU, strength 1")
    axes.plot(steps, [p["edge_f"] for p in report["points"]], marker="s", linestyle=":", label="edge F-score")
    axes.set_xlabel(f"training steps (batch {report['total_batch']}; {report['steps_per_second']:.2f} steps/s here)")
    axes.set_ylabel("control fidelity")
    axes.set_ylim(0, 1)
    axes.set_title(f"toy {report['model']} LLLite: {report['train_steps']} steps in "
                   f"{report['train_seconds']:.0f} s", fontsize=9)
    axes.legend(loc="best", fontsize=8)
    return figure


def _load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (other work on the cores slows the steps), where known."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main(argv: list[str] | None = None, pipe=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=families.names(), default=families.DEFAULT.name)
    parser.add_argument("--budget", type=float, help="training seconds (default: the demo's 300)")
    parser.add_argument("--checkpoints", type=int, help=f"save the network every this many steps (default {EVERY}; "
                                                        "2 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--processes", type=int, help="training processes (default: the demo's)")
    parser.add_argument("--quick", action="store_true", help="the quick demo's few steps: a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the JSON and the plot")
    parser.add_argument("--work", type=Path, help="an empty folder for the data and networks to stay in "
                                                  "(default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)
    config = demo_config(args)
    every = args.checkpoints or (2 if args.quick else EVERY)
    started, load_before = time.monotonic(), _load_average()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with tempfile.TemporaryDirectory() as temporary:
            report = measure(config, every, args.work or Path(temporary), pipe)
    finally:
        torch.set_num_threads(threads)
    report.update(quick=args.quick, total_seconds=round(time.monotonic() - started, 1),
                  date_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  load_average={"before": load_before, "after": _load_average()})
    name = "iou_vs_steps_quick" if args.quick else "iou_vs_steps"
    report["table"] = table(report).data
    write_text_atomic(args.out / f"{name}.json", json.dumps(report, indent=2) + "\n")
    save_figure(plot(report), args.out / f"{name}.png")
    print(report["table"])
    print(f"wrote {args.out / name}.json and .png in {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
