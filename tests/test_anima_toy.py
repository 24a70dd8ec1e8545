import shutil

import numpy as np
import pytest
import torch
from diffusers import (AnimaModularPipeline, AnimaTextConditioner, AutoencoderKLQwenImage, CosmosTransformer3DModel,
                       FlowMatchEulerDiscreteScheduler)
from transformers import Qwen2Tokenizer, Qwen3Model, T5TokenizerFast

from lllite.anima import toy
from lllite.anima.pipeline import (decode_latents, encode_images, encode_prompts, generate,
                                   load_pipeline, save_pipeline, to_uint8_images, transformer_inputs)
from lllite.errors import InputMissingError
from lllite.anima.pipeline import MODULAR_INDEX
from lllite.errors import PipelineLoadError
from lllite.toy.tokenizers import CAPTION_WORDS
from lllite.sdxl.toy import WEIGHTS_DIR as SDXL_TOY_WEIGHTS


@pytest.fixture(scope="module")
def pipe():
    return toy.build_pipeline("test", seed=0)


class TransformerCalls:
    """Records the keyword arguments of every call of ``pipe.transformer``, as an LLLite hook would see them."""

    def __init__(self, transformer):
        self.calls = []
        self.handle = transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.calls.append({name: value.clone() if torch.is_tensor(value) else value for name, value in kwargs.items()})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_the_toy_is_built_from_animas_own_component_classes(pipe):
    assert isinstance(pipe, AnimaModularPipeline)
    assert isinstance(pipe.transformer, CosmosTransformer3DModel)
    assert isinstance(pipe.text_conditioner, AnimaTextConditioner)
    assert isinstance(pipe.text_encoder, Qwen3Model)
    assert isinstance(pipe.vae, AutoencoderKLQwenImage)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert isinstance(pipe.tokenizer, Qwen2Tokenizer) and isinstance(pipe.t5_tokenizer, T5TokenizerFast)
    assert pipe.scheduler.config.shift == 3.0
    assert pipe.transformer.config.patch_size == (1, 2, 2) and pipe.transformer.config.concat_padding_mask is False
    assert pipe.text_conditioner.config.target_dim == pipe.transformer.config.text_embed_dim
    assert pipe.text_conditioner.config.source_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae_scale_factor == 8 and pipe.num_channels_latents == 16


def test_the_same_seed_builds_the_same_weights_and_another_seed_other_weights(pipe):
    again = toy.build_pipeline("test", seed=0).transformer.state_dict()
    other = toy.build_pipeline("test", seed=1).transformer.state_dict()
    mine = pipe.transformer.state_dict()
    assert all(torch.equal(mine[key], again[key]) for key in mine)
    assert not all(torch.equal(mine[key], other[key]) for key in mine)


def test_an_unknown_config_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        toy.build_pipeline("huge")


def test_every_caption_word_is_one_token_for_both_tokenizers(pipe):
    for word in CAPTION_WORDS:
        qwen = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(f"a {word}").input_ids)
        assert qwen == ["a", "\u0120" + word]
        t5 = pipe.t5_tokenizer.convert_ids_to_tokens(pipe.t5_tokenizer(word).input_ids)
        assert t5 == ["\u2581" + word, "</s>"]
    assert pipe.t5_tokenizer.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]


