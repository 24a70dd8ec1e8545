"""Caches of VAE latents and text-encoder outputs, with the tiny SDXL pipeline."""
from __future__ import annotations

import copy

import pytest
import torch

from lllite.data import DatasetConfig, PairedDataset, SubsetConfig
from lllite.sdxl.pipeline import encode_prompts
from lllite.sdxl.toy import build_pipeline
from test_data_folders import gradient, save, write_pair


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("test", seed=0)


@pytest.fixture(scope="module")
def other_pipe():
    """The same architecture with other weights: a changed model."""
    return build_pipeline("test", seed=1)


@pytest.fixture
def folders(tmp_path):
    images, conditioning = tmp_path / "img", tmp_path / "cond"
    write_pair(images, conditioning, "a", size=(128, 64), caption="a red circle", seed=1)
    write_pair(images, conditioning, "b", size=(128, 64), caption="a blue square", seed=2)
    write_pair(images, conditioning, "c", size=(64, 64), caption="a red circle", seed=3)
    return images, conditioning


def dataset_of(images, conditioning, **subset_settings) -> PairedDataset:
    return PairedDataset(DatasetConfig([SubsetConfig(images, conditioning, **subset_settings)], resolution=(128, 64)), progress=False)


def test_encode_prompts_matches_the_pipelines_own_encoding(pipe):
    captions = ["a red circle", "the blue square on a green background"]
    embeds, pooled = encode_prompts((pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2), captions)
    expected, _, expected_pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    assert embeds.shape == (2, pipe.tokenizer.model_max_length, 32)
    assert torch.allclose(embeds, expected) and torch.allclose(pooled, expected_pooled)


def test_cached_latents_are_the_scaled_vae_mean_and_replace_the_image(pipe, folders):
    dataset = dataset_of(*folders)
    assert dataset.cache_latents(pipe.vae, progress=False) == 3
    sample = dataset[0]
    assert "image" not in sample and sample["conditioning_image"].shape == (3, 64, 128)
    pixels = dataset_of(*folders)[0]["image"]
    with torch.no_grad():
        expected = pipe.vae.encode(pixels[None]).latent_dist.mean[0] * pipe.vae.config.scaling_factor
    assert sample["latents"].shape == (4, 8, 16)
    assert torch.allclose(sample["latents"], expected, atol=1e-5)


def test_disk_latent_cache_is_reused_and_a_changed_image_or_vae_is_encoded_again(pipe, other_pipe, folders, tmp_path):
    cache = tmp_path / "latents"
    assert dataset_of(*folders).cache_latents(pipe.vae, cache, progress=False) == 3
    assert len(list(cache.glob("*.safetensors"))) == 3
    assert dataset_of(*folders).cache_latents(pipe.vae, cache, progress=False) == 0

    images, _ = folders
    save(images / "b.png", gradient(128, 64, seed=99))
    assert dataset_of(*folders).cache_latents(pipe.vae, cache, progress=False) == 1

    assert dataset_of(*folders).cache_latents(other_pipe.vae, cache, progress=False) == 3


def test_flip_aug_caches_both_orientations(pipe, folders):
    dataset = dataset_of(*folders, flip_aug=True)
    assert dataset.cache_latents(pipe.vae, progress=False) == 6
    latents = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        latents.add(dataset[0]["latents"].sum().item())
    assert len(latents) == 2


def sdxl_text(tokenizers, encoders):
    """SDXL's text conditioning as the cache's ``encode`` (the trainer passes its family's)."""
    return lambda captions: dict(zip(("prompt_embeds", "pooled_prompt_embeds"), encode_prompts(tokenizers, encoders, captions)))


def test_text_cache_encodes_each_caption_once_and_follows_caption_and_encoder_changes(pipe, other_pipe, folders, tmp_path):
    tokenizers, encoders = (pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2)
    cache = tmp_path / "text"
    dataset = dataset_of(*folders)
    assert dataset.cache_text_encoder_outputs(tokenizers, encoders, cache, progress=False,
                                                    encode=sdxl_text(tokenizers, encoders)) == 2
    sample = dataset[0]
    expected, pooled = encode_prompts(tokenizers, encoders, [sample["caption"]])
    assert torch.allclose(sample["prompt_embeds"], expected[0]) and torch.allclose(sample["pooled_prompt_embeds"], pooled[0])

    images, _ = folders
    (images / "c.txt").write_text("a yellow triangle")
    assert dataset_of(*folders).cache_text_encoder_outputs(tokenizers, encoders, cache, progress=False,
                                                    encode=sdxl_text(tokenizers, encoders)) == 1

    other_encoders = (other_pipe.text_encoder, other_pipe.text_encoder_2)
    assert dataset_of(*folders).cache_text_encoder_outputs(tokenizers, other_encoders, cache, progress=False,
                                                                 encode=sdxl_text(tokenizers, other_encoders)) == 3


def test_caption_dropout_uses_the_cached_empty_caption(pipe, folders):
    tokenizers, encoders = (pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2)
    dataset = dataset_of(*folders, caption_dropout_rate=1.0)
    assert dataset.cache_text_encoder_outputs(tokenizers, encoders, progress=False,
                                              encode=sdxl_text(tokenizers, encoders)) == 3
    empty, _ = encode_prompts(tokenizers, encoders, [""])
    assert torch.allclose(dataset[1]["prompt_embeds"], empty[0])


def test_a_vae_that_overflows_is_refused_instead_of_caching_nan(pipe, folders):
    broken = copy.deepcopy(pipe.vae)
    with torch.no_grad():
        broken.encoder.conv_in.bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="float32"):
        dataset_of(*folders).cache_latents(broken, progress=False)
