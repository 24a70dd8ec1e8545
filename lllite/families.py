"""The model families lllite knows, and the one place that tells them apart.

A family is a folder, ``lllite/<name>/``, with one module per role under the same name in every family
(:data:`ROLES`), and one :class:`Family` entry in :data:`FAMILIES`. Everything shared asks this registry
which family a file, a pipeline, a model or a network belongs to, and then calls that family's role
modules by the names below; nothing else compares family names. Adding a family means adding its folder
and its entry.

What each role module provides to the rest of lllite (:data:`PROVIDES`; ``tests/test_structure.py`` checks
every family):

- ``config``: the network's settings as a dataclass.
- ``module``: the math of one module.
- ``names``: where modules attach; ``is_model(model)``: whether a denoising model is this family's.
- ``network``: ``create_network(model, ...)`` and ``from_state_dict(tensors, metadata, source)``, which give
  a :class:`lllite.controls.ControlledNetwork` of this family.
- ``fileformat``: ``claims(tensors, metadata)``: whether a file is this family's; ``ARCHITECTURE`` (the
  modelspec architecture its files carry) and ``PUBLISHED``: a published file to sample with as
  ``(hub repository, file name)``, or None.
- ``objective``: ``OPTION_CHOICES``, the values its training takes for options with fixed choices
  (``timestep_sampling``, ...).
- ``pipeline``: ``claims_folder(path)``, ``is_pipeline(pipe)``, ``load_pipeline(name_or_path, *, dtype,
  device, variant, what)`` and ``generate(pipe, prompt, *, negative_prompt, num_inference_steps,
  guidance_scale, height, width, generator)`` (the pipeline's own call); ``PIXEL_MULTIPLE`` and
  ``PIXEL_MULTIPLE_REASON`` (generated sizes), ``IMAGE_SIZE`` (the real model's side in pixels),
  ``REAL_MODEL`` (its hub id, or None when the user names a folder), ``HOWTO`` (how to get it),
  ``HALF_DTYPES`` (the half types it computes in without overflowing, best first: :mod:`lllite.precision`)
  and ``GPU_VARIANT`` (the hub's variant of half weights, or None).
- ``training``: ``Training`` (the trainer's side of the family: :class:`lllite.sdxl.training.Training`
  describes the contract), ``colab_settings(pretrained_model_name_or_path)`` (a recipe for one Colab GPU),
  ``OPTIONS`` (the training options only this family reads) and ``SHOWN_SETTINGS`` (what notebook 03 shows
  of a run's settings).
- ``toy``: ``build_pipeline(config, seed, device)`` (random weights), ``load_pretrained(dtype, device, what)``
  (the shipped weights), ``ToyRecipe`` (training an LLLite on the toy in minutes on a CPU), ``IMAGE_SIZE``,
  ``WEIGHTS_DIR`` and ``PRETRAIN_COMMAND``.
- ``pretrain``: ``main(argv)``, the toy's pretraining command.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from .errors import LLLiteError
from .toy import TOY as TOY  # what names a family's toy, wherever a model is asked for

ROLES = ("config", "module", "names", "network", "fileformat", "objective", "pipeline", "training", "toy", "pretrain")
#: What the rest of lllite reads of each role module, by name (described above; checked for every family).
PROVIDES = {
    "names": ("is_model",),
    "network": ("create_network", "from_state_dict"),
    "fileformat": ("claims", "ARCHITECTURE", "PUBLISHED"),
    "objective": ("OPTION_CHOICES",),
    "pipeline": ("claims_folder", "is_pipeline", "load_pipeline", "generate", "PIXEL_MULTIPLE", "PIXEL_MULTIPLE_REASON",
                 "IMAGE_SIZE", "REAL_MODEL", "HOWTO", "HALF_DTYPES", "GPU_VARIANT"),
    "training": ("Training", "colab_settings", "OPTIONS", "SHOWN_SETTINGS"),
    "toy": ("build_pipeline", "load_pretrained", "ToyRecipe", "IMAGE_SIZE", "WEIGHTS_DIR", "PRETRAIN_COMMAND"),
    "pretrain": ("main",),
}
#: What ``model_family`` and ``--model`` take besides a family's name: the family is read off the model.
AUTO = "auto"


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: how options name it (``TrainConfig.model_family``, ``python -m lllite demo --model``).
        title: how messages name it.
        package: the package that holds its role modules.
        toy_model, real_model: how the notebooks' ``MODEL`` names its toy and its real model.
    """

    name: str
    title: str
    package: str
    toy_model: str
    real_model: str

    def role(self, role: str) -> ModuleType:
        """The family's module for ``role`` (one of :data:`ROLES`), imported on first use."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
        return importlib.import_module(f"{self.package}.{role}")


FAMILIES = (
    Family("sdxl", "SDXL", "lllite.sdxl", toy_model="toy", real_model="sdxl"),
    Family("anima", "Anima", "lllite.anima", toy_model="anima-toy", real_model="anima"),
)
#: What a hub id, a file or a model no family claims is taken for.
DEFAULT = FAMILIES[0]


def names() -> tuple[str, ...]:
    return tuple(family.name for family in FAMILIES)


def get(name: str, what: str = "model_family") -> Family:
    """The family called ``name``; anything else raises :class:`LLLiteError` naming ``what`` and the choices."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise LLLiteError(f"{what} {name!r} is not one of {list(names())}")


def of_file(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> Family:
    """The family whose files hold these tensors and metadata (the default family's reader explains a file
    that no family claims)."""
    return next((f for f in FAMILIES if f.role("fileformat").claims(tensors, metadata)), DEFAULT)


def of_pipeline(pipe) -> Family:
    """The family of a pipeline in memory (the default family's checks explain a pipeline that no family claims)."""
    return next((f for f in FAMILIES if f.role("pipeline").is_pipeline(pipe)), DEFAULT)


def of_model(model) -> Family:
    """The family of a denoising model (a UNet or a DiT, or a pipeline holding one); the default family's
    checks explain a model that no family claims."""
    return next((f for f in FAMILIES if f.role("names").is_model(model)), DEFAULT)


def of_network(network) -> Family:
    """The family of an LLLite network (its class says)."""
    return get(network.family, "network family")


def of_source(name_or_path: str | os.PathLike, model_family: str = AUTO) -> Family:
    """The family to load ``name_or_path`` as: ``model_family``, or with ``"auto"`` the family whose folder
    layout it has, else the default family."""
    if model_family != AUTO:
        return get(model_family)
    path = Path(name_or_path).expanduser()
    return next((f for f in FAMILIES if f.role("pipeline").claims_folder(path)), DEFAULT)


def model_choices() -> tuple[str, ...]:
    """Every model the notebooks' ``MODEL`` can name: each family's toy and real model."""
    return tuple(model for family in FAMILIES for model in (family.toy_model, family.real_model))


def of_choice(model: str) -> Family:
    """The family of a notebooks' ``MODEL`` (see :func:`model_choices`)."""
    for family in FAMILIES:
        if model in (family.toy_model, family.real_model):
            return family
    raise LLLiteError(f"MODEL = {model!r}: choose one of {', '.join(model_choices())}")
