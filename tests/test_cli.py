"""Every command line reports a user's mistake as one line, `error: ...`, with its exit status, and no traceback."""
from __future__ import annotations

from lllite.__main__ import main as lllite_main
from lllite.toy.pretrain import main as pretrain_main
from lllite.train import main as train_main


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_inspect_names_the_missing_file(tmp_path, capsys):
    assert lllite_main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in one_error_line(capsys)


def test_the_demo_names_the_missing_toy_weights_and_how_to_make_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lllite.sdxl.toy.WEIGHTS_DIR", tmp_path / "weights")
    assert lllite_main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 2
    assert "python -m lllite.toy.pretrain" in one_error_line(capsys)


def test_the_trainer_names_the_model_that_does_not_load(tmp_path, capsys):
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "no-model"), "--output_dir", str(tmp_path / "out"),
            "--mixed_precision", "no", "--no-progress"]
    assert train_main(argv) == 2
    assert "pretrained_model_name_or_path" in one_error_line(capsys)


def test_the_pretraining_refuses_an_existing_pipeline_with_status_1(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text("{}")
    assert pretrain_main(["--out-dir", str(tmp_path)]) == 1
    assert "--overwrite" in one_error_line(capsys)
