"""Anima through diffusers' modular pipeline: loading, saving, and the few calls training and sampling make.

    from lllite.anima.pipeline import load_pipeline, generate
    pipe = load_pipeline("toy")                           # the pretrained toy in lllite/anima/weights
    images = generate(pipe, "a red circle", num_inference_steps=20, guidance_scale=4.0, height=64, width=64, seed=0)

The pipeline is diffusers' ``AnimaModularPipeline``; its models are attributes: ``pipe.transformer``
(``CosmosTransformer3DModel``, where LLLite attaches), ``pipe.text_conditioner`` (the LLM adapter),
``pipe.text_encoder`` (Qwen3), ``pipe.vae`` (``AutoencoderKLQwenImage``), ``pipe.scheduler``
(``FlowMatchEulerDiscreteScheduler``), ``pipe.guider`` (``ClassifierFreeGuidance``), and the tokenizers
``pipe.tokenizer`` (Qwen) and ``pipe.t5_tokenizer``. A hook on ``pipe.transformer`` sees every call sampling
makes: with classifier-free guidance the guider calls it twice per step, first with the prompt, then with the
negative prompt, each time with batch B (never 2B); see :func:`transformer_inputs` for the arguments.

Anima's DiT itself is also known by its configuration alone (:data:`REAL_ANIMA`, :func:`anima_transformer`):
no download needed for shapes and counts.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lllite.errors import PipelineLoadError
from lllite.files import write_folder_atomic
from lllite.toy import TOY

from .names import is_model

#: What the text encoder step passes as ``max_sequence_length`` unless told otherwise (diffusers' default).
MAX_SEQUENCE_LENGTH = 512
#: What diffusers' modular pipelines (Anima's) write as their index; an SDXL folder has ``model_index.json``.
MODULAR_INDEX = "modular_model_index.json"

#: Generated images' sides are multiples of this, and why.
PIXEL_MULTIPLE, PIXEL_MULTIPLE_REASON = 16, "Anima's VAE and 2x2 patches"
#: The side in pixels Anima was trained at.
IMAGE_SIZE = 1024
#: Real Anima has no diffusers-format copy on the hub that lllite could name: the user gives a folder.
REAL_MODEL = None
#: How to get a diffusers-format Anima.
HOWTO = ("diffusers' scripts/convert_anima_to_diffusers.py writes one from Anima's checkpoints (the DiT, "
         "the Qwen3 text encoder, the LLM adapter and the Qwen-Image VAE)")
#: The half types its DiT computes in without overflowing (:mod:`lllite.precision`): bfloat16, Anima's own; in
#: float16 it overflows (NaN or black images). The hub has no variant of half weights.
HALF_DTYPES, GPU_VARIANT = (torch.bfloat16,), None

#: The real Anima's sizes (Cosmos-Predict2-2B DiT, Qwen3-0.6B, the adapter), as diffusers' conversion script
#: configures them; the toy's are in :mod:`lllite.anima.toy`.
REAL_ANIMA = {
    "transformer": {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 128, "adaln_lora_dim": 256,
                    "text_embed_dim": 1024, "patch_size": (1, 2, 2), "rope_scale": (1.0, 4.0, 4.0),
                    "concat_padding_mask": True, "extra_pos_embed_type": None},
    "text_conditioner": {"source_dim": 1024, "target_dim": 1024, "model_dim": 1024, "num_layers": 6,
                         "num_attention_heads": 16, "target_vocab_size": 32128, "min_sequence_length": 512},
    "scheduler": {"shift": 3.0},
}


def anima_transformer(**changes):
    """Anima's DiT (diffusers' ``CosmosTransformer3DModel`` as the conversion script configures Cosmos-Predict2-2B,
    with :data:`REAL_ANIMA`'s sizes) on the ``meta`` device: shapes without weights or memory.

    Args:
        changes: configuration fields to change, e.g. ``concat_padding_mask=False`` to call it where torchvision
            (which resizes the padding mask) is not installed.
    """
    from diffusers import CosmosTransformer3DModel

    config = dict(in_channels=16, out_channels=16, mlp_ratio=4.0, max_size=(128, 240, 240), **REAL_ANIMA["transformer"])
    with torch.device("meta"):
        return CosmosTransformer3DModel(**{**config, **changes})


def claims_folder(path: Path) -> bool:
    """Whether ``path`` is a folder saved by diffusers' modular pipeline (``modular_model_index.json``)."""
    return (path / MODULAR_INDEX).is_file()


