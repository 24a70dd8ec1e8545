"""python -m data_tools: check, make-conditioning, synthesize."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.__main__ import main
from data_tools.common import CommandError
from data_tools.make_conditioning import ConditioningOptions, make_folder
from data_tools.synthesize import SynthesisConfig, expand_wildcards, read_prompts, synthesize
from lllite.conditioning import KINDS, blur, canny, greyscale, make_conditioning, soft_edge
from lllite.data import PairedDataset, load_dataset_config, load_rgb
from lllite.sdxl.toy import build_pipeline
from test_data_folders import MESSY_EXPECTATIONS, MESSY_USABLE, gradient, make_messy_folder, save, truncated_png, write_pair

REPO = Path(__file__).resolve().parents[1]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- check ---------------------------------------------------------------------------------------


def test_check_reports_every_messy_case_in_json_and_changes_nothing(tmp_path, capsys):
    images, conditioning = make_messy_folder(tmp_path / "data")
    before = snapshot(tmp_path / "data")
    report = tmp_path / "report.json"
    assert main(["check", str(images), "--conditioning", str(conditioning), "--json", str(report), "--quiet"]) == 0
    assert snapshot(tmp_path / "data") == before
    data = json.loads(report.read_text())
    assert sorted(Path(p["image"]).stem for p in data["pairs"]) == MESSY_USABLE
    assert all(Path(p["conditioning"]).parent == conditioning for p in data["pairs"])
    found = {(str(Path(p["file"]).relative_to(tmp_path / "data")), p["action"]) for p in data["problems"]}
    assert {(file, action) for file, action, _ in MESSY_EXPECTATIONS} <= found
    assert "10 usable pair(s)" in capsys.readouterr().out


def test_check_prints_a_table_row_per_problem(tmp_path, capsys):
    images, conditioning = make_messy_folder(tmp_path)
    main(["check", str(images), "--conditioning", str(conditioning), "--json", str(tmp_path / "report.json")])
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if "truncated.png" in line and line.startswith("skipped"))
    assert "images/truncated.png" in row and "truncated" in row.split("images/truncated.png")[1]
    problems = json.loads((tmp_path / "report.json").read_text())["problems"]
    assert sum(line.startswith(("skipped", "converted")) for line in lines) == len(problems) == 27


def test_check_exits_non_zero_when_no_pair_is_usable(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    save(tmp_path / "img" / "a.png", gradient(96, 64))
    assert main(["check", str(tmp_path / "img"), "--conditioning", str(tmp_path / "missing")]) == 1
    output = capsys.readouterr()
    assert "conditioning_data_dir is not a folder" in output.out and "no usable pair" in output.err


def test_check_reads_every_subset_of_a_kohya_toml(tmp_path, capsys):
    make_messy_folder(tmp_path / "messy")
    write_pair(tmp_path / "clean" / "img", tmp_path / "clean" / "cond", "a")
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        "[[datasets]]\nresolution = 128\n"
        '[[datasets.subsets]]\nimage_dir = "messy/images"\nconditioning_data_dir = "messy/conditioning"\n'
        '[[datasets.subsets]]\nimage_dir = "clean/img"\nconditioning_data_dir = "clean/cond"\n'
    )
    assert main(["check", "--config", str(toml), "--quiet"]) == 0
    assert f"{len(MESSY_USABLE) + 1} usable pair(s)" in capsys.readouterr().out


def test_check_needs_folders_or_a_config(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 2
    assert "--conditioning COND_DIR" in capsys.readouterr().err


def test_check_refuses_to_replace_an_existing_report(tmp_path, capsys):
    images, conditioning = tmp_path / "img", tmp_path / "cond"
    images.mkdir(), conditioning.mkdir()
    report = tmp_path / "report.json"
    report.write_text("my notes")
    assert main(["check", str(images), "--conditioning", str(conditioning), "--json", str(report)]) == 2
    assert report.read_text() == "my notes"
    assert capsys.readouterr().err.startswith("error: --json:")


def test_cli_user_mistake_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "data_tools", "make-conditioning", "canny", str(tmp_path / "nope"), str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: SRC_DIR {tmp_path / 'nope'} is not a folder"
    assert "Traceback" not in result.stderr


# -- conditioning kinds --------------------------------------------------------------------------


def test_every_kind_returns_an_rgb_uint8_image_of_the_input_size():
    picture = gradient(40, 24)
    for kind in KINDS:
        result = make_conditioning(kind, picture)
        assert result.shape == (24, 40, 3) and result.dtype == np.uint8, kind


def test_soft_edge_is_bright_on_a_contour_and_black_on_flat_areas():
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 200
    edges = soft_edge(square)
    assert edges[32, 16, 0] > 200 and edges[32, 32, 0] == 0 and edges[2, 2, 0] == 0


def test_blur_keeps_mean_colour_and_removes_detail():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    blurred = blur(noise, sigma=4)
    assert abs(blurred.mean() - noise.mean()) < 3 and blurred.std() < noise.std() / 4


def test_greyscale_repeats_the_luminance():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert greyscale(red)[0, 0].tolist() == [76, 76, 76]


def test_unknown_kind_and_bad_sigma_are_refused():
    with pytest.raises(ValueError, match="choose one of canny"):
        make_conditioning("depth", gradient(8, 8))
    with pytest.raises(ValueError, match="sigma"):
        blur(gradient(8, 8), sigma=0)


# -- make-conditioning ---------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    for k in range(4):
        save(src / f"p{k}.jpg", gradient(80, 48, seed=k), quality=95)
    return src


def test_make_conditioning_writes_canny_of_each_upright_image_under_its_basename(source, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    save(source / "turned.jpg", gradient(80, 48, seed=9), exif=exif)
    out = tmp_path / "out"
    written, kept, failures = make_folder("canny", source, out, workers=1, progress=False)
    assert (written, kept, failures) == (5, 0, [])
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png", "p3.png", "turned.png"]
    expected = canny(np.asarray(load_rgb(source / "p2.jpg")[0]), 100, 200)
    assert np.array_equal(pixels(out / "p2.png"), expected)
    assert pixels(out / "turned.png").shape == (80, 48, 3)


def test_make_conditioning_thresholds_change_the_edges(source, tmp_path):
    make_folder("canny", source, tmp_path / "default", workers=1, progress=False)
    make_folder("canny", source, tmp_path / "strict", ConditioningOptions(400, 800), workers=1, progress=False)
    default = pixels(tmp_path / "default" / "p0.png")
    strict = pixels(tmp_path / "strict" / "p0.png")
    assert strict.sum() < default.sum()


def test_make_conditioning_in_parallel_matches_the_serial_result(source, tmp_path):
    make_folder("soft_edge", source, tmp_path / "serial", workers=1, progress=False)
    assert main(["make-conditioning", "soft_edge", str(source), str(tmp_path / "parallel"), "--workers", "2"]) == 0
    assert snapshot(tmp_path / "serial") == snapshot(tmp_path / "parallel")


def test_make_conditioning_keeps_finished_files_unless_told_to_overwrite(source, tmp_path):
    out = tmp_path / "out"
    save(out / "p1.png", np.full((4, 4, 3), 7, np.uint8))
    assert make_folder("greyscale", source, out, workers=1, progress=False) == (3, 1, [])
    assert pixels(out / "p1.png").max() == 7
    assert make_folder("greyscale", source, out, workers=1, overwrite=True, progress=False) == (4, 0, [])
    assert pixels(out / "p1.png").shape == (48, 80, 3)


def test_make_conditioning_reports_bad_files_and_leaves_no_temporary_files(source, tmp_path, capsys):
    truncated_png(source / "broken.png")
    (source / "notes.txt").write_text("not a picture")
    out = tmp_path / "out"
    assert main(["make-conditioning", "blur", str(source), str(out), "--workers", "1", "--sigma", "2"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png", "p3.png"]
    assert "broken.png: not a readable image" in capsys.readouterr().err


def test_make_conditioning_refuses_bad_options(source, tmp_path):
    with pytest.raises(CommandError, match="thresholds"):
        make_folder("canny", source, tmp_path / "out", ConditioningOptions(300, 100), progress=False)
    with pytest.raises(CommandError, match="OUT_DIR must differ"):
        make_folder("canny", source, source, progress=False)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(CommandError, match="is a file"):
        make_folder("canny", source, tmp_path / "file.png", progress=False)


# -- synthesize ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("test", seed=0)


def config(**overrides) -> SynthesisConfig:
    settings = dict(prompts=["a {red|blue} {circle|square}", "a green triangle"], num_images=3, seed=5, num_inference_steps=2,
                    width=64, height=64, conditioning=("canny", "greyscale"), model="toy-test")
    return SynthesisConfig(**{**settings, **overrides})


def test_wildcards_draw_one_option_each_including_nested_ones():
    drawn = {expand_wildcards("a {red|{dark|light} blue} circle", random.Random(seed)) for seed in range(50)}
    assert drawn == {"a red circle", "a dark blue circle", "a light blue circle"}


def test_prompt_file_errors_name_the_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# colours\n\na {red|blue circle\n")
    with pytest.raises(CommandError, match="line 3: unbalanced"):
        read_prompts(prompts)
    prompts.write_text("# only a comment\n")
    with pytest.raises(CommandError, match="holds no prompt"):
        read_prompts(prompts)


def test_synthesize_writes_pairs_with_caption_and_prompt_metadata(pipe, tmp_path):
    assert synthesize(pipe, config(), tmp_path, progress=False) == (3, 0)
    for index in range(3):
        caption = (tmp_path / "images" / f"{index:06d}.txt").read_text().strip()
        with Image.open(tmp_path / "images" / f"{index:06d}.png") as image:
            prompt, picture = image.text["prompt"], np.asarray(image.convert("RGB"))
        assert caption == config().prompt_for(index) and prompt == caption
        assert picture.shape == (64, 64, 3)
        assert np.array_equal(pixels(tmp_path / "canny" / f"{index:06d}.png"), canny(picture))
        assert (tmp_path / "greyscale" / f"{index:06d}.png").is_file()
    assert config().prompt_for(1) == "a green triangle"


def test_synthesize_is_deterministic_by_seed_and_nearly_independent_of_batch_size(pipe, tmp_path):
    for name, settings in {"a": {}, "again": {}, "batched": {"batch_size": 2}, "other_seed": {"seed": 6}}.items():
        synthesize(pipe, config(num_images=2, **settings), tmp_path / name, progress=False)
    first = {name: pixels(tmp_path / name / "images" / "000000.png").astype(int)
             for name in ("a", "again", "batched", "other_seed")}
    assert np.array_equal(first["a"], first["again"])
    assert np.abs(first["a"] - first["batched"]).max() <= 1
    assert np.abs(first["a"] - first["other_seed"]).mean() > 10


def test_interrupted_synthesis_continues_with_the_same_images(pipe, tmp_path):
    synthesize(pipe, config(num_images=2), tmp_path, progress=False)
    lost = pixels(tmp_path / "images" / "000001.png")
    kept = snapshot(tmp_path)["images/000000.png"]
    (tmp_path / "images" / "000001.png").unlink()
    (tmp_path / "canny" / "000000.png").unlink()
    assert synthesize(pipe, config(num_images=3), tmp_path, progress=False) == (2, 1)
    assert snapshot(tmp_path)["images/000000.png"] == kept
    assert np.array_equal(pixels(tmp_path / "images" / "000001.png"), lost)
    assert (tmp_path / "canny" / "000000.png").is_file() and (tmp_path / "canny" / "000002.png").is_file()


def test_synthesis_refuses_to_continue_a_folder_made_with_other_settings(pipe, tmp_path):
    synthesize(pipe, config(num_images=1), tmp_path, progress=False)
    with pytest.raises(CommandError, match="other seed"):
        synthesize(pipe, config(num_images=1, seed=9), tmp_path, progress=False)


def test_a_folder_recorded_under_the_earlier_name_steps_is_continued(pipe, tmp_path):
    synthesize(pipe, config(num_images=1), tmp_path, progress=False)
    record = json.loads((tmp_path / "synthesis.json").read_text())
    record["steps"] = record.pop("num_inference_steps")  # as the settings were written before the rename
    (tmp_path / "synthesis.json").write_text(json.dumps(record))
    assert synthesize(pipe, config(num_images=2), tmp_path, progress=False) == (1, 1)
    with pytest.raises(CommandError, match="other num_inference_steps"):
        synthesize(pipe, config(num_images=3, num_inference_steps=3), tmp_path, progress=False)


def test_synthesize_cli_makes_a_dataset_that_passes_check_and_loads(pipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("data_tools.synthesize.load_pipeline", lambda model, dtype, device, what: pipe)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a {red|yellow} circle\n")
    out = tmp_path / "synthetic"
    argv = ["synthesize", "--model", "toy", "--prompts", str(prompts), "--out", str(out), "--num-images", "2",
            "--num-inference-steps", "2", "--width", "64", "--height", "64"]
    assert main(argv) == 0
    assert main(["check", str(out / "images"), "--conditioning", str(out / "canny"), "--quiet"]) == 0
    assert "2 usable pair(s); 0 conversion(s), 0 file(s) skipped" in capsys.readouterr().out
    (dataset_config,) = load_dataset_config(out / "dataset.toml")
    sample = PairedDataset(dataset_config, progress=False)[0]
    assert sample["image"].shape == (3, 64, 64) and sample["caption"] in {"a red circle", "a yellow circle"}


def test_toy_shapes_dataset_passes_check_without_a_problem(tmp_path, capsys):
    from lllite.toy.shapes import write_dataset

    out = write_dataset(tmp_path / "shapes", count=3, size=64)
    assert main(["check", str(out / "images"), "--conditioning", str(out / "conditioning"), "--quiet"]) == 0
    assert "3 usable pair(s); 0 conversion(s), 0 file(s) skipped, 0 error(s)" in capsys.readouterr().out
