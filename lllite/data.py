"""Paired training data for LLLite: image + conditioning image + caption, as in kohya's layout.

One folder holds the training images and their captions (``a.png`` + ``a.txt``), another the
conditioning images with the same basename (``a.png``). :func:`pair_subset` decides, file by file,
what is usable; the same function drives :class:`PairedDataset` and ``python -m data_tools check``,
so what the check reports is exactly what training will use.

Samples are dicts of tensors: ``image`` and ``conditioning_image`` (3, H, W) in [-1, 1], the caption,
and SDXL's micro-conditioning (``original_size``, ``crop_top_left``, ``target_size``, each (height,
width)). Images are grouped into aspect-ratio buckets whose sides are multiples of 64; use
:class:`BucketBatchSampler` and :func:`collate` so that a batch shares one bucket.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import tomllib
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .errors import LLLiteError
from .files import write_atomic
from .images import from_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Problem actions, as reported by ``data_tools check``.
CONVERTED = "converted"  # the file is used after a change made in memory (mode, rotation, size, caption)
SKIPPED = "skipped"  # the file, and its pair if it has one, is left out
ERROR = "error"  # the subset cannot be read at all

# Transparent pixels of a photo are meant to be background, which viewers show as white; in a
# conditioning image "nothing here" is black (canny, soft edges), so each gets its own background.
IMAGE_BACKGROUND = (255, 255, 255)
CONDITIONING_BACKGROUND = (0, 0, 0)

# Relative difference of width/height ratios up to which a conditioning image of another size is
# taken as a rescaled copy of its image (rounding when it was made) rather than a different framing.
ASPECT_TOLERANCE = 0.02


class DatasetConfigError(LLLiteError):
    """A dataset setting or a dataset TOML file is wrong; the message names the file and the key."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class SubsetConfig:
    """One folder of images paired with one folder of conditioning images (kohya's ``[[datasets.subsets]]``).

    Args:
        image_dir: folder of training images and their caption files.
        conditioning_data_dir: folder of conditioning images, same basenames as the images.
        caption_extension: extension of the caption files next to the images.
        num_repeats: how many times each pair appears per epoch.
        flip_aug: flip image and conditioning horizontally together, with probability 0.5.
        caption_dropout_rate: probability (0..1) of training a sample with an empty caption.
        min_size: images whose shorter side is below this many pixels are left out.
    """

    image_dir: str | Path
    conditioning_data_dir: str | Path
    caption_extension: str = ".txt"
    num_repeats: int = 1
    flip_aug: bool = False
    caption_dropout_rate: float = 0.0
    min_size: int = 64

    def __post_init__(self):
        self.image_dir = Path(self.image_dir)
        self.conditioning_data_dir = Path(self.conditioning_data_dir)
        if not self.caption_extension.startswith("."):
            self.caption_extension = "." + self.caption_extension
        if self.num_repeats < 1:
            raise DatasetConfigError(f"num_repeats must be >= 1, got {self.num_repeats}")
        if not 0.0 <= self.caption_dropout_rate <= 1.0:
            raise DatasetConfigError(f"caption_dropout_rate must be in [0, 1], got {self.caption_dropout_rate}")
        if self.min_size < 1:
            raise DatasetConfigError(f"min_size must be >= 1 pixel, got {self.min_size}")