def is_pipeline(pipe) -> bool:
    """Whether ``pipe`` is an Anima pipeline: its ``transformer`` is Anima's DiT."""
    return getattr(pipe, "transformer", None) is not None and is_model(pipe)


def _components_to_load(pipe) -> list[str]:
    return [name for name, spec in pipe._component_specs.items() if spec.default_creation_method == "from_pretrained"]


def load_pipeline(name_or_path: str | os.PathLike = TOY, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", variant: str | None = None, what: str = "name_or_path"):
    """A diffusers ``AnimaModularPipeline`` with every model loaded, on ``device``, its progress bars off.

    Args:
        name_or_path: a hub id of a diffusers-format Anima (with ``modular_model_index.json``), a local folder
            written by :func:`save_pipeline` or ``save_pretrained`` (the pretrained toy Anima is
            :func:`lllite.anima.toy.load_pretrained`). A local folder's components are read from the
            folder itself, wherever the index says they were saved.
        dtype: the parameters' dtype (bfloat16 is Anima's own; the toy is stored in float16 and trained in float32).
        device: where the pipeline's modules are placed.
        variant: the hub's weight variant (Anima's repositories have none; ignored).
        what: how error messages name the argument, e.g. ``"pretrained_model_name_or_path"`` or ``"--model"``.

    Raises:
        PipelineLoadError: anything that does not load as an Anima pipeline; the message says what.
    """
    from diffusers import AnimaModularPipeline, ModularPipeline

    path = Path(name_or_path).expanduser()
    local = path.is_dir()
    if path.exists() and not (local and (path / MODULAR_INDEX).is_file()):
        raise PipelineLoadError(f"{what} {str(name_or_path)!r} is not a diffusers Anima folder (no {MODULAR_INDEX} in "
                                f"it); give a folder written by save_pretrained, a hub id, or {TOY!r}")
    source = str(path) if local else str(name_or_path)
    try:
        pipe = ModularPipeline.from_pretrained(source)
    except (OSError, ValueError) as error:
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        raise PipelineLoadError(f"{what} {source!r} could not be loaded as an Anima pipeline ({reason}); give a hub "
                                f"id (with internet access), a local diffusers Anima folder, or {TOY!r}") from None
    if not isinstance(pipe, AnimaModularPipeline):
        raise PipelineLoadError(f"{what} {source!r} holds a {type(pipe).__name__}, not an AnimaModularPipeline; "
                                f"give an Anima model")
    names = _components_to_load(pipe)
    # A saved index records where each component was written; a folder that moved (or was shipped) still
    # holds its components in its own subfolders.
    overrides = {"pretrained_model_name_or_path": source} if local else {}
    pipe.load_components(names=names, dtype=dtype, **overrides)
    missing = [name for name in names if getattr(pipe, name, None) is None]
    if missing:
        raise PipelineLoadError(f"{what} {source!r}: the components {', '.join(missing)} did not load (see the "
                                f"warnings above); check that the folder or repository holds them")
    check_padding_mask(pipe.transformer, what, source)
    disable_progress_bars(pipe)
    return pipe.to(device)


#: What installs what real Anima's DiT needs beyond lllite's own dependencies.
ANIMA_EXTRA = 'pip install "lllite[anima]"'


def check_padding_mask(transformer, what: str = "name_or_path", source: str = "") -> None:
    """Real Anima's DiT (``concat_padding_mask=True``) resizes its padding mask with torchvision, at every call; a
    DiT that needs it where torchvision is missing is refused now, not at the first generation.

    Raises:
        PipelineLoadError: naming the install line.
    """
    from diffusers.models.transformers import transformer_cosmos

    if getattr(transformer.config, "concat_padding_mask", False) and getattr(transformer_cosmos, "transforms", None) is None:
        raise PipelineLoadError(f"{what} {source!r}: Anima's DiT resizes its padding mask with torchvision, which is not "
                                f"installed; install it with `{ANIMA_EXTRA}` (or `pip install torchvision` matching "
                                "your torch)")


def save_pipeline(pipe, out_dir: str | os.PathLike) -> Path:
    """``pipe.save_pretrained`` into ``out_dir`` (atomically: the folder appears whole or not at all).

    diffusers records in ``modular_model_index.json`` the folder each component was written to; here that is
    ``out_dir`` as given, so a relative ``out_dir`` keeps the index free of one machine's paths.
    :func:`load_pipeline` reads a local folder's components from the folder itself in any case.
    An existing ``out_dir`` is replaced: ask before calling.
    """
    def write(folder: Path) -> None:
        pipe.save_pretrained(str(folder), overwrite_modular_index=True)
        index_path = folder / MODULAR_INDEX
        index = json.loads(index_path.read_text())
        for name in _components_to_load(pipe):
            if isinstance(index.get(name), list) and len(index[name]) == 3:
                index[name][2]["pretrained_model_name_or_path"] = str(out_dir)
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    return write_folder_atomic(out_dir, write)


def disable_progress_bars(pipe) -> None:
    """Turn off the progress bars of every block, nested ones too (the denoising loop sits two levels down)."""
    blocks = [pipe._blocks]
    while blocks:
        block = blocks.pop()
        if hasattr(block, "set_progress_bar_config"):
            block.set_progress_bar_config(disable=True)
        blocks.extend(getattr(block, "sub_blocks", {}).values())


def encode_prompts(pipe, prompts: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> dict[str, torch.Tensor]:
    """What the transformer receives for each prompt, computed as the pipeline's text steps compute it.

    The Qwen3 text encoder reads the Qwen tokens (its padded positions zeroed), then the LLM adapter
    (``pipe.text_conditioner``) turns the prompt's T5 token ids into queries that attend to those states, and
    pads the result with zeros to its ``min_sequence_length``. Gradients flow when the modules require them
    (the pipeline itself runs under ``no_grad``).

    Args:
        prompts: B prompts; ``""`` is the empty prompt (the default negative prompt).
        max_sequence_length: tokens kept per prompt (the pipeline's default, 512).

    Returns:
        ``{"encoder_hidden_states": (B, S, text_embed_dim)}`` in the transformer's dtype, where S is the
        longest prompt's T5 token count or the adapter's ``min_sequence_length``, whichever is larger.
    """
    from diffusers.modular_pipelines.anima.encoders import AnimaTextEncoderStep

    device = pipe._execution_device
    encoded = AnimaTextEncoderStep.encode_prompt(pipe, list(prompts), prepare_unconditional_embeds=False,
                                                 max_sequence_length=max_sequence_length, device=device,
                                                 dtype=pipe.text_encoder.dtype)
    conditioner = pipe.text_conditioner
    hidden = conditioner(
        source_hidden_states=encoded["qwen_prompt_embeds"].to(device=device, dtype=conditioner.dtype),
        target_input_ids=encoded["t5_input_ids"].to(device),
        target_attention_mask=encoded["t5_attention_mask"].to(device),
        source_attention_mask=encoded["qwen_attention_mask"].to(device),
    )
    return {"encoder_hidden_states": hidden.to(device=device, dtype=pipe.transformer.dtype)}


def _latent_statistics(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, std


def encode_images(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """Latents of images, normalised as the pipeline's decoder expects: ``(z - latents_mean) / latents_std``.

    Args:
        pixels: (B, 3, H, W) in [-1, 1], H and W multiples of 8.

    Returns:
        (B, 16, H/8, W/8): the posterior's mean (diffusers' image-to-image step encodes the same way), normalised
        by the VAE config's per-channel ``latents_mean`` / ``latents_std``.
    """
    return encode_with(pipe.vae, pixels)


def encode_with(vae, pixels: torch.Tensor) -> torch.Tensor:
    """:func:`encode_images` with a VAE (``AutoencoderKLQwenImage``) rather than a pipeline: kohya's latents of
    control images for v2.1 / v3 LLLite networks are normalised the same way."""
    frames = pixels.to(device=vae.device, dtype=vae.dtype).unsqueeze(2)
    latents = vae.encode(frames).latent_dist.mode()
    mean, std = _latent_statistics(vae, latents)
    return ((latents - mean) / std)[:, :, 0]


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (B, 3, H, W) of normalised latents (B, 16, h, w) or (B, 16, 1, h, w), exactly as the
    pipeline's decode step computes them (it undoes the normalisation of :func:`encode_images`)."""
    vae = pipe.vae
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    if latents.dim() == 4:
        latents = latents.unsqueeze(2)
    mean, std = _latent_statistics(vae, latents)
    return vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]


def transformer_inputs(latents: torch.Tensor, sigmas: torch.Tensor, encoder_hidden_states: torch.Tensor,
                       vae_scale_factor: int = 8) -> dict[str, torch.Tensor]:
    """The keyword arguments the pipeline's denoising loop passes to ``pipe.transformer``, for training to match.

    Each call of the loop (once per guidance branch and step) is
    ``pipe.transformer(hidden_states=..., timestep=..., padding_mask=..., return_dict=False, encoder_hidden_states=...)``:

    - ``hidden_states``: the noisy latents (B, 16, 1, h, w), T = 1 frame, h = H/8, w = W/8, in the transformer's dtype;
    - ``timestep``: (B,) the scheduler's timestep divided by ``num_train_timesteps`` (1000), which for Anima's
      flow-matching scheduler is the (shifted) sigma in [0, 1]: 1 is pure noise, 0 the clean image;
    - ``encoder_hidden_states``: (B, S, text_embed_dim), the adapter's output (:func:`encode_prompts`); the
      guider passes the prompt's in the first call of a step and the negative prompt's in the second;
    - ``padding_mask``: zeros (1, 1, H, W) at pixel size; Anima's DiT (``concat_padding_mask=True``) resizes it
      and appends it as a 17th input channel, the toy's ignores it.

    The transformer predicts the velocity ``noise - x0``; the scheduler steps ``x += (sigma_next - sigma) * v``.

    Args:
        latents: normalised latents (B, 16, h, w) or (B, 16, 1, h, w), noised to ``sigmas``.
        sigmas: (B,) in [0, 1].
        encoder_hidden_states: (B, S, D).
        vae_scale_factor: pixels per latent cell (8).
    """
    if latents.dim() == 4:
        latents = latents.unsqueeze(2)
    height, width = latents.shape[-2] * vae_scale_factor, latents.shape[-1] * vae_scale_factor
    return {
        "hidden_states": latents,
        "timestep": sigmas.to(latents.dtype),
        "encoder_hidden_states": encoder_hidden_states,
        "padding_mask": latents.new_zeros(1, 1, height, width),
    }


def generate(pipe, prompt: str | list[str], *, negative_prompt: str | list[str] | None = "", num_inference_steps: int = 20,
             guidance_scale: float = 4.0, height: int | None = None, width: int | None = None,
             seed: int | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
             latents: torch.Tensor | None = None) -> list[Image.Image]:
    """Images from the modular pipeline itself, so hooks on ``pipe.transformer`` see exactly Anima's calls.

    Args:
        prompt: one prompt or B prompts.
        negative_prompt: the unconditional branch's prompt(s) (used only when guidance is on); None is the empty
            prompt for every image.
        num_inference_steps: Euler steps, sigmas evenly spaced from 1 to 1/steps before the scheduler's shift.
        guidance_scale: classifier-free guidance; exactly 1.0 turns it off (one transformer call per step, not two).
        height, width: pixels, multiples of 16; None takes the pipeline's default (1024; the toy was trained at 128).
        seed: seeds a CPU generator (ignored when ``generator`` is given).
        generator: torch generator(s) for the initial noise; a list gives one per image.
        latents: initial noise (B, 16, 1, H/8, W/8) instead of drawing it.

    Returns:
        B PIL images. The call sets ``pipe.guider.guidance_scale`` and restores it afterwards.
    """
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    if negative_prompt is None:
        negative_prompt = [""] * len(prompt) if isinstance(prompt, list) else ""
    guider = pipe.guider
    configured_scale = guider.guidance_scale
    guider.guidance_scale = guidance_scale
    try:
        images = pipe(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                      height=height, width=width, generator=generator, latents=latents, output_type="pil",
                      output="images")
    finally:
        guider.guidance_scale = configured_scale
    return images


def to_uint8_images(images: list[Image.Image]) -> np.ndarray:
    """PIL images as one RGB uint8 array (B, H, W, 3), as the metrics read them."""
    return np.stack([np.asarray(image.convert("RGB")) for image in images])
