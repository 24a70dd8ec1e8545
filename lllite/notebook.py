"""What the notebooks show and how: where they run, which model, pictures, tables, live controls.

The notebooks stay thin (prose, calls, widgets, pictures). This module holds display code only; what
they compute lives in the package, where it is tested: :mod:`lllite.architecture` (notebook 02),
:mod:`lllite.recipes` (03), :mod:`lllite.sampling` and :mod:`lllite.evaluate` (04). Widget callbacks
are plain functions that take values and return a picture, so a test can call them without a browser.

    from lllite.notebook import detect_environment, load_pipeline
    env = detect_environment()        # real SDXL on a GPU, the toy world on a CPU
    pipe = load_pipeline(env)

The model is SDXL's LLLite or Anima's (kohya's v2 DiT LLLite): ``env.family`` tells the notebooks which.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .conditioning import canny
from .data import CONDITIONING_BACKGROUND, IMAGE_BACKGROUND, PairingReport, load_rgb
from .errors import InputMissingError, LLLiteError
from .figures import figure_image
from .images import region_mask
from .sampling import comparison_grid, describe_multiplier, image_grid, side_by_side
from .sdxl import SDXL_BASE

#: Environment variable for the quick setting (a few samples and steps) that CI runs the notebooks with.
QUICK_ENV = "LLLITE_QUICK"
#: Environment variable that chooses the model where a notebook says ``MODEL = "auto"``: the tests run the
#: notebooks on the toy Anima with ``LLLITE_MODEL=anima-toy`` without editing them.
MODEL_ENV = "LLLITE_MODEL"
#: Environment variable with real Anima's diffusers-format folder or hub id, where ``ANIMA`` is not set.
ANIMA_ENV = "LLLITE_ANIMA"
MODELS = ("auto", "toy", "sdxl", "anima-toy", "anima")
#: How to get a diffusers-format Anima, which ``MODEL = "anima"`` needs.
ANIMA_HOWTO = ("diffusers' scripts/convert_anima_to_diffusers.py writes one from Anima's checkpoints (the DiT, "
               "the Qwen3 text encoder, the LLM adapter and the Qwen-Image VAE)")
#: kohya's published canny LLLite for SDXL, the default file of the sampling notebook on real SDXL.
PUBLISHED_REPO = "kohya-ss/controlnet-lllite"
PUBLISHED_FILE = "controllllite_v01032064e_sdxl_canny.safetensors"


# ------------------------------------------------------------------------------------------ environment


def quick_mode(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``LLLITE_QUICK`` asks for the quick setting: ``1``/``true``/``yes`` on, unset/``0``/``false``/``no`` off."""
    value = (os.environ if environ is None else environ).get(QUICK_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise LLLiteError(f"{QUICK_ENV}={value!r}: set it to 1 for the quick setting, or to 0 (or leave it unset) for the full one")


@dataclass(frozen=True)
class Environment:
    """Where a notebook runs and what it will use.

    Attributes:
        in_colab: running in Google Colab.
        gpu: the CUDA GPU's name, or None on a CPU.
        device: ``"cuda"`` or ``"cpu"``.
        model: ``"sdxl"`` (stabilityai/stable-diffusion-xl-base-1.0), ``"toy"`` (the offline tiny SDXL),
            ``"anima"`` (real Anima from ``anima``) or ``"anima-toy"`` (the offline tiny Anima).
        quick: a few samples and steps, to check that everything runs (CI); the results mean nothing.
        anima: real Anima's diffusers-format folder or hub id (``model == "anima"`` only).
    """

    in_colab: bool
    gpu: str | None
    device: str
    model: str
    quick: bool
    anima: str | None = None

    @property
    def family(self) -> str:
        """``"sdxl"`` (SDXL's LLLite) or ``"anima"`` (kohya's v2 DiT LLLite)."""
        return "anima" if self.model in ("anima", "anima-toy") else "sdxl"

    @property
    def toy(self) -> bool:
        """The offline tiny model of the family, which runs on a CPU."""
        return self.model in ("toy", "anima-toy")

    @property
    def runs(self) -> Path:
        """The notebooks' working folder for this model, ``runs/<model>``: data and runs of one model never
        meet another's (the toy SDXL's 128 px shapes are not the toy Anima's 64 px ones)."""
        return Path("runs") / self.model

    @property
    def image_size(self) -> int:
        """The side in pixels that the model was trained at: 1024 for SDXL and Anima, 128 for the toy SDXL,
        64 for the toy Anima."""
        return {"toy": 128, "anima-toy": 64}.get(self.model, 1024)

    def __str__(self) -> str:
        model = {"sdxl": SDXL_BASE, "toy": "the toy SDXL (offline, a few MB)", "anima": f"Anima ({self.anima})",
                 "anima-toy": "the toy Anima (offline, a few MB)"}[self.model]
        return (f"Colab: {'yes' if self.in_colab else 'no'} | GPU: {self.gpu or 'none, CPU only'} | "
                f"model: {model} | quick setting: {'on' if self.quick else 'off'} ({QUICK_ENV})")


def detect_environment(model: str = "auto", environ: Mapping[str, str] | None = None, *,
                       anima: str | os.PathLike | None = None) -> Environment:
    """Detect Colab and the GPU, and choose the model.

    Args:
        model: ``"auto"`` (real SDXL on a GPU, the toy world otherwise; or what ``LLLITE_MODEL`` names),
            ``"toy"``, ``"sdxl"``, ``"anima-toy"`` (the offline toy Anima, 64 px) or ``"anima"`` (real Anima,
            from ``anima``).
        environ: environment variables to read ``LLLITE_QUICK``, ``LLLITE_MODEL`` and ``LLLITE_ANIMA`` from
            (default: the process's).
        anima: for ``"anima"``: a local diffusers-format Anima folder or a hub id; default ``LLLITE_ANIMA``.

    Raises:
        LLLiteError: an unknown model, or ``"anima"`` with no Anima given (the message says how to get one).
    """
    environ = os.environ if environ is None else environ
    named = environ.get(MODEL_ENV, "").strip()
    if model == "auto" and named:
        if named not in MODELS:
            raise LLLiteError(f"{MODEL_ENV}={named!r}: choose one of {', '.join(MODELS)}")
        model = named
    if model not in MODELS:
        raise LLLiteError(f"MODEL = {model!r}: choose 'auto' (real SDXL on a GPU, the toy otherwise), 'toy', 'sdxl', "
                          "'anima-toy' or 'anima'")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    chosen = ("sdxl" if gpu else "toy") if model == "auto" else model
    if chosen == "anima":
        anima = anima if anima is not None else (environ.get(ANIMA_ENV, "").strip() or None)
        if anima is None:
            raise LLLiteError(f"MODEL = 'anima' needs real Anima in diffusers' format: set ANIMA (or {ANIMA_ENV}) to "
                              f"its local folder or hub id; {ANIMA_HOWTO}. Or choose MODEL = 'anima-toy'")
        anima = str(anima)
    else:
        anima = None
    if chosen in ("sdxl", "anima") and gpu is None:
        warnings.warn(f"MODEL = {chosen!r} without a GPU: every image takes minutes on a CPU", stacklevel=2)
    return Environment("google.colab" in sys.modules, gpu, "cuda" if gpu else "cpu", chosen, quick_mode(environ), anima)


def load_pipeline(env: Environment):
    """The pipeline the environment asks for, on its device (:func:`lllite.load_pipeline`): real SDXL from
    the hub (in float16 on a GPU), real Anima from ``env.anima`` (in bfloat16 on a GPU, Anima's own type),
    or the pretrained toy SDXL or toy Anima shipped with the package."""
    from .pipelines import load_pipeline as load

    if env.family == "anima":
        half = env.model == "anima" and env.device == "cuda"
        return load(env.anima if env.model == "anima" else "toy", dtype=torch.bfloat16 if half else torch.float32,
                    device=env.device, what="ANIMA" if env.model == "anima" else "MODEL", model_family="anima")
    half = env.model == "sdxl" and env.device == "cuda"
    return load(SDXL_BASE if env.model == "sdxl" else "toy", dtype=torch.float16 if half else torch.float32,
                device=env.device, variant="fp16" if half else None, what="MODEL")


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


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]):
    """A table as IPython Markdown; it renders in Jupyter, Colab and saved notebooks alike."""
    from IPython.display import Markdown

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


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


