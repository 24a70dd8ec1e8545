"""kohya's three Anima LLLite architectures side by side on the toy world, each under the demo's budget.

    python benches/anima_kinds.py                 # v2, v2.1, v3: the demo (5 minutes of training each)
    python benches/anima_kinds.py --quick         # a smoke test

kohya reports about 10x faster convergence for v2.1 (latent stem) than v2 (pixel stem). Each architecture
trains with the toy Anima's demo recipe (:meth:`lllite.anima.toy.ToyRecipe.architecture`), the same data, seed,
time budget and evaluation; the report gives the IoU at every strength, the steps done and steps per second
(``benches/results/anima_kinds.json``), and ``anima_kinds.png`` plots IoU against strength for the three.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lllite.anima.config import TRAINING_OPTIONS as KINDS
from lllite.demo import DemoConfig, run_demo
from lllite.figures import new_figure, save_figure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benches/results/anima_kinds", help="folder of the three demos")
    parser.add_argument("--quick", action="store_true", help="a few steps: a smoke test, not a result")
    parser.add_argument("--max-train-seconds", type=float, default=300.0)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma list of v2, v2.1, v3")
    args = parser.parse_args(argv)
    out = Path(args.out)
    name = "anima_kinds_quick" if args.quick else "anima_kinds"
    path = out.parent / f"{name}.json"
    report = json.loads(path.read_text()) if path.is_file() else {}  # --kinds reruns some, keeps the others
    for kind in args.kinds.split(","):
        settings = {"model": "anima", "out": str(out / kind), "overwrite": True, "recipe": dict(KINDS[kind])}
        config = (DemoConfig.quick(**{k: v for k, v in settings.items() if k != "recipe"}, **KINDS[kind])
                  if args.quick else DemoConfig(max_train_seconds=args.max_train_seconds, **settings))
        result = run_demo(config)
        report[kind] = {"strength_iou": result.strength_iou, "strength_edge_f": result.strength_edge_f,
                        "train_steps": result.train_steps, "train_seconds": result.train_seconds,
                        "steps_per_second": result.steps_per_second}
        print(f"{kind}: IoU at strength 1 {result.strength_iou['1.0']:.3f}, {result.train_steps} steps "
              f"({result.steps_per_second:.2f}/s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    report = {kind: report[kind] for kind in KINDS if kind in report}
    path.write_text(json.dumps(report, indent=2) + "\n")
    save_figure(plot(report), out.parent / f"{name}.png")
    return 0


def plot(report: dict):
    """Mean shape IoU against strength, one line per architecture, its steps in the legend."""
    figure, axes = new_figure(6, 4)  # no pyplot: nothing left open
    for kind, row in report.items():
        strengths = sorted(row["strength_iou"], key=float)
        axes.plot([float(s) for s in strengths], [row["strength_iou"][s] for s in strengths], marker="o",
                  label=f"{kind} ({row['train_steps']} steps)")
    axes.set(xlabel="strength", ylabel="mean shape IoU", ylim=(0, 1),
             title="Anima LLLite on the toy world, same time budget")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


if __name__ == "__main__":
    sys.exit(main())
