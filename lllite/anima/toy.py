"""The toy Anima: a tiny Anima pipeline built locally with the same component classes and modular blocks as
Anima (a few MB), and the recipe that trains an Anima LLLite on it (:class:`ToyRecipe`).

Anima is a Cosmos-Predict2 DiT (:class:`~diffusers.CosmosTransformer3DModel`) conditioned by an LLM adapter
(:class:`~diffusers.AnimaTextConditioner`) that reads a Qwen3 text encoder's hidden states through T5 token
queries, with the Qwen-Image VAE (:class:`~diffusers.AutoencoderKLQwenImage`, 16 latent channels, /8) and
flow-matching Euler sampling (``FlowMatchEulerDiscreteScheduler(shift=3.0)``), assembled as diffusers'
``AnimaModularPipeline`` (``AnimaAutoBlocks().init_pipeline()`` + ``update_components``), the way diffusers'
``scripts/convert_anima_to_diffusers.py`` assembles the real one.

:func:`build_pipeline` makes one with random weights (unit tests, the start of pretraining);
:func:`load_pretrained` (``lllite.load_pipeline("toy", model_family="anima")``) loads the pretrained weights
shipped in ``lllite/anima/weights``.

What differs from the real model, and why:

- every size (see :class:`AnimaToyConfig`; the real sizes are in :data:`lllite.anima.pipeline.REAL_ANIMA`);
- the DiT's ``rope_scale`` (:func:`toy_rope_scale`): the toy's small heads need their few rotary frequencies
  where its 8 x 8 grid of patches can use them;
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
from diffusers import (
    AnimaAutoBlocks,
    AnimaTextConditioner,
    AutoencoderKLQwenImage,
    CosmosTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
)
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model, T5TokenizerFast

from lllite.anima.config import TRAINING_OPTIONS
from lllite.anima.pipeline import (
    MODULAR_INDEX,
    REAL_ANIMA,
    disable_progress_bars,
    load_pipeline,
)
from lllite.errors import InputMissingError
from lllite.toy import TOY
from lllite.toy.recipe import Recipe
from lllite.toy.tokenizers import CAPTION_WORDS, bytes_to_unicode, learn_bpe_merges

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAIN_COMMAND = "python -m lllite.anima.pretrain"
#: The side in pixels the toy Anima is pretrained at, and its recipe trains at: an 8 x 8 grid of DiT patches
#: (16 x 16 latents, patch 2).
IMAGE_SIZE = 128

#: The toy DiT's slowest rotary frequency along height and width, in radians per patch (its fastest is 1, as in any
#: Cosmos DiT). See :func:`toy_rope_scale`.
ROPE_SLOWEST = 0.1

#: T5's special tokens, at T5's ids (0, 1, 2).
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
QWEN_END = "<|endoftext|>"


@dataclass(frozen=True)
class AnimaToyConfig:
    """Sizes of the tiny Anima.

    ``dit_head_dim`` must be even and at least 12: Cosmos' 3D RoPE splits a head into ``head_dim // 6 * 2``
    channels for height, as many for width and the rest for time, and each part needs at least two pairs.
    """

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


def toy_rope_scale(head_dim: int) -> tuple[float, float, float]:
    """The ``rope_scale`` that spreads the toy DiT's spatial rotary frequencies from 1 down to :data:`ROPE_SLOWEST`
    radians per patch.

    Cosmos' RoPE gives height (and width) ``head_dim // 6 * 2`` channels, ``d``, rotated at ``theta ** (-2 i / d)``
    radians per patch for i < d / 2, with ``theta = 10000 * scale ** (d / (d - 2))``. Anima's 128-channel heads get
    21 frequencies per axis and ``rope_scale`` (1, 4, 4). The toy's 32-channel heads get 5, and Anima's scale puts
    them at 1, 0.11, 0.013, 0.0014 and 0.0002: across 8 patches only the first two turn, and the first comes back
    to where it started after about 6 patches, so a patch can hardly tell its neighbour from one 6 patches away. With
    the slowest at 0.1 they are 1, 0.56, 0.32, 0.18 and 0.1. Time keeps Anima's 1 (an image is one frame).
    """
    channels = head_dim // 6 * 2
    scale = (1 / ROPE_SLOWEST) * 10000.0 ** (-(channels - 2) / channels)
    return (REAL_ANIMA["transformer"]["rope_scale"][0], scale, scale)


def use_toy_rope(transformer: CosmosTransformer3DModel) -> bool:
    """Give a loaded toy DiT the rotary frequencies of :func:`toy_rope_scale` (RoPE has no weights, so only its
    config and its frequency table change); return whether they changed. A DiT saved before the toy took its own
    ``rope_scale`` carries Anima's."""
    config = transformer.config
    wanted = toy_rope_scale(config.attention_head_dim)
    if tuple(config.rope_scale) == wanted:
        return False
    transformer.register_to_config(rope_scale=wanted)
    transformer.rope = type(transformer.rope)(hidden_size=config.attention_head_dim, max_size=config.max_size,
                                              patch_size=config.patch_size, rope_scale=wanted)
    return True


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
            rope_scale=toy_rope_scale(cfg.dit_head_dim),
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