@dataclass
class DatasetConfig:
    """Subsets trained at one resolution and batch size (kohya's ``[[datasets]]``).

    Args:
        subsets: the folders to pair.
        resolution: side of the square training area in pixels, or (width, height); SDXL: 1024.
        batch_size: samples per batch; a batch never mixes buckets.
        enable_bucket: group images by aspect ratio instead of cropping all to ``resolution``.
        min_bucket_reso, max_bucket_reso: limits of a bucket side in pixels; by default a quarter
            and twice the resolution (256 and 2048 for SDXL).
        bucket_reso_steps: bucket sides are multiples of this (64 keeps every UNet level aligned).
    """

    subsets: list[SubsetConfig] = field(default_factory=list)
    resolution: int | tuple[int, int] = 1024
    batch_size: int = 1
    enable_bucket: bool = True
    min_bucket_reso: int | None = None
    max_bucket_reso: int | None = None
    bucket_reso_steps: int = 64

    def __post_init__(self):
        if isinstance(self.resolution, int):
            self.resolution = (self.resolution, self.resolution)
        self.resolution = tuple(int(side) for side in self.resolution)
        if len(self.resolution) != 2 or min(self.resolution) < self.bucket_reso_steps:
            raise DatasetConfigError(
                f"resolution must be a side or (width, height) of at least {self.bucket_reso_steps} px, got {self.resolution}"
            )
        if self.batch_size < 1:
            raise DatasetConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bucket_reso_steps < 32 or self.bucket_reso_steps % 32:
            raise DatasetConfigError(
                f"bucket_reso_steps must be a multiple of 32 (LLLite's deepest embedding is 1/32 of the image), got {self.bucket_reso_steps}"
            )
        step = self.bucket_reso_steps
        if any(side % step for side in self.resolution):
            nearest = tuple(max(step, round(side / step) * step) for side in self.resolution)
            raise DatasetConfigError(f"resolution sides must be multiples of bucket_reso_steps {step}, got {self.resolution}; use {nearest}")
        if self.min_bucket_reso is None:
            self.min_bucket_reso = max(step, min(self.resolution) // 4 // step * step)
        if self.max_bucket_reso is None:
            self.max_bucket_reso = 2 * max(self.resolution) // step * step
        if not step <= self.min_bucket_reso <= min(self.resolution) <= max(self.resolution) <= self.max_bucket_reso:
            raise DatasetConfigError(
                f"need bucket_reso_steps <= min_bucket_reso <= resolution <= max_bucket_reso, got "
                f"{step}, {self.min_bucket_reso}, {self.resolution}, {self.max_bucket_reso}"
            )


_SUBSET_KEYS = {f.name for f in fields(SubsetConfig)}
_DATASET_KEYS = {f.name for f in fields(DatasetConfig)} - {"subsets"}
# kohya keys that change nothing for paired LLLite training here; accepted so that a kohya file loads.
_IGNORED_KOHYA_KEYS = {
    "shuffle_caption", "keep_tokens", "keep_tokens_separator", "color_aug", "caption_prefix",
    "caption_suffix", "caption_separator", "secondary_separator", "enable_wildcard",
    "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "token_warmup_min",
    "token_warmup_step", "bucket_no_upscale", "face_crop_aug_range", "class_tokens", "cache_info",
    "alpha_mask", "custom_attributes", "debug_dataset",
}
# kohya keys whose non-default value would silently train something else than asked.
_UNSUPPORTED_KOHYA_KEYS = {
    "random_crop": "LLLite training crops image and conditioning at the same place; random_crop is not supported",
    "is_reg": "regularization images are not used by LLLite training",
    "metadata_file": "fine-tuning metadata files are not supported; give image_dir and conditioning_data_dir",
}


def read_toml(path: Path, error: type[Exception], what: str) -> dict:
    """A TOML file's contents; a missing or malformed file raises ``error`` naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def load_dataset_config(path: str | Path) -> list[DatasetConfig]:
    """Read kohya's dataset TOML (``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``).

    Settings in ``[general]`` apply to every dataset and subset, a dataset's settings to its subsets;
    the innermost wins, as in kohya. Relative folders are taken from the TOML file's folder.

    Raises:
        DatasetConfigError: naming the file and the key, for unknown keys, wrong types and missing folders keys.
    """
    path = Path(path)
    document = read_toml(path, DatasetConfigError, "dataset config")

    unknown = set(document) - {"general", "datasets"}
    if unknown:
        raise DatasetConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected [general] and [[datasets]]")
    general = _settings(path, "general", _table(path, "general", document.get("general", {})), _SUBSET_KEYS | _DATASET_KEYS)
    datasets = document.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise DatasetConfigError(f"{path}: no [[datasets]] table; add one with at least one [[datasets.subsets]]")

    configs = []
    for d, dataset in enumerate(datasets):
        where = f"datasets[{d}]"
        dataset = _table(path, where, dataset)
        subsets = dataset.get("subsets")
        if not isinstance(subsets, list) or not subsets:
            raise DatasetConfigError(f"{path}: {where} has no [[datasets.subsets]]; add one with image_dir and conditioning_data_dir")
        own = {k: v for k, v in dataset.items() if k != "subsets"}
        inherited = {**general, **_settings(path, where, own, _SUBSET_KEYS | _DATASET_KEYS)}
        subset_configs = []
        for s, subset in enumerate(subsets):
            subset_where = f"{where}.subsets[{s}]"
            settings = {k: v for k, v in inherited.items() if k in _SUBSET_KEYS}
            settings.update(_settings(path, subset_where, _table(path, subset_where, subset), _SUBSET_KEYS))
            for key in ("image_dir", "conditioning_data_dir"):
                if key not in settings:
                    raise DatasetConfigError(f"{path}: {subset_where} needs '{key}'")
                settings[key] = path.parent / Path(settings[key]).expanduser()
            try:
                subset_configs.append(SubsetConfig(**settings))
            except DatasetConfigError as error:
                raise DatasetConfigError(f"{path}: {subset_where}: {error}") from None
        try:
            dataset_settings = {k: v for k, v in inherited.items() if k in _DATASET_KEYS}
            configs.append(DatasetConfig(subsets=subset_configs, **dataset_settings))
        except DatasetConfigError as error:
            raise DatasetConfigError(f"{path}: {where}: {error}") from None
    return configs


def _table(path: Path, where: str, value) -> dict:
    if not isinstance(value, dict):
        raise DatasetConfigError(f"{path}: '{where}' must be a table, got {type(value).__name__}")
    return value


_KEY_TYPES = {
    "image_dir": str, "conditioning_data_dir": str, "caption_extension": str, "num_repeats": int,
    "flip_aug": bool, "caption_dropout_rate": (int, float), "min_size": int, "resolution": (int, list),
    "batch_size": int, "enable_bucket": bool, "min_bucket_reso": int, "max_bucket_reso": int,
    "bucket_reso_steps": int,
}


def _settings(path: Path, where: str, table: dict, allowed: set) -> dict:
    """The settings of one TOML table, checked against the keys allowed at its level."""
    settings = {}
    for key, value in table.items():
        if key in _UNSUPPORTED_KOHYA_KEYS:
            if value not in (False, None, ""):
                raise DatasetConfigError(f"{path}: {where}.{key}: {_UNSUPPORTED_KOHYA_KEYS[key]}")
            continue
        if key in _IGNORED_KOHYA_KEYS:
            continue
        if key in _DATASET_KEYS and key not in allowed:
            raise DatasetConfigError(f"{path}: '{where}.{key}' is a dataset setting; move it to its [[datasets]] table or [general]")
        if key not in allowed:
            raise DatasetConfigError(f"{path}: unknown key '{where}.{key}'; known keys: {sorted(allowed)}")
        expected = _KEY_TYPES[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise DatasetConfigError(f"{path}: '{where}.{key}' has the wrong type ({type(value).__name__}): {value!r}")
        if key == "resolution" and isinstance(value, list):
            if len(value) != 2 or not all(isinstance(v, int) for v in value):
                raise DatasetConfigError(f"{path}: '{where}.resolution' must be an integer or [width, height], got {value!r}")
            value = tuple(value)
        settings[key] = value
    ignored = sorted(set(table) & _IGNORED_KOHYA_KEYS)
    if ignored:
        warnings.warn(f"{path}: {where}: kohya keys {ignored} have no effect on LLLite training here", stacklevel=3)
    return settings


# ---------------------------------------------------------------------------------------------
# Reading files and pairing them
# ---------------------------------------------------------------------------------------------


class ImageReadError(LLLiteError):
    """A file could not be decoded as an image."""


def load_rgb(path: str | Path, background: tuple[int, int, int] = IMAGE_BACKGROUND) -> tuple[Image.Image, list[str]]:
    """Open any image file as an 8-bit RGB image, upright, and say what had to be changed.

    Applies the EXIF orientation, flattens transparency onto ``background``, expands palette and
    greyscale, scales 16-bit samples to 8 bits and converts CMYK and other colour spaces.

    Returns:
        (image, notes): notes is a list of plain sentences, empty for a plain upright RGB file.

    Raises:
        ImageReadError: the file is not an image, or is truncated or corrupt.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            orientation = opened.getexif().get(0x0112, 1)
            image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise ImageReadError("not an image format Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(str(error) or type(error).__name__) from None
    notes = []
    if orientation not in (1, None):
        notes.append(f"rotated upright by its EXIF orientation {orientation}")
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image, notes
    if mode.startswith("I") or mode == "F":
        wide = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16") or wide.max(initial=0) > 255:
            wide = wide / 257.0
            notes.append("16-bit samples scaled to 8 bits")
        image = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background + (255,))
        flat.alpha_composite(rgba)
        colour = {IMAGE_BACKGROUND: "white", CONDITIONING_BACKGROUND: "black"}.get(background, f"RGB {background}")
        notes.append(f"{image.mode} transparency flattened onto {colour}")
        return flat.convert("RGB"), notes
    names = {"P": "palette", "L": "greyscale", "1": "black-and-white", "CMYK": "CMYK"}
    notes.append(f"{names.get(mode, mode)} converted to RGB")
    return image.convert("RGB"), notes


@dataclass
class Problem:
    """Something about one file: ``action`` is ``converted``, ``skipped`` or ``error``."""

    file: Path
    problem: str
    action: str


@dataclass
class Pair:
    """A usable training pair; ``size`` is the image's upright (width, height)."""

    image: Path
    conditioning: Path
    caption_path: Path | None
    caption: str
    size: tuple[int, int]


@dataclass
class PairingReport:
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "pairs": [
                {"image": str(p.image), "conditioning": str(p.conditioning),
                 "caption": str(p.caption_path) if p.caption_path else None, "size": list(p.size)}
                for p in self.pairs
            ],
            "problems": [{"file": str(p.file), "problem": p.problem, "action": p.action} for p in self.problems],
        }


