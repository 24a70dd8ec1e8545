import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from lllite.auto import load_pipeline
from lllite.sdxl.toy import build_pipeline
from lllite.sdxl.toy import WEIGHTS_DIR
from lllite.toy.tokenizers import CAPTION_WORDS


def _generate(pipe, prompt="a red circle", height=64, width=64, seed=0):
    return pipe(
        prompt,
        height=height,
        width=width,
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def test_pipe():
    return build_pipeline("test")


def test_test_config_generates_image_of_requested_size(test_pipe):
    assert _generate(test_pipe, height=128, width=128).shape == (1, 128, 128, 3)


def test_odd_multiple_of_8_size_generates_image_of_that_size(test_pipe):
    assert _generate(test_pipe, height=136, width=72).shape == (1, 136, 72, 3)


def test_same_seed_builds_identical_weights_and_other_seed_differs():
    a, b, c = build_pipeline("test", seed=3), build_pipeline("test", seed=3), build_pipeline("test", seed=4)
    weight = "conv_in.weight"
    assert torch.equal(a.unet.state_dict()[weight], b.unet.state_dict()[weight])
    assert not torch.equal(a.unet.state_dict()[weight], c.unet.state_dict()[weight])


def test_unet_has_sdxl_block_layout_and_conditioning(test_pipe):
    config = test_pipe.unet.config
    assert tuple(config.down_block_types) == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert tuple(config.up_block_types) == ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    assert config.addition_embed_type == "text_time"
    assert config.use_linear_projection
    text_width = test_pipe.text_encoder.config.hidden_size + test_pipe.text_encoder_2.config.hidden_size
    assert config.cross_attention_dim == text_width
    assert config.projection_class_embeddings_input_dim == (
        6 * config.addition_time_embed_dim + test_pipe.text_encoder_2.config.projection_dim
    )


def test_vae_downsamples_by_8_into_4_channels(test_pipe):
    latents = test_pipe.vae.encode(torch.zeros(1, 3, 64, 48)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 6)


def test_scheduler_has_sdxl_settings(test_pipe):
    config = test_pipe.scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (config.num_train_timesteps, config.prediction_type) == (1000, "epsilon")
    assert (config.timestep_spacing, config.steps_offset) == ("leading", 1)


def test_caption_words_are_single_tokens_in_both_tokenizers(test_pipe):
    for tokenizer in (test_pipe.tokenizer, test_pipe.tokenizer_2):
        for word in CAPTION_WORDS:
            ids = tokenizer(word, add_special_tokens=False).input_ids
            assert tokenizer.convert_ids_to_tokens(ids) == [word + "</w>"]


def test_unknown_words_are_spelled_with_single_characters(test_pipe):
    ids = test_pipe.tokenizer("zq", add_special_tokens=False).input_ids
    assert test_pipe.tokenizer.convert_ids_to_tokens(ids) == ["z", "q</w>"]


def test_captions_give_distinct_text_embeddings(test_pipe):
    embeds = {}
    for prompt in ("a red circle", "a blue circle", "a red square"):
        prompt_embeds, _, pooled, _ = test_pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        embeds[prompt] = (prompt_embeds, pooled)
    assert not torch.allclose(embeds["a red circle"][0], embeds["a blue circle"][0])
    assert not torch.allclose(embeds["a red circle"][1], embeds["a red square"][1])


def test_save_and_from_pretrained_round_trip_gives_identical_images(test_pipe, tmp_path):
    test_pipe.save_pretrained(tmp_path)
    reloaded = StableDiffusionXLPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_generate(test_pipe, seed=7), _generate(reloaded, seed=7))


def test_unknown_config_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="'huge'.*test.*toy"):
        build_pipeline("huge")


def test_load_pipeline_names_the_folder_and_command_when_weights_are_missing(monkeypatch, tmp_path):
    monkeypatch.setattr("lllite.sdxl.toy.WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match="weights.*python -m lllite.toy.pretrain"):
        load_pipeline("toy")


@pytest.mark.skipif(
    not (WEIGHTS_DIR / "model_index.json").is_file(), reason="toy weights not created (python -m lllite.toy.pretrain)"
)
def test_shipped_weights_load_and_generate_a_128px_image():
    pipe = load_pipeline("toy")
    assert _generate(pipe, height=128, width=128).shape == (1, 128, 128, 3)
