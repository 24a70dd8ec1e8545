"""The settings of an SDXL LLLite network (kohya's first LLLite), under kohya's option names."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LLLiteConfig:
    """The architecture of an SDXL LLLite network; kohya's canny model is the default.

    A file stores no settings: they are read back from its tensors' shapes, and a hand-made file may mix
    modules of several sizes (its :attr:`lllite.LLLiteNetwork.config` then says None for the dimension
    that differs).

    Args:
        cond_emb_dim: E, channels of each module's conditioning embedding (even; 32 for canny).
        network_dim: M, width of each module's down/mid projections (kohya's ``network_dim``; 64 for canny).
        up_path: also adapt the up path's transformer blocks (kohya's default networks adapt the down path and
            the middle: 136 modules on SDXL).
    """

    cond_emb_dim: int | None = 32
    network_dim: int | None = 64
    up_path: bool = False
