"""``python -m lllite COMMAND``: the project's command line."""
from __future__ import annotations

import argparse
import sys

from . import families
from .errors import LLLiteError


def _inspect(args: argparse.Namespace) -> int:
    from .auto import load

    network = load(args.file, allow_nonfinite=True)  # described all the same, with the warning on stderr
    print(f"{args.file}  ({network.kind})" if network.kind else f"{args.file}")
    for label, value in [*network.summary(), *sorted(network.metadata.items())]:
        print(f"  {label:<14} {value if len(value) < 80 else value[:77] + '...'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    settings = {"out": args.out, "overwrite": args.overwrite, "compile": args.compile, "model": args.model}
    for name in ("max_train_seconds", "threads", "processes"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    config = DemoConfig.quick(**settings) if args.quick else DemoConfig(**settings)
    result = run_demo(config)
    print(f"wrote {result.out}/metrics.json, comparison.png, iou_vs_strength.png and {result.weights}")
    print("\n".join(result.summary()))  # the IoU by strength; the scores at strength 1 beside steps and steps/s
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lllite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="describe an LLLite file: modules, dimensions, metadata")
    inspect.add_argument("file")
    inspect.set_defaults(run=_inspect)
    demo = commands.add_parser("demo", help="train an LLLite on the toy world and measure control against strength")
    demo.add_argument("--model", choices=families.names(), default=families.DEFAULT.name,
                      help="the model family: its toy and its LLLite (sdxl: the toy SDXL with kohya's SDXL LLLite; "
                           "anima: the toy Anima DiT with kohya's Anima LLLite, v2)")
    demo.add_argument("--out", default="lllite-demo", help="output folder (default: lllite-demo)")
    demo.add_argument("--quick", action="store_true", help="a few steps and samples: a smoke test, not a result")
    demo.add_argument("--max-train-seconds", type=float, help="training time budget (default 300)")
    demo.add_argument("--threads", type=int, help="CPU threads for torch per process (default 1: the toy is too small to gain from more)")
    demo.add_argument("--processes", type=int, help="CPU processes training together, one per core (default 2)")
    demo.add_argument("--compile", action="store_true", help="train the UNet as one torch.compile graph")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo's outputs in --out")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except LLLiteError as error:  # a file, a setting or a folder the user can fix: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
