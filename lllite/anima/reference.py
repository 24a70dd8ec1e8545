"""v3's reference forward: the frozen DiT run on the control latent, whose hidden states feed the semantic trunk.

As kohya's ``encode_reference_hidden_states`` computes it, on diffusers' ``CosmosTransformer3DModel``: the
control latent (B, 16, h, w) with a zero padding mask, the rotary embedding of its own grid, the patch
embedding; the timestep ``ref_timestep`` (on the [0, 1] scale the DiT reads) through the time embedding; a text
context (zeros (B, 1, D) by default, so that cross-attention adds exactly 0); then the blocks, keeping the
output of each tapped block (-1: the patch embedding's output, before any block), and none after the last tap.
No gradients, no LLLite network acting (:func:`lllite.controls.networks_quiet`), once per control batch (and
per text context, for ``ref_context="caption"``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..controls import networks_quiet
from ..errors import LLLiteError

#: T5's end-of-sequence token, the one query of kohya's empty-prompt context ("uncond").
T5_EOS = 1


def model_width(transformer: nn.Module) -> int:
    """The DiT's hidden width (D: 2048 for Anima), what the semantic trunk reads."""
    return int(transformer.patch_embed.proj.out_features)


@torch.no_grad()
def reference_hidden_states(transformer: nn.Module, latent: torch.Tensor, blocks: tuple[int, ...], timestep: float,
                            context: torch.Tensor | None = None) -> torch.Tensor:
    """The DiT's hidden states of ``latent`` at ``blocks``: (B, K, tokens, D), K in the taps' ascending order.

    Args:
        transformer: diffusers' ``CosmosTransformer3DModel`` (frozen).
        latent: the normalised control latent (B, 16, h, w), h and w even.
        blocks: ascending taps, -1 for the patch embedding's output.
        timestep: the reference forward's timestep in [0, 1] (0: clean).
        context: the text context (B or 1, L, D_text) as the transformer receives ``encoder_hidden_states``;
            None for zeros (B, 1, D_text).
    """
    model = getattr(transformer, "_orig_mod", transformer)
    dtype = model.patch_embed.proj.weight.dtype
    if context is not None and context.shape[0] > latent.shape[0]:  # one control for a batch of prompts ("caption")
        if context.shape[0] % latent.shape[0]:
            raise LLLiteError(f"{latent.shape[0]} control latents for {context.shape[0]} text contexts: give one control, "
                              "or one per prompt")
        latent = latent.repeat(context.shape[0] // latent.shape[0], 1, 1, 1)
    hidden = latent.to(dtype).unsqueeze(2)  # (B, C, T=1, h, w)
    batch = hidden.shape[0]
    if model.config.concat_padding_mask:  # a zero padding mask, resized: zeros
        hidden = torch.cat([hidden, hidden.new_zeros(batch, 1, *hidden.shape[2:])], dim=1)
    with networks_quiet():
        rotary = model.rope(hidden, fps=None)
        extra = model.learnable_pos_embed(hidden) if model.config.extra_pos_embed_type else None
        x = model.patch_embed(hidden).flatten(1, 3)
        taps = [x] if -1 in blocks else []
        last = max(blocks)
        if last >= 0:
            t = torch.full((batch,), float(timestep), device=x.device, dtype=dtype)
            temb, embedded = model.time_embed(x, t)
            if context is None:
                context = x.new_zeros(batch, 1, model.config.text_embed_dim)
            context = context.to(device=x.device, dtype=dtype)
            if context.shape[0] != batch:
                context = context.expand(batch, -1, -1)
            if model.config.use_crossattn_projection:
                context = model.crossattn_proj(context)
            for index, block in enumerate(model.transformer_blocks):
                x = block(x, context, embedded, temb, rotary, extra, None, None)
                if index in blocks:
                    taps.append(x)
                if index == last:
                    break
    return torch.stack(taps, dim=1)


@torch.no_grad()
def uncond_context(conditioner: nn.Module, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """kohya's ``ref_context="uncond"``: the LLM adapter's output for an empty source (one zero state) and the one
    T5 query ``</s>``, then zeros up to the main forward's context length ``length`` (1, length, D)."""
    if conditioner is None:
        raise LLLiteError("this v3 network's reference forward reads the empty prompt's context (ref_context='uncond'), "
                          "made by the pipeline's LLM adapter: attach the network to the Anima pipeline (apply_to(pipe))")
    weight = next(conditioner.parameters())
    ones = torch.ones(1, 1, device=weight.device, dtype=torch.long)
    source = torch.zeros(1, 1, conditioner.config.source_dim, device=weight.device, dtype=weight.dtype)
    first = conditioner(source_hidden_states=source, target_input_ids=ones * T5_EOS,
                        target_attention_mask=ones, source_attention_mask=ones)[:, :1]
    return F.pad(first, (0, 0, 0, max(length, 1) - 1)).to(device=device, dtype=dtype)


def pad_latent(latent: torch.Tensor, size: tuple[int, int], what: str = "control latent", unit: int = 1) -> torch.Tensor:
    """A control latent at the DiT's (padded) latent size ``size``: padded at the bottom and right, circularly, where
    one side is one short of a whole patch (as ComfyUI's ``pad_to_patch_size``, which kohya's node applies: a
    1032 px image gives 129 latent rows and the DiT 65 token rows). ``unit``: the cells of a latent row (8 for an
    inpainting mask at pixel size).

    Raises:
        LLLiteError: any other size, naming both.
    """
    h, w = latent.shape[-2:]
    short = (size[0] - h, size[1] - w)
    if short == (0, 0):
        return latent
    if not all(s in (0, unit) for s in short) or (size[0] % (2 * unit) or size[1] % (2 * unit)):
        raise LLLiteError(f"{what}: its size {h}x{w} does not match the generated latent's {size[0]}x{size[1]}; "
                          "encode the control image at the generated image's size")
    return F.pad(latent, (0, short[1], 0, short[0]), mode="circular")