def load_pretrained(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    what: str = "name_or_path"):
    """The pretrained toy Anima shipped in :data:`WEIGHTS_DIR` (``lllite.load_pipeline("toy", model_family="anima")``).

    Raises:
        InputMissingError: the weights are missing; the message says how to make them.
    """
    if not (WEIGHTS_DIR / MODULAR_INDEX).is_file():
        raise InputMissingError(f"{what} {TOY!r}: the toy Anima weights are missing from {WEIGHTS_DIR}; "
                                f"create them with `{PRETRAIN_COMMAND}`")
    return load_pipeline(WEIGHTS_DIR, dtype=dtype, device=device, what=what)


@dataclass
class ToyRecipe(Recipe):
    """How to train an Anima LLLite (kohya's v2) on the toy Anima's shapes: at most 5 minutes on a CPU. The
    fields are :class:`lllite.toy.recipe.Recipe`'s and Anima's ``lllite_target_layers`` and ``lllite_cond_dim``
    (see :class:`lllite.train.TrainConfig`); kohya's Anima defaults otherwise (one ResBlock, no ASPP, no loss
    weighting, flow shift 1).

    How the defaults were chosen, in the demo (two processes of batch 8; mean IoU at strength 1 on 32 held-out
    shapes): ``self_attn_qkv`` at 2e-3 0.745 (3228 steps in 5 minutes, the CPU partly busy with other work) and
    at 4e-3 0.724 (3002 steps); every atomic target (adding cross-attention's q and the MLP's first Linear) at
    2e-3 0.774 and, in a second run with these defaults, 0.783 (its 4000 steps in 290 s on the idle CPU). On the
    second 64 px base, 2600 steps: 2e-3 0.785 (0.730 on unseen sizes), 1e-3 0.775 (0.723). All of these ran at 64 px;
    at the toy's 128 px (its third pretraining run) the same recipe made 1541 and 1722 steps in the 5 minutes and
    scored 0.888 and 0.895 (0.888 and 0.891 unseen), and on the fifth run's base (upright shapes) 1559 steps, 0.891
    (0.856 unseen).
    ``compile`` is off, as for the toy SDXL, where compiling cost more of the 5 minutes than it saved.
    """

    size: int = IMAGE_SIZE
    learning_rate: float = 2e-3
    timestep_sampling: str = "sigmoid"
    lllite_target_layers: str = "self_attn_q_pre,self_attn_kv_pre,cross_attn_q_pre,mlp_fc1_pre"
    lllite_cond_dim: int = 64
    lllite_cond_input: str = "pixel"
    lllite_trunk: str = "stem"
    lllite_ref_block: str | None = None
    lllite_ref_context: str = "zero"
    lllite_gate: str = "scalar"

    @classmethod
    def architecture(cls, kind: str, **changes) -> "ToyRecipe":
        """The recipe for kohya's architecture ``kind``: ``"v2"`` (pixel stem, the default), ``"v2.1"`` (latent stem)
        or ``"v3"`` (semantic trunk, its defaults: the middle block, zero context, scalar gate)."""
        if kind not in TRAINING_OPTIONS:
            raise ValueError(f"architecture {kind!r}: give one of {', '.join(TRAINING_OPTIONS)}")
        return cls(**{**TRAINING_OPTIONS[kind], **changes})

    def training_settings(self) -> dict:
        """The :class:`lllite.train.TrainConfig` settings of this recipe (all but the dataset and output folder)."""
        return dict(self.shared_settings(), model_family="anima", output_name="lllite_toy_anima_canny",
                    lllite_target_layers=self.lllite_target_layers, lllite_cond_dim=self.lllite_cond_dim,
                    lllite_cond_input=self.lllite_cond_input, lllite_trunk=self.lllite_trunk,
                    lllite_ref_block=self.lllite_ref_block, lllite_ref_context=self.lllite_ref_context,
                    lllite_gate=self.lllite_gate)