def read_caption(path: Path) -> tuple[str | None, Problem | None]:
    """The caption for one image: (text, problem). Text is None when the pair must be left out."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "", Problem(path, "no caption file; trained with an empty caption", CONVERTED)
    except OSError as error:
        return None, Problem(path, f"caption cannot be read ({error.strerror})", SKIPPED)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, Problem(path, "caption is not UTF-8 text; re-save it as UTF-8", SKIPPED)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if not text:
        return "", Problem(path, "caption is empty; trained with an empty caption", CONVERTED)
    return text, None


def list_images(folder: Path, caption_extension: str | None, problems: list[Problem]) -> tuple[dict[str, Path], set[str]]:
    """Image files of one folder by basename, and the basenames that more than one file shares;
    every other entry becomes a problem."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            problems.append(Problem(entry, "hidden file ignored", SKIPPED))
        elif entry.is_dir():
            problems.append(Problem(entry, "subfolder not searched; move its images up to pair them", SKIPPED))
        elif caption_extension and entry.suffix.lower() == caption_extension.lower():
            continue
        elif entry.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(Problem(entry, f"not an image file (extension '{entry.suffix}')", SKIPPED))
        else:
            by_stem[entry.stem].append(entry)
    unique = {}
    for stem, paths in by_stem.items():
        if len(paths) == 1:
            unique[stem] = paths[0]
        else:
            names = ", ".join(p.name for p in paths)
            for p in paths:
                problems.append(Problem(p, f"{len(paths)} files share the basename '{stem}' ({names}); keep one", SKIPPED))
    return unique, set(by_stem) - set(unique)


