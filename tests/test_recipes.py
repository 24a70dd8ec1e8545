"""The training recipes and the notebooks' toy dataset."""
from __future__ import annotations

from PIL import Image

from lllite.demo import DemoConfig
from lllite.notebook import Environment
from lllite.recipes import shapes_dataset, training_config

TOY_CPU = Environment(in_colab=False, gpu=None, device="cpu", model="toy", quick=True)


def test_shapes_dataset_writes_once_at_the_model_size_and_then_reuses_the_folder(tmp_path):
    config = shapes_dataset(TOY_CPU, tmp_path / "shapes", count=3)
    images = sorted((tmp_path / "shapes" / "images").glob("*.png"))
    assert len(images) == 3 and Image.open(images[0]).size == (128, 128)
    assert config.resolution == (128, 128) and config.subsets[0].conditioning_data_dir == tmp_path / "shapes" / "conditioning"
    stamp = images[0].stat().st_mtime_ns
    shapes_dataset(TOY_CPU, tmp_path / "shapes", count=5)
    assert len(list((tmp_path / "shapes" / "images").glob("*.png"))) == 3 and images[0].stat().st_mtime_ns == stamp


def test_training_config_follows_the_environment_and_takes_changes(tmp_path):
    dataset = shapes_dataset(TOY_CPU, tmp_path / "shapes", count=2)
    quick = training_config(TOY_CPU, dataset, tmp_path / "run")
    assert (quick.pretrained_model_name_or_path, quick.max_train_steps, quick.mixed_precision) == ("toy", 4, "no")
    full = training_config(Environment(False, None, "cpu", "toy", False), dataset, tmp_path / "run", max_train_seconds=60)
    demo = DemoConfig()
    assert (full.max_train_steps, full.learning_rate, full.timestep_sampling) == (demo.max_train_steps, demo.learning_rate,
                                                                                 demo.timestep_sampling)
    assert (full.max_train_seconds, full.sample_every_n_steps) == (60, 100)
    sdxl = training_config(Environment(True, "T4", "cuda", "sdxl", False), dataset, tmp_path / "run")
    assert (sdxl.learning_rate, sdxl.optimizer_type, sdxl.cond_emb_dim, sdxl.network_dim) == (2e-4, "adamw8bit", 32, 64)
    assert sdxl.gradient_checkpointing and sdxl.mixed_precision in ("bf16", "fp16")
