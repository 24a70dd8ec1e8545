"""Dataset settings as kohya's dataset TOML has them: ``[general]``, ``[[datasets]]`` and ``[[datasets.subsets]]``.

:class:`SubsetConfig` is one folder of images paired with one folder of conditioning images,
:class:`DatasetConfig` the subsets trained at one resolution and batch size, and :func:`load_dataset_config`
reads kohya's file into them (unknown keys, wrong types and missing folders named with the file and the key).
"""
from __future__ import annotations

import tomllib
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import LLLiteError


class DatasetConfigError(LLLiteError):
    """A dataset setting or a dataset TOML file is wrong; the message names the file and the key."""




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
