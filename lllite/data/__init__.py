"""Paired training data for LLLite: image + conditioning image + caption, as in kohya's layout.

One module per concern: kohya's dataset TOML (:mod:`.config`), reading and pairing a user's files
(:mod:`.pairing`), the dataset and its buckets (:mod:`.dataset`), and the latent and text caches
(:mod:`.cache`). What each concern offers is importable from here.

    from lllite.data import PairedDataset, load_dataset_config
    dataset = PairedDataset(load_dataset_config("my_dataset.toml"))
"""
from .cache import TensorCache, fingerprint_module, fingerprint_tokenizer
from .config import DatasetConfig, DatasetConfigError, SubsetConfig, load_dataset_config, read_toml
from .dataset import (BucketBatchSampler, PairedDataset, Placement, choose_bucket, collate, make_buckets,
                      make_dataloader, place)
from .pairing import (ASPECT_TOLERANCE, CONDITIONING_BACKGROUND, CONVERTED, ERROR, IMAGE_BACKGROUND, IMAGE_EXTENSIONS,
                      SKIPPED, ImageReadError, Pair, PairingReport, Problem, list_images, load_rgb, pair_subset,
                      read_caption)

__all__ = [
    "ASPECT_TOLERANCE", "BucketBatchSampler", "CONDITIONING_BACKGROUND", "CONVERTED", "DatasetConfig",
    "DatasetConfigError", "ERROR", "IMAGE_BACKGROUND", "IMAGE_EXTENSIONS", "ImageReadError", "Pair", "PairedDataset",
    "PairingReport", "Placement", "Problem", "SKIPPED", "SubsetConfig", "TensorCache", "choose_bucket", "collate",
    "fingerprint_module", "fingerprint_tokenizer", "list_images", "load_dataset_config", "load_rgb", "make_buckets",
    "make_dataloader", "pair_subset", "place", "read_caption", "read_toml",
]