def pair_subset(subset: SubsetConfig, progress: bool = True) -> PairingReport:
    """Pair one subset's images with conditioning images and captions, reading every file once.

    Never raises for a user's file: every file that is left out or changed gets a :class:`Problem`.
    """
    report = PairingReport()
    for folder, key in ((subset.image_dir, "image_dir"), (subset.conditioning_data_dir, "conditioning_data_dir")):
        if not folder.is_dir():
            report.problems.append(Problem(folder, f"{key} is not a folder", ERROR))
    if not report.problems and subset.image_dir.resolve() == subset.conditioning_data_dir.resolve():
        report.problems.append(Problem(subset.conditioning_data_dir, "conditioning_data_dir is image_dir; conditioning images need their own folder", ERROR))
    if report.problems:
        return report
    try:
        images, ambiguous_images = list_images(subset.image_dir, subset.caption_extension, report.problems)
        conditionings, ambiguous_conditionings = list_images(subset.conditioning_data_dir, None, report.problems)
    except OSError as error:
        report.problems.append(Problem(Path(error.filename or subset.image_dir), f"folder cannot be listed ({error.strerror})", ERROR))
        return report

    for stem in sorted(set(conditionings) - set(images)):
        problem = f"several images are named '{stem}.*', so none is paired" if stem in ambiguous_images else "conditioning image without an image of this basename"
        report.problems.append(Problem(conditionings[stem], problem, SKIPPED))
    for stem in tqdm(sorted(images), desc=f"checking {subset.image_dir.name}", disable=not progress, unit="pair"):
        image_path = images[stem]
        if stem in ambiguous_conditionings:
            report.problems.append(Problem(image_path, f"several conditioning images are named '{stem}.*'; keep one", SKIPPED))
            continue
        if stem not in conditionings:
            report.problems.append(Problem(image_path, f"no conditioning image named '{stem}.*' in {subset.conditioning_data_dir}", SKIPPED))
            continue
        pair = _check_pair(image_path, conditionings[stem], subset, report.problems)
        if pair is not None:
            report.pairs.append(pair)
    return report