#: The settings notebook 03 shows, by model family.
SHOWN_SETTINGS = {
    "sdxl": ("pretrained_model_name_or_path", "cond_emb_dim", "network_dim", "learning_rate", "train_batch_size",
             "max_train_steps", "max_train_seconds", "timestep_sampling", "debiased_estimation_loss",
             "mixed_precision", "optimizer_type", "sample_every_n_steps"),
    "anima": ("pretrained_model_name_or_path", "model_family", "cond_emb_dim", "network_dim", "lllite_target_layers",
              "lllite_cond_dim", "lllite_cond_resblocks", "learning_rate", "train_batch_size", "max_train_steps",
              "max_train_seconds", "timestep_sampling", "mixed_precision", "optimizer_type", "sample_every_n_steps"),
}


def settings_table(config, family: str = "sdxl"):
    """A training config's main settings for the model family (:data:`SHOWN_SETTINGS`), as a Markdown table."""
    return markdown_table([(f"`{name}`", getattr(config, name)) for name in SHOWN_SETTINGS[family]], ["setting", "value"])


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
        from .train import loss_figure

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


def trained_files(env: Environment, folders: Sequence[str | os.PathLike]) -> list[Path]:
    """Where the environment's training recipe (:func:`lllite.recipes.training_config`) writes its file in
    each of ``folders``, in their order: the files :func:`find_weights` looks for."""
    from .recipes import recipe_settings

    name = recipe_settings(env)["output_name"]
    return [Path(folder) / f"{name}.safetensors" for folder in folders]


