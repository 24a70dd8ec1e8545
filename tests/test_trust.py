"""Files from elsewhere run no code, non-finite numbers are refused by name, and a run killed while it saves
leaves the earlier files readable."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_unet, randomize
from safetensors.torch import load_file, save_file

import lllite
from lllite.fileformat import LLLiteFileError
from lllite.sdxl.toy import build_pipeline
from lllite.train import TrainError, train
from lllite.train import checkpoints as checkpoints_module
from lllite.train.checkpoints import find_checkpoints, read_training_state
from lllite.toy.shapes import write_dataset
from test_train import config

MARKER = "ran-code-from-a-file"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"), 8, size=64)


class Payload:
    """A pickle that, when unpickled, writes a marker file: what a shared checkpoint folder could hide."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):
        return (Path.write_text, (self.folder / MARKER, "pwned"))


def checkpointed_run(shapes: Path, out: Path):
    return train(config(shapes, out, max_train_steps=4, save_every_n_steps=2), build_pipeline("test"))


def as_earlier_version(folder: Path) -> None:
    """Rewrite a checkpoint as earlier versions wrote it: the whole training state in one pickle."""
    state = read_training_state(folder)
    torch.save(state, folder / "training_state.pt")
    (folder / "training_state.json").unlink()
    (folder / "optimizer.safetensors").unlink()


def test_a_checkpoint_holds_no_pickle(shapes, tmp_path):
    checkpointed_run(shapes, tmp_path)
    folder = find_checkpoints(tmp_path)[-1]
    assert sorted(p.name for p in folder.iterdir()) == ["network.safetensors", "optimizer.safetensors",
                                                        "training_state.json"]


def test_resuming_from_a_planted_pickle_refuses_it_and_runs_nothing(shapes, tmp_path):
    checkpointed_run(shapes, tmp_path)
    folder = find_checkpoints(tmp_path)[-1]
    as_earlier_version(folder)
    with open(folder / "training_state.pt", "wb") as file:
        pickle.dump({"step": 2, "optimizer": {}, "losses": [], "evil": Payload(tmp_path)}, file)
    with pytest.raises(TrainError, match=r"training_state.pt .*does not run code from files"):
        train(config(shapes, tmp_path, max_train_steps=6, save_every_n_steps=2, resume="latest"), build_pipeline("test"))
    assert not (tmp_path / MARKER).exists()
    # The test's payload does run when unpickled without the guard: the refusal above is what stopped it.
    pickle.loads(pickle.dumps(Payload(tmp_path)))
    assert (tmp_path / MARKER).exists()


def test_a_pickle_beside_the_json_state_is_never_read(shapes, tmp_path):
    checkpointed_run(shapes, tmp_path)
    folder = find_checkpoints(tmp_path)[-1]
    with open(folder / "training_state.pt", "wb") as file:
        pickle.dump(Payload(tmp_path), file)
    resumed = train(config(shapes, tmp_path, max_train_steps=6, save_every_n_steps=2, resume="latest"),
                    build_pipeline("test"))
    assert resumed.steps == 6 and not (tmp_path / MARKER).exists()