def test_with_guidance_the_transformer_is_called_once_per_branch_and_step_with_batch_b(pipe):
    with TransformerCalls(pipe.transformer) as recorded:
        images = generate(pipe, ["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=4.0,
                          height=64, width=64, seed=0)
    assert len(images) == 2 and images[0].size == (64, 64)
    assert len(recorded.calls) == 4
    for call in recorded.calls:
        assert set(call) == {"hidden_states", "timestep", "encoder_hidden_states", "padding_mask", "return_dict"}
        assert call["hidden_states"].shape == (2, 16, 1, 4 * 2, 4 * 2)
        assert call["timestep"].shape == (2,)
        assert call["padding_mask"].shape == (1, 1, 64, 64) and not call["padding_mask"].any()
    # Both branches of a step see the same latents and timestep; the text differs (prompt, then negative).
    first, second = recorded.calls[:2]
    assert torch.equal(first["hidden_states"], second["hidden_states"])
    assert torch.equal(first["timestep"], second["timestep"])
    assert not torch.equal(first["encoder_hidden_states"], second["encoder_hidden_states"])
    # The first step is pure noise: the timestep is sigma 1; the second is the shifted sigma of 1/2.
    assert torch.allclose(recorded.calls[0]["timestep"], torch.ones(2))
    assert torch.allclose(recorded.calls[2]["timestep"], torch.full((2,), 3 * 0.5 / (1 + 2 * 0.5)))
    assert pipe.guider.guidance_scale == 4.0


def test_without_guidance_the_transformer_is_called_once_per_step(pipe):
    scale_before = pipe.guider.guidance_scale
    with TransformerCalls(pipe.transformer) as recorded:
        images = generate(pipe, "a red circle", num_inference_steps=2, guidance_scale=1.0, height=64, width=64, seed=0)
    assert len(images) == 1 and len(recorded.calls) == 2
    assert recorded.calls[0]["hidden_states"].shape[0] == 1
    assert pipe.guider.guidance_scale == scale_before


def test_encode_prompts_gives_what_the_pipeline_gives_the_transformer(pipe):
    prompts = ["a red circle", "a yellow triangle"]
    with TransformerCalls(pipe.transformer) as recorded:
        generate(pipe, prompts, negative_prompt="", num_inference_steps=1, guidance_scale=4.0, height=64, width=64,
                 seed=0)
    conditional, unconditional = recorded.calls
    encoded = encode_prompts(pipe, prompts)["encoder_hidden_states"]
    torch.testing.assert_close(encoded, conditional["encoder_hidden_states"], rtol=0, atol=1e-6)
    empty = encode_prompts(pipe, ["", ""])["encoder_hidden_states"]
    torch.testing.assert_close(empty, unconditional["encoder_hidden_states"], rtol=0, atol=1e-6)
    assert encoded.shape == (2, pipe.text_conditioner.config.min_sequence_length, pipe.transformer.config.text_embed_dim)


def test_a_prompt_encodes_the_same_alone_and_in_a_batch_with_the_empty_prompt(pipe):
    alone = encode_prompts(pipe, ["a green square"])["encoder_hidden_states"]
    batch = encode_prompts(pipe, ["", "a green square", "a red circle"])["encoder_hidden_states"]
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-6)


def test_transformer_inputs_are_the_arguments_the_pipeline_passes(pipe):
    with TransformerCalls(pipe.transformer) as recorded:
        generate(pipe, "a red circle", num_inference_steps=2, guidance_scale=1.0, height=64, width=64, seed=3)
    call = recorded.calls[1]
    rebuilt = transformer_inputs(call["hidden_states"][:, :, 0], call["timestep"], call["encoder_hidden_states"])
    assert set(rebuilt) == set(call) - {"return_dict"}
    for name, value in rebuilt.items():
        assert torch.equal(value, call[name]), name
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**rebuilt, return_dict=False)[0],
                                   pipe.transformer(**call)[0], rtol=0, atol=0)


def test_encode_images_and_decode_latents_have_the_pipelines_shapes_and_range(pipe):
    pixels = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        latents = encode_images(pipe, pixels)
        decoded = decode_latents(pipe, latents)
    assert latents.shape == (2, 16, 8, 6)
    assert decoded.shape == (2, 3, 64, 48)
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_the_latent_normalisation_of_encode_is_undone_by_decode_as_in_the_pipelines_decode_step():
    pipe = toy.build_pipeline("test", seed=0)
    pipe.vae.register_to_config(latents_mean=torch.linspace(-1, 1, 16).tolist(),
                                latents_std=torch.linspace(0.5, 2, 16).tolist())
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = pipe.vae.encode(pixels.unsqueeze(2)).latent_dist.mode()
        normalised = encode_images(pipe, pixels)
        mean = torch.linspace(-1, 1, 16).view(1, 16, 1, 1)
        std = torch.linspace(0.5, 2, 16).view(1, 16, 1, 1)
        torch.testing.assert_close(normalised, (raw[:, :, 0] - mean) / std)
        torch.testing.assert_close(decode_latents(pipe, normalised), pipe.vae.decode(raw).sample[:, :, 0],
                                   rtol=1e-4, atol=1e-5)
        # The pipeline's own decode of its final latents: images in [0, 1] from its postprocessing.
        state = pipe(prompt="a red circle", num_inference_steps=1, height=64, width=64,
                     generator=torch.Generator().manual_seed(0), output_type="pt", output=["latents", "images"])
        torch.testing.assert_close(decode_latents(pipe, state["latents"]), state["images"] * 2 - 1,
                                   rtol=1e-4, atol=1e-5)