def _check_pair(image_path: Path, conditioning_path: Path, subset: SubsetConfig, problems: list[Problem]) -> Pair | None:
    """The pair if usable. Conversions are reported only for pairs that are used; a skipped pair
    reports the one reason that rules it out."""
    found: list[Problem] = []
    sizes = []
    for path, background in ((image_path, IMAGE_BACKGROUND), (conditioning_path, CONDITIONING_BACKGROUND)):
        try:
            image, notes = load_rgb(path, background)
        except ImageReadError as error:
            problems.append(Problem(path, f"not a readable image, truncated or corrupt ({error})", SKIPPED))
            return None
        found.extend(Problem(path, note, CONVERTED) for note in notes)
        sizes.append(image.size)
    (width, height), (cond_width, cond_height) = sizes
    if min(width, height) < subset.min_size:
        problems.append(Problem(image_path, f"image is {width}x{height}, smaller than min_size {subset.min_size} px", SKIPPED))
        return None
    if (cond_width, cond_height) != (width, height):
        ratio = (cond_width / cond_height) / (width / height)
        if abs(ratio - 1) > ASPECT_TOLERANCE:
            problems.append(Problem(
                conditioning_path,
                f"conditioning is {cond_width}x{cond_height} but its image is {width}x{height}: another aspect ratio, "
                "so it cannot line up with the image; remake it from the image",
                SKIPPED,
            ))
            return None
        found.append(Problem(conditioning_path, f"conditioning {cond_width}x{cond_height} resized to its image's {width}x{height}", CONVERTED))
    caption_path = image_path.with_suffix(subset.caption_extension)
    caption, caption_problem = read_caption(caption_path)
    if caption is None:
        problems.append(caption_problem)
        return None
    problems.extend(found)
    if caption_problem is not None:
        problems.append(caption_problem)
    return Pair(image_path, conditioning_path, caption_path if caption_path.is_file() else None, caption, (width, height))


# ---------------------------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------------------------


