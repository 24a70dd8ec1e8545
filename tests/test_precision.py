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


def test_the_sdxl_recipe_picks_what_the_machine_trains_in(gpu, monkeypatch):
    from lllite.sdxl.training import colab_settings

    gpu(bf16=False)
    assert colab_settings()["mixed_precision"] == "fp16"  # a T4: fp16 with loss scaling
    gpu(bf16=True)
    assert colab_settings()["mixed_precision"] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    chosen = colab_settings()["mixed_precision"]
    assert chosen == "bf16" and precision.mixed_precision(chosen, SDXL, "cpu") == ("bf16", None)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_half_network_embeds_its_control_as_float32_would(depth):
    """The conditioning convolutions run in float32 (precision.in_float32): oneDNN's bfloat16 convolution of 16
    channels with a 4x4 stride-4 kernel (depths 2 and 3) is wrong by more than 100% on CPUs with AMX."""
    import copy

    from lllite.sdxl.module import LLLiteModule

    generator = torch.Generator().manual_seed(0)
    module = LLLiteModule(64, depth=depth)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    image = torch.rand(1, 3, 128, 128, generator=generator) * 2 - 1
    grid = {1: (16, 16), 2: (8, 8), 3: (4, 4)}[depth]
    reference = module.embed(image, grid)
    half = copy.deepcopy(module).to(torch.bfloat16).embed(image.to(torch.bfloat16), grid)
    assert half.dtype == torch.bfloat16
    assert (half.float() - reference).abs().mean() < 0.02 * reference.abs().mean()  # bf16's rounding, no more
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = module.embed(image, grid)
    torch.testing.assert_close(autocast.float(), reference)  # float32 inside autocast: the same numbers


def test_the_anima_trunk_embeds_in_float32_too():
    """The network's own path: its trunk's embedding in a bf16 DiT call against the float32 network's."""
    import copy

    from lllite.anima import create_network
    from lllite.anima.toy import build_pipeline

    transformer = build_pipeline("test").transformer
    network = create_network(transformer, cond_dim=32)  # 16 channels into the 4x4 stride-4 conv3
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    image = torch.rand(1, 3, 96, 128, generator=generator) * 2 - 1
    x = torch.randn(1, 16, 1, 12, 16, generator=generator)
    context = torch.randn(1, 5, transformer.config.text_embed_dim, generator=generator)
    embeddings = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, net = copy.deepcopy(transformer).to(dtype), copy.deepcopy(network).to(dtype)
        net.apply_to(model)
        net.set_cond_image(image)
        with torch.no_grad():
            model(x.to(dtype), torch.full((1,), 0.5, dtype=dtype), context.to(dtype), return_dict=False)
        embeddings[dtype] = net._embedding
        net.remove()
    half, reference = embeddings[torch.bfloat16], embeddings[torch.float32]
    assert half.dtype == torch.bfloat16
    assert (half.float() - reference).abs().mean() < 0.02 * reference.abs().mean()


def test_float32_on_a_gpu_decodes_in_tiles_and_nothing_else_does():
    from lllite.anima.toy import build_pipeline

    pipe = build_pipeline("test")
    assert precision.fit_decoder(pipe, torch.bfloat16, "cuda") is None and not pipe.vae.use_tiling
    assert precision.fit_decoder(pipe, torch.float32, "cpu") is None and not pipe.vae.use_tiling
    assert "tiles" in precision.fit_decoder(pipe, torch.float32, "cuda") and pipe.vae.use_tiling
    assert precision.fit_decoder(None, torch.float32, "cuda") is None  # no pipeline, nothing to change


def test_the_notebooks_tile_animas_decoder_on_a_t4_and_not_on_an_l4(gpu, monkeypatch):
    from lllite.anima.toy import build_pipeline
    from lllite.environment import Environment, load_pipeline

    monkeypatch.setattr("lllite.auto.load_pipeline", lambda name, **options: build_pipeline("test"))
    gpu(bf16=False)
    t4 = load_pipeline(Environment(True, "Tesla T4", "cuda", "anima", False, anima="/content/anima", bf16=False))
    gpu(bf16=True)
    l4 = load_pipeline(Environment(True, "NVIDIA L4", "cuda", "anima", False, anima="/content/anima", bf16=True))
    assert t4.vae.use_tiling and not l4.vae.use_tiling
