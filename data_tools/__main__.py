"""Command-line tools for LLLite datasets.

    python -m data_tools check IMAGE_DIR --conditioning COND_DIR [--json REPORT]
    python -m data_tools make-conditioning KIND SRC_DIR OUT_DIR [--workers N]
    python -m data_tools synthesize --prompts PROMPTS --out OUT_DIR --num-images N [--model toy]
"""
from __future__ import annotations

import argparse
import sys

from lllite.errors import LLLiteError

from data_tools import check, make_conditioning, synthesize

COMMANDS = {
    "check": (check, "pair images with conditioning images and captions and report every problem"),
    "make-conditioning": (make_conditioning, "derive conditioning images (canny, soft edges, ...) from a folder of images"),
    "synthesize": (synthesize, "generate a paired dataset with an SDXL pipeline from a list of prompts"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_tools", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LLLiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
