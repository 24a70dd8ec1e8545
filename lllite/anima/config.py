"""The settings of an Anima LLLite network (kohya's v2), under kohya's option and metadata names."""
from __future__ import annotations

from dataclasses import dataclass

#: The ASPP branches' dilations (kohya's default).
ASPP_DILATIONS = (1, 2, 4, 8)


@dataclass(frozen=True)
class AnimaLLLiteConfig:
    """The architecture of an Anima LLLite network, as kohya's options and file metadata name it.

    Args:
        cond_emb_dim: E, channels of the shared embedding (kohya's default 32).
        network_dim: M, width of each module's down/mid (kohya's ``lllite_mlp_dim``, metadata ``lllite.mlp_dim``; 64).
        target_layers: a preset (``self_attn_q``, ``self_attn_qkv``, ``self_attn_qkv_cross_q``) or a comma
            list of ``self_attn_q_pre``, ``self_attn_kv_pre``, ``cross_attn_q_pre``, ``mlp_fc1_pre``.
        cond_dim: the trunk's width (64).
        cond_resblocks: ResBlocks in the trunk (1).
        use_aspp: end the trunk with ASPP (off).
        aspp_dilations: the ASPP branches' dilations.
        cond_in_channels: 3 (RGB) or 4 (inpainting: RGB + mask).
        inpaint_masked_input: the inpainting network was trained with RGB zeroed under the mask.
        dropout: dropout on each module's mid output while training (None: off).
    """

    cond_emb_dim: int = 32
    network_dim: int = 64
    target_layers: str = "self_attn_q"
    cond_dim: int = 64
    cond_resblocks: int = 1
    use_aspp: bool = False
    aspp_dilations: tuple[int, ...] = ASPP_DILATIONS
    cond_in_channels: int = 3
    inpaint_masked_input: bool = False
    dropout: float | None = None
