"""Does each toy base draw the shape its caption names? Unconditioned samples of every toy caption, read by the
shape classifier of :func:`lllite.evaluate.read_toy_shape` (100% on the toy's own renders) and the colour check.

    python benches/toy_shapes.py                  # both toys, 8 images per caption (96 each)
    python benches/toy_shapes.py --quick          # a smoke test

Writes ``benches/results/toy_shapes.json``: shape and colour accuracy and the confusion of each toy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lllite import auto, families
from lllite.evaluate import base_shapes
from lllite.toy import TOY


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="sdxl,anima")
    parser.add_argument("--per-caption", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one image per caption, 2 steps: a smoke test")
    parser.add_argument("--out", default="benches/results/toy_shapes.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    report = {}
    for name in args.models.split(","):
        family = families.get(name, "--models")
        pipe = auto.load_pipeline(TOY, model_family=family.name)
        started = time.monotonic()
        size = family.role("toy").ToyRecipe().size
        result = base_shapes(pipe, family.role("pipeline").generate, 1 if args.quick else args.per_caption, size=size,
                             num_inference_steps=2 if args.quick else args.steps)
        report[name] = {"shape_accuracy": round(result.shape_accuracy, 3),
                        "colour_accuracy": round(result.colour_accuracy, 3),
                        "images": sum(len(r) for r in result.readings.values()), "size": size,
                        "confusion": result.confusion(),
                        "seconds": round(time.monotonic() - started, 1)}
        print(f"{name}: shape {result.shape_accuracy:.3f}, colour {result.colour_accuracy:.3f} "
              f"({report[name]['images']} images; read as {result.confusion()})", flush=True)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
