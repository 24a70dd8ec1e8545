"""The realsize tier: SDXL base and Anima at their published configurations with random weights, built into
local diffusers folders, and every path a Colab user takes run through them (benches/realsize.py). It needs
about 25 GB of disk for the two folders and runs only with ``--realsize``:

    python -m pytest tests/test_realsize.py --realsize                    # both families
    LLLITE_REALSIZE_DIR=/data/realsize python -m pytest tests/test_realsize.py --realsize -k sdxl

``LLLITE_REALSIZE_DIR`` keeps the built folders between runs (building takes minutes); by default they live in
a temporary folder that goes with the run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benches import realsize  # noqa: E402

pytestmark = pytest.mark.realsize


@pytest.fixture(scope="module", params=["sdxl", "anima"])
def run(request, tmp_path_factory):
    root = Path(os.environ.get("LLLITE_REALSIZE_DIR") or tmp_path_factory.mktemp("realsize"))
    return realsize.run_family(request.param, root / request.param, json_path=root / f"{request.param}.json")


def test_every_part_runs_through_the_saved_folder(run):
    failed = {name: entry["error"] for name, entry in run["parts"].items() if "error" in entry}
    assert not failed, failed
    assert list(run["parts"])[-len(realsize.PARTS):] == list(realsize.PARTS)


def test_the_saved_models_have_the_published_configurations(run):
    from lllite.anima.pipeline import anima_transformer
    from lllite.sdxl.pipeline import sdxl_unet

    meta = sdxl_unet("meta") if run["family"] == "sdxl" else anima_transformer()
    assert run["parts"]["load"]["denoiser_parameters"] == sum(p.numel() for p in meta.parameters())


def test_the_default_network_and_a_kohya_style_file_at_real_size(run):
    network, file = run["parts"]["network"], run["parts"]["file"]
    assert network["modules"] == {"sdxl": 136, "anima": 28}[run["family"]]
    assert file["round_trip_exact"]


def test_generation_image_to_image_and_training_give_what_they_should(run):
    parts = run["parts"]
    assert parts["generate_1024"]["size"] == [1024, 1024] and parts["generate_512"]["size"] == [512, 512]
    assert parts["img2img"]["size"] == [512, 512]
    train = parts["train"]
    assert train["steps"] == 2 and all(loss == loss for loss in train["losses"]) and train["reloaded_modules"] > 0


def test_it_fits_this_machines_memory(run):
    assert max(entry["peak_gib"] for entry in run["parts"].values()) < 24
