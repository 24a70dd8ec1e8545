"""``python -m lllite.toy.pretrain``: pretrain a toy on coloured shapes and write the weights shipped with lllite.

    python -m lllite.toy.pretrain --overwrite                  # the toy SDXL's first stage (an hour on 2 CPU cores)
    python -m lllite.toy.pretrain --model anima --overwrite    # the toy Anima's first stage (about 20 minutes)

The shipped weights continue from those runs (``--start-from``); each family's pretraining module lists the
stages and their flags.

``--model`` chooses the family (:mod:`lllite.families`); every other option is that family's own pretraining
command's (:mod:`lllite.sdxl.pretrain`, :mod:`lllite.anima.pretrain`), which ``--help`` after ``--model`` lists.
"""
from __future__ import annotations

import argparse
import sys

from lllite import families


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lllite.toy.pretrain", description=__doc__.split("\n\n")[0],
                                     add_help=False)
    parser.add_argument("--model", choices=families.names(), default=families.DEFAULT.name,
                        help="which toy to pretrain (default: %(default)s)")
    args, rest = parser.parse_known_args(argv)
    return families.get(args.model).role("pretrain").main(rest)


if __name__ == "__main__":
    sys.exit(main())
