"""The settings of an Anima LLLite network (kohya's v2, v2.1 and v3), under kohya's option and metadata names.

kohya's three architectures are three settings of the same network:

- v2: ``cond_input_space="pixel"``, ``trunk="stem"``: a conv stem reads the control image.
- v2.1: ``cond_input_space="latent"``, ``trunk="stem"``: a conv stem reads the control image's VAE latent.
- v3: ``cond_input_space="latent"``, ``trunk="semantic"``: the frozen DiT's own hidden states of the control
  latent (a reference forward) feed the trunk; the modules also read the step's time embedding (t-FiLM) and
  may gate their change per token.

The values each setting takes are the ones kohya's code implements (its networks file, its inference script
and its ComfyUI node; see :data:`COND_INPUT_SPACES` ... :data:`GATES`); anything else is refused by name.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import LLLiteError

#: The ASPP branches' dilations (kohya's default).
ASPP_DILATIONS = (1, 2, 4, 8)
#: ``lllite.cond_input_space``: what the trunk reads (a missing key means "pixel").
COND_INPUT_SPACES = ("pixel", "latent")
#: ``lllite.trunk``: the conv stem (v2, v2.1) or the frozen DiT's hidden states (v3) (a missing key means "stem").
TRUNKS = ("stem", "semantic")
#: ``lllite.ref_context``: the text context of the v3 reference forward: zeros (cross-attention adds exactly 0),
#: the adapter's output for an empty prompt ("uncond"), or the main forward's own context ("caption", one
#: reference per guidance branch). A missing key means "zero".
REF_CONTEXTS = ("zero", "uncond", "caption")
#: ``lllite.gate``: the v3 modules' gate on their change: one sigmoid per token ("scalar"), one per token and
#: channel of the module's width, before ``up`` ("vector"), or none. A missing key means "scalar".
GATES = ("scalar", "vector", "none")
#: Channels of the control latent (the Qwen-Image VAE's z).
LATENT_CHANNELS = 16
#: The gate's bias at the start (open: sigmoid(2) = 0.88), kohya's ``GATE_INIT_BIAS``.
GATE_INIT_BIAS = 2.0


#: kohya's architectures as :class:`AnimaLLLiteConfig` settings; the rest at kohya's defaults.
KINDS = {"v2": {}, "v2.1": {"cond_input_space": "latent"}, "v3": {"cond_input_space": "latent", "trunk": "semantic"}}
#: The same as training options, under kohya's option names (:class:`lllite.train.TrainConfig`).
TRAINING_OPTIONS = {kind: {{"cond_input_space": "lllite_cond_input", "trunk": "lllite_trunk"}[k]: v for k, v in fields.items()}
                    for kind, fields in KINDS.items()}


def parse_ref_blocks(spec, what: str = "ref_block") -> tuple[int, ...] | None:
    """kohya's ``ref_block``: None (the default, the middle block), a number, a comma list ("2,13") or a
    sequence of numbers, as the taps in ascending order, each once. -1 is the patch embedding's output.

    Raises:
        LLLiteError: an empty list, a duplicate or a value that is not a whole number, naming ``what``.
    """
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise LLLiteError(f"{what}: give a block index or a comma list such as '2,13', got {spec!r}")
    if isinstance(spec, int):
        blocks = [spec]
    else:
        parts = [p.strip() for p in spec.split(",") if p.strip()] if isinstance(spec, str) else list(spec)
        if not parts:
            raise LLLiteError(f"{what}: give a block index or a comma list such as '2,13', got {spec!r}")
        try:
            blocks = [int(p) for p in parts]
        except (TypeError, ValueError):
            raise LLLiteError(f"{what}: {spec!r} is not a block index or a comma list of them") from None
    if len(set(blocks)) != len(blocks):
        raise LLLiteError(f"{what}: {spec!r} names a block twice")
    return tuple(sorted(blocks))


@dataclass(frozen=True)
class AnimaLLLiteConfig:
    """The architecture of an Anima LLLite network, as kohya's options and file metadata name it.

    Args:
        cond_emb_dim: E, channels of the shared embedding (kohya's default 32; 128 or so for v3).
        network_dim: M, width of each module's down/mid (kohya's ``lllite_mlp_dim``, metadata ``lllite.mlp_dim``; 64).
        target_layers: a preset (``self_attn_q``, ``self_attn_qkv``, ``self_attn_qkv_cross_q``) or a comma
            list of ``self_attn_q_pre``, ``self_attn_kv_pre``, ``cross_attn_q_pre``, ``mlp_fc1_pre``.
        cond_dim: the trunk's width (64).
        cond_resblocks: ResBlocks in the trunk (1).
        use_aspp: end the trunk with ASPP (off).
        aspp_dilations: the ASPP branches' dilations.
        cond_in_channels: 3 (RGB) or 4 (inpainting: RGB + mask), counted in pixels whatever the input space.
        inpaint_masked_input: the inpainting network was trained with RGB zeroed under the mask.
        dropout: dropout on each module's mid output while training (None: off).
        cond_input_space: ``"pixel"`` (v2) or ``"latent"`` (v2.1, v3): :data:`COND_INPUT_SPACES`.
        trunk: ``"stem"`` (v2, v2.1) or ``"semantic"`` (v3): :data:`TRUNKS`.
        ref_block: v3: the DiT blocks whose outputs feed the trunk, ascending (-1: the patch embedding's
            output); None: the middle block (``num_blocks // 2``), as kohya's default.
        ref_timestep: v3: the reference forward's timestep on the [0, 1] scale (0: clean).
        ref_context: v3: the reference forward's text context, :data:`REF_CONTEXTS`.
        gate: v3: the modules' gate, :data:`GATES` (ignored by the stem trunk, which has none).
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
    cond_input_space: str = "pixel"
    trunk: str = "stem"
    ref_block: tuple[int, ...] | None = None
    ref_timestep: float = 0.0
    ref_context: str = "zero"
    gate: str = "scalar"

    def __post_init__(self):
        for name, allowed in (("cond_input_space", COND_INPUT_SPACES), ("trunk", TRUNKS),
                              ("ref_context", REF_CONTEXTS), ("gate", GATES)):
            value = getattr(self, name)
            if value not in allowed:
                raise LLLiteError(f"{name}={value!r} is not one kohya's code implements; give one of "
                                  f"{', '.join(allowed)}")
        object.__setattr__(self, "ref_block", parse_ref_blocks(self.ref_block))
        object.__setattr__(self, "aspp_dilations", tuple(int(d) for d in self.aspp_dilations))
        object.__setattr__(self, "ref_timestep", float(self.ref_timestep))
        if self.cond_in_channels < 1:
            raise LLLiteError(f"cond_in_channels must be at least 1, got {self.cond_in_channels}")
        if self.cond_input_space == "latent" and self.cond_in_channels not in (3, 4):
            raise LLLiteError("cond_input_space='latent' takes cond_in_channels 3 (RGB) or 4 (RGB + mask), "
                              f"got {self.cond_in_channels}")
        if self.trunk == "semantic":
            if self.cond_input_space != "latent":
                raise LLLiteError("trunk='semantic' (v3) reads the control latent: it needs cond_input_space='latent'")
            if self.cond_in_channels != 3:
                raise LLLiteError("trunk='semantic' (v3) does not take an inpainting mask (cond_in_channels 4) in "
                                  "kohya's code; use the latent stem (v2.1) for inpainting")
        elif self.ref_context != "zero":
            raise LLLiteError(f"ref_context={self.ref_context!r} belongs to the semantic trunk (v3); "
                              "the stem trunk has no reference forward")

    @property
    def version(self) -> str:
        """kohya's ``lllite.version``: "3" for the semantic trunk, else "2" (v2 and v2.1 alike)."""
        return "3" if self.trunk == "semantic" else "2"

    @property
    def kind(self) -> str:
        """kohya's name of the architecture: "v2", "v2.1" or "v3"."""
        if self.trunk == "semantic":
            return "v3"
        return "v2.1" if self.cond_input_space == "latent" else "v2"

    @property
    def gate_mode(self) -> str:
        """The gate the modules have: :attr:`gate` for the semantic trunk, "none" for the stem."""
        return self.gate if self.trunk == "semantic" else "none"

    @property
    def reads_latents(self) -> bool:
        return self.cond_input_space == "latent"

    def ref_blocks(self, num_blocks: int) -> tuple[int, ...]:
        """The reference taps for a DiT of ``num_blocks`` blocks (the default: the middle block).

        Raises:
            LLLiteError: a tap outside -1 .. num_blocks - 1.
        """
        blocks = self.ref_block if self.ref_block is not None else (num_blocks // 2,)
        outside = [b for b in blocks if not -1 <= b < num_blocks]
        if outside:
            raise LLLiteError(f"ref_block {outside[0]} is outside this DiT's blocks (-1 for the patch embedding's "
                              f"output, 0..{num_blocks - 1} for a block's)")
        return blocks
