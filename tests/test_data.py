"""Pairing rules, dataset TOML, bucketing, samples and caches of lllite.data."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lllite.data import (
    BucketBatchSampler,
    DatasetConfig,
    DatasetConfigError,
    ImageReadError,
    PairedDataset,
    SubsetConfig,
    choose_bucket,
    collate,
    load_dataset_config,
    load_rgb,
    make_buckets,
    make_dataloader,
    pair_subset,
    place,
    read_caption,
)
from test_data_folders import MESSY_EXPECTATIONS, MESSY_USABLE, gradient, make_messy_folder, save, truncated_png, write_pair


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    images, conditioning = make_messy_folder(root)
    return root, pair_subset(SubsetConfig(images, conditioning), progress=False)


@pytest.fixture
def clean(tmp_path):
    images, conditioning = tmp_path / "img", tmp_path / "cond"
    write_pair(images, conditioning, "wide", size=(192, 96), caption="a wide picture", seed=1)
    write_pair(images, conditioning, "tall", size=(96, 192), caption="a tall picture", seed=2)
    write_pair(images, conditioning, "square", size=(128, 128), caption="a square picture", seed=3)
    return images, conditioning


# -- pairing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("file, action, words", MESSY_EXPECTATIONS, ids=[case[0] for case in MESSY_EXPECTATIONS])
def test_each_messy_file_gets_its_rule(messy, file, action, words):
    root, report = messy
    found = [(p.action, p.problem) for p in report.problems if p.file == root / file]
    assert any(a == action and words in text for a, text in found), found


def test_messy_folder_keeps_exactly_the_usable_pairs(messy):
    _, report = messy
    assert sorted(p.image.stem for p in report.pairs) == MESSY_USABLE


def test_every_skipped_or_converted_file_of_the_messy_folder_is_expected(messy):
    root, report = messy
    expected = {file for file, _, _ in MESSY_EXPECTATIONS}
    assert {str(p.file.relative_to(root)) for p in report.problems} == expected


def test_pairs_record_caption_text_and_upright_size(messy):
    _, report = messy
    pairs = {p.image.stem: p for p in report.pairs}
    assert pairs["good"].caption == "a good picture"
    assert pairs["nocaption"].caption == "" and pairs["nocaption"].caption_path is None
    assert pairs["rotated"].size == (64, 96)
    assert pairs["good"].conditioning.parent.name == "conditioning"


def test_a_skipped_pair_reports_only_the_reason_it_is_skipped(tmp_path):
    rgba = np.dstack([gradient(96, 64), np.full((64, 96), 128, np.uint8)])
    save(tmp_path / "img" / "a.png", rgba)
    truncated_png(tmp_path / "cond" / "a.png")
    report = pair_subset(SubsetConfig(tmp_path / "img", tmp_path / "cond"), progress=False)
    assert [(p.file.name, p.action) for p in report.problems] == [("a.png", "skipped")]
    assert report.problems[0].file.parent.name == "cond"


def test_missing_folder_is_an_error_not_a_crash(tmp_path):
    report = pair_subset(SubsetConfig(tmp_path / "nope", tmp_path), progress=False)
    assert report.pairs == []
    assert [(p.action, "image_dir" in p.problem) for p in report.problems] == [("error", True)]


def test_conditioning_folder_must_differ_from_the_image_folder(tmp_path):
    write_pair(tmp_path, tmp_path / "cond", "a")
    report = pair_subset(SubsetConfig(tmp_path, tmp_path), progress=False)
    assert report.pairs == [] and report.problems[0].action == "error" and "own folder" in report.problems[0].problem


def test_report_json_lists_pairs_and_problems(messy):
    _, report = messy
    data = report.to_json()
    assert len(data["pairs"]) == len(MESSY_USABLE)
    assert set(data["pairs"][0]) >= {"image", "conditioning", "caption"}
    assert {p["action"] for p in data["problems"]} == {"converted", "skipped"}


# -- reading files -----------------------------------------------------------------------------


def test_transparency_becomes_white_in_images_and_black_in_conditioning(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    path = save(tmp_path / "t.png", rgba)
    image, notes = load_rgb(path)
    conditioning, _ = load_rgb(path, background=(0, 0, 0))
    assert np.asarray(image).min() == 255 and np.asarray(conditioning).max() == 0
    assert image.mode == "RGB" and "transparency" in notes[0]


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = save(tmp_path / "d.png", np.array([[0, 32896, 65535]], np.uint16))
    image, _ = load_rgb(path)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_turns_the_picture_upright(tmp_path):
    stored = np.zeros((2, 3, 3), np.uint8)
    stored[0, 0] = 255  # top-left pixel white in the stored raster
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = save(tmp_path / "r.png", stored, exif=exif)
    image, notes = load_rgb(path)
    upright = np.asarray(image)
    assert image.size == (2, 3)
    assert upright[0, 1].tolist() == [255, 255, 255] and upright.sum() == 3 * 255
    assert "EXIF" in notes[0]


def test_cmyk_and_palette_keep_their_colours(tmp_path):
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    cmyk, _ = load_rgb(save(tmp_path / "c.tif", Image.fromarray(red).convert("CMYK")))
    palette, _ = load_rgb(save(tmp_path / "p.png", Image.fromarray(red).convert("P")))
    assert np.asarray(cmyk)[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(palette)[0, 0].tolist() == [255, 0, 0]


def test_unreadable_file_raises_image_read_error(tmp_path):
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(ImageReadError, match="not an image"):
        load_rgb(tmp_path / "x.png")


def test_caption_drops_bom_and_joins_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffa cat,\n  on a mat\n\n".encode("utf-8"))
    assert read_caption(path) == ("a cat, on a mat", None)


# -- dataset TOML ------------------------------------------------------------------------------


KOHYA_TOML = """
[general]
shuffle_caption = false
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = [192, 128]
batch_size = 4
enable_bucket = true

  [[datasets.subsets]]
  image_dir = "img"
  conditioning_data_dir = "cond"
  num_repeats = 2

  [[datasets.subsets]]
  image_dir = "/abs/img"
  conditioning_data_dir = "/abs/cond"
  caption_extension = ".caption"
  flip_aug = true
  caption_dropout_rate = 0.1
