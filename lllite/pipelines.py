"""One way to load an SDXL pipeline: a hub id, a local diffusers folder, a single-file checkpoint, or the toy.

    import lllite
    pipe = lllite.load_pipeline("toy")     # the pretrained toy SDXL shipped in lllite/toy/weights
    pipe = lllite.load_pipeline("stabilityai/stable-diffusion-xl-base-1.0", dtype=torch.float16,
                                device="cuda", variant="fp16")

The trainer (``pretrained_model_name_or_path``), the notebooks and ``python -m data_tools synthesize``
(``--model``) all load through :func:`load_pipeline`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import InputMissingError, LLLiteError

#: The name of the pretrained toy SDXL (:mod:`lllite.toy`), wherever a model's name or path is asked for;
#: with ``model_family="anima"`` the toy Anima (:mod:`lllite.anima.toy`).
TOY = "toy"
#: What diffusers' modular pipelines (Anima's) write as their index; an SDXL folder has ``model_index.json``.
MODULAR_INDEX = "modular_model_index.json"
MODEL_FAMILIES = ("auto", "sdxl", "anima")


class PipelineLoadError(LLLiteError):
    """A model name or path that does not load as the pipeline asked for (SDXL, or Anima in :mod:`lllite.anima.pipeline`)."""


def load_pipeline(name_or_path: str | os.PathLike = TOY, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", variant: str | None = None, what: str = "name_or_path",
                  model_family: str = "auto"):
    """A diffusers ``StableDiffusionXLPipeline`` (or Anima's ``AnimaModularPipeline``), on ``device``, with
    diffusers' own progress bar off.

    Args:
        name_or_path: a hub id (``stabilityai/stable-diffusion-xl-base-1.0``), a local diffusers folder
            (with ``model_index.json``), a single-file checkpoint (``.safetensors``/``.ckpt``), or
            ``"toy"`` for the pretrained toy SDXL (a folder or file of that name is loaded as such).
        dtype: the parameters' dtype; float16 on a GPU halves the memory; the toy was trained in float32.
        device: where the pipeline's modules are placed.
        variant: the hub's weight variant, e.g. ``"fp16"`` (half the download); ignored for single files.
        what: how error messages name the argument, e.g. ``"pretrained_model_name_or_path"`` or ``"--model"``.
        model_family: ``"sdxl"``, ``"anima"`` (see :func:`lllite.anima.pipeline.load_anima_pipeline`), or
            ``"auto"``: Anima for a folder with ``modular_model_index.json``, else SDXL.

    Raises:
        InputMissingError: ``"toy"`` and the toy's weights are missing (the message says how to make them).
        PipelineLoadError: anything else that does not load; the message says what was tried.
    """
    if model_family not in MODEL_FAMILIES:
        raise LLLiteError(f"model_family {model_family!r} is not one of {list(MODEL_FAMILIES)}")
    path = Path(name_or_path).expanduser()
    if model_family == "anima" or (model_family == "auto" and (path / MODULAR_INDEX).is_file()):
        from .anima.pipeline import load_anima_pipeline

        return load_anima_pipeline(name_or_path, dtype=dtype, device=device, what=what)
    from diffusers import StableDiffusionXLPipeline

    if str(name_or_path) == TOY and not path.exists():
        from .toy import pipeline as toy

        if not (toy.WEIGHTS_DIR / "model_index.json").is_file():
            raise InputMissingError(f"{what} {TOY!r}: the toy pipeline weights are missing from {toy.WEIGHTS_DIR}; "
                                    f"create them with `{toy.PRETRAIN_COMMAND}`")
        path = toy.WEIGHTS_DIR
    try:
        if path.is_file():
            pipe = StableDiffusionXLPipeline.from_single_file(str(path), torch_dtype=dtype, add_watermarker=False)
        else:
            source = str(path) if path.is_dir() else str(name_or_path)
            pipe = StableDiffusionXLPipeline.from_pretrained(source, torch_dtype=dtype, variant=variant,
                                                             add_watermarker=False)
    except (OSError, ValueError) as error:
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        raise PipelineLoadError(
            f"{what} {str(name_or_path)!r} could not be loaded as an SDXL pipeline ({reason}); give a hub id "
            f"(with internet access), a local diffusers folder, a .safetensors checkpoint, or {TOY!r}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