def test_a_saved_pipeline_reloads_equal_even_after_its_folder_moved(pipe, tmp_path):
    first = tmp_path / "first"
    save_pipeline(pipe, first)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    loaded = load_pipeline(moved)
    assert isinstance(loaded, AnimaModularPipeline)
    for name in ("transformer", "text_conditioner", "text_encoder", "vae"):
        mine, theirs = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[key], theirs[key]) for key in mine), name
    assert loaded.tokenizer.get_vocab() == pipe.tokenizer.get_vocab()
    assert loaded.t5_tokenizer.get_vocab() == pipe.t5_tokenizer.get_vocab()
    assert loaded.scheduler.config.shift == 3.0
    settings = dict(num_inference_steps=2, guidance_scale=4.0, height=64, width=64, seed=5)
    assert np.array_equal(to_uint8_images(generate(pipe, "a blue circle", **settings)),
                          to_uint8_images(generate(loaded, "a blue circle", **settings)))


def test_the_saved_index_records_the_folder_as_given(pipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_pipeline(pipe, "relative")
    assert '"pretrained_model_name_or_path": "relative"' in (tmp_path / "relative" / MODULAR_INDEX).read_text()


def test_a_folder_that_is_not_a_diffusers_anima_folder_is_refused_naming_the_argument(tmp_path):
    with pytest.raises(PipelineLoadError, match=r"--model .*no modular_model_index\.json"):
        load_pipeline(tmp_path, what="--model")
    with pytest.raises(PipelineLoadError, match="name_or_path"):
        load_pipeline(SDXL_TOY_WEIGHTS)


def test_the_toy_without_its_weights_says_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr(toy, "WEIGHTS_DIR", tmp_path / "missing")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputMissingError, match="python -m lllite.anima.pretrain"):
        toy.load_pretrained()


def test_the_shipped_toy_loads_and_generates():
    pipe = toy.load_pretrained()
    assert pipe.transformer.dtype == torch.float32
    assert pipe.transformer.config.num_layers == toy.CONFIGS["toy"].dit_layers
    images = generate(pipe, "a red circle", num_inference_steps=2, guidance_scale=4.0, height=64, width=64, seed=0)
    assert images[0].size == (64, 64)


def test_the_shipped_weights_are_small():
    size = sum(path.stat().st_size for path in toy.WEIGHTS_DIR.rglob("*") if path.is_file())
    assert size <= 4 * 2**20


def test_the_shipped_toy_draws_the_captions_colour():
    from lllite.anima.pretrain import quality_gate

    # 4 seeds of each of the 12 captions at the toy's size; the pretraining's gate (16 seeds) measured a mean of 97.9%.
    rates = quality_gate(toy.load_pretrained(), seeds=4, num_inference_steps=20)
    assert np.mean(list(rates.values())) >= 0.75


def test_the_vae_stage_of_a_continued_run_trains_the_decoder_alone():
    from lllite.anima.pretrain import PretrainConfig, train_vae
    from lllite.toy.pretraining import render_training_set

    cfg = PretrainConfig(train_samples=4, vae_steps=2, vae_batch=2, warmup_steps=1)
    pipe = toy.build_pipeline("test")
    before = {name: p.detach().clone() for name, p in pipe.vae.named_parameters()}
    pixels, masks, _ = render_training_set(cfg, progress=False)
    train_vae(pipe.vae, pixels, masks, cfg, decoder_only=True)
    kept = [name for name in before if name.startswith(("encoder.", "quant_conv."))]
    assert kept and all(torch.equal(pipe.vae.get_parameter(name), before[name]) for name in kept)
    assert any(not torch.equal(p, before[n]) for n, p in pipe.vae.named_parameters() if n.startswith("decoder."))


