"""What a run writes and reads back: checkpoints (the network and everything the rest of the run depends on),
the kohya file with its ``ss_*`` metadata, and the refusal to mix a new run into an earlier one's folder."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..controls import ControlledNetwork
from ..data import PairedDataset
from ..errors import TrainError
from ..fileformat import LLLiteFileError
from .config import SAVE_PRECISIONS, TrainConfig
from .validation import plot_losses


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:08d}"


#: A checkpoint's files: the network (float32), the optimizer's tensors, and everything else as JSON. Nothing in
#: a checkpoint is a pickle, so a checkpoint folder someone shares cannot run code on the machine that resumes it.
NETWORK_FILE, OPTIMIZER_FILE, STATE_FILE = "network.safetensors", "optimizer.safetensors", "training_state.json"
#: What earlier versions wrote instead of the last two: one pickle, read only with torch's weights_only unpickler.
PICKLED_STATE_FILE = "training_state.pt"


def find_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (also those earlier versions wrote)."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if (p / NETWORK_FILE).is_file()
             and ((p / STATE_FILE).is_file() or (p / PICKLED_STATE_FILE).is_file())]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(folder: Path, network: ControlledNetwork, state: dict) -> None:
    """Network (float32) and training state, written to a temporary folder and then renamed into place, so that
    a run killed while it writes leaves the earlier checkpoints as they were.

    Args:
        state: ``step``, ``losses``, ``train_seconds``, ``config`` (plain values), ``optimizer`` (its
            ``state_dict()``) and ``scaler`` (the gradient scaler's ``state_dict()`` or None).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in network.state_dict().items()},
                  str(staging / NETWORK_FILE), metadata=network.file_metadata())
        write_training_state(staging, state)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_training_state(folder: Path, state: dict) -> None:
    """``state`` as :data:`OPTIMIZER_FILE` (the optimizer's tensors) and :data:`STATE_FILE` (everything else)."""
    optimizer = state["optimizer"]
    tensors, values = {}, {}
    for index, entries in optimizer["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[name] = value
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    plain = {**{k: v for k, v in state.items() if k != "optimizer"},
             "optimizer": {"param_groups": optimizer["param_groups"], "values": values}}
    (folder / STATE_FILE).write_text(json.dumps(plain, indent=1) + "\n", encoding="utf-8")


def read_training_state(folder: Path) -> dict:
    """What :func:`write_training_state` wrote, or the pickle of an earlier version read with torch's
    ``weights_only`` unpickler (tensors and plain containers only; it runs no code).

    Raises:
        TrainError: files that are missing, damaged or hold more than data; the message names the file.
    """
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return _read_pickled_state(folder / PICKLED_STATE_FILE)
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict) or not isinstance(state.get("step"), int):
            raise ValueError("no step or optimizer")
        optimizer: dict = {"state": {}, "param_groups": list(state["optimizer"]["param_groups"])}
        for key, tensor in load_file(str(folder / OPTIMIZER_FILE)).items():
            index, _, name = key.partition(".")
            optimizer["state"].setdefault(int(index), {})[name] = tensor
        for index, entries in state["optimizer"].get("values", {}).items():
            optimizer["state"].setdefault(int(index), {}).update(entries)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, SafetensorError) as error:
        raise TrainError(f"resume: {folder} holds a damaged training state ({type(error).__name__}: {error}); "
                         "resume from another checkpoint, or start over with --overwrite") from None
    return {**state, "optimizer": optimizer}


