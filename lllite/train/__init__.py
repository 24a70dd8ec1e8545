"""Train a ControlNet-LLLite network on a frozen SDXL or Anima.

    python -m lllite.train --config my_lllite.toml
    python -m lllite.train --config my_lllite.toml --resume          # continue from the latest checkpoint
    accelerate launch --num_processes 2 -m lllite.train --config my_lllite.toml   # several GPUs (DDP)

    from lllite.train import TrainConfig, train
    result = train(TrainConfig(pretrained_model_name_or_path="toy", dataset_config="my_dataset.toml"))

Options carry kohya's names (:class:`TrainConfig`). One module per concern: the loop (:mod:`.loop`), the
settings (:mod:`.config`), the parts a run is made of (:mod:`.parts`), what each step reads (:mod:`.batches`),
checkpoints and files (:mod:`.checkpoints`), validation grids and the loss plot (:mod:`.validation`) and the
command line (:mod:`.cli`). What differs between model families is each family's ``training`` module.
"""
from ..errors import TrainError
from .cli import main
from .config import TrainConfig
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainError", "TrainResult", "main", "train"]
