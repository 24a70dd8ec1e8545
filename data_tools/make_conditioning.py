"""``make-conditioning``: one conditioning image per image of a folder, same basename, as PNG."""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lllite.conditioning import KINDS, make_conditioning
from lllite.data import ImageReadError, Problem, list_images, load_rgb

from data_tools.common import CommandError, write_atomic


@dataclass
class ConditioningOptions:
    """Settings of the conditioning kinds; each kind reads the ones it takes.

    Args:
        low_threshold, high_threshold: canny hysteresis thresholds (0..~1000).
        sigma: blur radius in pixels for ``blur`` and ``soft_edge``; None keeps each kind's default.
    """

    low_threshold: int = 100
    high_threshold: int = 200
    sigma: float | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(KINDS), help="which conditioning image to make")
    parser.add_argument("src_dir", type=Path, help="folder of images")
    parser.add_argument("out_dir", type=Path, help="folder for the conditioning images (created if missing)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes (default: up to 4)")
    parser.add_argument("--overwrite", action="store_true", help="remake conditioning images that already exist")
    parser.add_argument("--low-threshold", type=int, default=100, help="canny low threshold (default: 100)")
    parser.add_argument("--high-threshold", type=int, default=200, help="canny high threshold (default: 200)")
    parser.add_argument("--sigma", type=float, help="blur / soft_edge radius in pixels (default: the kind's own)")


def convert_file(kind: str, source: Path, target: Path, options: ConditioningOptions) -> None:
    """Write the ``kind`` conditioning image of ``source`` (read upright, as RGB) to ``target`` atomically."""
    image, _ = load_rgb(source)
    result = make_conditioning(kind, np.asarray(image), **asdict(options))
    write_atomic(target, lambda temporary: Image.fromarray(result).save(temporary, format="PNG"))


def _convert_job(job: tuple[str, Path, Path, ConditioningOptions]) -> str | None:
    kind, source, target, options = job
    try:
        convert_file(kind, source, target, options)
    except ImageReadError as error:
        return f"{source}: not a readable image ({error})"
    except OSError as error:
        return f"{source}: cannot write {target} ({error.strerror or error})"
    return None


def make_folder(kind: str, src_dir: Path, out_dir: Path, options: ConditioningOptions = ConditioningOptions(),
                workers: int = 1, overwrite: bool = False, progress: bool = True) -> tuple[int, int, list[str]]:
    """Convert every image of ``src_dir`` into ``out_dir/<basename>.png``.

    Returns:
        (written, already there and kept, failures as "file: reason" lines).
    """
    if not src_dir.is_dir():
        raise CommandError(f"SRC_DIR {src_dir} is not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise CommandError(f"OUT_DIR {out_dir} is a file; give a folder")
    if out_dir.resolve() == src_dir.resolve():
        raise CommandError("OUT_DIR must differ from SRC_DIR: conditioning images share the images' basenames")
    if workers < 1:
        raise CommandError(f"--workers must be at least 1, got {workers}")
    try:
        make_conditioning(kind, np.zeros((8, 8, 3), np.uint8), **asdict(options))
    except ValueError as error:
        raise CommandError(str(error)) from None
    problems: list[Problem] = []
    images, ambiguous = list_images(src_dir, None, problems)
    failures = [f"{src_dir / stem}.*: several images share this basename; keep one" for stem in sorted(ambiguous)]
    jobs, kept = [], 0
    for stem, source in sorted(images.items()):
        target = out_dir / f"{stem}.png"
        if target.exists() and not overwrite:
            kept += 1
        else:
            jobs.append((kind, source, target, options))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with tqdm(total=len(jobs), desc=f"{kind} conditioning", unit="image", disable=not progress) as bar:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                results.append(_convert_job(job))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                for result in pool.map(_convert_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                    results.append(result)
                    bar.update(1)
    failed = [r for r in results if r is not None]
    return len(jobs) - len(failed), kept, failures + failed


def run(args: argparse.Namespace) -> int:
    options = ConditioningOptions(args.low_threshold, args.high_threshold, args.sigma)
    written, kept, failures = make_folder(args.kind, args.src_dir, args.out_dir, options, args.workers, args.overwrite)
    for failure in failures:
        print(f"skipped  {failure}", file=sys.stderr)
    kept_note = f", {kept} already there kept (--overwrite remakes them)" if kept else ""
    print(f"{written} {args.kind} image(s) written to {args.out_dir}{kept_note}, {len(failures)} failed")
    return 1 if failures else 0
