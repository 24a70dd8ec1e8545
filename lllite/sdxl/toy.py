"""The toy SDXL: a tiny SDXL pipeline built locally, with SDXL's block layout and code path and a few MB of
weights, and the recipe that trains an LLLite on it (:class:`ToyRecipe`).

:func:`build_pipeline` makes one with random weights (for unit tests and as the starting point of
pretraining); ``lllite.load_pipeline("toy")`` loads the pretrained weights shipped in ``lllite/sdxl/weights``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lllite.errors import InputMissingError
from lllite.sdxl.objective import SDXL_SCHEDULE
from lllite.sdxl.pipeline import load_pipeline
from lllite.toy import TOY
from lllite.toy.recipe import Recipe
from lllite.toy.tokenizers import CAPTION_WORDS, bytes_to_unicode, learn_bpe_merges

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAIN_COMMAND = "python -m lllite.toy.pretrain"
#: The side in pixels the toy SDXL is pretrained at.
IMAGE_SIZE = 128

@dataclass(frozen=True)
class ToyConfig:
    """Sizes of the tiny SDXL. Channel counts must be divisible by their ``*_norm_groups``."""

    unet_channels: tuple[int, int, int] = (32, 64, 64)
    unet_heads: tuple[int, int, int] = (1, 2, 2)
    unet_layers_per_block: int = 1
    unet_norm_groups: int = 8
    addition_time_embed_dim: int = 8
    text_hidden: int = 32
    text_2_hidden: int = 32
    text_2_projection: int = 32
    text_layers: int = 2
    text_heads: int = 2
    max_tokens: int = 16
    vae_channels: tuple[int, int, int, int] = (8, 16, 32, 32)
    vae_norm_groups: int = 2
    vae_layers_per_block: int = 1
    sample_size: int = 128


CONFIGS = {
    "toy": ToyConfig(),
    "test": ToyConfig(
        unet_channels=(8, 16, 16),
        unet_heads=(1, 1, 2),
        unet_layers_per_block=1,
        unet_norm_groups=4,
        addition_time_embed_dim=4,
        text_hidden=16,
        text_2_hidden=16,
        text_2_projection=8,
        text_layers=1,
        text_heads=2,
        max_tokens=8,
        vae_channels=(4, 8, 8, 8),
        vae_norm_groups=4,
        vae_layers_per_block=1,
        sample_size=64,
    ),
}


def make_tokenizer(max_tokens: int) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the byte alphabet plus `CAPTION_WORDS` as whole words."""
    alphabet = list(bytes_to_unicode().values())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab.update({char + "</w>": len(alphabet) + i for i, char in enumerate(alphabet)})
    merges = learn_bpe_merges([list(word[:-1]) + [word[-1] + "</w>"] for word in CAPTION_WORDS])
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)


