"""The training recipes and the notebooks' toy dataset."""
from __future__ import annotations

import pytest
from PIL import Image

from lllite.demo import DemoConfig
from lllite.anima.toy import ToyRecipe as AnimaToyRecipe
from lllite.anima.training import colab_settings as anima_colab_settings
from lllite.environment import Environment
from lllite.recipes import shapes_dataset, training_config
from lllite.sdxl.toy import ToyRecipe

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
    demo = DemoConfig().toy_recipe()
    assert (full.max_train_steps, full.learning_rate, full.timestep_sampling) == (demo.max_train_steps, demo.learning_rate,
                                                                                 demo.timestep_sampling)
    assert (full.max_train_seconds, full.sample_every_n_steps) == (60, 100)
    sdxl = training_config(Environment(True, "T4", "cuda", "sdxl", False), dataset, tmp_path / "run")
    assert (sdxl.learning_rate, sdxl.optimizer_type, sdxl.cond_emb_dim, sdxl.network_dim) == (2e-4, "adamw8bit", 32, 64)
    assert sdxl.gradient_checkpointing and sdxl.mixed_precision in ("bf16", "fp16")


ANIMA_TOY_CPU = Environment(in_colab=False, gpu=None, device="cpu", model="anima-toy", quick=True)
ANIMA_GPU = Environment(True, "NVIDIA L4", "cuda", "anima", False, anima="/content/anima-diffusers")


def test_the_toy_animas_shapes_are_written_at_its_128_pixels(tmp_path):
    config = shapes_dataset(ANIMA_TOY_CPU, tmp_path / "shapes", count=2)
    images = sorted((tmp_path / "shapes" / "images").glob("*.png"))
    assert len(images) == 2 and Image.open(images[0]).size == (128, 128) and config.resolution == (128, 128)


def test_the_toy_anima_trains_with_the_anima_toy_recipe(tmp_path):
    dataset = shapes_dataset(ANIMA_TOY_CPU, tmp_path / "shapes", count=2)
    quick = training_config(ANIMA_TOY_CPU, dataset, tmp_path / "run")
    assert (quick.model_family, quick.pretrained_model_name_or_path, quick.max_train_steps) == ("anima", "toy", 4)
    full = training_config(Environment(False, None, "cpu", "anima-toy", False), dataset, tmp_path / "run")
    recipe = AnimaToyRecipe()
    assert (full.learning_rate, full.lllite_target_layers, full.timestep_sampling, full.max_train_steps) == (
        recipe.learning_rate, recipe.lllite_target_layers, recipe.timestep_sampling, recipe.max_train_steps)
    assert full.output_name == "lllite_toy_anima_canny"


def test_real_anima_trains_with_kohyas_recommended_start_within_a_colab_budget(tmp_path):
    dataset = shapes_dataset(ANIMA_TOY_CPU, tmp_path / "shapes", count=2)
    config = training_config(ANIMA_GPU, dataset, tmp_path / "run")
    assert (config.pretrained_model_name_or_path, config.model_family) == ("/content/anima-diffusers", "anima")
    assert (config.cond_emb_dim, config.lllite_cond_dim, config.lllite_cond_resblocks, config.network_dim) == (32, 64, 1, 64)
    assert (config.lllite_target_layers, config.lllite_use_aspp, config.learning_rate) == ("self_attn_q", False, 1e-4)
    assert (config.optimizer_type, config.mixed_precision, config.gradient_checkpointing) == ("adamw8bit", "bf16", True)
    assert config.cache_latents and config.cache_text_encoder_outputs
    assert config.train_batch_size <= 2 and config.max_train_seconds == 45 * 60
    assert anima_colab_settings("/content/anima-diffusers")["output_name"] == config.output_name == "lllite_anima_canny"


@pytest.mark.parametrize("env, count, size", [
    (Environment(False, None, "cpu", "anima-toy", False), AnimaToyRecipe().train_samples, 128),
    (Environment(False, None, "cpu", "toy", False), ToyRecipe().train_samples, 128),
    (ANIMA_GPU, 200, 1024),
    (ANIMA_TOY_CPU, 16, 128),
])
def test_the_dataset_size_follows_the_model_and_quick_mode(env, count, size, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr("lllite.toy.shapes.write_dataset", lambda folder, n, size: written.append((n, size)))
    shapes_dataset(env, tmp_path / "shapes")
    assert written == [(count, size)]
