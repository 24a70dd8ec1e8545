"""``python -m lllite COMMAND``: the project's command line."""
from __future__ import annotations

import argparse
import sys


def _inspect(args: argparse.Namespace) -> int:
    from .fileformat import LLLiteFileError, load

    try:
        network = load(args.file)
    except (LLLiteFileError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    depths: dict[int, int] = {}
    for _, module in network.lllite_modules():
        depths[module.depth] = depths.get(module.depth, 0) + 1
    parameters = sum(p.numel() for p in network.parameters())
    print(f"{args.file}")
    print(f"  modules        {len(network)}  (by depth: {', '.join(f'{d}: {n}' for d, n in sorted(depths.items()))})")
    print(f"  cond_emb_dim   {network.cond_emb_dim}")
    print(f"  mlp_dim        {network.mlp_dim}")
    print(f"  parameters     {parameters:,}")
    print(f"  up path        {'yes' if any('output_blocks' in n for n, _ in network.lllite_modules()) else 'no'}")
    for key, value in sorted(network.metadata.items()):
        print(f"  {key:<14} {value if len(value) < 80 else value[:77] + '...'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lllite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="describe an LLLite file: modules, dimensions, metadata")
    inspect.add_argument("file")
    inspect.set_defaults(run=_inspect)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
