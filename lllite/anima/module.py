"""The math of Anima's LLLite (kohya's v2, v2.1 and v3): one shared conditioning trunk, and the module of one Linear.

The trunk (``lllite_conditioning1`` in files) turns the control into one embedding per DiT token. Three kinds:

- v2, :class:`ConditioningTrunk` (pixel stem), on the control image at the generated image's pixel size:
  conv 4x4/4 -> GN -> SiLU -> conv 3x3 -> GN -> SiLU -> conv 4x4/4 -> GN -> SiLU; stride 16 = VAE 8 x patch 2.
- v2.1, :class:`LatentTrunk` (latent stem), on the control image's normalised VAE latent:
  ``lat_conv1`` 3x3 -> GN -> SiLU -> ``lat_conv2`` 2x2/2 -> GN -> SiLU; for inpainting a mask pyramid
  (``mask_conv1..3``, the mask in {-1, 1} at pixel size, down to the latent's size) is concatenated first.
- v3, :class:`SemanticTrunk`, on the frozen DiT's hidden states of the control latent (one or more taps):
  LayerNorm per tap -> concat -> ``proj_in`` (Linear to cond_dim); its ``t_proj`` maps the step's time
  embedding into the embedding's space (t-FiLM).

All three then share a tail: ResBlocks -> (ASPP) -> conv 1x1 to E -> tokens (B, S, E), row-major -> LayerNorm.

Each module adapts the input ``x`` (B, S, D) of one Linear, with ``cond = embedding + depth_embed (+ t)``:

    h = silu(down(x));  gamma, beta = cond_to_film(cond);  m = silu(mid(cat(cond, h)) * (1 + gamma) + beta)
    x' = x + multiplier * up(m)                                  (v2, v2.1; v3 with gate "none")
    x' = x + multiplier * sigmoid(gate(cat(cond, h))) * up(m)    (v3, gate "scalar": one value per token)
    x' = x + multiplier * up(sigmoid(gate(cat(cond, h))) * m)    (v3, gate "vector": one per token and channel)

``up``, ``cond_to_film``, ``depth_embed`` and ``t_proj`` start at zero, so a fresh network changes nothing;
a gate starts open (weight 0, bias 2). Compared with SDXL's LLLite (:mod:`lllite.sdxl.module`): one trunk for
all modules instead of one per module, SiLU instead of ReLU, FiLM on ``mid``, and a learned per-module
offset of the embedding. Parameter names match kohya's files.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ASPP_DILATIONS, GATE_INIT_BIAS, LATENT_CHANNELS, AnimaLLLiteConfig

#: The trunk's stride: VAE 8 x patch 2, one embedding cell per DiT token.
STRIDE = 16


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 8 groups, halved until they divide the channels (kohya's rule)."""
    groups = 8
    while groups > 1 and channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def _conv_norm_silu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, group_norm(conv.out_channels), nn.SiLU())


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(silu(gn(conv(silu(gn(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel dilated branches and a global-average branch, fused by a 1x1 conv."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = ASPP_DILATIONS):
        super().__init__()
        self.branches = nn.ModuleList(
            _conv_norm_silu(nn.Conv2d(channels, channels, 1) if d == 1
                            else nn.Conv2d(channels, channels, 3, padding=d, dilation=d))
            for d in dilations
        )
        self.global_conv = _conv_norm_silu(nn.Conv2d(channels, channels, 1))
        self.proj = _conv_norm_silu(nn.Conv2d(channels * (len(dilations) + 1), channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.global_conv(F.adaptive_avg_pool2d(x, 1))
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.proj(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class _Tail(nn.Module):
    """What every trunk ends with: ResBlocks -> (ASPP) -> conv 1x1 to E -> tokens (B, S, E) -> LayerNorm."""

    def _build_tail(self, config: AnimaLLLiteConfig) -> None:
        self.resblocks = nn.ModuleList(ResBlock(config.cond_dim) for _ in range(config.cond_resblocks))
        self.aspp = ASPP(config.cond_dim, tuple(config.aspp_dilations)) if config.use_aspp else None
        self.proj = nn.Conv2d(config.cond_dim, config.cond_emb_dim, 1)
        self.out_norm = nn.LayerNorm(config.cond_emb_dim)

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            h = block(h)
        if self.aspp is not None:
            h = self.aspp(h)
        return self.out_norm(self.proj(h).flatten(2).transpose(1, 2))


def _check_cond_dim(config: AnimaLLLiteConfig) -> None:
    if config.cond_dim < 2 or config.cond_dim % 2:
        raise ValueError(f"cond_dim must be an even number >= 2, got {config.cond_dim}")


class ConditioningTrunk(_Tail):
    """v2's pixel stem: control image (B, C_in, H, W) -> embeddings (B, H/16 * W/16, E), row-major."""

    kind = "pixel"

    def __init__(self, config: AnimaLLLiteConfig):
        super().__init__()
        _check_cond_dim(config)
        half = config.cond_dim // 2
        self.conv1 = nn.Conv2d(config.cond_in_channels, half, 4, stride=4)
        self.norm1 = group_norm(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1)
        self.norm2 = group_norm(half)
        self.conv3 = nn.Conv2d(half, config.cond_dim, 4, stride=4)
        self.norm3 = group_norm(config.cond_dim)
        self._build_tail(config)

    @property
    def first_weight(self) -> torch.Tensor:
        return self.conv1.weight

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(image)))
        h = F.silu(self.norm2(self.conv2(h)))
        h = F.silu(self.norm3(self.conv3(h)))
        return self._tail(h)


class LatentTrunk(_Tail):
    """v2.1's latent stem: normalised control latent (B, 16, h, w), and for inpainting the mask (B, 1, 8h, 8w)
    in {-1, 1} -> embeddings (B, h/2 * w/2, E), row-major."""

    kind = "latent"

    def __init__(self, config: AnimaLLLiteConfig):
        super().__init__()
        _check_cond_dim(config)
        self.takes_mask = config.cond_in_channels == 4
        if self.takes_mask:  # SiLU between, no norms (they would erase the mask's area), the last one linear
            self.mask_conv1 = nn.Conv2d(1, 4, 2, stride=2)
            self.mask_conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.mask_conv3 = nn.Conv2d(8, LATENT_CHANNELS, 3, stride=2, padding=1)
        self.lat_conv1 = nn.Conv2d(LATENT_CHANNELS * (2 if self.takes_mask else 1), config.cond_dim, 3, padding=1)
        self.lat_norm1 = group_norm(config.cond_dim)
        self.lat_conv2 = nn.Conv2d(config.cond_dim, config.cond_dim, 2, stride=2)
        self.lat_norm2 = group_norm(config.cond_dim)
        self._build_tail(config)

    @property
    def first_weight(self) -> torch.Tensor:
        return self.lat_conv1.weight

    def forward(self, latent: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.takes_mask:
            if mask is None:
                raise ValueError("this inpainting network's latent stem needs the mask (B, 1, 8h, 8w) in {-1, 1}")
            m = self.mask_conv3(F.silu(self.mask_conv2(F.silu(self.mask_conv1(mask.to(latent.dtype))))))
            if m.shape[-2:] != latent.shape[-2:]:
                raise ValueError(f"the mask pyramid gives {tuple(m.shape[-2:])} for a latent of "
                                 f"{tuple(latent.shape[-2:])}: the mask must be 8 times the latent's size")
            latent = torch.cat([latent, m], dim=1)
        h = F.silu(self.lat_norm1(self.lat_conv1(latent)))
        h = F.silu(self.lat_norm2(self.lat_conv2(h)))
        return self._tail(h)


class SemanticTrunk(_Tail):
    """v3's semantic trunk: the frozen DiT's hidden states of the control latent at K taps, (B, K, S, D) on a
    token grid (rows, cols) -> embeddings (B, S, E); and ``t_proj`` for the step's time embedding.

    With one tap ``ln_in`` is one LayerNorm (``ln_in.weight``); with several, one per tap (``ln_in.{k}.weight``)
    and ``proj_in`` reads their concatenation in the taps' ascending order.
    """

    kind = "semantic"

    def __init__(self, config: AnimaLLLiteConfig, model_dim: int, taps: int):
        super().__init__()
        if taps < 1:
            raise ValueError(f"the semantic trunk needs at least one reference tap, got {taps}")
        self.taps, self.model_dim = taps, model_dim
        self.ln_in = nn.LayerNorm(model_dim) if taps == 1 else nn.ModuleList(nn.LayerNorm(model_dim) for _ in range(taps))
        self.proj_in = nn.Linear(model_dim * taps, config.cond_dim)
        self._build_tail(config)
        self.t_proj = nn.Linear(model_dim, config.cond_emb_dim)
        nn.init.zeros_(self.t_proj.weight)
        nn.init.zeros_(self.t_proj.bias)

    @property
    def first_weight(self) -> torch.Tensor:
        return self.proj_in.weight

    def forward(self, hidden: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if hidden.dim() != 4 or hidden.shape[1] != self.taps:
            raise ValueError(f"the semantic trunk was built for {self.taps} reference tap(s) and got hidden states "
                             f"{tuple(hidden.shape)}; expected (B, {self.taps}, tokens, {self.model_dim})")
        norms = [self.ln_in] if self.taps == 1 else list(self.ln_in)
        h = self.proj_in(torch.cat([norm(hidden[:, k]) for k, norm in enumerate(norms)], dim=-1))  # (B, S, cond_dim)
        h = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], *grid)
        return self._tail(h)

    def time(self, embedded_timestep: torch.Tensor) -> torch.Tensor:
        """t-FiLM: the main forward's time embedding after its norm (B, D) -> (B, 1, E), added to every module's cond."""
        return self.t_proj(embedded_timestep.detach().to(self.t_proj.weight.dtype)).reshape(
            embedded_timestep.shape[0], 1, -1)


def build_trunk(config: AnimaLLLiteConfig, model_dim: int | None = None, taps: int = 1) -> nn.Module:
    """The trunk of ``config``'s kind; the semantic trunk needs the DiT's width and the number of reference taps."""
    if config.trunk == "semantic":
        if model_dim is None:
            raise ValueError("the semantic trunk (v3) needs the DiT's width (model_dim)")
        return SemanticTrunk(config, model_dim, taps)
    return LatentTrunk(config) if config.reads_latents else ConditioningTrunk(config)


class AnimaLLLiteModule(nn.Module):
    """The adapter of one Linear of the DiT (its input width ``in_dim``); ``gate``: "none", "scalar" or "vector"."""

    def __init__(self, in_dim: int, cond_emb_dim: int = 32, network_dim: int = 64, dropout: float | None = None,
                 gate: str = "none"):
        super().__init__()
        self.down = nn.Linear(in_dim, network_dim)
        self.mid = nn.Linear(network_dim + cond_emb_dim, network_dim)
        self.cond_to_film = nn.Linear(cond_emb_dim, 2 * network_dim)
        self.up = nn.Linear(network_dim, in_dim)
        self.depth_embed = nn.Parameter(torch.zeros(cond_emb_dim))
        for zero in (self.cond_to_film.weight, self.cond_to_film.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(zero)
        if gate not in ("none", "scalar", "vector"):
            raise ValueError(f"gate must be 'none', 'scalar' or 'vector', got {gate!r}")
        if gate != "none":
            self.gate = nn.Linear(cond_emb_dim + network_dim, 1 if gate == "scalar" else network_dim)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, GATE_INIT_BIAS)
        self.in_dim, self.cond_emb_dim, self.network_dim, self.dropout = in_dim, cond_emb_dim, network_dim, dropout
        self.gate_mode = gate
        self.capture_gate = False  # keep the last gate map (inference, for pictures)
        self.last_gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        """The change to the Linear's input before the multiplier, (B, S, in_dim), from ``x`` (B, S, in_dim),
        the trunk's embedding (B, S, E) and, for the semantic trunk, the step's time embedding (B, 1, E)."""
        cond = embedding + self.depth_embed
        if time is not None:
            cond = cond + time
        h = F.silu(self.down(x))
        gamma, beta = self.cond_to_film(cond).chunk(2, dim=-1)
        m = F.silu(self.mid(torch.cat([cond, h], dim=-1)) * (1 + gamma) + beta)
        if self.dropout is not None and self.training:
            m = F.dropout(m, p=self.dropout)
        if self.gate_mode == "none":
            return self.up(m)
        g = self._gate(cond, h)
        return self.up(m * g) if self.gate_mode == "vector" else self.up(m) * g

    def _gate(self, cond: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """v3: how much of the change each token lets in, sigmoid(gate(cat(cond, h))): (B, S, 1) or (B, S, M)."""
        g = torch.sigmoid(self.gate(torch.cat([cond, h], dim=-1)))
        if self.capture_gate:
            self.last_gate = g.detach()
        return g

    def extra_repr(self) -> str:
        gate = "" if self.gate_mode == "none" else f", gate={self.gate_mode}"
        return f"in_dim={self.in_dim}, cond_emb_dim={self.cond_emb_dim}, network_dim={self.network_dim}{gate}"


def inpaint_condition(image: torch.Tensor, mask: torch.Tensor, masked_input: bool = False) -> torch.Tensor:
    """The 4-channel control of an inpainting network (``cond_in_channels`` 4).

    Built as kohya's scripts and the ComfyUI Anima LLLite node build it: the mask binarized at 0.5 and
    rescaled to [-1, 1] like the RGB (+1 where to paint, -1 where to keep); with ``masked_input`` (the
    network's ``inpaint_masked_input``) the RGB is zeroed where the mask paints.

    Args:
        image: RGB (B, 3, H, W) in [-1, 1].
        mask: (B, 1, H, W) in [0, 1], 1 where to paint.
    """
    paint = (mask >= 0.5).to(image.dtype)
    if masked_input:
        image = image * (1 - paint)
    return torch.cat([image, paint * 2 - 1], dim=1)
