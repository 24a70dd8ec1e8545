"""Which floating-point type a model runs and trains in, by what the device computes natively: the one place
the trainer and the notebooks ask.

Each family lists the half types its model computes in without overflowing, best first (its pipeline's
``HALF_DTYPES``): SDXL's UNet runs in float16 or bfloat16; Anima's DiT overflows in float16 (NaN or black
images, as kohya's and ComfyUI's users report) and runs in bfloat16 only. A GPU without native bfloat16
(a Colab T4) therefore runs SDXL in float16 and Anima in float32, which takes twice bfloat16's memory, and then
decodes with a tiled VAE (:func:`fit_decoder`). Whatever the type, a control image's embedding is computed in
float32 (:func:`in_float32`).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .errors import TrainError

#: Devices with an autocast (the meta device has none); a plain tuple, which torch.compile reads without a break.
AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")
#: ``mixed_precision`` names of the half types.
NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU from Ampere on (compute capability 8), or a CPU
    (where torch computes it, more slowly than float32 on older CPUs: the notebooks keep a CPU in float32)."""
    if torch.device(device).type != "cuda":
        return True
    return torch.cuda.is_bf16_supported(including_emulation=False)


def usable_half_dtypes(half_dtypes: tuple[torch.dtype, ...], device: str | torch.device,
                       bf16: bool | None = None) -> list[torch.dtype]:
    """The family's half types that ``device`` computes natively, best first (``bf16``: whether it computes bf16
    natively, when already known; else the device is asked)."""
    bf16 = native_bf16(device) if bf16 is None else bf16
    return [dtype for dtype in half_dtypes if dtype != torch.bfloat16 or bf16]


def model_dtype(half_dtypes: tuple[torch.dtype, ...], device: str | torch.device, bf16: bool | None = None) -> torch.dtype:
    """The dtype a notebook loads a real model in: on a CUDA GPU the family's best half type it computes natively,
    else float32 (on a CPU, and where none is native: Anima on a T4). ``bf16`` as in :func:`usable_half_dtypes`."""
    if torch.device(device).type != "cuda":
        return torch.float32
    usable = usable_half_dtypes(half_dtypes, device, bf16)
    return usable[0] if usable else torch.float32


def mixed_precision(requested: str, half_dtypes: tuple[torch.dtype, ...], device: str | torch.device,
                    family: str = "the model") -> tuple[str, str | None]:
    """The ``mixed_precision`` a run can use on ``device``, and a sentence that says why when it is not the one
    requested (None when it is).

    Args:
        requested: ``"no"``, ``"fp16"`` or ``"bf16"``.
        half_dtypes: the family's half types, best first.
        device: where it trains.
        family: how the sentence names the model.

    Raises:
        TrainError: fp16 away from a CUDA GPU.
    """
    if requested == "no":
        return requested, None
    cuda = torch.device(device).type == "cuda"
    if requested == "fp16" and not cuda:
        raise TrainError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    if not cuda:
        return requested, None
    usable = [NAMES[dtype] for dtype in usable_half_dtypes(half_dtypes, device)]
    if requested in usable:
        return requested, None
    if usable:
        return usable[0], (f"mixed_precision {requested}: {family} on this GPU computes natively in {usable[0]} "
                           f"(a T4 has no bf16 arithmetic); training in {usable[0]} instead")
    return "no", (f"mixed_precision {requested}: this GPU has no bf16 arithmetic (e.g. a T4) and {family} overflows "
                  "in fp16; training in float32 instead (twice bf16's memory for the frozen model)")


def float32_region(device_type: str):
    """A context in which no autocast applies on ``device_type`` (what :func:`in_float32` computes in)."""
    return torch.autocast(device_type, enabled=False) if device_type in AUTOCAST_DEVICES else nullcontext()


def in_float32(module: torch.nn.Module, image: torch.Tensor, *more) -> torch.Tensor:
    """``module(image, *more)`` computed in float32 whatever the module's dtype and any autocast, returned in the
    module's dtype: for the small convolution stacks that embed a control image (once per image, a negligible
    cost). Tensors among ``more`` are cast to float32 too; anything else is passed as it is.

    PyTorch's oneDNN convolutions in bfloat16 give wrong results for some small shapes on CPUs with AMX (16 input
    channels and a 4x4 kernel of stride 4, which LLLite's conditioning uses: errors above 100% of the output),
    where float32 computes them right; float32 also keeps the embedding as kohya's float32 training computed it.
    """
    dtype = next(module.parameters()).dtype
    params = {name: tensor.float() for name, tensor in [*module.named_parameters(), *module.named_buffers()]}
    inputs = (image.float(), *(m.float() if isinstance(m, torch.Tensor) else m for m in more))
    with float32_region(image.device.type):
        out = torch.func.functional_call(module, params, inputs)
    return out.to(dtype)


def fit_decoder(pipe, dtype: torch.dtype, device: str | torch.device) -> str | None:
    """Where a real model runs in float32 on a GPU (Anima on a T4, which has no bf16), its VAE decodes in tiles:
    Anima's Qwen-Image VAE decoding 1024 px in float32 peaks at 8.2 GiB above its weights, tiled at 0.9 GiB, and
    only tiled does the whole pipeline (10.5 GiB of float32 weights) fit a T4's 15 GB (benches/RESULTS.md).
    Returns the sentence that says so, or None where nothing changed."""
    vae = getattr(pipe, "vae", None)
    if torch.device(device).type != "cuda" or dtype != torch.float32 or not hasattr(vae, "enable_tiling"):
        return None
    vae.enable_tiling()
    return ("float32 on this GPU: the VAE decodes in tiles to fit its memory (pipe.vae.disable_tiling() undoes it; "
            "tiles can leave faint seams)")
