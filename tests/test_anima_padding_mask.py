"""Real Anima's DiT concatenates a padding mask that diffusers resizes with torchvision: a DiT that needs it where
torchvision is missing is refused at load time, naming the install line. The path itself runs here with a
stand-in whose resize is a plain nearest interpolate (torchvision's wheels do not match this machine's torch)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_ANIMA_CONFIG

from lllite.anima.pipeline import ANIMA_EXTRA, check_padding_mask, transformer_inputs
from lllite.errors import PipelineLoadError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benches.realsize import nearest_resize_transforms  # noqa: E402


@pytest.fixture
def dit():
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    return CosmosTransformer3DModel(**{**TINY_ANIMA_CONFIG, "concat_padding_mask": True}).eval()


def test_a_dit_that_needs_torchvision_is_refused_naming_the_install_line(dit, monkeypatch):
    from diffusers.models.transformers import transformer_cosmos

    monkeypatch.setattr(transformer_cosmos, "transforms", None, raising=False)
    with pytest.raises(PipelineLoadError, match=f"torchvision.*{ANIMA_EXTRA.replace('[', '.').replace(']', '.')}"):
        check_padding_mask(dit, "ANIMA", "/content/anima")


def test_with_a_resize_the_padding_mask_path_runs_and_the_network_acts_on_it(dit, monkeypatch):
    import lllite
    from conftest import randomize
    from diffusers.models.transformers import transformer_cosmos

    monkeypatch.setattr(transformer_cosmos, "transforms", nearest_resize_transforms(), raising=False)
    check_padding_mask(dit)
    inputs = transformer_inputs(torch.randn(1, 16, 12, 16), torch.tensor([0.7]), torch.randn(1, 8, 32))
    with torch.no_grad():
        bare = dit(**inputs, return_dict=False)[0]
        network = randomize(lllite.create_network(dit)).apply_to(dit)
        network.set_cond_image(torch.rand(1, 3, 96, 128) * 2 - 1)
        controlled = dit(**inputs, return_dict=False)[0]
        network.remove()
    assert bare.shape == controlled.shape == (1, 16, 1, 12, 16) and not torch.equal(bare, controlled)
