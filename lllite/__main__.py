"""``python -m lllite COMMAND``: the project's command line."""
from __future__ import annotations

import argparse
import sys

from .errors import LLLiteError


def _inspect(args: argparse.Namespace) -> int:
    from .network import load

    network = load(args.file)
    parameters = sum(p.numel() for p in network.parameters())
    if not hasattr(network, "up_path"):  # Anima's v2 network
        config = network.config
        print(f"{args.file}  (Anima LLLite, kohya's v2)")
        print(f"  modules        {len(network)}  (target_layers {config.target_layers})")
        print(f"  cond_emb_dim   {config.cond_emb_dim}")
        print(f"  network_dim    {config.network_dim}")
        print(f"  trunk          cond_dim {config.cond_dim}, {config.cond_resblocks} ResBlock(s), ASPP "
              f"{'on ' + ','.join(map(str, config.aspp_dilations)) if config.use_aspp else 'off'}, "
              f"{config.cond_in_channels} input channels")
        print(f"  parameters     {parameters:,}")
        for key, value in sorted(network.metadata.items()):
            print(f"  {key:<14} {value if len(value) < 80 else value[:77] + '...'}")
        return 0
    depths: dict[int, int] = {}
    for _, module in network.lllite_modules():
        depths[module.depth] = depths.get(module.depth, 0) + 1
    print(f"{args.file}")
    print(f"  modules        {len(network)}  (by depth: {', '.join(f'{d}: {n}' for d, n in sorted(depths.items()))})")
    print(f"  cond_emb_dim   {network.cond_emb_dim}")
    print(f"  network_dim    {network.network_dim}")
    print(f"  parameters     {parameters:,}")
    print(f"  up path        {'yes' if network.up_path else 'no'}")
    for key, value in sorted(network.metadata.items()):
        print(f"  {key:<14} {value if len(value) < 80 else value[:77] + '...'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    settings = {"out": args.out, "overwrite": args.overwrite, "compile": args.compile, "model": args.model}
    for name in ("max_train_seconds", "threads", "processes"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    config = DemoConfig.quick(**settings) if args.quick else DemoConfig(**settings)
    result = run_demo(config)
    print(f"shape IoU by strength: {', '.join(f'{s}: {v:.3f}' for s, v in result.strength_iou.items())}")
    processes = f" ({result.train_processes} processes)" if result.train_processes > 1 else ""
    print(f"trained {result.train_steps} steps in {result.train_seconds:.0f} s{processes}; total {result.total_seconds:.0f} s")
    print(f"wrote {result.out}/metrics.json, comparison.png, iou_vs_strength.png and {result.weights}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lllite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="describe an LLLite file: modules, dimensions, metadata")
    inspect.add_argument("file")
    inspect.set_defaults(run=_inspect)
    demo = commands.add_parser("demo", help="train an LLLite on the toy world and measure control against strength")
    demo.add_argument("--model", choices=("sdxl", "anima"), default="sdxl",
                      help="the toy SDXL with kohya's SDXL LLLite, or the toy Anima DiT with kohya's Anima LLLite (v2)")
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
