"""The one pipeline loader: a local diffusers folder, a single file, a hub id or "toy", and errors that name the argument."""
from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

import lllite
from lllite.errors import LLLiteError
from lllite.auto import load_pipeline
from lllite.errors import PipelineLoadError
from lllite.sdxl.toy import build_pipeline
from lllite.sdxl.toy import WEIGHTS_DIR


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipelines") / "test-sdxl"
    build_pipeline("test", seed=5).save_pretrained(folder)
    return folder


def test_a_local_diffusers_folder_loads_with_its_weights_in_the_asked_dtype(saved):
    pipe = load_pipeline(saved, dtype=torch.bfloat16)
    expected = build_pipeline("test", seed=5).unet.state_dict()
    assert pipe.unet.dtype == torch.bfloat16
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, expected[key].to(torch.bfloat16)), key
    assert pipe._progress_bar_config == {"disable": True}


def test_a_folder_named_toy_is_loaded_as_that_folder(tmp_path, monkeypatch):
    build_pipeline("test", seed=5).save_pretrained(tmp_path / "toy")
    monkeypatch.chdir(tmp_path)
    assert list(load_pipeline("toy").unet.config.block_out_channels) == [8, 16, 16]  # the "test" size, not the toy's


@pytest.mark.skipif(not (WEIGHTS_DIR / "model_index.json").is_file(), reason="toy weights not created")
def test_toy_loads_the_shipped_weights_and_is_the_package_level_loader():
    assert lllite.load_pipeline is load_pipeline
    pipe = load_pipeline("toy")
    shipped = StableDiffusionXLPipeline.from_pretrained(WEIGHTS_DIR).unet.state_dict()
    assert all(torch.equal(value, shipped[key]) for key, value in pipe.unet.state_dict().items())


def test_a_file_goes_to_from_single_file_and_a_name_to_from_pretrained(tmp_path, monkeypatch):
    calls = []

    def recording(kind):
        def load(cls, source, **kwargs):
            calls.append((kind, source, kwargs))
            return build_pipeline("test")
        return classmethod(load)

    monkeypatch.setattr(StableDiffusionXLPipeline, "from_single_file", recording("single_file"))
    monkeypatch.setattr(StableDiffusionXLPipeline, "from_pretrained", recording("pretrained"))
    checkpoint = tmp_path / "sd_xl_base_1.0.safetensors"
    checkpoint.write_bytes(b"")
    load_pipeline(checkpoint, dtype=torch.float16, variant="fp16")
    load_pipeline("someone/some-sdxl", dtype=torch.float16, variant="fp16")
    assert calls == [
        ("single_file", str(checkpoint), {"dtype": torch.float16, "add_watermarker": False}),
        ("pretrained", "someone/some-sdxl", {"dtype": torch.float16, "variant": "fp16", "add_watermarker": False}),
    ]


def test_a_file_that_is_not_a_checkpoint_is_refused_naming_the_argument_and_the_file(tmp_path):
    checkpoint = tmp_path / "notes.safetensors"
    checkpoint.write_text("not a checkpoint")
    with pytest.raises(PipelineLoadError, match=r"^--model '.*notes\.safetensors' could not be loaded as an SDXL pipeline"):
        load_pipeline(checkpoint, what="--model")


def test_a_name_that_is_neither_a_path_nor_a_reachable_model_is_refused_with_what_to_give(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LLLiteError, match="pretrained_model_name_or_path 'no-such-owner/no-such-sdxl' could not be "
                                          "loaded.*hub id.*local diffusers folder.*checkpoint.*'toy'"):
        load_pipeline("no-such-owner/no-such-sdxl", what="pretrained_model_name_or_path")