def make_buckets(resolution: tuple[int, int], min_side: int, max_side: int, step: int = 64) -> list[tuple[int, int]]:
    """(width, height) buckets: sides multiples of ``step`` in [min_side, max_side], area at most
    resolution's area and as large as the step allows, both orientations."""
    max_area = resolution[0] * resolution[1]
    buckets = {(resolution[0] // step * step, resolution[1] // step * step)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, max_area // width // step * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def choose_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log scale) to the image's (width, height)."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


@dataclass(frozen=True)
class Placement:
    """How one image becomes a training sample: resized to ``resized`` (w, h), then ``target`` (w, h)
    is cut out at ``crop_top_left`` (top, left)."""

    original: tuple[int, int]
    resized: tuple[int, int]
    crop_top_left: tuple[int, int]
    target: tuple[int, int]


def place(size: tuple[int, int], target: tuple[int, int]) -> Placement:
    """Scale so that the image covers ``target``, then cut out the centre."""
    scale = max(target[0] / size[0], target[1] / size[1])
    resized = (max(target[0], round(size[0] * scale)), max(target[1], round(size[1] * scale)))
    top = (resized[1] - target[1]) // 2
    left = (resized[0] - target[0]) // 2
    return Placement(size, resized, (top, left), target)


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class _Item:
    pair: Pair
    subset: SubsetConfig
    dataset_index: int
    placement: Placement


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as (3, H, W) in [-1, 1]."""
    return from_uint8(np.asarray(image))[0]


def _render(path: Path, background, placement: Placement, flip: bool) -> Image.Image:
    image, _ = load_rgb(path, background)
    if image.size != placement.resized:
        shrinking = image.size[0] > placement.resized[0]
        image = image.resize(placement.resized, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
    top, left = placement.crop_top_left
    image = image.crop((left, top, left + placement.target[0], top + placement.target[1]))
    return ImageOps.mirror(image) if flip else image


class PairedDataset(torch.utils.data.Dataset):
    """Training pairs of one or more :class:`DatasetConfig`, bucketed by aspect ratio.

    Args:
        configs: one dataset config or several (each keeps its own resolution and batch size).
        seed: makes flips and caption dropout reproducible; call :meth:`set_epoch` each epoch.
        progress: show progress bars while reading the folders.

    Raises:
        DatasetConfigError: a folder is missing, or no pair at all is usable. Files that are left
            out are summarized in a warning; ``python -m data_tools check`` lists them.
    """

    def __init__(self, configs: DatasetConfig | Sequence[DatasetConfig], seed: int = 0, progress: bool = True):
        self.configs = [configs] if isinstance(configs, DatasetConfig) else list(configs)
        self.seed = seed
        self.epoch = 0
        self.items: list[_Item] = []
        self.problems: list[Problem] = []
        self._latents: TensorCache | None = None
        self._latent_keys: dict[tuple[int, bool], str] = {}
        self._texts: TensorCache | None = None
        self._text_keys: dict[str, str] = {}
        for dataset_index, config in enumerate(self.configs):
            buckets = None
            if config.enable_bucket:
                buckets = make_buckets(config.resolution, config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps)
            for subset in config.subsets:
                report = pair_subset(subset, progress=progress)
                errors = [p for p in report.problems if p.action == ERROR]
                if errors:
                    raise DatasetConfigError("; ".join(f"{p.file}: {p.problem}" for p in errors))
                self.problems.extend(report.problems)
                for pair in report.pairs:
                    target = choose_bucket(pair.size, buckets) if buckets else config.resolution
                    item = _Item(pair, subset, dataset_index, place(pair.size, target))
                    self.items.extend([item] * subset.num_repeats)
        if not self.items:
            folders = ", ".join(str(s.image_dir) for c in self.configs for s in c.subsets)
            raise DatasetConfigError(f"no usable image/conditioning pair in {folders}; run `python -m data_tools check` on it")
        skipped = sum(p.action == SKIPPED for p in self.problems)
        if skipped:
            warnings.warn(f"{skipped} file(s) left out of the dataset; `python -m data_tools check` lists why", stacklevel=2)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def bucket_of(self, index: int) -> tuple[int, tuple[int, int]]:
        """(dataset index, (width, height)) of a sample; a batch shares one."""
        item = self.items[index]
        return item.dataset_index, item.placement.target

    def _random(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.epoch}:{index}")

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        rng = self._random(index)
        flip = item.subset.flip_aug and rng.random() < 0.5
        caption = item.pair.caption
        if item.subset.caption_dropout_rate and rng.random() < item.subset.caption_dropout_rate:
            caption = ""
        placement = item.placement
        top, left = placement.crop_top_left
        if flip:
            # The crop is mirrored with the picture, so micro-conditioning tells where it really came from.
            left = placement.resized[0] - left - placement.target[0]
        sample = {
            "conditioning_image": _to_tensor(_render(item.pair.conditioning, CONDITIONING_BACKGROUND, placement, flip)),
            "caption": caption,
            "original_size": torch.tensor([placement.original[1], placement.original[0]]),
            "crop_top_left": torch.tensor([top, left]),
            "target_size": torch.tensor([placement.target[1], placement.target[0]]),
        }
        if self._latents is not None:
            sample["latents"] = self._latents.get(self._latent_keys[(index, flip)])["latents"]
        else:
            sample["image"] = _to_tensor(_render(item.pair.image, IMAGE_BACKGROUND, placement, flip))
        if self._texts is not None:
            sample.update(self._texts.get(self._text_keys[caption]))
        return sample

    # -- caches ------------------------------------------------------------------------------

    @torch.no_grad()
    def cache_latents(self, vae, cache_dir: str | Path | None = None, batch_size: int = 4, progress: bool = True,
                      encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
        """Encode every training image once with ``vae``; samples then hold ``latents`` instead of ``image``.

        Latents are the mean of the VAE's distribution times its ``scaling_factor`` (0.13025 for SDXL).
        Entries are keyed by the image file's bytes, its placement, the flip and the VAE's weights, so
        a changed image or VAE is encoded again and everything else is reused.

        Args:
            vae: a diffusers ``AutoencoderKL``, on the device and dtype to encode with.
            cache_dir: folder of ``.safetensors`` files kept between runs; None keeps them in memory.
            batch_size: images encoded together (same bucket).
            encode: pixels (B, 3, H, W) in [-1, 1], on the VAE's device and dtype -> latents, for a model
                whose latents are made otherwise (Anima's: :func:`lllite.anima.pipeline.encode_images`).

        Returns:
            How many images were encoded (not found in the cache).
        """
        store = TensorCache(cache_dir)
        model = fingerprint_module(vae)
        file_hashes: dict[Path, str] = {}
        todo: dict[str, tuple[int, bool]] = {}
        keys = {}
        for index, item in enumerate(self.items):
            path = item.pair.image
            if path not in file_hashes:
                file_hashes[path] = _hash_bytes(path.read_bytes())
            for flip in ((False, True) if item.subset.flip_aug else (False,)):
                key = _hash_text(json.dumps([model, file_hashes[path], list(item.placement.resized), list(item.placement.crop_top_left), list(item.placement.target), flip]))
                keys[(index, flip)] = key
                if key not in todo and not store.has(key):
                    todo[key] = (index, flip)
        groups: dict[tuple[int, int], list[str]] = defaultdict(list)
        for key, (index, _) in todo.items():
            groups[self.items[index].placement.target].append(key)
        parameter = next(vae.parameters())
        bar = tqdm(total=len(todo), desc="caching latents", disable=not progress, unit="image")
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                rendered = []
                for key in chunk:
                    index, flip = todo[key]
                    item = self.items[index]
                    rendered.append(_to_tensor(_render(item.pair.image, IMAGE_BACKGROUND, item.placement, flip)))
                pixels = torch.stack(rendered).to(parameter.device, parameter.dtype)
                if encode is None:
                    latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
                else:
                    latents = encode(pixels)
                if not torch.isfinite(latents).all():
                    raise FloatingPointError(
                        f"the VAE returned NaN/inf latents in {parameter.dtype} (SDXL's VAE overflows in float16); "
                        "encode with vae.to(torch.float32) or an fp16-safe VAE"
                    )
                for key, latent in zip(chunk, latents):
                    store.put(key, {"latents": latent.float().cpu().contiguous()})
                bar.update(len(chunk))
        bar.close()
        self._latents, self._latent_keys = store, keys
        return len(todo)

    @torch.no_grad()
    def cache_text_encoder_outputs(self, tokenizers, text_encoders, cache_dir: str | Path | None = None,
                                   batch_size: int = 8, progress: bool = True,
                                   encode: Callable[[list[str]], dict[str, torch.Tensor]] | None = None) -> int:
        """Encode every caption once; samples then hold ``prompt_embeds`` and ``pooled_prompt_embeds``.

        Keyed by the caption and the tokenizers' and encoders' identity. The empty caption is cached
        too when a subset drops captions.

        Args:
            encode: captions -> tensors by name, one row per caption, for a model whose text conditioning
                is made otherwise (Anima's ``encoder_hidden_states``: :func:`lllite.anima.pipeline.encode_prompts`);
                the samples then hold those names.

        Returns:
            How many captions were encoded (not found in the cache).
        """
        store = TensorCache(cache_dir)
        model = _hash_text(json.dumps([fingerprint_tokenizer(t) for t in tokenizers] + [fingerprint_module(e) for e in text_encoders]))
        captions = {item.pair.caption for item in self.items}
        if any(item.subset.caption_dropout_rate > 0 for item in self.items):
            captions.add("")
        keys = {caption: _hash_text(json.dumps([model, caption])) for caption in sorted(captions)}
        todo = [caption for caption, key in keys.items() if not store.has(key)]
        bar = tqdm(total=len(todo), desc="caching text-encoder outputs", disable=not progress, unit="caption")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            if encode is None:
                prompt_embeds, pooled = encode_prompts(tokenizers, text_encoders, chunk)
                encoded = {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}
            else:
                encoded = encode(chunk)
            for row, caption in enumerate(chunk):
                store.put(keys[caption], {name: value[row].float().cpu().contiguous() for name, value in encoded.items()})
            bar.update(len(chunk))
        bar.close()
        self._texts, self._text_keys = store, keys
        return len(todo)


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of indices that share a bucket, each dataset with its own batch size.

    Shuffled reproducibly from ``seed`` and the epoch; the last batch of a bucket may be smaller.
    """

    def __init__(self, dataset: PairedDataset, shuffle: bool = True, seed: int = 0):
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index in range(len(self.dataset)):
            groups[self.dataset.bucket_of(index)].append(index)
        batches = []
        for (dataset_index, _), indices in sorted(groups.items()):
            if self.shuffle:
                rng.shuffle(indices)
            size = self.dataset.configs[dataset_index].batch_size
            batches.extend(indices[i:i + size] for i in range(0, len(indices), size))
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def collate(samples: list[dict]) -> dict:
    """Stack samples of one bucket: tensors gain a batch dimension, captions become a list."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


def make_dataloader(dataset: PairedDataset, shuffle: bool = True, seed: int = 0, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader of bucketed batches; call ``loader.batch_sampler.set_epoch(epoch)`` each epoch."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=BucketBatchSampler(dataset, shuffle=shuffle, seed=seed),
        collate_fn=collate, num_workers=num_workers,
    )


# ---------------------------------------------------------------------------------------------
# Text encoding and caches
# ---------------------------------------------------------------------------------------------


def encode_prompts(tokenizers, text_encoders, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning for a list of captions.

    Args:
        tokenizers: (tokenizer, tokenizer_2) of the pipeline.
        text_encoders: (text_encoder, text_encoder_2); the second one has the text projection.

    Returns:
        prompt_embeds (B, 77, 768 + 1280 for SDXL): both encoders' penultimate hidden states,
        concatenated; pooled_prompt_embeds (B, 1280 for SDXL): text_encoder_2's projected output.
    """
    hidden = []
    pooled = None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(encoder.device)
        output = encoder(ids, output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
        pooled = getattr(output, "text_embeds", None)
    if pooled is None:
        raise ValueError("the last text encoder must have a text projection (CLIPTextModelWithProjection, SDXL's text_encoder_2)")
    return torch.cat(hidden, dim=-1), pooled


def _hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _hash_text(text: str) -> str:
    return _hash_bytes(text.encode("utf-8"))


def fingerprint_module(module: torch.nn.Module) -> str:
    """A hash of a model's class, config and every weight: changes when any of them changes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_")}
        digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def fingerprint_tokenizer(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return _hash_text(f"{type(tokenizer).__name__}:{tokenizer.model_max_length}:{vocab}")


class TensorCache:
    """Named groups of tensors, in memory or as one ``.safetensors`` file per key in a folder."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return key in self._memory if self.folder is None else self._path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor]:
        return self._memory[key] if self.folder is None else load_file(self._path(key))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self._memory[key] = tensors
            return
        write_atomic(self._path(key), lambda temporary: save_file(tensors, str(temporary)))
