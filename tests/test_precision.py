"""The floating-point type by device capability, chosen in one place (lllite.precision) for the notebooks and
the trainer: checked on the CPU by telling torch which GPU it has."""
from __future__ import annotations

import pytest
import torch

from lllite import precision
from lllite.anima.pipeline import HALF_DTYPES as ANIMA
from lllite.errors import TrainError
from lllite.sdxl.pipeline import HALF_DTYPES as SDXL


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA GPU, with or without native bf16 (``gpu(bf16=False)`` is a T4)."""
    def have(bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    return have


def test_a_cpu_loads_real_models_in_float32_and_trains_as_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.model_dtype(SDXL, "cpu") == precision.model_dtype(ANIMA, "cpu") == torch.float32
    assert precision.mixed_precision("bf16", ANIMA, "cpu") == ("bf16", None)
    with pytest.raises(TrainError, match="fp16 needs a CUDA GPU"):
        precision.mixed_precision("fp16", SDXL, "cpu")


def test_on_a_gpu_with_bf16_sdxl_runs_in_fp16_and_anima_in_bf16(gpu):
    gpu(bf16=True)
    assert precision.model_dtype(SDXL, "cuda") == torch.float16
    assert precision.model_dtype(ANIMA, "cuda") == torch.bfloat16
    assert precision.mixed_precision("bf16", ANIMA, "cuda") == ("bf16", None)
    assert precision.mixed_precision("bf16", SDXL, "cuda") == ("bf16", None)


def test_on_a_t4_anima_runs_and_trains_in_float32_where_sdxl_takes_fp16(gpu):
    gpu(bf16=False)
    assert precision.model_dtype(SDXL, "cuda") == torch.float16
    assert precision.model_dtype(ANIMA, "cuda") == torch.float32  # Anima overflows in fp16
    chosen, why = precision.mixed_precision("bf16", ANIMA, "cuda", "Anima")
    assert chosen == "no" and "Anima overflows in fp16" in why and "float32" in why
    assert precision.mixed_precision("fp16", ANIMA, "cuda", "Anima")[0] == "no"
    chosen, why = precision.mixed_precision("bf16", SDXL, "cuda", "SDXL")
    assert chosen == "fp16" and "training in fp16" in why


def test_the_notebooks_and_the_recipe_ask_the_same_place(gpu, monkeypatch):
    from lllite.anima.training import colab_settings
    from lllite.environment import Environment, load_pipeline

    gpu(bf16=False)
    assert colab_settings("/content/anima")["mixed_precision"] == "no"
    calls = []
    monkeypatch.setattr("lllite.auto.load_pipeline", lambda name, **options: calls.append(options))
    load_pipeline(Environment(True, "Tesla T4", "cuda", "anima", False, anima="/content/anima", bf16=False))
    load_pipeline(Environment(True, "Tesla T4", "cuda", "sdxl", False, bf16=False))
    assert [c["dtype"] for c in calls] == [torch.float32, torch.float16]
    assert "variant" not in calls[0] and calls[1]["variant"] == "fp16"


def test_the_environment_records_whether_its_gpu_computes_bf16(gpu, monkeypatch):
    from lllite.environment import detect_environment

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla T4")
    gpu(bf16=False)
    env = detect_environment("anima", {}, anima="/content/anima")
    assert (env.device, env.bf16) == ("cuda", False)
    gpu(bf16=True)
    assert detect_environment("anima", {}, anima="/content/anima").bf16
