"""The main job: train an LLLite on the toy world and measure that it controls the image.

    python -m lllite demo --out lllite-demo       # about 5 minutes of training on a CPU
    python -m lllite demo --quick                 # a few steps, for a smoke test

It writes the shapes dataset (canny controls), trains an LLLite on the pretrained toy SDXL for at most
``max_train_seconds``, then generates held-out shapes at several strengths and scores each image by
the IoU between the caption's colour and the target shape. Strength 0 is the base model alone, which
puts the shape anywhere: its IoU is the chance level the control has to beat.

Outputs in ``--out``: ``metrics.json``, ``comparison.png`` (control, target, one column per strength),
``iou_vs_strength.png``, the trained ``train/lllite_toy_canny.safetensors`` and its loss curve.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .conditioning import canny
from .data import DatasetConfig, SubsetConfig
from .errors import OutputExistsError
from .files import write_atomic, write_text_atomic
from .images import from_uint8
from .launch import ProcessFailedError, launch
from .metrics import shape_iou
from .sampling import generate, image_grid, save_png
from .toy.shapes import eval_samples, write_dataset
from .train import TrainConfig, TrainError, TrainResult, train

#: What the demo writes into its folder; only these are replaced by ``overwrite``.
OUTPUTS = ("data", "train", "metrics.json", "comparison.png", "iou_vs_strength.png")


@dataclass
class DemoConfig:
    """Settings of the demo; the defaults train for at most 5 minutes and finish in about 6.5 on 2 CPU cores.

    Args:
        out: output folder.
        train_samples: shapes in the training set.
        eval_samples: held-out shapes scored at every strength.
        size: image side in pixels (the toy SDXL is trained at 128).
        strengths: the multipliers compared.
        max_train_seconds: training time budget.
        max_train_steps: most training steps; the cosine learning rate anneals over these steps or over
            ``max_train_seconds``, whichever runs out first.
        train_batch_size, learning_rate, cond_emb_dim, network_dim, up_path, timestep_sampling,
            debiased_estimation_loss: the LLLite training recipe (see :class:`lllite.train.TrainConfig`).
            Tuned on the earlier base weights (16000 pretraining steps; the shipped 6000-step base
            scores 0.68 with these settings in two processes). Measured on the held-out shapes after
            5 minutes (about 950 steps) in one process, mean IoU at strength 1: the noise loss alone
            0.46, weighted by 1/sqrt(SNR) 0.70, and with the learning rate doubled to 4e-3 0.72;
            batch 4 and 16, uniform timesteps, no up path, a learning rate of 8e-3 and network_dim
            128 all scored lower. In two processes of batch 8 (about 780 steps of 16): 0.75, and 0.67
            at a learning rate of 6e-3; two processes of batch 4 made no more steps than one process
            of batch 8 (0.68).
        num_inference_steps, guidance_scale: sampling settings of the evaluation.
        grid_rows: held-out samples shown in ``comparison.png``.
        seed: seeds the dataset, the training and the evaluation.
        threads: CPU threads for torch per process; the toy's kernels are too small to gain from
            more, and on a busy machine extra threads make every step several times slower.
        processes: CPU processes that train together (DDP, one per core), each on ``train_batch_size``
            samples of every step. On a 2-core CPU two processes of batch 8 drew 1.4 to 1.8 times the
            samples per second of one (776 steps of 16 in 5 minutes, against 1099 of 8). With a CUDA
            GPU the demo trains in one process on the same total batch.
        overwrite: replace the outputs of an earlier demo in ``out``.
    """

    out: str = "lllite-demo"
    train_samples: int = 2000
    eval_samples: int = 32
    size: int = 128
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    max_train_seconds: float = 300.0
    max_train_steps: int = 4000
    train_batch_size: int = 8
    learning_rate: float = 4e-3
    cond_emb_dim: int = 32
    network_dim: int = 64
    up_path: bool = True
    timestep_sampling: str = "cubic"
    debiased_estimation_loss: bool = True
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    grid_rows: int = 6
    seed: int = 0
    threads: int = 1
    processes: int = 2
    overwrite: bool = False

    def training_settings(self) -> dict:
        """The :class:`lllite.train.TrainConfig` settings of this recipe (all but the dataset and output folder)."""
        return dict(
            pretrained_model_name_or_path="toy", output_name="lllite_toy_canny", cond_emb_dim=self.cond_emb_dim,
            network_dim=self.network_dim, up_path=self.up_path, learning_rate=self.learning_rate,
            train_batch_size=self.train_batch_size, lr_scheduler="cosine", lr_warmup_steps=min(50, self.max_train_steps // 10),
            timestep_sampling=self.timestep_sampling, debiased_estimation_loss=self.debiased_estimation_loss,
            max_train_steps=self.max_train_steps, max_train_seconds=self.max_train_seconds, mixed_precision="no",
            gradient_checkpointing=False, cache_latents=True, cache_text_encoder_outputs=True, optimizer_type="adamw",
            seed=self.seed, save_precision="float",
        )

    @classmethod
    def quick(cls, **changes) -> "DemoConfig":
        """A smoke-test setting: a handful of samples and steps; the numbers mean nothing."""
        settings = dict(train_samples=16, eval_samples=4, max_train_steps=3, train_batch_size=4,
                        num_inference_steps=4, grid_rows=2, processes=1)
        settings.update(changes)
        return cls(**settings)


@dataclass
class DemoResult:
    strength_iou: dict[str, float]
    strength_iou_std: dict[str, float]
    strength_iou_by_colour: dict[str, dict[str, float]]
    weights: str
    train_seconds: float
    train_steps: int
    train_processes: int
    total_seconds: float
    out: str
    config: dict = field(default_factory=dict)


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [out / name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{out} holds an earlier demo ({existing[0].name}); pass --overwrite or choose another --out")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _by_colour(ious: list[float], samples) -> dict[str, float]:
    """Mean IoU per caption colour: a colour the base model cannot draw scores 0 at every strength."""
    colours = sorted({s.colour for s in samples})
    return {c: float(np.mean([v for v, s in zip(ious, samples) if s.colour == c])) for c in colours}


def plot_iou(strengths, means, stds, path: Path) -> None:
    """Mean shape IoU (with one standard deviation) against strength, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=100)
    axes.errorbar(strengths, means, yerr=stds, marker="o", capsize=4)
    axes.axhline(means[0], color="0.6", linestyle="--", label="strength 0: the base model's chance level")
    axes.set_xlabel("LLLite strength (multiplier)")
    axes.set_ylabel("shape IoU")
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    write_atomic(path, figure.savefig)
    plt.close(figure)


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
        pipe: the SDXL pipeline to train on; by default the pretrained toy (``lllite.load_pipeline("toy")``).
    """
    for name in ("threads", "processes"):
        if getattr(config, name) < 1:
            raise TrainError(f"{name} must be at least 1, got {getattr(config, name)}")
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, pipe, started)
    finally:
        torch.set_num_threads(threads)


def _run(config: DemoConfig, pipe, started: float) -> DemoResult:
    from .pipelines import load_pipeline

    out = Path(config.out)
    _prepare(out, config.overwrite)
    if pipe is None:
        pipe = load_pipeline("toy")

    # 1. The shapes dataset in kohya's layout: images, captions, canny controls.
    data = write_dataset(out / "data", config.train_samples, seed=config.seed, size=config.size)
    dataset = DatasetConfig([SubsetConfig(data / "images", data / "conditioning")], resolution=config.size,
                            batch_size=config.train_batch_size, enable_bucket=False)

    # 2. Train within the time budget.
    settings = config.training_settings()
    processes = config.processes
    if processes > 1 and torch.cuda.is_available():
        settings["train_batch_size"], processes = config.train_batch_size * processes, 1
        dataset.batch_size = settings["train_batch_size"]
    train_config = TrainConfig(dataset_config=dataset, output_dir=str(out / "train"), **settings)
    if processes > 1:
        result = _train_in_processes(train_config, pipe, processes, config.threads)
    else:
        result = train(train_config, pipe)
    network = result.network

    # 3. Held-out controls at every strength, scored by shape IoU.
    held_out = eval_samples(config.eval_samples, seed=config.seed, size=config.size)
    controls = from_uint8(np.stack([canny(s.image) for s in held_out]))
    prompts = [s.caption for s in held_out]
    seeds = list(range(len(held_out)))
    images: dict[float, list] = {}
    for strength in tqdm(config.strengths, desc="evaluating strengths", unit="strength"):
        images[strength] = []
        for first in range(0, len(held_out), 16):
            chunk = slice(first, first + 16)
            images[strength] += generate(pipe, network, controls[chunk], prompts[chunk], seed=seeds[chunk],
                                         num_inference_steps=config.num_inference_steps,
                                         guidance_scale=config.guidance_scale, strength=strength)
    ious = {s: [shape_iou(np.asarray(im), sample.mask, sample.colour) for im, sample in zip(images[s], held_out)]
            for s in config.strengths}
    network.remove()

    # 4. Pictures and numbers.
    keys = [str(float(s)) for s in config.strengths]
    means = [float(np.mean(ious[s])) for s in config.strengths]
    stds = [float(np.std(ious[s])) for s in config.strengths]
    rows = []
    for i in range(min(config.grid_rows, len(held_out))):
        rows.append([Image.fromarray(canny(held_out[i].image)), Image.fromarray(held_out[i].image)]
                    + [images[s][i] for s in config.strengths])
    labels = ["control", "target"] + [f"strength {s:g} (IoU {m:.2f})" for s, m in zip(config.strengths, means)]
    grid = image_grid(rows, labels, [prompts[i] for i in range(len(rows))],
                      title=f"toy canny LLLite, {result.steps} steps; mean IoU over {len(held_out)} held-out shapes")
    save_png(grid, out / "comparison.png", overwrite=True)
    plot_iou(list(config.strengths), means, stds, out / "iou_vs_strength.png")
    demo = DemoResult(
        strength_iou=dict(zip(keys, means)),
        strength_iou_std=dict(zip(keys, stds)),
        strength_iou_by_colour={key: _by_colour(ious[s], held_out) for key, s in zip(keys, config.strengths)},
        weights=str(result.weights),
        train_seconds=round(result.train_seconds, 1),
        train_steps=result.steps,
        train_processes=processes,
        total_seconds=round(time.monotonic() - started, 1),
        out=str(out),
        config={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
    )
    write_text_atomic(out / "metrics.json", json.dumps(asdict(demo), indent=2) + "\n")
    return demo
