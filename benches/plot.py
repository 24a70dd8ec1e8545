"""Plot benchmark results: measured step-time ratios, counted arithmetic by size, sizes of the models.

    python benches/plot.py benches/results/inference_*.json benches/results/counts_*.json \
        benches/results/training_*.json --out benches/results.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lllite.files import write_atomic  # noqa: E402

LABELS = {
    "lllite": "LLLite (136)",
    "lllite_naive": "LLLite, embedding every step",
    "lllite_up": "LLLite + up path (280)",
    "lllite_up_naive": "LLLite + up path, embedding every step",
    "t2i_adapter": "T2I-Adapter",
    "controlnet": "ControlNet",
}
COLORS = {"lllite": "tab:green", "lllite_naive": "tab:olive", "lllite_up": "tab:cyan",
          "lllite_up_naive": "tab:blue", "t2i_adapter": "tab:purple", "controlnet": "tab:red"}


def load(paths: list[Path]) -> dict[str, dict]:
    """The documents by benchmark; several inference runs (one size each, say) merge into one."""
    documents = {}
    for path in paths:
        try:
            document = json.loads(path.read_text())
            kind = document["benchmark"]
            if kind == "inference" and kind in documents:
                documents[kind]["results"]["sizes"].update(document["results"]["sizes"])
            else:
                documents[kind] = document
        except (OSError, ValueError, KeyError) as error:
            sys.exit(f"error: {path} is not a benchmark result written by benches/ ({error})")
    if "inference" not in documents and "counts" not in documents:
        sys.exit("error: give at least an inference or a counts JSON")
    return documents


def plot_measured(ax, document: dict) -> None:
    """Ratios of medians; on a CPU those of process CPU time, which other load on the machine does not inflate."""
    sizes = sorted(document["results"]["sizes"], key=int)
    variants = [v for v in LABELS if v in document["results"]["sizes"][sizes[0]]]
    on_cpu = document["config"]["device"] == "cpu"
    key, runs, median = ("cpu_ratio", "cpu_runs_s", "cpu_median_s") if on_cpu else ("ratio", "runs_s", "median_s")
    width = 0.8 / len(variants)
    top = 1.1
    for i, variant in enumerate(variants):
        rows = [document["results"]["sizes"][s] for s in sizes]
        ratios = [row[variant][key] for row in rows]
        # whiskers: the fastest and slowest repetition against the bare UNet's median
        low = [r - min(row[variant][runs]) / row["unet"][median] for r, row in zip(ratios, rows)]
        high = [max(row[variant][runs]) / row["unet"][median] - r for r, row in zip(ratios, rows)]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(sizes))]
        ax.bar(xs, ratios, width, yerr=[low, high], capsize=2, label=LABELS[variant], color=COLORS[variant])
        top = max(top, max(r + h for r, h in zip(ratios, high)))
    ax.set_ylim(0.8, top + 0.3)  # room for the legend above the bars
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(1.05, color="tab:green", lw=0.8, ls="--", label="target for LLLite: 1.05")
    ax.set_xticks(range(len(sizes)), [f"{s} px" for s in sizes])
    ax.set_ylabel(("CPU" if on_cpu else "wall") + " time per step / bare UNet (medians)")
    machine = document["machine"]
    device = machine.get("gpu") or f"{machine['cpu']}, threads: {machine['cpu_threads']}"
    ax.set_title(f"Measured per step, batch 2 (CFG), {document['config']['dtype']}\n{device}", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", ncol=2)


def plot_counted(ax, document: dict) -> None:
    flops = document["results"]["flops"]
    sizes = [int(s) for s in flops]
    for variant in ("controlnet", "lllite_up_naive", "lllite_naive", "lllite_up", "lllite"):
        ax.plot(sizes, [flops[str(s)][variant]["ratio"] for s in sizes], "o-", label=LABELS[variant],
                color=COLORS[variant])
    ax.set_xticks(sizes, [f"{s}" for s in sizes])
    ax.set_xlabel("image size (px)")
    ax.set_ylabel("FLOPs per step / bare UNet")
    ax.set_title("Counted arithmetic per step (FlopCounterMode)", fontsize=9)
    ax.legend(fontsize=7)


def plot_sizes(ax, document: dict) -> None:
    files = document["results"]["file_bytes_fp16"]
    names = ["lllite", "lllite_up", "t2i_adapter", "controlnet"]
    values = [files[n] / 2**20 for n in names]
    bars = ax.bar(range(len(names)), values, color=[COLORS[n] for n in names])
    ax.set_yscale("log")
    ax.bar_label(bars, [f"{v:,.0f} MiB" for v in values], fontsize=7)
    ax.set_xticks(range(len(names)), ["LLLite", "LLLite+up", "T2I-Adapter", "ControlNet"], fontsize=8)
    ax.set_ylabel("fp16 file (MiB, log scale)")
    ax.set_title("File size", fontsize=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSON files written by the benches")
    parser.add_argument("--out", type=Path, default=Path("benches/results.png"))
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    if args.out.exists() and not args.overwrite:
        parser.exit(2, f"{parser.prog}: error: {args.out} exists; pass --overwrite to replace it\n")
    documents = load(args.results)
    panels = [(plot_measured, "inference"), (plot_counted, "counts"), (plot_sizes, "counts")]
    panels = [(fn, documents[key]) for fn, key in panels if key in documents]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (fn, document) in zip(axes[0], panels):
        fn(ax, document)
    fig.tight_layout()
    write_atomic(args.out, lambda temporary: fig.savefig(temporary, dpi=120))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