def find_weights(env: Environment, path: str | os.PathLike | None, trained: Sequence[str | os.PathLike] = ()) -> Path | None:
    """The LLLite file the sampling notebook loads.

    Args:
        env: on real SDXL with no ``path``, kohya's published canny file is downloaded from the hub.
        path: a file the user chose; it must exist.
        trained: files a training run may have written, in order of preference (:func:`trained_files`);
            the first that exists is used for the toys and real Anima.

    Returns:
        The file, or None when a toy has no trained file yet (train one first).

    Raises:
        InputMissingError: ``path`` is not a file, or real Anima has no trained file (there is no published
            one to fall back on): the message says to train one in notebook 03 or to set ``WEIGHTS``.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputMissingError(f"WEIGHTS = {str(path)!r}: no such file; give a kohya-format LLLite .safetensors")
        return path
    if env.model == "sdxl":
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(PUBLISHED_REPO, PUBLISHED_FILE))
    found = next((Path(p) for p in trained if Path(p).is_file()), None)
    if found is None and env.model == "anima":
        looked = ", ".join(str(p) for p in trained) or "no file named"
        raise InputMissingError(f"WEIGHTS: no Anima LLLite file yet ({looked}): train one with notebook 03, or set "
                                "WEIGHTS to a kohya Anima LLLite .safetensors")
    return found


def file_summary(network) -> list[tuple[str, Any]]:
    """What a loaded LLLite file holds, as (name, value) rows: its size and architecture, and the training
    run's steps and base model from its metadata (the keys kohya's trainers write for the network's family)."""
    rows: list[tuple[str, Any]] = [("modules", len(network)), ("cond_emb_dim", network.cond_emb_dim),
                                   ("network_dim", network.network_dim),
                                   ("parameters", f"{sum(p.numel() for p in network.parameters()):,}")]
    from .anima.network import AnimaLLLiteNetwork

    keys = ("ss_network_module", "ss_steps", "ss_sd_model_name")
    if isinstance(network, AnimaLLLiteNetwork):
        keys = ("modelspec.architecture", "lllite.version", "lllite.target_atomics", "lllite.cond_dim",
                "lllite.cond_resblocks", "ss_steps", "ss_sd_model_name")
    return rows + [(f"`{key}`", network.metadata[key]) for key in keys if key in network.metadata]


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
