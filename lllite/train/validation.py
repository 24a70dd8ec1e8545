"""What a run shows while it trains: the loss plot, and validation grids (control, strength 0, strength 1) of the
network on dataset samples."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..controls import ControlledNetwork
from ..data import PairedDataset
from ..figures import figure_image, new_figure
from ..files import write_atomic
from ..images import to_pil
from ..sampling import generate, image_grid, save_png
from .parts import offload_encoders, restore_encoders


def loss_figure(losses: Sequence[tuple[int, float]]):
    """Loss per step and its moving average, as a PIL image."""

    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    window = max(1, len(values) // 20)
    cumulative = [0.0]
    for value in values:
        cumulative.append(cumulative[-1] + value)
    smooth = [(cumulative[i + 1] - cumulative[max(0, i - window + 1)]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]
    figure, axes = new_figure(6, 3.5)
    axes.plot(steps, values, color="0.75", linewidth=0.8, label="loss")
    axes.plot(steps, smooth, color="C0", label=f"mean of {window}")
    axes.set_xlabel("step")
    axes.set_ylabel("noise MSE")
    axes.legend()
    return figure_image(figure)


def plot_losses(losses: Sequence[tuple[int, float]], path: Path) -> None:
    """:func:`loss_figure` written as a PNG (atomically)."""
    figure = loss_figure(losses)
    write_atomic(path, lambda temporary: figure.save(temporary, format="PNG"))


def validation_grid(training, network: ControlledNetwork, dataset: PairedDataset, step: int):
    """Control, strength 0 and strength 1 for the first dataset samples, fixed seed: is the control learned?"""

    pipe, config = training.pipe, training.config
    count = min(config.num_validation_images, len(dataset))
    indices = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})
    rows, labels = [], []
    for index in indices:
        sample = dataset.items[index]
        control = training.validation_control(dataset[index]["conditioning_image"][None])
        images = [generate(pipe, network, control, sample.pair.caption, seed=config.sample_seed,
                           num_inference_steps=config.sample_num_inference_steps,
                           guidance_scale=config.sample_guidance_scale, multiplier=multiplier)[0]
                  for multiplier in (0.0, 1.0)]
        rows.append([to_pil(control)[0], *images])
        labels.append(sample.pair.caption or "(no caption)")
    return image_grid(rows, ["control", "strength 0", "strength 1"], labels, title=f"step {step}")


def validate(accelerator, training, network: ControlledNetwork, dataset: PairedDataset, step: int) -> None:
    """On the main process, write the validation grid of ``step`` to ``output_dir/samples`` (offloaded
    encoders visit the GPU for it); every process waits for it."""
    if accelerator.is_main_process:

        config = training.config
        restore_encoders(training)
        with accelerator.autocast():
            grid = validation_grid(training, network, dataset, step)
        save_png(grid, Path(config.output_dir) / "samples" / f"{config.output_name}-step{step:08d}.png", overwrite=True)
        offload_encoders(training)
    accelerator.wait_for_everyone()
