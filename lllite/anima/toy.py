"""A tiny Anima pipeline built locally: the same component classes and modular blocks as Anima, a few MB.

Anima is a Cosmos-Predict2 DiT (:class:`~diffusers.CosmosTransformer3DModel`) conditioned by an LLM adapter
(:class:`~diffusers.AnimaTextConditioner`) that reads a Qwen3 text encoder's hidden states through T5 token
queries, with the Qwen-Image VAE (:class:`~diffusers.AutoencoderKLQwenImage`, 16 latent channels, /8) and
flow-matching Euler sampling (``FlowMatchEulerDiscreteScheduler(shift=3.0)``), assembled as diffusers'
``AnimaModularPipeline`` (``AnimaAutoBlocks().init_pipeline()`` + ``update_components``), the way diffusers'
``scripts/convert_anima_to_diffusers.py`` assembles the real one.

:func:`build_pipeline` makes one with random weights (unit tests, the start of pretraining);
:func:`lllite.anima.pipeline.load_anima_pipeline` (``"toy"``) loads the pretrained weights shipped in
``lllite/anima/weights``.

What differs from the real model, and why:

- every size (see :class:`AnimaToyConfig`; the real sizes are in :data:`REAL_ANIMA`);
- ``concat_padding_mask=False``: with True the DiT resizes the padding mask with torchvision, which cannot
  be installed beside the CPU torch here. The pipeline still passes ``padding_mask``; the toy DiT ignores it;
- the adapter pads its output to ``min_sequence_length`` tokens (16, where Anima pads to 512);
- the tokenizers know only the toy's caption words as whole tokens (anything else falls back to bytes for
  Qwen, to single letters or ``<unk>`` for T5).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (AnimaAutoBlocks, AnimaTextConditioner, AutoencoderKLQwenImage, CosmosTransformer3DModel,
                       FlowMatchEulerDiscreteScheduler)
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model, T5TokenizerFast

from lllite.anima.pipeline import disable_progress_bars
from lllite.toy.pipeline import CAPTION_WORDS, bytes_to_unicode, learn_bpe_merges

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAIN_COMMAND = "python -m lllite.anima.pretrain"

#: The real Anima's sizes (Cosmos-Predict2-2B DiT, Qwen3-0.6B, the adapter), for comparison with the toy's.
REAL_ANIMA = {
    "transformer": {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 128, "adaln_lora_dim": 256,
                    "text_embed_dim": 1024, "patch_size": (1, 2, 2), "rope_scale": (1.0, 4.0, 4.0),
                    "concat_padding_mask": True, "extra_pos_embed_type": None},
    "text_conditioner": {"source_dim": 1024, "target_dim": 1024, "model_dim": 1024, "num_layers": 6,
                         "num_attention_heads": 16, "target_vocab_size": 32128, "min_sequence_length": 512},
    "scheduler": {"shift": 3.0},
}

#: T5's special tokens, at T5's ids (0, 1, 2).
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
QWEN_END = "<|endoftext|>"


@dataclass(frozen=True)
class AnimaToyConfig:
    """Sizes of the tiny Anima.

    ``dit_head_dim`` must be even and at least 12: Cosmos' 3D RoPE splits a head into ``head_dim // 6 * 2``
    channels for height, as many for width and the rest for time, and each part needs at least two pairs.
    """

    sample_size: int = 64
    dit_layers: int = 4
    dit_heads: int = 3
    dit_head_dim: int = 32
    adaln_lora_dim: int = 32
    text_embed_dim: int = 64
    adapter_dim: int = 64
    adapter_layers: int = 1
    adapter_heads: int = 2
    min_sequence_length: int = 16
    text_hidden: int = 32
    text_layers: int = 1
    text_heads: int = 2
    text_head_dim: int = 16
    vae_base_dim: int = 8
    vae_dim_mult: tuple[int, int, int, int] = (1, 2, 4, 4)
    vae_res_blocks: int = 1


CONFIGS = {
    "toy": AnimaToyConfig(),
    "test": AnimaToyConfig(
        sample_size=64,
        dit_layers=1,
        dit_heads=2,
        dit_head_dim=12,
        adaln_lora_dim=8,
        text_embed_dim=16,
        adapter_dim=16,
        adapter_layers=1,
        adapter_heads=2,
        min_sequence_length=8,
        text_hidden=16,
        text_layers=1,
        text_heads=2,
        text_head_dim=8,
        vae_base_dim=4,
        vae_dim_mult=(1, 1, 2, 2),
        vae_res_blocks=1,
    ),
}


def make_qwen_tokenizer() -> Qwen2Tokenizer:
    """A Qwen2 tokenizer (byte-level BPE, Qwen's pre-tokenizer) whose vocabulary is the byte alphabet plus
    every toy caption word as one token, both at the start of a text (``red``) and after a space (``Ġred``)."""
    space = bytes_to_unicode()[ord(" ")]
    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    words = [*CAPTION_WORDS, *(space + word for word in CAPTION_WORDS)]
    merges = learn_bpe_merges([list(word) for word in words])
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    vocab[QWEN_END] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=QWEN_END, eos_token=QWEN_END, pad_token=QWEN_END)


def make_t5_tokenizer() -> T5TokenizerFast:
    """A T5 tokenizer (SentencePiece unigram) with T5's special tokens at T5's ids, every toy caption word as
    one piece (``▁red``), and single lowercase letters as the fallback for any other word."""
    pieces = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in CAPTION_WORDS]
    pieces += [("\u2581", -3.0)] + [(letter, -5.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=pieces, eos_token=T5_EOS, unk_token=T5_UNK, pad_token=T5_PAD, extra_ids=0)


def make_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Anima's sampler, as diffusers' conversion script makes it."""
    return FlowMatchEulerDiscreteScheduler(shift=REAL_ANIMA["scheduler"]["shift"])


def build_pipeline(config: str = "toy", seed: int = 0, device="cpu"):
    """A tiny ``AnimaModularPipeline`` with random weights, built with no network access.

    Args:
        config: ``"toy"`` (the size that is pretrained and shipped) or ``"test"`` (smaller still, for unit tests
            that only need Anima's code path).
        seed: seeds the random initialisation; the same seed gives the same weights.
        device: where the pipeline's modules are placed.
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown Anima toy config {config!r}; choose one of {sorted(CONFIGS)}")
    cfg = CONFIGS[config]
    tokenizer = make_qwen_tokenizer()
    t5_tokenizer = make_t5_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_encoder = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_hidden,
            intermediate_size=4 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            num_key_value_heads=cfg.text_heads,
            head_dim=cfg.text_head_dim,
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            attention_bias=False,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
        ))
        text_conditioner = AnimaTextConditioner(
            source_dim=cfg.text_hidden,
            target_dim=cfg.text_embed_dim,
            model_dim=cfg.adapter_dim,
            num_layers=cfg.adapter_layers,
            num_attention_heads=cfg.adapter_heads,
            target_vocab_size=len(t5_tokenizer),
            min_sequence_length=cfg.min_sequence_length,
        )
        transformer = CosmosTransformer3DModel(
            in_channels=16,
            out_channels=16,
            num_attention_heads=cfg.dit_heads,
            attention_head_dim=cfg.dit_head_dim,
            num_layers=cfg.dit_layers,
            mlp_ratio=4.0,
            text_embed_dim=cfg.text_embed_dim,
            adaln_lora_dim=cfg.adaln_lora_dim,
            max_size=(128, 240, 240),
            patch_size=REAL_ANIMA["transformer"]["patch_size"],
            rope_scale=REAL_ANIMA["transformer"]["rope_scale"],
            concat_padding_mask=False,
            extra_pos_embed_type=None,
        )
        vae = AutoencoderKLQwenImage(
            base_dim=cfg.vae_base_dim,
            z_dim=16,
            dim_mult=list(cfg.vae_dim_mult),
            num_res_blocks=cfg.vae_res_blocks,
            attn_scales=[],
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 16,
            latents_std=[1.0] * 16,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    pipe = AnimaAutoBlocks().init_pipeline()
    pipe.update_components(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        t5_tokenizer=t5_tokenizer,
        text_conditioner=text_conditioner,
        transformer=transformer,
        vae=vae,
        scheduler=make_scheduler(),
    )
    disable_progress_bars(pipe)
    return pipe.to(device)