def _text_config(cfg: ToyConfig, hidden: int, tokenizer: CLIPTokenizer, projection: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        projection_dim=projection,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_tokens,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_scheduler() -> EulerDiscreteScheduler:
    """SDXL's sampling scheduler: Euler over the betas that training uses (:data:`lllite.objective.SDXL_SCHEDULE`)."""
    return EulerDiscreteScheduler(
        **SDXL_SCHEDULE,
        timestep_spacing="leading",
        steps_offset=1,
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


def build_pipeline(config: str = "toy", seed: int = 0, device="cpu") -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline with random weights, built with no network access.

    Args:
        config: ``"toy"`` (the size that is pretrained and shipped) or ``"test"`` (smaller still, for
            unit tests that only need the SDXL code path).
        seed: seeds the random initialisation; the same seed gives the same weights.
        device: where the pipeline's modules are placed.
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown toy config {config!r}; choose one of {sorted(CONFIGS)}")
    cfg = CONFIGS[config]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tokenizer = make_tokenizer(cfg.max_tokens)
        tokenizer_2 = make_tokenizer(cfg.max_tokens)
        text_encoder = CLIPTextModel(_text_config(cfg, cfg.text_hidden, tokenizer, cfg.text_hidden))
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(cfg, cfg.text_2_hidden, tokenizer_2, cfg.text_2_projection)
        )
        unet = UNet2DConditionModel(
            sample_size=cfg.sample_size // 8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=cfg.unet_channels,
            layers_per_block=cfg.unet_layers_per_block,
            transformer_layers_per_block=1,
            # diffusers reads "attention_head_dim" as a number of heads, as SDXL's own config does.
            attention_head_dim=cfg.unet_heads,
            norm_num_groups=cfg.unet_norm_groups,
            cross_attention_dim=cfg.text_hidden + cfg.text_2_hidden,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=cfg.addition_time_embed_dim,
            projection_class_embeddings_input_dim=6 * cfg.addition_time_embed_dim + cfg.text_2_projection,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=cfg.vae_channels,
            layers_per_block=cfg.vae_layers_per_block,
            latent_channels=4,
            norm_num_groups=cfg.vae_norm_groups,
            sample_size=cfg.sample_size,
            scaling_factor=1.0,
            force_upcast=False,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=make_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_pretrained(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    what: str = "name_or_path") -> StableDiffusionXLPipeline:
    """The pretrained toy SDXL shipped in :data:`WEIGHTS_DIR` (``lllite.load_pipeline("toy")``).

    Raises:
        InputMissingError: the weights are missing; the message says how to make them.
    """
    if not (WEIGHTS_DIR / "model_index.json").is_file():
        raise InputMissingError(f"{what} {TOY!r}: the toy pipeline weights are missing from {WEIGHTS_DIR}; "
                                f"create them with `{PRETRAIN_COMMAND}`")
    return load_pipeline(WEIGHTS_DIR, dtype=dtype, device=device, what=what)


@dataclass
class ToyRecipe(Recipe):
    """How to train an LLLite on the toy SDXL's shapes: at most 5 minutes on a CPU (the demo's and notebook 03's
    recipe on a CPU). The fields are :class:`lllite.toy.recipe.Recipe`'s and SDXL's ``up_path`` and
    ``debiased_estimation_loss`` (see :class:`lllite.train.TrainConfig`).

    How the defaults were chosen: tuned on an earlier base (16000 pretraining steps). With these settings in two
    processes the next base (6000 steps weighted by 1/sqrt(SNR)) scored 0.68, and the shipped one, which continues
    it until 91.7% of its samples show their caption's shape, 0.731 (999 steps, an idle 2-core machine). Tried again
    on the shipped base, two processes of batch 8, 1000 steps each (IoU at strength 1 / on unseen sizes): these
    defaults 0.728 / 0.556, learning rate 2e-3 0.762 / 0.705, 1e-3 0.642 / 0.460, uniform timesteps 0.787 / 0.644,
    both 0.738 / 0.663, and both without the 1/sqrt(SNR) weighting 0.286 / 0.131. In the demo's 5 minutes (about
    1400 steps once the embeddings were computed together): these defaults 0.783 / 0.665, uniform timesteps 0.780 /
    0.688, 2e-3 0.775 / 0.678, one run each and within the run-to-run spread, so the defaults stay. Since then:
    cond_emb_dim 64 (1000 steps) 0.743 / 0.718, within the spread at strength 1; two processes of batch 4 made
    1770 steps in the 5 minutes but scored 0.726 / 0.609. What steps alone give: these defaults with 4000 steps
    (965 s on the 2-core machine, busy with other work for about 2 of them) reach 0.850 / 0.815. Training at 64 px
    (``size`` 64, a quarter of the latents) and scoring at 128 made 2393 steps in the 5 minutes, 1.7 times as many,
    but scored 0.547 / 0.317: what the modules learn at one size does not carry to the other. Measured on
    the held-out shapes after 5 minutes (about 950 steps) in one process, mean IoU at strength 1: the noise loss
    alone 0.46, weighted by 1/sqrt(SNR) 0.70, and with the learning rate doubled to 4e-3 0.72; batch 4 and 16,
    uniform timesteps, no up path, a learning rate of 8e-3 and network_dim 128 all scored lower. In two processes of
    batch 8 (about 780 steps of 16): 0.75, and 0.67 at a learning rate of 6e-3; two processes of batch 4 made no
    more steps than one process of batch 8 (0.68). ``compile`` is off: in the demo's two CPU processes compiling
    took 2.5 of its 5 minutes and the compiled step was about 8% faster, so it made 833 steps (IoU 0.56 at strength
    1) against eager's 1519 and 1552 (0.79 in both runs).
    """

    size: int = IMAGE_SIZE
    learning_rate: float = 4e-3
    timestep_sampling: str = "cubic"
    up_path: bool = True
    debiased_estimation_loss: bool = True

    def training_settings(self) -> dict:
        """The :class:`lllite.train.TrainConfig` settings of this recipe (all but the dataset and output folder)."""
        return dict(self.shared_settings(), output_name="lllite_toy_canny", up_path=self.up_path,
                    debiased_estimation_loss=self.debiased_estimation_loss)