def _read_pickled_state(path: Path) -> dict:
    if not path.is_file():
        raise TrainError(f"resume: {path.parent} is not a checkpoint (it needs {NETWORK_FILE} and {STATE_FILE})")
    try:
        with warnings.catch_warnings():  # torch notes an older pickle protocol; the unpickler reads it safely
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise TrainError(f"resume: {path} (a checkpoint of an earlier version) holds more than a training state's "
                         "data, and lllite does not run code from files, so it was not read "
                         f"({str(error).splitlines()[0]}). Resume from a checkpoint you wrote, or start over with --overwrite"
                         ) from None
    except Exception as error:  # noqa: BLE001 - a damaged pickle can fail in many ways
        raise TrainError(f"resume: {path} is not a readable training state ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict) or "step" not in state:
        raise TrainError(f"resume: {path} is not a training state lllite wrote (no step or optimizer)")
    return state


def load_checkpoint(folder: Path, network: ControlledNetwork) -> dict:
    """Load the network's weights from the checkpoint in ``folder``; returns the rest of its training state."""
    weights = folder / NETWORK_FILE
    if not weights.is_file():
        raise TrainError(f"resume: {folder} is not a checkpoint (it needs {NETWORK_FILE} and {STATE_FILE})")
    state = read_training_state(folder)
    try:
        tensors = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as opened:
            metadata = opened.metadata() or {}
        network.check_weights(tensors, metadata, f"resume: {weights}")
        network.load_state_dict(tensors)
    except LLLiteFileError as error:
        raise TrainError(str(error)) from None
    except (RuntimeError, SafetensorError) as error:
        raise TrainError(f"resume: {weights} does not fit this network (other cond_emb_dim, network_dim or model?): "
                         f"{str(error).splitlines()[0]}") from None
    return state


def resume(folder: Path | None, network: ControlledNetwork, optimizer, say=print) -> tuple[int, list, float, dict | None]:
    """Load the checkpoint in ``folder`` (None: a fresh run) into the network and the optimizer.

    Returns:
        The step it was written at, the losses so far, the training seconds used, and the mixed precision's
        gradient scaler state (None when it had none), for accelerate's scaler once the run is prepared.
    """
    if folder is None:
        return 0, [], 0.0, None
    state = load_checkpoint(folder, network)
    saved = state["optimizer"]
    for group, current in zip(saved["param_groups"], optimizer.param_groups):  # JSON keeps tuples as lists
        group.update({k: tuple(v) for k, v in group.items() if isinstance(v, list) and isinstance(current.get(k), tuple)})
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as error:
        raise TrainError(f"resume: the optimizer state in {folder} does not fit this run's optimizer "
                         f"({type(error).__name__}: {error}); resume with the optimizer_type it was written with") from None
    say(f"resuming from {folder} at step {state['step']}")
    # train_seconds is absent from checkpoints of older versions
    return state["step"], [tuple(x) for x in state["losses"]], state.get("train_seconds", 0.0), state.get("scaler")


def checkpoint(accelerator, network: ControlledNetwork, optimizer, config: TrainConfig, metadata: dict[str, str],
               step: int, steps_per_epoch: int, losses: list[tuple[int, float]], train_seconds: float) -> None:
    """On the main process, write the checkpoint of ``step`` (keeping the newest ``checkpoints_total_limit``)
    and its kohya file; every process waits for it.

    A checkpoint holds what the rest of the run depends on: the network, the optimizer's state, the
    step (the data, the draws and the learning rate follow from it and ``seed``), the losses so far
    and the training time used, which the time budget and the learning rate's decay go on from.
    """
    if accelerator.is_main_process:
        output_dir = Path(config.output_dir)
        state = {"step": step, "losses": losses, "train_seconds": train_seconds, "optimizer": optimizer.state_dict(),
                 "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                 "config": {k: v for k, v in vars(config).items() if isinstance(v, (int, float, str, bool, type(None)))}}
        save_checkpoint(checkpoint_dir(output_dir, step), network, state)
        for old in find_checkpoints(output_dir)[:-config.checkpoints_total_limit]:
            shutil.rmtree(old)
        path = output_dir / f"{config.output_name}-step{step:08d}.safetensors"
        save_network(network, path, config, metadata, step, steps_per_epoch, losses)
    accelerator.wait_for_everyone()


def run_metadata(config: TrainConfig, dataset: PairedDataset, dataset_name: str, mixed_precision: str,
                 family: dict[str, str]) -> dict[str, str]:
    """kohya's ``ss_*`` metadata of the run, with the model family's own keys (``family``); :func:`save_network`
    adds the step and epoch of each file."""
    resolutions = sorted({tuple(c.resolution) for c in dataset.configs})
    return {
        **family,
        "ss_output_name": config.output_name,
        "ss_sd_model_name": str(config.pretrained_model_name_or_path),
        "ss_cond_emb_dim": str(config.cond_emb_dim),
        "ss_network_dim": str(config.network_dim),
        "ss_learning_rate": str(config.learning_rate),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_optimizer": config.optimizer_type,
        "ss_max_train_steps": str(config.max_train_steps),
        "ss_num_train_images": str(len(dataset)),
        "ss_batch_size_per_device": json.dumps(sorted({c.batch_size for c in dataset.configs})),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation_steps),
        "ss_resolution": json.dumps(resolutions[0] if len(resolutions) == 1 else resolutions),
        "ss_mixed_precision": mixed_precision,
        "ss_seed": str(config.seed),
        "ss_timestep_sampling": config.timestep_sampling,
        "ss_dataset_config": dataset_name,
    }


def save_network(network: ControlledNetwork, path: Path, config: TrainConfig, metadata: dict[str, str], step: int,
                 steps_per_epoch: int, losses: list[tuple[int, float]]) -> Path:
    """The network as a kohya file at ``path`` (in ``save_precision``), and the loss plot so far beside it."""
    metadata = {**metadata, "ss_steps": str(step), "ss_epoch": str(step // steps_per_epoch)}
    network.save(path, dtype=SAVE_PRECISIONS[config.save_precision], metadata=metadata, overwrite=True)
    if losses:
        plot_losses(losses, path.parent / "loss.png")
    return path


def prepare_output(config: TrainConfig, output_dir: Path, final: Path, accelerator) -> Path | None:
    """The checkpoint to resume from, after refusing to mix a new run into an earlier one's files; with
    ``overwrite`` the earlier run's checkpoints are gone (the main process removes them, the others wait)."""
    checkpoints = find_checkpoints(output_dir)
    if accelerator.is_main_process:  # what a run killed while it saved a checkpoint was writing
        for staging in (output_dir / "checkpoints").glob(".step-*"):
            shutil.rmtree(staging, ignore_errors=True)
    if config.resume:
        if config.resume != "latest":
            return Path(config.resume)
        if not checkpoints:
            raise TrainError(f"resume: no checkpoint in {output_dir / 'checkpoints'}; train with save_every_n_steps to write some")
        return checkpoints[-1]
    if (final.exists() or checkpoints) and not config.overwrite:
        raise TrainError(f"{output_dir} already holds a run ({final.name if final.exists() else 'checkpoints'}); "
                         "pass --resume to continue it, --overwrite to start over, or choose another output_dir")
    if accelerator.is_main_process and config.overwrite:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    return None


def diverged(what: str, value: float, step: int, output_dir: Path) -> TrainError:
    """The error of a run whose loss or gradient norm (``what``) became ``value`` (NaN or inf) at ``step``."""
    kept = find_checkpoints(output_dir)
    where = f"the last checkpoint is {kept[-1]}" if kept else "no checkpoint was written (set save_every_n_steps)"
    return TrainError(f"the {what} became {value} at step {step}: training stopped and nothing more was written; "
                      f"{where}. Lower learning_rate, or use bf16 instead of fp16")