def test_an_earlier_versions_checkpoint_resumes_through_the_weights_only_unpickler(shapes, tmp_path):
    whole = train(config(shapes, tmp_path / "whole", max_train_steps=6), build_pipeline("test"))
    train(config(shapes, tmp_path / "cut", max_train_steps=6, save_every_n_steps=4), build_pipeline("test"))
    as_earlier_version(find_checkpoints(tmp_path / "cut")[-1])
    resumed = train(config(shapes, tmp_path / "cut", max_train_steps=6, resume="latest"), build_pipeline("test"))
    for key, value in whole.network.state_dict().items():
        torch.testing.assert_close(resumed.network.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_a_damaged_training_state_is_named(shapes, tmp_path):
    checkpointed_run(shapes, tmp_path)
    folder = find_checkpoints(tmp_path)[-1]
    (folder / "training_state.json").write_text("{not json")
    with pytest.raises(TrainError, match=r"step-00000002 holds a damaged training state"):
        train(config(shapes, tmp_path, max_train_steps=6, resume="latest"), build_pipeline("test"))


# ------------------------------------------------------------------------------------------ non-finite numbers


def test_a_file_with_nan_is_refused_naming_the_tensor_unless_asked(tmp_path):
    network = randomize(lllite.create_network(make_tiny_unet(), cond_emb_dim=8, network_dim=8))
    path = network.save(tmp_path / "n.safetensors", dtype=torch.float32)
    tensors = load_file(path)
    key = sorted(tensors)[3]
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(tmp_path / "nan.safetensors"))
    with pytest.raises(LLLiteFileError, match=rf"nan.safetensors: tensor '{key}' holds 1 NaN or infinite value.*allow_nonfinite=True"):
        lllite.load(tmp_path / "nan.safetensors")
    with pytest.warns(UserWarning, match=rf"tensor '{key}' holds 1 NaN"):
        loaded = lllite.load(tmp_path / "nan.safetensors", allow_nonfinite=True)
    assert torch.isnan(loaded.state_dict()[key]).any()


def test_an_infinite_gradient_stops_the_run_naming_the_step_and_keeping_the_last_checkpoint(shapes, tmp_path):
    pipe = build_pipeline("test")
    calls = {"n": 0}

    def poison(module, args, output):  # the third step's gradients become infinite; its loss stays finite
        calls["n"] += 1
        if calls["n"] == 3:
            output.sample.register_hook(lambda grad: torch.full_like(grad, float("inf")))

    pipe.unet.register_forward_hook(poison)
    with pytest.raises(TrainError, match=r"gradient norm became (inf|nan) at step 3.*last checkpoint is .*step-00000002"):
        train(config(shapes, tmp_path, max_train_steps=6, save_every_n_steps=2), pipe)
    assert not (tmp_path / "lllite.safetensors").exists()
    assert [p.name for p in find_checkpoints(tmp_path)] == ["step-00000002"]


# ------------------------------------------------------------------------------------------ killed while saving


def _train_and_die_while_saving(shapes: Path, out: Path, writes_before_death: int) -> None:
    """In a forked process: train, and be killed (SIGKILL, no cleanup) halfway through a safetensors write."""
    import safetensors.torch

    real = safetensors.torch.save_file
    count = {"n": 0}

    def dying_save(tensors, filename, metadata=None):
        count["n"] += 1
        if count["n"] == writes_before_death:
            real(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as file:
                file.truncate(os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tensors, filename, metadata=metadata)

    checkpoints_module.save_file = dying_save
    import lllite.fileformat

    lllite.fileformat.save_file = dying_save
    train(config(shapes, out, max_train_steps=6, save_every_n_steps=1), build_pipeline("test"))


@pytest.mark.parametrize("where, writes", [("the checkpoint's network", 7), ("the step's kohya file", 9)])
def test_a_run_killed_while_it_saves_leaves_the_earlier_file_and_checkpoint_readable(shapes, tmp_path, where, writes):
    # Each step writes the checkpoint's network and optimizer files, then the step's kohya file: write 7 is the
    # third checkpoint's network, write 9 the third step's kohya file.
    process = multiprocessing.get_context("fork").Process(target=_train_and_die_while_saving, args=(shapes, tmp_path, writes))
    process.start()
    process.join(timeout=300)
    assert process.exitcode == -signal.SIGKILL, f"the run was to die while writing {where}"
    kept = find_checkpoints(tmp_path)
    assert [p.name for p in kept][-1] in ("step-00000002", "step-00000003")
    for folder in kept:
        assert read_training_state(folder)["step"] == int(folder.name[5:])
        load_file(folder / "network.safetensors")
    assert lllite.load(tmp_path / "lllite-step00000002.safetensors") is not None
    assert not (tmp_path / "lllite-step00000003.safetensors").exists()
    resumed = train(config(shapes, tmp_path, max_train_steps=6, save_every_n_steps=1, resume="latest"),
                    build_pipeline("test"))
    assert resumed.steps == 6
    assert not list((tmp_path / "checkpoints").glob(".*")), "what the killed run was writing is cleared away"
