"""The entry points that tell the families apart: ``lllite.load`` (a file), ``lllite.load_pipeline`` (a model)
and ``lllite.create_network`` (a fresh network for a model). Each asks :mod:`lllite.families` which family
it is given, then hands over to that family.

    import lllite
    pipe = lllite.load_pipeline("toy")     # the pretrained toy SDXL shipped in lllite/sdxl/weights
    pipe = lllite.load_pipeline("stabilityai/stable-diffusion-xl-base-1.0", dtype=torch.float16,
                                device="cuda", variant="fp16")
    network = lllite.load("controllllite_v01032064e_sdxl_canny.safetensors")

The trainer (``pretrained_model_name_or_path``), the notebooks and ``python -m data_tools synthesize``
(``--model``) all load through :func:`load_pipeline`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from . import families
from .errors import LLLiteError
from .fileformat import LLLiteFileError, read_state_dict

#: What ``model_family`` takes: ``"auto"`` or a family's name.
MODEL_FAMILIES = (families.AUTO, *families.names())


def load_pipeline(name_or_path: str | os.PathLike = families.TOY, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", variant: str | None = None, what: str = "name_or_path",
                  model_family: str = families.AUTO):
    """A diffusers pipeline of one of lllite's families (SDXL's ``StableDiffusionXLPipeline``, Anima's
    ``AnimaModularPipeline``), on ``device``, with diffusers' own progress bars off.

    Args:
        name_or_path: a hub id (``stabilityai/stable-diffusion-xl-base-1.0``), a local diffusers folder,
            a single-file checkpoint (``.safetensors``/``.ckpt``, SDXL), or ``"toy"`` for the family's
            pretrained toy (a folder or file of that name is loaded as such).
        dtype: the parameters' dtype; float16 (SDXL) or bfloat16 (Anima) on a GPU halves the memory; the toys
            were trained in float32.
        device: where the pipeline's modules are placed.
        variant: the hub's weight variant, e.g. ``"fp16"`` (half the download); ignored for single files.
        what: how error messages name the argument, e.g. ``"pretrained_model_name_or_path"`` or ``"--model"``.
        model_family: a family's name (``"sdxl"``, ``"anima"``), or ``"auto"``: the family whose folder layout
            a local folder has (Anima's ``modular_model_index.json``), else SDXL.

    Raises:
        InputMissingError: ``"toy"`` and the toy's weights are missing (the message says how to make them).
        PipelineLoadError: anything else that does not load; the message says what was tried.
    """
    if model_family not in MODEL_FAMILIES:
        raise LLLiteError(f"model_family {model_family!r} is not one of {list(MODEL_FAMILIES)}")
    family = families.of_source(name_or_path, model_family)
    if str(name_or_path) == families.TOY and not Path(name_or_path).exists():
        return family.role("toy").load_pretrained(dtype=dtype, device=device, what=what)
    return family.role("pipeline").load_pipeline(name_or_path, dtype=dtype, device=device, variant=variant, what=what)


def load(path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *, allow_nonfinite: bool = False):
    """Read a kohya-format LLLite file of any family (fp16, bf16 or fp32; safetensors, or a tensors-only pickle).

    Args:
        path: the ``.safetensors`` file (``.pt``/``.ckpt`` are read with ``weights_only=True``).
        dtype: dtype of the returned network's parameters.
        device: where to put them.
        allow_nonfinite: load a file whose tensors hold NaN or infinity anyway, with a warning (such a network
            draws black or noisy images); by default it is refused.

    Returns the family's network (:class:`lllite.LLLiteNetwork` for SDXL, :class:`lllite.anima.AnimaLLLiteNetwork`
    for Anima, its architecture read from the file's ``lllite.*`` metadata), in eval mode, ready for
    inference; call ``.train()`` to fine-tune it.

    Raises:
        lllite.fileformat.LLLiteFileError: not a usable LLLite file (the message says why), or a tensor that
            holds NaN or infinity (the message names the first).
        lllite.errors.InputMissingError: no file at ``path``.
    """
    tensors, metadata = read_state_dict(path)
    _check_finite(tensors, path, allow_nonfinite)
    family = families.of_file(tensors, metadata)
    network = family.role("network").from_state_dict(tensors, metadata, source=str(path))
    return network.to(device=device, dtype=dtype).eval()


def _check_finite(tensors: dict[str, torch.Tensor], path, allow: bool) -> None:
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if not bad:
            continue
        found = f"{path}: tensor {key!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}"
        if not allow:
            raise LLLiteFileError(f"{found}; the file is damaged or was saved from a run that diverged. "
                                  "lllite.load(path, allow_nonfinite=True) loads it anyway")
        warnings.warn(f"{found}; loaded anyway (allow_nonfinite=True): images made with it will be black or noise",
                      stacklevel=3)
        return


def create_network(model, *args, **options):
    """A fresh, trainable LLLite network of the model's family (not yet attached).

    Args:
        model: SDXL's UNet (``UNet2DConditionModel`` with SDXL's block layout, real SDXL or smaller) or
            Anima's DiT (``CosmosTransformer3DModel``), or a pipeline holding one; a model on the ``meta``
            device works.
        args, options: the family's settings: for SDXL ``cond_emb_dim`` (32), ``network_dim`` (64), ``up_path``
            (False: kohya's 136 modules on SDXL) and ``zero_init`` (True) (:func:`lllite.sdxl.create_network`);
            for Anima the fields of :class:`lllite.anima.AnimaLLLiteConfig` (:func:`lllite.anima.create_network`).
    """
    return families.of_model(model).role("network").create_network(model, *args, **options)
