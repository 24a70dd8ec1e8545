"""The notebooks' saved outputs: one full run on the toy world, kept in each ``.ipynb`` so that a reader on
GitHub or in Colab's preview sees the pictures before running anything.

    python -m lllite.notebook_outputs              # run all four on the toy world (CPU) and store their outputs
    python -m lllite.notebook_outputs 02_architecture

Each notebook runs top to bottom in a fresh kernel in a scratch folder, from its ``.py`` source, on the toy
world at the full (not quick) setting, on the CPU. What is kept is cleaned: progress bars and other stderr
streams are dropped, pictures are shrunk (at most :data:`MAX_SIDE` pixels, 256 colours), the scratch folder's
path and the run's timings are replaced by placeholders, and the widgets' state is saved so that live views show
their last picture. The ``.ipynb`` records the digest of the source it ran (:func:`source_digest`), which the
tests compare with the current ``.py``: editing a notebook's source calls for this command again.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from PIL import Image

from .files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_dataset_pairing", "02_architecture", "03_training", "04_sampling")
#: The longest side of a kept picture, in pixels.
MAX_SIDE = 720
#: Where the outputs came from, as the notebook's metadata says.
PROVENANCE = "one full run on the toy world, on a CPU (python -m lllite.notebook_outputs)"
CELL_TIMEOUT_S = 1800
#: A tqdm progress bar's text (shown as a widget in a notebook; its stored text is a stale 0% or the run's speed).
_PROGRESS = re.compile(r"^[^\n|]*:\s*\d+%\|")
#: A run's timings in printed text, replaced by "…": seconds, and rates per second.
_TIMINGS = (re.compile(r"\b\d+(?:\.\d+)?(?=\s?(?:s|seconds|min|minutes)\b)"),
            re.compile(r"\b\d+(?:\.\d+)?(?=\s?(?:steps|samples|images?|it)/s\b)"))


def source_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a notebook source's cells (their types and text), as jupytext reads the ``.py``."""
    import jupytext

    notebook = jupytext.read(path)
    cells = [[cell.cell_type, cell.source] for cell in notebook.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def stored_digest(path: str | os.PathLike) -> str | None:
    """The source digest an ``.ipynb``'s outputs were made from, or None where it stores none."""
    import nbformat

    return nbformat.read(path, as_version=4).metadata.get("lllite", {}).get("source_sha256")


def shrink_png(data: str, max_side: int = MAX_SIDE) -> str:
    """A base64 PNG at most ``max_side`` pixels on its longer side, in 256 colours, base64 again."""
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    image = image.convert("RGB").quantize(256, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def scrub_text(text: str, folder: str) -> str:
    """Printed text without the scratch folder's path and without the run's timings."""
    text = text.replace(folder + os.sep, "").replace(folder, ".")
    for pattern in _TIMINGS:
        text = pattern.sub("…", text)
    return text


def _clean_output(output: dict, folder: str) -> dict | None:
    if output.get("output_type") == "stream":
        if output.get("name") == "stderr":
            return None  # progress bars and warnings: the run's own, nothing a reader needs
        output["text"] = scrub_text(output["text"], folder)
        return output
    data = output.get("data", {})
    plain = data.get("text/plain", "")
    if "application/vnd.jupyter.widget-view+json" in data and _PROGRESS.match(plain if isinstance(plain, str) else "".join(plain)):
        return None  # a progress bar
    if "image/png" in data:
        data["image/png"] = shrink_png(data["image/png"])
    for kind in ("text/plain", "text/markdown", "text/html"):
        if kind in data:
            data[kind] = scrub_text(data[kind] if isinstance(data[kind], str) else "".join(data[kind]), folder)
    return output


def clean(notebook, folder: str) -> None:
    """Drop stderr, shrink pictures, scrub paths and timings, in every cell's outputs and the widgets' state."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [kept for output in cell.outputs if (kept := _clean_output(output, folder)) is not None]
        cell.metadata.pop("execution", None)
    widgets = notebook.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    for model in widgets.get("state", {}).values():
        outputs = model.get("state", {}).get("outputs")
        if isinstance(outputs, list):
            model["state"]["outputs"] = [kept for output in outputs
                                         if (kept := _clean_output(output, folder)) is not None]


def keep_identity(notebook, target: Path) -> None:
    """Give the executed notebook the stored ``.ipynb``'s metadata (without jupytext's text representation, as
    jupytext writes it) and the ids of its cells where they are the same cells, so a refresh changes outputs only."""
    import nbformat

    notebook.metadata.pop("jupytext", None)
    if not target.is_file():
        return
    stored = nbformat.read(target, as_version=4)
    for new, old in zip(notebook.cells, stored.cells):
        if (new.cell_type, new.source) == (old.cell_type, old.source) and "id" in old:
            new["id"] = old["id"]


def run(name: str, folder: Path, timeout: int = CELL_TIMEOUT_S):
    """Execute ``notebooks/<name>.py`` top to bottom in ``folder`` on the toy world (CPU, full setting); returns the
    executed notebook with its widgets' state."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path, "LLLITE_QUICK": "0"}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(folder)}})
    client.execute(env=env)
    return notebook


def refresh(names=NAMES, folder: str | os.PathLike | None = None, say=print) -> None:
    """Run each notebook (in order: 04 uses what 03 trained) and write its ``.ipynb`` with the cleaned outputs and
    the digest of the source it ran. The notebooks share one scratch folder, as a user's runs would."""
    import nbformat

    with tempfile.TemporaryDirectory(prefix="lllite-notebooks-") as scratch:
        work = Path(folder) if folder is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            say(f"running notebooks/{name}.py on the toy world ...")
            notebook = run(name, work)
            clean(notebook, str(work.resolve()))
            target = NOTEBOOKS / f"{name}.ipynb"
            keep_identity(notebook, target)
            notebook.metadata["lllite"] = {"source_sha256": source_digest(NOTEBOOKS / f"{name}.py"),
                                           "outputs": PROVENANCE}
            write_text_atomic(target, nbformat.writes(notebook) + "\n", overwrite=True)
            say(f"wrote {target.relative_to(ROOT)} ({target.stat().st_size / 2**20:.1f} MiB)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lllite.notebook_outputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(NAMES), help=f"notebooks to run (default: all, {', '.join(NAMES)})")
    parser.add_argument("--folder", help="scratch folder to run in (default: a temporary one)")
    parser.add_argument("--clean-only", action="store_true",
                        help="clean the stored outputs again without running anything (after a change to the cleaning)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        parser.error(f"unknown notebook {unknown[0]!r}; give one of {', '.join(NAMES)}")
    names = [n for n in NAMES if n in args.names]
    if args.clean_only:
        clean_stored(names)
    else:
        refresh(names, args.folder)
    return 0


def clean_stored(names=NAMES) -> None:
    """Clean the stored outputs again (idempotent), keeping the digest of the source they came from."""
    import nbformat

    for name in names:
        target = NOTEBOOKS / f"{name}.ipynb"
        notebook = nbformat.read(target, as_version=4)
        clean(notebook, str(ROOT))
        notebook.metadata.pop("jupytext", None)
        write_text_atomic(target, nbformat.writes(notebook) + "\n", overwrite=True)


if __name__ == "__main__":
    sys.exit(main())
