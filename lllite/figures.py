"""The package's plots and tables, made one way: a matplotlib Figure without pyplot, then a picture or a PNG
file; a :class:`Table` that notebooks show as Markdown.

pyplot keeps global state (a current figure, a list of open ones, a backend chosen once per process);
a Figure on its own Agg canvas has none, so plotting from a training thread or a library call never
touches a notebook's own plots and never needs closing. Every plot in ``lllite`` (the loss, fidelity
by strength, parameter counts, where the modules attach) starts with :func:`new_figure` and ends with
:func:`figure_image` or :func:`save_figure`.

    figure, axes = new_figure(5, 3.5)
    axes.plot(steps, losses)
    picture = figure_image(figure)            # a PIL image, 500x350 px
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from .files import write_atomic

#: Pixels per inch of every figure: a 5 x 3.5 inch figure is a 500 x 350 px picture.
DPI = 100


def new_figure(width: float, height: float):
    """A figure of ``width`` x ``height`` inches (at :data:`DPI`) on its own Agg canvas, and its one axes.

    The figure is laid out tightly whenever it is drawn, so labels and legends stay inside it.

    Returns:
        ``(figure, axes)``, like ``pyplot.subplots()`` without pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="tight")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def figure_image(figure) -> Image.Image:
    """A figure (this module's, or pyplot's) rendered as an RGB PIL image."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def save_figure(figure, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """A figure written as a PNG file, atomically (see :func:`lllite.files.write_atomic`)."""
    return write_atomic(path, lambda temporary: figure.savefig(temporary, format="png"), overwrite)


class Table:
    """Rows under headers, shown as a Markdown table by Jupyter, Colab and saved notebooks (``_repr_markdown_``),
    with no display library needed to make one.

    Args:
        rows: the cells, row by row (any values; shown with ``str``).
        headers: one per column.
        caption: Markdown text shown above the table.

    Attributes:
        data: the Markdown text.
    """

    def __init__(self, rows: Sequence[Sequence[Any]], headers: Sequence[str], caption: str | None = None):
        self.rows, self.headers, self.caption = [list(row) for row in rows], list(headers), caption
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        table = "\n".join(lines)
        self.data = table if caption is None else f"{caption}\n\n{table}"

    def _repr_markdown_(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return self.data
