"""``check``: pair a folder of images with its conditioning images and say what is wrong, changing nothing.

Either one folder pair (``IMAGE_DIR --conditioning COND_DIR``) or every subset of a kohya dataset
TOML (``--config``), with the same rules that the training dataset applies.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lllite.data import ERROR, SKIPPED, PairingReport, SubsetConfig, load_dataset_config, pair_subset

from data_tools.common import CommandError, write_text_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image_dir", type=Path, nargs="?", help="folder of training images and captions")
    parser.add_argument("--conditioning", type=Path, metavar="COND_DIR",
                        help="folder of conditioning images with the same basenames")
    parser.add_argument("--config", type=Path, metavar="TOML", help="check every subset of this kohya dataset TOML instead")
    parser.add_argument("--caption-extension", default=".txt", help="extension of caption files (default: .txt)")
    parser.add_argument("--min-size", type=int, default=64, help="images with a shorter side below this are skipped (default: 64)")
    parser.add_argument("--json", type=Path, metavar="REPORT", help="also write the report as JSON to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing REPORT file")
    parser.add_argument("--quiet", action="store_true", help="print the summary only")


def format_table(report: PairingReport, root: Path) -> str:
    """One line per problem, errors and skipped files first, paths relative to ``root`` when inside it."""

    def shown(path: Path) -> str:
        try:
            return os.path.relpath(path, root) if path.resolve().is_relative_to(root.resolve()) else str(path)
        except (OSError, ValueError):
            return str(path)

    order = {ERROR: 0, SKIPPED: 1}
    rows = sorted(((p.action, shown(p.file), p.problem) for p in report.problems), key=lambda r: (order.get(r[0], 2), r[1]))
    if not rows:
        return ""
    width = min(max(len(r[1]) for r in rows), 48)
    return "\n".join(f"{action:<9}  {file:<{width}}  {problem}" for action, file, problem in [("action", "file", "problem")] + rows)


def summary(report: PairingReport) -> str:
    counts = {action: sum(p.action == action for p in report.problems) for action in ("converted", "skipped", "error")}
    return (f"{len(report.pairs)} usable pair(s); {counts['converted']} conversion(s), "
            f"{counts['skipped']} file(s) skipped, {counts['error']} error(s)")


def run(args: argparse.Namespace) -> int:
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise CommandError(f"--json: {args.json} already exists; choose another file or pass --overwrite")
    if args.min_size < 1:
        raise CommandError(f"--min-size must be at least 1 pixel, got {args.min_size}")
    if args.config is not None:
        if args.image_dir is not None or args.conditioning is not None:
            raise CommandError("give either IMAGE_DIR --conditioning COND_DIR or --config TOML, not both")
        subsets = [subset for dataset in load_dataset_config(args.config) for subset in dataset.subsets]
        root = args.config.parent
    else:
        if args.image_dir is None or args.conditioning is None:
            raise CommandError("give IMAGE_DIR and --conditioning COND_DIR (or --config TOML)")
        subsets = [SubsetConfig(args.image_dir, args.conditioning, caption_extension=args.caption_extension, min_size=args.min_size)]
        root = args.image_dir.parent
    report = PairingReport()
    for subset in subsets:
        found = pair_subset(subset, progress=not args.quiet)
        report.pairs += found.pairs
        report.problems += found.problems
    if not args.quiet:
        table = format_table(report, root)
        if table:
            print(table)
    print(summary(report))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(report.to_json(), indent=2) + "\n")
    if not report.pairs:
        print("no usable pair: fix the files listed above", file=sys.stderr)
        return 1
    return 0
