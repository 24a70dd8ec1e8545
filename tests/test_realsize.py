"""The realsize tier: SDXL base and Anima at their published configurations with random weights, built into
local diffusers folders, and every path a Colab user takes run through them (benches/realsize.py), each family
in its own process. It takes about 12 minutes and up to 20 GiB of memory on a 2-core CPU, and 6.5 GB of disk for
SDXL's folder, then 5.2 GB for Anima's (each deleted after its tests), and runs only with ``--realsize``:

    python -m pytest tests/test_realsize.py --realsize                    # both families
    LLLITE_REALSIZE_DIR=/data/realsize python -m pytest tests/test_realsize.py --realsize -k sdxl

``LLLITE_REALSIZE_DIR`` keeps the built folders between runs (building takes a minute or two each); by default
they live in a temporary folder and are deleted after their tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benches import realsize  # noqa: E402

pytestmark = pytest.mark.realsize


@pytest.fixture(scope="module", params=["sdxl", "anima"])
def run(request, tmp_path_factory):
    """One family's run in its own process, as the bench command runs it: each family's peak memory is its own."""
    kept = os.environ.get("LLLITE_REALSIZE_DIR")
    root = Path(kept or tmp_path_factory.mktemp("realsize"))
    results = root / f"{request.param}.json"
    results.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, str(ROOT / "benches" / "realsize.py"), "--family", request.param,
                           "--folder", str(root), "--json", str(results)], cwd=ROOT, capture_output=True, text=True)
    assert results.exists(), done.stderr[-3000:]
    yield json.loads(results.read_text())
    if not kept:  # the model folder is 6 to 7 GB: not left behind in pytest's temporary folders
        shutil.rmtree(root / request.param, ignore_errors=True)


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
    img2img = parts["img2img"]
    assert img2img["size"] == [512, 512]
    # strength 0.5 of 4 steps runs 2 of them: 2 calls of SDXL's UNet (batch 2), 4 of Anima's DiT (one per branch)
    assert img2img["denoiser_calls"] == {"sdxl": 2, "anima": 4}[run["family"]]
    train = parts["train"]
    assert train["steps"] == 2 and all(loss == loss for loss in train["losses"]) and train["reloaded_modules"] > 0


def test_it_fits_this_machines_memory(run):
    assert max(entry["peak_gib"] for entry in run["parts"].values()) < 24
