"""Where a notebook runs and what it uses: Colab or not, the GPU, the model (each family's toy or real model,
:mod:`lllite.families`), the quick setting, and the files it trains or samples with.

    from lllite.environment import detect_environment, load_pipeline
    env = detect_environment()        # real SDXL on a GPU, the toy world on a CPU
    pipe = load_pipeline(env)
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from . import auto, families
from .errors import InputMissingError, LLLiteError
from .precision import fit_decoder, model_dtype, native_bf16
from .toy import TOY

#: Environment variable for the quick setting (a few samples and steps) that CI runs the notebooks with.
QUICK_ENV = "LLLITE_QUICK"
#: Environment variable that chooses the model where a notebook says ``MODEL = "auto"``: the tests run the
#: notebooks on the toy Anima with ``LLLITE_MODEL=anima-toy`` without editing them.
MODEL_ENV = "LLLITE_MODEL"
#: Environment variable with a real model's diffusers-format folder or hub id (real Anima's), where the
#: notebook's ``ANIMA`` is not set.
ANIMA_ENV = "LLLITE_ANIMA"
#: Environment variable with a local diffusers folder of the real model, for any family (a copy on a drive,
#: or a model built for tests): it takes the place of the hub id or of ``ANIMA``.
PATH_ENV = "LLLITE_MODEL_PATH"
#: What a notebook's ``MODEL`` takes.
MODELS = (families.AUTO, *families.model_choices())


def quick_mode(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``LLLITE_QUICK`` asks for the quick setting: ``1``/``true``/``yes`` on, unset/``0``/``false``/``no`` off."""
    value = (os.environ if environ is None else environ).get(QUICK_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise LLLiteError(f"{QUICK_ENV}={value!r}: set it to 1 for the quick setting, or to 0 (or leave it unset) for the full one")


@dataclass(frozen=True)
class Environment:
    """Where a notebook runs and what it will use.

    Attributes:
        in_colab: running in Google Colab.
        gpu: the CUDA GPU's name, or None on a CPU.
        device: ``"cuda"`` or ``"cpu"``.
        model: a family's toy or real model (:func:`lllite.families.model_choices`): ``"toy"`` (the offline tiny
            SDXL), ``"sdxl"`` (stabilityai/stable-diffusion-xl-base-1.0), ``"anima-toy"`` (the offline tiny Anima)
            or ``"anima"`` (real Anima from ``anima``).
        quick: a few samples and steps, to check that everything runs (CI); the results mean nothing.
        anima: a real model's diffusers-format folder or hub id, where the family names none itself (real Anima).
        path: a local diffusers folder of the real model, for any family (``LLLITE_MODEL_PATH``).
        bf16: whether the GPU computes bfloat16 natively (from Ampere on; a T4 does not), which decides the type
            a real model is loaded in (:mod:`lllite.precision`).
    """

    in_colab: bool
    gpu: str | None
    device: str
    model: str
    quick: bool
    anima: str | None = None
    path: str | None = None
    bf16: bool = True

    @property
    def family(self) -> str:
        """The model's family, by its name in :mod:`lllite.families` (``"sdxl"``, ``"anima"``)."""
        return families.of_choice(self.model).name

    @property
    def toy(self) -> bool:
        """The offline tiny model of the family, which runs on a CPU."""
        return self.model == families.of_choice(self.model).toy_model

    @property
    def source(self) -> str:
        """What the pipeline is loaded from: ``"toy"``, the real model's hub id, or the folder the user named."""
        if self.toy:
            return TOY
        if self.path is not None:
            return self.path
        return self.anima if self.anima is not None else families.of_choice(self.model).role("pipeline").REAL_MODEL

    @property
    def runs(self) -> Path:
        """The notebooks' working folder for this model, ``runs/<model>``: data and runs of one model never
        meet another's (a toy SDXL run's files and networks are SDXL's, a toy Anima run's Anima's)."""
        return Path("runs") / self.model

    @property
    def image_size(self) -> int:
        """The side in pixels that the model was trained at: 1024 for SDXL and Anima, 128 for the toy SDXL,
        64 for the toy Anima."""
        family = families.of_choice(self.model)
        return (family.role("toy") if self.toy else family.role("pipeline")).IMAGE_SIZE

    def __str__(self) -> str:
        title = families.of_choice(self.model).title
        model = f"the toy {title} (offline, a few MB)" if self.toy else f"{title} ({self.source})"
        return (f"Colab: {'yes' if self.in_colab else 'no'} | GPU: {self.gpu or 'none, CPU only'} | "
                f"model: {model} | quick setting: {'on' if self.quick else 'off'} ({QUICK_ENV})")


def detect_environment(model: str = families.AUTO, environ: Mapping[str, str] | None = None, *,
                       anima: str | os.PathLike | None = None, path: str | os.PathLike | None = None) -> Environment:
    """Detect Colab and the GPU, and choose the model.

    Args:
        model: ``"auto"`` (real SDXL on a GPU, the toy world otherwise; or what ``LLLITE_MODEL`` names),
            ``"toy"``, ``"sdxl"``, ``"anima-toy"`` (the offline toy Anima, 128 px) or ``"anima"`` (real Anima,
            from ``anima``).
        environ: environment variables to read ``LLLITE_QUICK``, ``LLLITE_MODEL`` and ``LLLITE_ANIMA`` from
            (default: the process's).
        anima: for ``"anima"``: a local diffusers-format Anima folder or a hub id; default ``LLLITE_ANIMA``.
        path: for a real model of any family: a local diffusers folder to load instead of the hub id or ``anima``;
            default ``LLLITE_MODEL_PATH``.

    Raises:
        LLLiteError: an unknown model, or ``"anima"`` with no Anima given (the message says how to get one).
    """
    environ = os.environ if environ is None else environ
    named = environ.get(MODEL_ENV, "").strip()
    if model == families.AUTO and named:
        if named not in MODELS:
            raise LLLiteError(f"{MODEL_ENV}={named!r}: choose one of {', '.join(MODELS)}")
        model = named
    if model not in MODELS:
        default = families.DEFAULT
        raise LLLiteError(f"MODEL = {model!r}: choose 'auto' (real {default.title} on a GPU, the toy otherwise) or one "
                          f"of {', '.join(repr(m) for m in families.model_choices())}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    chosen = (families.DEFAULT.real_model if gpu else families.DEFAULT.toy_model) if model == families.AUTO else model
    family = families.of_choice(chosen)
    toy = chosen == family.toy_model
    path = None if toy else (path if path is not None else (environ.get(PATH_ENV, "").strip() or None))
    source = None
    if not toy and path is None and family.role("pipeline").REAL_MODEL is None:  # the user names the real model's folder
        source = anima if anima is not None else (environ.get(ANIMA_ENV, "").strip() or None)
        if source is None:
            raise LLLiteError(f"MODEL = {chosen!r} needs real {family.title} in diffusers' format: set ANIMA (or "
                              f"{ANIMA_ENV}) to its local folder or hub id; {family.role('pipeline').HOWTO}. "
                              f"Or choose MODEL = {family.toy_model!r}")
        source = str(source)
    if not toy and gpu is None:
        warnings.warn(f"MODEL = {chosen!r} without a GPU: every image takes minutes on a CPU", stacklevel=2)
    return Environment("google.colab" in sys.modules, gpu, "cuda" if gpu else "cpu", chosen, quick_mode(environ), source,
                       None if path is None else str(path), bf16=native_bf16("cuda" if gpu else "cpu"))


def load_pipeline(env: Environment):
    """The pipeline the environment asks for, on its device (:func:`lllite.load_pipeline`): a toy shipped with the
    package (float32), or the real model in the type :func:`lllite.precision.model_dtype` chooses for the GPU
    (SDXL: float16 from the hub; Anima: bfloat16 from ``env.anima``, float32 on a GPU without bf16 such as a T4)."""
    family = families.of_choice(env.model)
    pipeline = family.role("pipeline")
    dtype = torch.float32 if env.toy else model_dtype(pipeline.HALF_DTYPES, env.device, env.bf16)
    what = PATH_ENV if env.path is not None else "ANIMA" if env.anima is not None else "MODEL"
    options = dict(dtype=dtype, device=env.device, what=what)
    if dtype != torch.float32 and pipeline.GPU_VARIANT:
        options["variant"] = pipeline.GPU_VARIANT
    if families.of_source(env.source) is not family:  # name the family where the source alone would not tell
        options["model_family"] = family.name
    pipe = auto.load_pipeline(env.source, **options)
    note = None if env.toy else fit_decoder(pipe, dtype, env.device)
    if note:
        print(note)
    return pipe


def find_weights(env: Environment, path: str | os.PathLike | None, trained: Sequence[str | os.PathLike] = ()) -> Path | None:
    """The LLLite file the sampling notebook loads.

    Args:
        env: on a real model whose family has a published file (SDXL: kohya's canny model) and no ``path``,
            that file is downloaded from the hub.
        path: a file the user chose; it must exist.
        trained: files a training run may have written, in order of preference
            (:func:`lllite.recipes.trained_files`);
            the first that exists is used otherwise.

    Returns:
        The file, or None when a toy has no trained file yet (train one first).

    Raises:
        InputMissingError: ``path`` is not a file, or a real model has no trained file and nothing published to
            fall back on (real Anima): the message says to train one in notebook 03 or to set ``WEIGHTS``.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputMissingError(f"WEIGHTS = {str(path)!r}: no such file; give a kohya-format LLLite .safetensors")
        return path
    family = families.of_choice(env.model)
    published = family.role("fileformat").PUBLISHED
    if not env.toy and published is not None:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(*published))
    found = next((Path(p) for p in trained if Path(p).is_file()), None)
    if found is None and not env.toy:
        looked = ", ".join(str(p) for p in trained) or "no file named"
        raise InputMissingError(f"WEIGHTS: no {family.title} LLLite file yet ({looked}): train one with notebook 03, or "
                                f"set WEIGHTS to a kohya {family.title} LLLite .safetensors")
    return found
