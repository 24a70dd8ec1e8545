"""The GPU check (benches/gpu_check.py) in its --quick setting on the CPU: every section runs and its numbers hold."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benches import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    """One --quick run on the CPU, as a user would start it (a fresh process: the trainer's accelerate state is global)."""
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benches" / "gpu_check.py"), "--quick", "--device", "cpu",
                           "--threads", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "section" in done.stdout and "wrote" in done.stdout  # the short table
    return json.loads(out.read_text())


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_every_section_runs_and_records_its_time(quick):
    sections = quick["results"]["sections"]
    assert list(sections) == ["sdxl_training_memory", "anima_training_memory", "toy_training", "anima_inference_memory",
                              "fp16_numerics", "sdxl_inference"]
    for key, entry in sections.items():
        assert entry["status"] == "ok", (key, entry.get("error"))
        assert entry["seconds"] > 0
    assert quick["config"]["quick"] and quick["config"]["options"]["sections"] == ["b", "e", "a", "f", "d", "c"]


def test_the_toy_trainer_learns_writes_a_file_that_loads_back_and_samples(quick):
    entry = quick["results"]["sections"]["toy_training"]
    # A CPU has no fp16 mixed precision: the check says so instead of failing.
    assert "CUDA" in entry["left_out"]["float16"]
    run = entry["runs"]["bf16"]
    assert run["steps"] == run["steps_asked"] == len(run["losses"])
    assert run["losses_finite"] and finite(*run["losses"])
    assert run["tensors_moved"] == run["tensors"] > 0 and run["max_weight_change"] > 0
    assert run["round_trip_equal"] and run["round_trip_fp16_max_diff"] == 0 == run["round_trip_float32_max_diff"]
    # adamw8bit was asked for; the checkpoint shows what ran (plain AdamW where bitsandbytes cannot).
    assert run["optimizer_type"] == "adamw8bit"
    assert run["optimizer_ran"] in ("torch AdamW", "bitsandbytes AdamW8bit")
    assert run["validation_grids"] == 1
    sampling = run["sampling"]
    assert sampling["image_shape"] == [run["resolution"], run["resolution"], 3] and sampling["image_std"] > 1
    # Where train() left each part of the pipeline (it brings back what the caches sent to the CPU).
    parts = run["pipeline_after_train"]
    assert set(parts) == {"unet", "vae", "text_encoder", "text_encoder_2"} and parts["unet"].endswith(" bfloat16")


def test_the_training_step_measures_memory_per_variant_and_checkpointing_keeps_the_loss(quick):
    entry = quick["results"]["sections"]["sdxl_training_memory"]
    assert set(entry["left_out"]) == {"float16", "adamw8bit"}
    rows = entry["sizes"]["64"]
    assert set(rows) == {"bf16_ckpt_adamw", "bf16_no_ckpt_adamw"}
    for row in rows.values():
        assert "error" not in row, row
        assert len(row["losses"]) == entry["steps_per_variant"] and finite(*row["losses"], row["step_s"])
        assert row["held_bytes"] > 0 and row["step_peak_extra_bytes"] > 0 and row["optimizer_state_bytes"] > 0
        assert row["t4_footprint_bytes"] > row["estimate_allocated_bytes"] >= row["held_bytes"]
        assert row["fits_t4"] is True and row["t4_margin_bytes"] == entry["t4_bytes"] - row["t4_footprint_bytes"]
    # Recomputing activations changes memory, not what the step computes. Checkpointed blocks embed the control one
    # module at a time, plain training all modules together: float32 sums in another order, whose bf16 roundings
    # moved these losses by 0.4%.
    assert rows["bf16_ckpt_adamw"]["losses"] == pytest.approx(rows["bf16_no_ckpt_adamw"]["losses"], rel=1e-2)


def test_anima_training_step_measures_memory_with_the_t4_and_l4_verdicts(quick):
    entry = quick["results"]["sections"]["anima_training_memory"]
    assert set(entry["left_out"]) == {"adamw8bit"} and entry["padding_mask_resize"]
    rows = entry["sizes"]["64"]
    assert set(rows) == {"bf16_ckpt_adamw", "bf16_no_ckpt_adamw"}
    for row in rows.values():
        assert "error" not in row, row
        assert len(row["losses"]) == entry["steps_per_variant"] and finite(*row["losses"], row["step_s"])
        assert row["held_bytes"] > 0 and row["rss_peak_extra_bytes"] > 0 and row["optimizer_state_bytes"] > 0
        assert row["footprint_bytes"] > row["held_bytes"] + row["rss_peak_extra_bytes"]  # plus the CUDA context
        assert row["fits_t4"] is True and row["fits_l4"] is True
    assert rows["bf16_ckpt_adamw"]["losses"] == pytest.approx(rows["bf16_no_ckpt_adamw"]["losses"], rel=1e-3)


def test_anima_inference_measures_each_phase_above_the_weights(quick):
    row = quick["results"]["sections"]["anima_inference_memory"]["sizes"]["64"]["bfloat16"]
    assert "error" not in row, row
    assert set(row["phases"]) == {"text", "denoise_cfg_batch2", "vae_decode"}
    worst = max(phase["peak_above_start_bytes"] for phase in row["phases"].values())
    assert worst > 0 and row["footprint_bytes"] > row["weights_bytes"] + worst
    assert row["fits_t4"] is True


def test_fp16_numerics_of_the_136_modules_and_the_unet_are_finite_and_close_to_float32(quick):
    rows = quick["results"]["sections"]["fp16_numerics"]["sizes"]["64"]
    modules = rows["lllite_modules"]
    assert modules["modules"] == len(modules["per_module"]) == 136
    assert modules["inf"] == 0 and modules["nan"] == 0
    # fp16 keeps 11 significant bits (unit roundoff 2^-11 = 4.9e-4); a few roundings stay well inside 1e-2.
    assert 0 < modules["max_rel_error"] < 1e-2 and 0 < modules["embedding_max_rel_error"] < 1e-2
    for part in ("bare", "lllite", "lllite_change"):
        errors = rows["unet"][part]
        assert errors["inf"] == 0 and errors["nan"] == 0
        assert finite(errors["max_rel_error"]) and 0 < errors["max_rel_error"] < 0.05


def test_inference_reports_ratios_to_the_bare_unet(quick):
    entry = quick["results"]["sections"]["sdxl_inference"]
    assert (entry["lllite_modules"], entry["lllite_up_modules"]) == (136, 280)
    assert entry["parameters"]["lllite"] < entry["parameters"]["lllite_up"] < entry["parameters"]["controlnet"]
    variants = entry["sizes"]["64"]["variants"]
    assert {"unet", "lllite", "lllite_up", "controlnet"} <= set(variants) and "compile" not in entry["sizes"]["64"]
    assert variants["unet"]["ratio"] == 1.0
    for row in variants.values():
        assert len(row["runs_s"]) == entry["sizes"]["64"]["repeats"] and finite(row["median_s"], row["ratio"])


def test_a_failing_section_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch):
    def broken(entry, check):
        entry["measured_before_failing"] = 1
        raise RuntimeError("CUDA error: something went wrong")

    monkeypatch.setitem(gpu_check.SECTION_RUNNERS, "b", broken)
    monkeypatch.setitem(gpu_check.SECTION_RUNNERS, "d", lambda entry, check: entry.update(measured=2))
    out = tmp_path / "check.json"
    results = gpu_check.main(["--quick", "--device", "cpu", "--sections", "b", "d", "--out", str(out)])
    written = json.loads(out.read_text())["results"]
    assert written == json.loads(json.dumps(results))
    failed, after = written["sections"]["sdxl_training_memory"], written["sections"]["fp16_numerics"]
    assert failed["status"] == "error" and failed["error"] == "RuntimeError: CUDA error: something went wrong"
    assert failed["measured_before_failing"] == 1
    assert after["status"] == "ok" and after["measured"] == 2


