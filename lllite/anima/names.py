"""Where Anima LLLite modules attach, and the one mapping between kohya's module names and diffusers' paths.

kohya names a module after the target Linear's path in its own Anima DiT (``blocks.{i}.self_attn.q_proj``)
with every ``.`` replaced by ``_`` and ``lllite_dit_`` in front. diffusers' ``CosmosTransformer3DModel``
holds the same Linear at ``transformer_blocks.{i}.attn1.to_q``. :data:`TARGETS` is the single table of
corresponding Linears; both directions read it, and no underscored name is ever parsed back into a path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..errors import LLLiteError

MODULE_PREFIX = "lllite_dit_"

#: atomic specifier -> the Linears it adapts in every block, as (kohya's path in the block, diffusers' path),
#: in kohya's order within a block. Never the output projections, never cross-attention's k/v (they read text).
TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "self_attn_q_pre": (("self_attn.q_proj", "attn1.to_q"),),
    "self_attn_kv_pre": (("self_attn.k_proj", "attn1.to_k"), ("self_attn.v_proj", "attn1.to_v")),
    "cross_attn_q_pre": (("cross_attn.q_proj", "attn2.to_q"),),
    "mlp_fc1_pre": (("mlp.layer1", "ff.net.0.proj"),),
}
ATOMICS = tuple(TARGETS)
PRESETS: dict[str, tuple[str, ...]] = {
    "self_attn_q": ("self_attn_q_pre",),
    "self_attn_qkv": ("self_attn_q_pre", "self_attn_kv_pre"),
    "self_attn_qkv_cross_q": ("self_attn_q_pre", "self_attn_kv_pre", "cross_attn_q_pre"),
}


def parse_target_layers(spec: str, what: str = "target_layers") -> tuple[str, ...]:
    """A preset name or a comma list of atomic specifiers, as the atomics in canonical order, each once.

    Raises:
        LLLiteError: an empty spec or an unknown specifier, naming it and listing the valid ones.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise LLLiteError(f"{what}: give a preset ({', '.join(PRESETS)}) or a comma list of {', '.join(ATOMICS)}; "
                          f"got {spec!r}")
    spec = spec.strip()
    parts = PRESETS.get(spec) or tuple(p.strip() for p in spec.split(",") if p.strip())
    unknown = [p for p in parts if p not in TARGETS]
    if unknown:
        raise LLLiteError(f"{what}: unknown {unknown[0]!r}; presets are {', '.join(PRESETS)}, "
                          f"atomic specifiers {', '.join(ATOMICS)}")
    return tuple(a for a in ATOMICS if a in parts)


def kohya_name(block: int, kohya_path: str) -> str:
    """``lllite_dit_blocks_3_self_attn_q_proj`` for block 3's ``self_attn.q_proj``."""
    return MODULE_PREFIX + f"blocks.{block}.{kohya_path}".replace(".", "_")


@dataclass(frozen=True)
class Target:
    """One Linear an Anima LLLite module adapts."""

    name: str  # kohya's module name
    path: str  # diffusers path in the transformer: "transformer_blocks.3.attn1.to_q"
    atomic: str  # the specifier that selects it
    in_features: int


def module_names(num_blocks: int, atomics: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """kohya module name -> (diffusers path, atomic) for a DiT of ``num_blocks`` blocks, in kohya's module order."""
    return {
        kohya_name(i, kohya_path): (f"transformer_blocks.{i}.{diffusers_path}", atomic)
        for i in range(num_blocks)
        for atomic in ATOMICS if atomic in atomics
        for kohya_path, diffusers_path in TARGETS[atomic]
    }


def is_anima_transformer(model: nn.Module) -> bool:
    """Whether ``model`` has the layout of diffusers' Anima DiT (``CosmosTransformer3DModel``)."""
    blocks = getattr(model, "transformer_blocks", None)
    return (isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and hasattr(model, "time_embed")
            and hasattr(model, "patch_embed") and all(hasattr(blocks[0], a) for a in ("attn1", "attn2", "ff")))


def is_model(model) -> bool:
    """Whether ``model`` (or a pipeline's ``transformer``) is Anima's DiT."""
    transformer = getattr(model, "transformer", model)
    return isinstance(transformer, nn.Module) and is_anima_transformer(getattr(transformer, "_orig_mod", transformer))


def find_targets(transformer: nn.Module, atomics: tuple[str, ...]) -> dict[str, Target]:
    """Every Linear the atomics select in an Anima transformer, by kohya module name, in kohya's module order."""
    if not is_anima_transformer(transformer):
        raise LLLiteError(f"{type(transformer).__name__} is not an Anima DiT (diffusers' CosmosTransformer3DModel): "
                          "an Anima LLLite network attaches to an Anima pipeline or its transformer")
    targets = {}
    for name, (path, atomic) in module_names(len(transformer.transformer_blocks), atomics).items():
        linear = transformer.get_submodule(path)
        in_features = getattr(linear, "in_features", None)  # a Linear, or a LoRA layer wrapping one
        if not isinstance(in_features, int):
            raise LLLiteError(f"{path} in the transformer is a {type(linear).__name__}, not the Linear {name} adapts")
        targets[name] = Target(name, path, atomic, in_features)
    return targets
