"""The main job: train an LLLite on the toy world and measure that it controls the image.

    python -m lllite demo --out lllite-demo       # about 5 minutes of training on a CPU
    python -m lllite demo --quick                 # a few steps, for a smoke test
    python -m lllite demo --model anima           # kohya's Anima LLLite (v2) on the toy Anima DiT

It writes the shapes dataset (canny controls), trains an LLLite on the family's pretrained toy (the toy SDXL,
or the toy Anima) for at most ``max_train_seconds`` with the family's toy recipe (:class:`lllite.sdxl.toy.ToyRecipe`,
:class:`lllite.anima.toy.ToyRecipe`), then generates
held-out shapes at several strengths and scores each image by the IoU between the caption's colour and
the target shape (:mod:`lllite.evaluate`). Strength 0 is the base model alone, which puts the shape
anywhere: its IoU is the chance level the control has to beat.

Outputs in ``--out``: ``metrics.json`` (:class:`DemoResult`: the IoU and edge F-score by strength, the IoU at
the highest strength on shapes of sizes that no training shape has, beside the steps done, the training loop's
seconds, steps and samples per second, and the machine),
``comparison.png`` (control, target, one column per strength), ``iou_vs_strength.png``, the trained
``train/lllite_toy_canny.safetensors`` and its loss curve. ``benches/iou_vs_steps.py`` measures how the IoU
grows with the steps, for what a faster machine would give.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from PIL import Image

from . import auto, families
from .conditioning import canny
from .data import DatasetConfig, SubsetConfig
from .errors import LLLiteError, OutputExistsError
from .evaluate import fidelity_by_strength, plot_fidelity
from .figures import save_figure
from .files import write_text_atomic
from .launch import ProcessFailedError, launch
from .sampling import MULTIPLIERS, image_grid, save_png
from .toy import TOY
from .toy.shapes import eval_samples, unseen_samples, write_dataset
from .train import TrainConfig, TrainError, TrainResult, train

#: What the demo writes into its folder; only these are replaced by ``overwrite``.
OUTPUTS = ("data", "train", "metrics.json", "comparison.png", "iou_vs_strength.png")


@dataclass
class DemoConfig:
    """Settings of the demo: the model family, the toy recipe's budget, and how to evaluate and run it. The
    defaults train for at most 5 minutes and finish in about 6 on 2 CPU cores.

    Args:
        model: the family (:mod:`lllite.families`): ``"sdxl"`` (the toy SDXL and kohya's SDXL LLLite) or
            ``"anima"`` (the toy Anima and kohya's Anima LLLite, v2); it trains with the family's toy recipe
            (:class:`lllite.sdxl.toy.ToyRecipe`, :class:`lllite.anima.toy.ToyRecipe`).
        out: output folder.
        train_samples, max_train_seconds, max_train_steps, train_batch_size, compile, seed: the toy recipe's
            fields of the same names (the same defaults in every family); ``seed`` also seeds the evaluation.
        recipe: any other field of the family's toy recipe, e.g. ``{"learning_rate": 1e-3}`` or ``{"size": 64}``.
        eval_samples: held-out shapes scored at every multiplier.
        multipliers: the strengths compared.
        num_inference_steps, guidance_scale: sampling settings of the evaluation.
        grid_rows: held-out samples shown in ``comparison.png``.
        threads: CPU threads for torch per process; the toy's kernels are too small to gain from
            more, and on a busy machine extra threads make every step several times slower.
        processes: CPU processes that train together (DDP, one per core), each on ``train_batch_size``
            samples of every step. On a 2-core CPU two processes of batch 8 drew 1.4 to 1.8 times the
            samples per second of one (776 steps of 16 in 5 minutes, against 1099 of 8). With a CUDA
            GPU the demo trains in one process on the same total batch.
        overwrite: replace the outputs of an earlier demo in ``out``.
    """

    model: str = families.DEFAULT.name
    out: str = "lllite-demo"
    train_samples: int = 2000
    max_train_seconds: float = 300.0
    max_train_steps: int = 4000
    train_batch_size: int = 8
    compile: bool = False
    seed: int = 0
    recipe: dict = field(default_factory=dict)
    eval_samples: int = 32
    multipliers: tuple[float, ...] = MULTIPLIERS
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    grid_rows: int = 6
    threads: int = 1
    processes: int = 2
    overwrite: bool = False

    def toy_recipe(self):
        """The family's toy recipe with this demo's data, budget, batch, compile and seed, and :attr:`recipe`'s changes."""
        shared = {"train_samples": self.train_samples, "max_train_seconds": self.max_train_seconds,
                  "max_train_steps": self.max_train_steps, "train_batch_size": self.train_batch_size,
                  "compile": self.compile, "seed": self.seed}
        return families.get(self.model, "model").role("toy").ToyRecipe(**shared, **self.recipe)

    @classmethod
    def quick(cls, **changes) -> DemoConfig:
        """A smoke-test setting: a handful of samples and steps; the numbers mean nothing. ``changes`` may name
        the demo's fields and the toy recipe's (those go into :attr:`recipe`)."""
        settings = {"train_samples": 16, "eval_samples": 4, "max_train_steps": 3, "train_batch_size": 4,
                    "num_inference_steps": 4, "grid_rows": 2, "processes": 1}
        settings.update(changes)
        own = {f.name for f in fields(cls)}
        recipe = {**settings.pop("recipe", {}), **{k: settings.pop(k) for k in list(settings) if k not in own}}
        return cls(**settings, recipe=recipe)


@dataclass
class DemoResult:
    """What the demo measured, as ``metrics.json`` holds it.

    Attributes:
        strength_iou, strength_iou_std, strength_iou_by_colour: the mean shape IoU at each strength (keys
            ``"0.0"`` to ``"1.0"``), its standard deviation over the held-out shapes, and its mean per colour.
        strength_edge_f: the mean edge F-score of each strength (:mod:`lllite.evaluate`).
        unseen_iou: the mean shape IoU at the highest strength on as many shapes, of sizes no training shape has
            (:func:`unseen_iou`).
        weights: the trained network's file.
        train_seconds: time in the training loop (not the data, the caching or the evaluation).
        train_steps: optimizer steps done.
        train_processes: processes that trained together.
        steps_per_second: ``train_steps / train_seconds`` (before rounding).
        samples_per_second: training samples per second: steps times the batch of every process together.
        machine: where it trained (:func:`machine`).
        total_seconds: the whole demo, evaluation included.
    """

    strength_iou: dict[str, float]
    strength_iou_std: dict[str, float]
    strength_iou_by_colour: dict[str, dict[str, float]]
    strength_edge_f: dict[str, float]
    unseen_iou: float
    weights: str
    train_seconds: float
    train_steps: int
    train_processes: int
    steps_per_second: float
    samples_per_second: float
    machine: dict
    total_seconds: float
    out: str
    config: dict = field(default_factory=dict)

    def summary(self) -> list[str]:
        """The lines the demo command ends with: the IoU by strength, then the scores at the highest strength
        next to the steps done and their speed."""
        top = max(self.strength_iou, key=float)
        threads = self.machine["threads"]
        who = f"{self.train_processes} processes x {threads} thread" if self.train_processes > 1 else f"{threads} thread"
        scores = f"shape IoU {self.strength_iou[top]:.3f}, edge F-score {self.strength_edge_f[top]:.3f}"
        steps = (f"{self.train_steps} steps in {self.train_seconds:.0f} s ({self.steps_per_second:.2f} steps/s, "
                 f"{self.samples_per_second:.1f} samples/s; {who}{'s' if threads > 1 else ''})")
        return [f"shape IoU by strength: {', '.join(f'{s}: {v:.3f}' for s, v in self.strength_iou.items())}",
                f"shape IoU at strength {float(top):g} on shapes of sizes never trained on: {self.unseen_iou:.3f}",
                f"strength {float(top):g}: {scores} after {steps}; total {self.total_seconds:.0f} s"]


def machine(processes: int) -> dict:
    """Where the demo trains: torch's threads per process, the processes, the CPU (its model name from
    /proc/cpuinfo, else ``platform.processor()``), its cores, and the GPU where training used one."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"threads": torch.get_num_threads(), "processes": processes, "cpu": cpu, "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def speed(result: TrainResult, total_batch: int) -> dict[str, float]:
    """Steps and samples per second of a run's training loop (0 where it took no time)."""
    per_second = result.steps / result.train_seconds if result.train_seconds > 0 else 0.0
    return {"steps_per_second": round(per_second, 3), "samples_per_second": round(per_second * total_batch, 2)}


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [out / name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{out} holds an earlier demo ({existing[0].name}); pass --overwrite or choose another --out")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _train_process(config: TrainConfig, pipe) -> tuple:
    """One of the training processes (DDP through accelerate); the first returns what it trained."""
    result = train(config, pipe)
    return str(result.weights), result.steps, result.losses, result.train_seconds, result.stopped_by


def _train_in_processes(config: TrainConfig, pipe, processes: int, threads: int) -> TrainResult:
    """Train as one DDP job of ``processes`` forked CPU processes; this process only waits, then loads
    the written network (detached).

    Forking shares the loaded pipeline with the children and leaves this process's state (a notebook's
    kernel, say) untouched. The latents are cached to disk once by the first process and read by the others.
    """
    import lllite

    config.cache_latents_to_disk = True
    try:
        weights, steps, losses, seconds, stopped_by = launch(_train_process, config, pipe, processes=processes,
                                                             threads=threads, name="training process")
    except ProcessFailedError as failed:
        raise TrainError(f"{failed.summary}; run with processes=1 to train in this process\n{failed.trace}") from None
    shutil.rmtree(Path(config.output_dir) / "cache", ignore_errors=True)
    return TrainResult(lllite.load(weights), Path(weights), steps, losses, seconds, stopped_by)


def run_demo(config: DemoConfig, pipe=None) -> DemoResult:
    """Write the data, train, evaluate and write the outputs; see the module docstring.

    Args:
        config: the demo's settings.
        pipe: the pipeline to train on; by default the family's pretrained toy
            (``lllite.load_pipeline("toy", model_family=config.model)``).
    """
    families.get(config.model, "model")
    for name in ("threads", "processes"):
        if getattr(config, name) < 1:
            raise LLLiteError(f"{name} must be at least 1, got {getattr(config, name)}")
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, pipe, started)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Trained:
    """A demo's training: the run's result, the processes that trained and the samples of one step (every
    process's batch together)."""

    result: TrainResult
    processes: int
    total_batch: int


def train_demo(config: DemoConfig, pipe, out: Path, **train_changes) -> Trained:
    """Write the shapes dataset into ``out / "data"`` and train the demo's network into ``out / "train"`` with
    the family's toy recipe, in ``config.processes`` processes (one on a CUDA GPU, on the same total batch).

    Args:
        train_changes: :class:`lllite.train.TrainConfig` settings that the recipe does not have, e.g.
            ``save_every_n_steps`` (benches/iou_vs_steps.py).
    """
    recipe = config.toy_recipe()
    size, batch_size = recipe.size, config.train_batch_size
    # The shapes dataset in kohya's layout: images, captions, canny controls.
    data = write_dataset(out / "data", config.train_samples, seed=config.seed, size=size)
    dataset = DatasetConfig([SubsetConfig(data / "images", data / "conditioning")], resolution=size,
                            batch_size=batch_size, enable_bucket=False)
    settings = {**recipe.training_settings(), **train_changes}
    processes = config.processes
    if processes > 1 and torch.cuda.is_available():
        settings["train_batch_size"], processes = batch_size * processes, 1
        dataset.batch_size = settings["train_batch_size"]
    train_config = TrainConfig(dataset_config=dataset, output_dir=str(out / "train"), **settings)
    if processes > 1:
        result = _train_in_processes(train_config, pipe, processes, config.threads)
    else:
        result = train(train_config, pipe)
    total_batch = settings["train_batch_size"] * processes * train_config.gradient_accumulation_steps
    return Trained(result, processes, total_batch)


def evaluate_demo(config: DemoConfig, pipe, network, multipliers=None, keep_images: int = 0, progress: bool = True):
    """The demo's evaluation of ``network``: its held-out shapes (``config.eval_samples``, seeded by
    ``config.seed``) at ``multipliers`` (by default ``config.multipliers``).

    Returns:
        ``(held_out, fidelity)``: the samples and their :class:`lllite.evaluate.Fidelity`.
    """
    held_out = eval_samples(config.eval_samples, seed=config.seed, size=config.toy_recipe().size)
    fidelity = fidelity_by_strength(pipe, network, held_out,
                                    multipliers=config.multipliers if multipliers is None else multipliers,
                                    num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                                    batch_size=16, keep_images=keep_images, progress=progress)
    return held_out, fidelity


def unseen_iou(config: DemoConfig, pipe, network, multiplier: float, progress: bool = True) -> float:
    """The mean shape IoU at ``multiplier`` over as many shapes as the demo holds out, of sizes that no training
    shape has (:func:`lllite.toy.shapes.unseen_samples`, seeded by ``config.seed``)."""
    samples = unseen_samples(config.eval_samples, seed=config.seed, size=config.toy_recipe().size)
    fidelity = fidelity_by_strength(pipe, network, samples, multipliers=[multiplier],
                                    num_inference_steps=config.num_inference_steps,
                                    guidance_scale=config.guidance_scale, batch_size=16, progress=progress)
    return fidelity.means("iou")[0]


def _run(config: DemoConfig, pipe, started: float) -> DemoResult:
    out = Path(config.out)
    recipe = config.toy_recipe()
    _prepare(out, config.overwrite)
    family = families.get(config.model)
    if pipe is None:
        pipe = auto.load_pipeline(TOY, model_family=family.name)

    # 1. The data, and training within the time budget.
    trained = train_demo(config, pipe, out)
    result, network = trained.result, trained.result.network

    # 2. Held-out controls at every strength, scored by shape IoU and edge F-score.
    rows = min(config.grid_rows, config.eval_samples)
    held_out, fidelity = evaluate_demo(config, pipe, network, keep_images=rows)
    top = max(fidelity.multipliers)
    unseen = unseen_iou(config, pipe, network, top)
    network.remove()

    # 3. Pictures and numbers.
    keys = [str(m) for m in fidelity.multipliers]
    means, stds = fidelity.means("iou"), fidelity.stds("iou")
    grid_rows = [[Image.fromarray(canny(sample.image)), Image.fromarray(sample.image)]
                 + [fidelity.images[m][i] for m in fidelity.multipliers] for i, sample in enumerate(held_out[:rows])]
    labels = ["control", "target"] + [f"strength {m:g} (IoU {v:.2f})" for m, v in zip(fidelity.multipliers, means)]
    grid = image_grid(grid_rows, labels, [sample.caption for sample in held_out[:rows]],
                      title=f"toy {family.title} canny LLLite, {result.steps} steps; "
                            f"mean IoU over {len(held_out)} held-out shapes")
    save_png(grid, out / "comparison.png", overwrite=True)
    save_figure(plot_fidelity(fidelity, metrics=["iou"]), out / "iou_vs_strength.png")
    demo = DemoResult(
        strength_iou=dict(zip(keys, means)),
        strength_iou_std=dict(zip(keys, stds)),
        strength_iou_by_colour=dict(zip(keys, fidelity.by_colour("iou").values())),
        strength_edge_f=dict(zip(keys, fidelity.means("edge_f"))),
        unseen_iou=unseen,
        weights=str(result.weights),
        train_seconds=round(result.train_seconds, 2),
        train_steps=result.steps,
        train_processes=trained.processes,
        **speed(result, trained.total_batch),
        machine=machine(trained.processes),
        total_seconds=round(time.monotonic() - started, 1),
        out=str(out),
        config={**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
                "recipe": asdict(recipe)},
    )
    write_text_atomic(out / "metrics.json", json.dumps(asdict(demo), indent=2) + "\n")
    return demo