def test_sections_that_would_start_after_the_time_budget_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / "check.json"
    results = gpu_check.main(["--quick", "--device", "cpu", "--sections", "d", "--budget", "0", "--out", str(out)])
    entry = results["sections"]["fp16_numerics"]
    assert entry["status"] == "skipped" and "time budget" in entry["reason"]
    assert json.loads(out.read_text())["results"]["budget_s"] == 0


def test_compile_times_the_compiled_variants_apart_and_a_compile_error_is_recorded(tmp_path, monkeypatch):
    import torch

    # The plumbing, without inductor's minutes: "compiling" returns the module itself, then fails.
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)
    results = gpu_check.main(["--quick", "--device", "cpu", "--sections", "c", "--compile", "--repeats", "1",
                              "--out", str(tmp_path / "compiled.json")])
    row = results["sections"]["sdxl_inference"]["sizes"]["64"]
    assert set(row["compile"]) == {"unet_compiled", "lllite_compiled"}
    assert all(entry["compile_s"] > 0 for entry in row["compile"].values())
    assert {"unet_compiled", "lllite_compiled", "lllite_compiled_first_step"} <= set(row["variants"])

    def no_compiler(module, **options):
        raise RuntimeError("inductor needs a C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    results = gpu_check.main(["--quick", "--device", "cpu", "--sections", "c", "--compile", "--repeats", "1",
                              "--out", str(tmp_path / "failed.json")])
    entry = results["sections"]["sdxl_inference"]
    assert entry["status"] == "ok"
    assert entry["sizes"]["64"]["compile"]["unet_compiled"] == {"error": "RuntimeError: inductor needs a C++ compiler"}
    assert set(entry["sizes"]["64"]["variants"]) == {"unet", "lllite", "lllite_first_step", "lllite_up",
                                                     "lllite_up_first_step", "controlnet"}
