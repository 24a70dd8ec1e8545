"""What the notebooks show and how: pictures, tables, live controls, the training monitor.

The notebooks stay thin (prose, calls, widgets, pictures). This module holds display code only; where they
run and which model they use is :mod:`lllite.environment`, and what they compute lives in the package, where
it is tested: :mod:`lllite.architecture` (notebook 02), :mod:`lllite.recipes` (03), :mod:`lllite.sampling` and
:mod:`lllite.evaluate` (04). Widget callbacks are plain functions that take values and return a picture, so a
test can call them without a browser.

    from lllite.notebook import LiveView, show
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from . import families
from .conditioning import canny
from .data import CONDITIONING_BACKGROUND, IMAGE_BACKGROUND, PairingReport, load_rgb
from .errors import LLLiteError
from .figures import Table, figure_image
from .images import region_mask
from .sampling import comparison_grid, describe_multiplier, image_grid, side_by_side

# ------------------------------------------------------------------------------------------ pictures


def show(*items: Any) -> None:
    """Display PIL images, matplotlib figures or text as ordinary outputs (they stay in a saved notebook)."""
    from IPython.display import display

    for item in items:
        display(as_picture(item))


def as_picture(item: Any) -> Any:
    """A matplotlib figure as a PIL image (:func:`lllite.figures.figure_image`); anything else unchanged.

    A picture can be replaced in place by a live view. A figure made with pyplot is closed too: left
    open, the inline backend would show it a second time at the end of the cell.
    """
    if not type(item).__module__.startswith("matplotlib"):
        return item
    picture = figure_image(item)
    pyplot = sys.modules.get("matplotlib.pyplot")  # loaded by whoever made a pyplot figure
    if pyplot is not None:
        pyplot.close(item)
    return picture


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> Table:
    """A table that renders as Markdown in Jupyter, Colab and saved notebooks alike (:class:`lllite.figures.Table`)."""
    return Table(rows, headers)


def _enlarged(image: Image.Image, height: int) -> Image.Image:
    """Small images scaled up with visible pixels, so that a 128-px toy image is readable."""
    if image.height >= height:
        return image
    scale = height / image.height
    return image.resize((round(image.width * scale), height), Image.NEAREST)


class LiveView:
    """Controls above a picture that is re-rendered in place whenever a control changes.

    The picture is an ordinary output with a display id, so a saved or executed notebook keeps it
    where widgets do not render; in a live kernel the controls replace it with each new rendering.
    A render function that raises ``ValueError`` (say, canny's low threshold above the high one)
    shows the message instead of the picture.

    Args:
        render: called with the controls' values as keyword arguments; returns something displayable.
        **controls: ipywidgets value widgets (sliders, text, dropdowns), named as ``render``'s arguments.
    """

    def __init__(self, render: Callable[..., Any], **controls):
        if not controls:
            raise ValueError("LiveView needs at least one control")
        self.render = render
        self.controls = controls
        self.current: Any = None
        self.error: str | None = None
        self._handle = None
        for control in controls.values():
            control.observe(self._changed, names="value")

    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def update(self) -> Any:
        """Render with the controls' current values, replace the displayed picture, and return it."""
        from IPython.display import Markdown

        try:
            self.current, self.error = as_picture(self.render(**self.values())), None
        except ValueError as error:
            self.error = str(error)
            self.current = Markdown(f"**Cannot render these settings:** {error}")
        if self._handle is not None:
            self._handle.update(self.current)
        return self.current

    def _changed(self, change) -> None:
        self.update()

    def _ipython_display_(self) -> None:
        from IPython.display import display
        from ipywidgets import VBox

        display(VBox(list(self.controls.values())))
        self._handle = display(self.update(), display_id=True)


# ------------------------------------------------------------------------------------------ 01: data


def pair_view(report: PairingReport, index: int, height: int = 256) -> Image.Image:
    """One usable pair of a pairing report: the image beside its conditioning image, the caption above.

    Args:
        report: from :func:`lllite.data.pair_subset`.
        index: which pair (0-based, in the report's order).
        height: display height in pixels; smaller images are enlarged to it.
    """
    if not report.pairs:
        raise LLLiteError("the report has no usable pair; see its problems")
    if not 0 <= index < len(report.pairs):
        raise LLLiteError(f"pair index {index} is out of range: the report has {len(report.pairs)} usable pairs (0..{len(report.pairs) - 1})")
    pair = report.pairs[index]
    image, _ = load_rgb(pair.image, IMAGE_BACKGROUND)
    conditioning, _ = load_rgb(pair.conditioning, CONDITIONING_BACKGROUND)
    if conditioning.size != image.size:
        conditioning = conditioning.resize(image.size, Image.BICUBIC)
    cells = [_enlarged(image, height), _enlarged(conditioning, height)]
    return image_grid([cells], [pair.image.name, f"conditioning {pair.conditioning.name}"],
                      title=f"pair {index}: {pair.caption or '(empty caption)'}")


def canny_view(image, low_threshold: int = 100, high_threshold: int = 200, height: int = 256) -> Image.Image:
    """An image beside its canny edges at the given hysteresis thresholds.

    Args:
        image: RGB uint8 array (H, W, 3) or a PIL image.
        low_threshold, high_threshold: as in :func:`lllite.conditioning.canny` (0 <= low <= high).
        height: display height in pixels; smaller images are enlarged to it.
    """
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    edges = canny(array, low_threshold, high_threshold)
    share = (edges[..., 0] > 0).mean()
    cells = [_enlarged(Image.fromarray(array), height), _enlarged(Image.fromarray(edges), height)]
    return image_grid([cells], ["image", f"canny {low_threshold}/{high_threshold}: {share:.1%} edge pixels"])


# ------------------------------------------------------------------------------------------ 03: training


def settings_table(config, family: str = families.DEFAULT.name) -> Table:
    """A training config's main settings for the model family (its training's ``SHOWN_SETTINGS``), as a table."""
    shown = families.get(family).role("training").SHOWN_SETTINGS
    return markdown_table([(f"`{name}`", getattr(config, name)) for name in shown], ["setting", "value"])


def validation_grids(output_dir: str | os.PathLike) -> list[Path]:
    """The validation grids a run wrote (``samples/*.png``), oldest first: their names carry the zero-padded step."""
    folder = Path(output_dir) / "samples"
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def open_picture(path: str | os.PathLike) -> Image.Image:
    """An image file read into memory (the file is closed at once)."""
    with Image.open(path) as opened:
        return opened.convert("RGB")


class TrainingMonitor:
    """Shows a run's loss plot and newest validation grid while :func:`lllite.train.train` writes them.

    Use it around the call to ``train`` and pass :meth:`on_step` to it: the training runs in the
    notebook's own thread (so the stop button stops it); ``on_step`` redraws the loss plot at most every
    ``interval`` seconds, and a helper thread watches ``output_dir`` for ``samples/*.png`` (written every
    ``sample_every_n_steps``) and, when ``on_step`` is not used, for ``loss.png`` (written at every
    checkpoint), updating two outputs in place::

        with TrainingMonitor(config.output_dir) as monitor:
            result = train(config, pipe, on_step=monitor.on_step)

    Args:
        output_dir: the run's folder (``TrainConfig.output_dir``).
        interval: seconds between looks at the folder, and between redraws of the loss plot.
    """

    def __init__(self, output_dir: str | os.PathLike, interval: float = 2.0):
        self.output_dir = Path(output_dir)
        self.interval = interval
        self.shown: dict[str, Path | None] = {"loss": None, "samples": None}
        self._stamps: dict[str, int] = {}
        self._handles: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.losses: list[tuple[int, float]] = []
        self._drawn_at: float | None = None

    def on_step(self, step: int, loss: float) -> None:
        """Record a step's loss; redraw the loss plot when ``interval`` seconds have passed since the last."""
        self.losses.append((step, loss))
        now = time.monotonic()
        if self._drawn_at is None or now - self._drawn_at >= self.interval:
            self._draw_losses()
            self._drawn_at = now

    def _draw_losses(self) -> None:
        from .train.validation import loss_figure

        handle = self._handles.get("loss")
        if handle is not None and self.losses:
            handle.update(loss_figure(self.losses))

    def latest(self) -> dict[str, Path | None]:
        """The newest loss plot and validation grid in the folder (None where there is none yet)."""
        loss = self.output_dir / "loss.png"
        grids = validation_grids(self.output_dir)
        return {"loss": loss if loss.is_file() else None, "samples": grids[-1] if grids else None}

    def poll(self) -> list[str]:
        """Show what changed since the last look; returns the names of the outputs that were updated."""
        updated = []
        for name, path in self.latest().items():
            if path is None or (name == "loss" and self.losses):  # drawn live from on_step instead
                continue
            stamp = path.stat().st_mtime_ns
            if self.shown[name] == path and self._stamps.get(name) == stamp:
                continue
            try:
                picture = open_picture(path)
            except OSError:  # caught mid-write by another process; the next look gets it
                continue
            self.shown[name], self._stamps[name] = path, stamp
            handle = self._handles.get(name)
            if handle is not None:
                handle.update(picture)
            updated.append(name)
        return updated

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "TrainingMonitor":
        from IPython.display import Markdown, display

        self._handles = {
            "loss": display(Markdown("*The loss plot appears once training has begun.*"), display_id=True),
            "samples": display(Markdown("*Validation grids appear every `sample_every_n_steps`.*"), display_id=True),
        }
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._draw_losses()
        self.poll()


# ------------------------------------------------------------------------------------------ 04: sampling


def file_summary(network) -> list[tuple[str, Any]]:
    """What a loaded LLLite file holds, as (name, value) rows: its size and architecture, and the training
    run's steps and base model from its metadata (the keys kohya's trainers write for the network's family)."""
    rows: list[tuple[str, Any]] = [("modules", len(network)), ("cond_emb_dim", network.cond_emb_dim),
                                   ("network_dim", network.network_dim),
                                   ("parameters", f"{sum(p.numel() for p in network.parameters()):,}")]
    return rows + [(f"`{key}`", network.metadata[key]) for key in network.summary_keys if key in network.metadata]


def control_view(pipe, network, control, prompt: str, multiplier: float, control_guidance: tuple[float, float],
                 seed: int, num_inference_steps: int = 20) -> Image.Image:
    """The control, the image without the network and the image with it (:func:`lllite.sampling.side_by_side`).

    Args:
        multiplier: the network's strength.
        control_guidance: (control_guidance_start, control_guidance_end), the fractions of the denoising
            steps where the network acts, as a range slider gives them.
        seed: the seed of both images.
    """
    start, end = control_guidance
    return side_by_side(pipe, network, control, prompt, seed=seed, multiplier=multiplier, control_guidance_start=start,
                        control_guidance_end=end, num_inference_steps=num_inference_steps)


#: The regions a schedule view can confine the control to.
REGIONS = ("everywhere", "rectangle", "ellipse", "your mask")


def schedule_view(pipe, network, control, prompt: str, early: float, switch: float, late: float, region: str,
                  x: tuple[float, float], y: tuple[float, float], invert: bool, seed: int, mask_image=None,
                  num_inference_steps: int = 20) -> Image.Image:
    """Two keyframes and a region, as sliders give them: the control, the mask, the image without the
    network and the image with it (:func:`lllite.sampling.comparison_grid`).

    Args:
        early: the strength from the first step on; late: the strength from ``switch`` (a fraction of the steps) on.
        region: one of :data:`REGIONS`: where the control acts.
        x, y: the region's (left, right) and (top, bottom) as fractions of the width and height.
        invert: the control acts outside the region instead.
        seed: the seed of both images.
        mask_image: the picture used for ``"your mask"`` (a path, a PIL image or an array; white = act).
    """
    if region not in REGIONS:
        raise LLLiteError(f"region = {region!r}: choose one of {', '.join(REGIONS)}")
    frames = [(0.0, late)] if switch == 0 else [(0.0, early), (switch, late)]
    height, width = np.asarray(control).shape[:2] if not isinstance(control, torch.Tensor) else control.shape[-2:]
    if region == "your mask":
        if mask_image is None:
            raise LLLiteError("region 'your mask': set MASK to the path of a picture first (white where the control acts)")
        mask = Image.open(mask_image) if isinstance(mask_image, (str, os.PathLike)) else mask_image
        mask = (mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask))).convert("L")
        mask = mask.resize((width, height))
        if invert:
            mask = Image.eval(mask, lambda v: 255 - v)
    elif region == "everywhere":
        mask = None
    else:
        mask = region_mask(width, height, region, (x[0], y[0], x[1], y[1]), invert=invert)
    shown = Image.new("L", (width, height), 255) if mask is None else mask
    label = describe_multiplier(frames)
    columns = {"without": dict(multiplier=0.0), f"with {label}" + ("" if mask is None else ", masked"):
               dict(multiplier=frames, mask=mask)}
    return comparison_grid(pipe, network, control, prompt, columns=columns, pictures={"where": shown}, seeds=seed,
                           num_inference_steps=num_inference_steps, title=prompt, progress=False)


def unused_path(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there yet, else the first free ``stem-N.suffix`` beside it: earlier pictures are kept."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate
