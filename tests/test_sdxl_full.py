"""Exactness on a full-size SDXL UNet: built on the meta device, filled with local weights (~10 GB)."""
import pytest
import torch
from conftest import randomize
from kohya_reference import KohyaReference

import lllite
from lllite.sdxl.pipeline import fill_weights, sdxl_unet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sdxl():
    return fill_weights(sdxl_unet(device="cpu")).eval()


@pytest.fixture(autouse=True)
def _cores(all_cores):
    yield


def sdxl_inputs(batch=2, latent=(32, 32)):
    g = torch.Generator().manual_seed(0)
    h, w = latent
    return dict(
        sample=torch.randn(batch, 4, h, w, generator=g),
        timestep=torch.tensor(400),
        encoder_hidden_states=torch.randn(batch, 8, 2048, generator=g),
        added_cond_kwargs=dict(text_embeds=torch.randn(batch, 1280, generator=g),
                               time_ids=torch.tensor([[8 * h, 8 * w, 0, 0, 8 * h, 8 * w]] * batch, dtype=torch.float32)),
    )


def test_full_sdxl_unet_matches_kohyas_reference(sdxl):
    network = randomize(lllite.create_network(sdxl), scale=0.05)
    assert len(network) == 136
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inputs = sdxl_inputs()  # classifier-free guidance: UNet batch 2, one control image

    def forward():
        with torch.no_grad():
            return sdxl(**inputs).sample

    bare = forward()
    references = {}
    for multiplier in (1.0, 0.5):
        with KohyaReference(sdxl, (network.state_dict(), image, multiplier)):
            references[multiplier] = forward()

    network.apply_to(sdxl)
    network.set_cond_image(image)
    for multiplier in (1.0, 0.5):
        network.set_multiplier(multiplier)
        out = forward()
        scale = references[multiplier].abs().max()
        assert (references[multiplier] - bare).abs().max() > 1e-2 * scale  # the control is visible
        torch.testing.assert_close(out, references[multiplier], rtol=1e-5, atol=1e-5 * scale)
    network.set_multiplier(0.0)
    assert torch.equal(forward(), bare)
    network.remove()
    assert torch.equal(forward(), bare)


def test_full_sdxl_runs_at_sizes_that_are_not_multiples_of_32(sdxl):
    network = randomize(lllite.create_network(sdxl), scale=0.05).apply_to(sdxl)
    network.set_cond_image(torch.rand(1, 3, 200, 136) * 2 - 1)
    with torch.no_grad():
        out = sdxl(**sdxl_inputs(latent=(25, 17))).sample
    network.remove()
    assert out.shape == (2, 4, 25, 17) and torch.isfinite(out).all()