def test_a_start_folder_without_a_toy_anima_is_refused_by_name(tmp_path, capsys):
    from lllite.anima.pretrain import main

    assert main(["--start-from", str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "start_from" in err and "modular_model_index.json" in err
    assert not (tmp_path / "w").exists()


def test_an_unknown_timestep_sampling_is_refused_by_name(tmp_path, capsys):
    from lllite.anima.pretrain import main

    assert main(["--timestep-sampling", "sigma", "--out-dir", str(tmp_path / "w")]) == 1
    assert "timestep_sampling" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_an_unknown_orientation_is_refused_by_name(tmp_path, capsys):
    from lllite.anima.pretrain import main

    assert main(["--orientation", "tilted", "--out-dir", str(tmp_path / "w")]) == 1
    assert "orientation" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_an_upright_training_set_stands_its_shapes_upright():
    from lllite.anima.pretrain import PretrainConfig
    from lllite.toy.pretraining import render_training_set
    from lllite.toy.shapes import render_sample

    cfg = PretrainConfig(train_samples=6)
    _, masks, captions = render_training_set(cfg, progress=False, orientation="upright")
    for index in range(6):
        sample = render_sample(index, seed=cfg.seed, size=cfg.image_size, orientation="upright")
        assert captions[index] == sample.caption
        assert torch.equal(masks[index, 0], torch.from_numpy(sample.mask).float())


def test_the_dits_noise_levels_follow_the_timestep_sampling():
    from lllite.anima.pretrain import PretrainConfig, train_dit

    trained = {}
    for sampling in ("sigmoid", "uniform", "shift"):
        cfg = PretrainConfig(dit_steps=2, dit_batch=2, warmup_steps=1, timestep_sampling=sampling)
        pipe = toy.build_pipeline("test")
        captions = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]
        train_dit(pipe, torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0)), captions, cfg)
        trained[sampling] = pipe.transformer.state_dict()
    for other in ("uniform", "shift"):
        assert any(not torch.equal(trained["sigmoid"][key], trained[other][key]) for key in trained["sigmoid"])


def test_the_pretraining_stages_run_and_change_the_models():
    from lllite.anima.pretrain import PretrainConfig, set_latent_statistics, train_dit, train_vae
    from lllite.toy.pretraining import render_training_set

    cfg = PretrainConfig(train_samples=4, vae_steps=2, vae_batch=2, dit_steps=2, dit_batch=2, warmup_steps=1)
    pipe = toy.build_pipeline("test")
    before = {name: p.detach().clone() for name, p in pipe.transformer.named_parameters()}
    vae_before = pipe.vae.decoder.conv_out.weight.detach().clone()
    pixels, masks, captions = render_training_set(cfg)
    train_vae(pipe.vae, pixels, masks, cfg)
    latents = set_latent_statistics(pipe, pixels)
    assert latents.shape == (4, 16, 8, 8) and torch.isfinite(latents).all()
    train_dit(pipe, latents, captions, cfg)
    assert not torch.equal(pipe.vae.decoder.conv_out.weight, vae_before)
    assert any(not torch.equal(p, before[name]) for name, p in pipe.transformer.named_parameters())


def test_the_toy_dits_rotary_frequencies_span_its_grid():
    from diffusers.models.transformers.transformer_cosmos import CosmosRotaryPosEmbed

    for config in ("toy", "test"):
        head_dim = toy.CONFIGS[config].dit_head_dim
        rope = CosmosRotaryPosEmbed(hidden_size=head_dim, rope_scale=toy.toy_rope_scale(head_dim))
        cos, sin = rope(torch.zeros(1, 16, 1, 2, 4))  # one frame of 1 x 2 patches: the width's angles
        angles = torch.atan2(sin[1], cos[1])  # the second patch's angle per channel, one patch from the first
        channels = head_dim // 6 * 2
        # Each half of the channels holds time's angles, then height's, then width's (channels // 2 of each axis).
        start = (head_dim - 2 * channels) // 2 + channels // 2
        width = angles[start : start + channels // 2]
        assert width.max() == pytest.approx(1.0, abs=1e-5) and width.min() == pytest.approx(toy.ROPE_SLOWEST)
    built = toy.build_pipeline("test").transformer.config
    assert tuple(built.rope_scale) == toy.toy_rope_scale(built.attention_head_dim)


def test_a_continued_dit_with_animas_rope_scale_takes_the_toys(tmp_path):
    from lllite.anima.pipeline import REAL_ANIMA, save_pipeline
    from lllite.anima.pretrain import PretrainConfig, _starting_pipeline

    pipe = toy.build_pipeline("test")
    pipe.transformer.register_to_config(rope_scale=REAL_ANIMA["transformer"]["rope_scale"])
    save_pipeline(pipe, tmp_path / "old")
    continued = _starting_pipeline(PretrainConfig(start_from=str(tmp_path / "old"))).transformer
    assert tuple(continued.config.rope_scale) == toy.toy_rope_scale(continued.config.attention_head_dim)
    fresh = toy.build_pipeline("test").transformer
    x = torch.zeros(1, 16, 1, 4, 4)
    assert all(torch.equal(a, b) for a, b in zip(continued.rope(x), fresh.rope(x)))
    assert not toy.use_toy_rope(continued)