"""


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.toml"
    path.write_text(text)
    return path


def test_kohya_toml_loads_with_inheritance_and_relative_folders(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (config,) = load_dataset_config(write_toml(tmp_path, KOHYA_TOML))
    assert config.resolution == (192, 128) and config.batch_size == 4 and config.enable_bucket
    first, second = config.subsets
    assert first.image_dir == tmp_path / "img" and first.caption_extension == ".txt" and first.num_repeats == 2
    assert second.image_dir == Path("/abs/img") and second.caption_extension == ".caption"
    assert second.flip_aug and second.caption_dropout_rate == 0.1 and not first.flip_aug


def test_kohya_keys_without_effect_are_reported_in_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="keep_tokens"):
        load_dataset_config(write_toml(tmp_path, KOHYA_TOML))


@pytest.mark.parametrize("text, words", [
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nconditioning_data_dir = "b"\nimag_size = 3\n',
     "unknown key 'datasets[0].subsets[0].imag_size'"),
    ('[[datasets]]\nbatch_size = "4"\n[[datasets.subsets]]\nimage_dir = "a"\nconditioning_data_dir = "b"\n',
     "'datasets[0].batch_size' has the wrong type"),
    ('[general]\nflip_aug = "yes"\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nconditioning_data_dir = "b"\n',
     "'general.flip_aug' has the wrong type"),
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nconditioning_data_dir = "b"\nresolution = 512\n',
     "'datasets[0].subsets[0].resolution' is a dataset setting"),
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\n', "datasets[0].subsets[0] needs 'conditioning_data_dir'"),
    ('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nconditioning_data_dir = "b"\nrandom_crop = true\n',
     "random_crop is not supported"),
    ('[general]\nbatch_size = 0\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\nconditioning_data_dir = "b"\n',
     "batch_size must be >= 1"),
    ('[general]\n', "no [[datasets]] table"),
    ('[[datasets]\n', "not valid TOML"),
])
def test_bad_toml_error_names_file_and_key(tmp_path, text, words):
    path = write_toml(tmp_path, text)
    with pytest.raises(DatasetConfigError) as error:
        load_dataset_config(path)
    assert str(path) in str(error.value) and words in str(error.value)


def test_missing_toml_file_is_named(tmp_path):
    with pytest.raises(DatasetConfigError, match="not found"):
        load_dataset_config(tmp_path / "absent.toml")


# -- buckets -----------------------------------------------------------------------------------


def test_sdxl_buckets_are_multiples_of_64_near_the_resolution_area():
    buckets = make_buckets((1024, 1024), 256, 2048)
    assert (1024, 1024) in buckets and (1216, 832) in buckets and (832, 1216) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert all(1024 * 1024 * 0.75 < w * h <= 1024 * 1024 for w, h in buckets if max(w, h) <= 1536)


def test_image_goes_to_bucket_of_nearest_aspect_ratio():
    buckets = make_buckets((1024, 1024), 256, 2048)
    assert choose_bucket((3000, 2000), buckets) == (1216, 832)
    assert choose_bucket((500, 500), buckets) == (1024, 1024)


def test_placement_covers_the_bucket_and_crops_the_centre():
    placement = place((300, 100), (128, 64))
    assert placement.resized == (192, 64)
    assert placement.crop_top_left == (0, 32)
    assert placement.original == (300, 100) and placement.target == (128, 64)


# -- samples -----------------------------------------------------------------------------------


def dataset_of(images, conditioning, **subset_settings) -> PairedDataset:
    subset = SubsetConfig(images, conditioning, **subset_settings)
    return PairedDataset(DatasetConfig([subset], resolution=128, batch_size=2), progress=False)


def test_samples_are_tensors_in_unit_range_with_micro_conditioning(clean):
    dataset = dataset_of(*clean)
    sample = dataset[[i.pair.image.stem for i in dataset.items].index("wide")]
    assert sample["image"].shape == (3, 64, 192) == sample["conditioning_image"].shape
    assert sample["image"].min() >= -1 and sample["image"].max() <= 1 and sample["image"].dtype == torch.float32
    assert sample["original_size"].tolist() == [96, 192]
    assert sample["target_size"].tolist() == [64, 192]
    assert sample["crop_top_left"].tolist() == [16, 0]
    assert sample["caption"] == "a wide picture"


def test_image_and_conditioning_get_the_same_resize_crop_and_flip(clean):
    dataset = dataset_of(*clean, flip_aug=True)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            assert torch.equal(sample["image"], sample["conditioning_image"])


def test_flip_mirrors_the_picture(tmp_path):
    images, conditioning = tmp_path / "img", tmp_path / "cond"
    write_pair(images, conditioning, "a", size=(128, 128))
    plain = dataset_of(images, conditioning)[0]["image"]
    flipping = dataset_of(images, conditioning, flip_aug=True)
    mirrored = []
    for epoch in range(8):
        flipping.set_epoch(epoch)
        mirrored.append(flipping[0]["image"])
    assert any(torch.equal(m, plain.flip(-1)) for m in mirrored)
    assert any(torch.equal(m, plain) for m in mirrored)


def test_conditioning_of_another_size_is_resized_to_its_image(tmp_path):
    images, conditioning = tmp_path / "img", tmp_path / "cond"
    write_pair(images, conditioning, "a", size=(128, 128))
    save(conditioning / "a.png", Image.fromarray(gradient(128, 128)).resize((256, 256), Image.Resampling.NEAREST))
    sample = dataset_of(images, conditioning)[0]
    assert sample["conditioning_image"].shape == sample["image"].shape
    assert (sample["conditioning_image"] - sample["image"]).abs().mean() < 0.05


def test_caption_dropout_rate_one_empties_every_caption(clean):
    dataset = dataset_of(*clean, caption_dropout_rate=1.0)
    assert {dataset[i]["caption"] for i in range(len(dataset))} == {""}


def test_num_repeats_repeats_pairs(clean):
    assert len(dataset_of(*clean, num_repeats=3)) == 9


def test_batches_share_a_bucket_and_cover_each_sample_once(tmp_path):
    images, conditioning = tmp_path / "img", tmp_path / "cond"
    for k in range(5):
        write_pair(images, conditioning, f"w{k}", size=(192, 96), seed=k)
    for k in range(3):
        write_pair(images, conditioning, f"s{k}", size=(128, 128), seed=10 + k)
    dataset = dataset_of(images, conditioning)
    loader = make_dataloader(dataset, seed=7)
    seen = []
    for batch in loader:
        assert batch["image"].shape[0] <= 2 and batch["image"].shape[1:] == batch["conditioning_image"].shape[1:]
        assert len(batch["caption"]) == batch["image"].shape[0] and batch["target_size"].shape == (batch["image"].shape[0], 2)
        seen.extend(batch["caption"])
    assert len(seen) == 8
    assert len(loader) == 5  # 5 wide -> 3 batches, 3 square -> 2 batches


def test_batch_order_is_reproducible_by_seed_and_epoch(clean):
    dataset = dataset_of(*clean)
    first, again = BucketBatchSampler(dataset, seed=3), BucketBatchSampler(dataset, seed=3)
    assert list(first) == list(again)
    orders = set()
    for epoch in range(6):
        first.set_epoch(epoch)
        orders.add(tuple(map(tuple, first)))
    assert len(orders) > 1


def test_collate_stacks_tensors_and_lists_captions():
    batch = collate([{"image": torch.zeros(3, 4, 4), "caption": "a"}, {"image": torch.ones(3, 4, 4), "caption": "b"}])
    assert batch["image"].shape == (2, 3, 4, 4) and batch["caption"] == ["a", "b"]


def test_dataset_of_messy_folder_warns_and_keeps_usable_pairs(tmp_path):
    images, conditioning = make_messy_folder(tmp_path)
    with pytest.warns(UserWarning, match="left out"):
        dataset = dataset_of(images, conditioning)
    assert len(dataset) == len(MESSY_USABLE)
    assert all(dataset[i]["image"].shape[1] % 64 == 0 for i in range(len(dataset)))


def test_dataset_without_usable_pairs_says_to_run_check(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "cond").mkdir()
    with pytest.raises(DatasetConfigError, match="data_tools check"):
        dataset_of(tmp_path / "img", tmp_path / "cond")


def test_dataset_with_missing_folder_names_it(tmp_path):
    with pytest.raises(DatasetConfigError, match="conditioning_data_dir is not a folder"):
        dataset_of(tmp_path, tmp_path / "missing")


def test_without_buckets_every_sample_is_cropped_to_the_resolution(clean):
    subset = SubsetConfig(*clean)
    dataset = PairedDataset(DatasetConfig([subset], resolution=(128, 64), enable_bucket=False), progress=False)
    assert {tuple(dataset[i]["image"].shape) for i in range(len(dataset))} == {(3, 64, 128)}


def test_each_dataset_keeps_its_own_batch_size(tmp_path):
    for name in ("one", "two"):
        for k in range(4):
            write_pair(tmp_path / name / "img", tmp_path / name / "cond", f"{name}{k}", size=(128, 128), seed=k)
    configs = [DatasetConfig([SubsetConfig(tmp_path / "one" / "img", tmp_path / "one" / "cond")], resolution=128, batch_size=1),
               DatasetConfig([SubsetConfig(tmp_path / "two" / "img", tmp_path / "two" / "cond")], resolution=128, batch_size=4)]
    dataset = PairedDataset(configs, progress=False)
    sizes = sorted(len(batch) for batch in BucketBatchSampler(dataset))
    assert sizes == [1, 1, 1, 1, 4]


@pytest.mark.parametrize("settings, words", [
    ({"caption_dropout_rate": 1.5}, "caption_dropout_rate must be in [0, 1]"),
    ({"num_repeats": 0}, "num_repeats must be >= 1"),
])
def test_subset_settings_are_checked(tmp_path, settings, words):
    with pytest.raises(DatasetConfigError, match=re.escape(words)):
        SubsetConfig(tmp_path, tmp_path, **settings)


def test_dataset_settings_are_checked(tmp_path):
    with pytest.raises(DatasetConfigError, match="resolution must be"):
        DatasetConfig([], resolution=32)
    with pytest.raises(DatasetConfigError, match=re.escape("use (1024, 960)")):
        DatasetConfig([], resolution=(1000, 950))
    with pytest.raises(DatasetConfigError, match="min_bucket_reso <= resolution"):
        DatasetConfig([], resolution=1024, max_bucket_reso=512)
