"""Anima's objective as kohya's Anima LLLite trainer defines it: rectified flow, its timestep draws and weights."""
import math

import pytest
import torch

from lllite.anima.objective import flux_mu, loss_weights, noisy_latents, sample_sigmas, shift_sigmas, velocity
from lllite.objective import noise_loss


def test_the_flow_path_runs_from_the_clean_latent_to_the_noise_and_the_target_is_its_velocity():
    clean, noise = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    sigmas = torch.tensor([0.0, 0.25, 1.0])
    noisy = noisy_latents(clean, noise, sigmas)
    torch.testing.assert_close(noisy[0], clean[0])
    torch.testing.assert_close(noisy[1], 0.75 * clean[1] + 0.25 * noise[1])
    torch.testing.assert_close(noisy[2], noise[2])
    step = 1e-3
    slope = (noisy_latents(clean, noise, sigmas + step) - noisy) / step
    torch.testing.assert_close(slope, velocity(clean, noise), rtol=1e-2, atol=1e-2)
    assert noise_loss(velocity(clean, noise), noise - clean).item() == 0.0


def draws(kind, **options):
    return sample_sigmas(kind, 20000, torch.Generator().manual_seed(0), **options)


def test_sigmoid_is_the_logit_normal_and_kohyas_default_scale():
    sigmas = draws("sigmoid")
    assert sigmas.min() > 0 and sigmas.max() < 1
    assert abs(sigmas.median().item() - 0.5) < 0.02
    # P(t < 0.1) = P(z < logit(0.1) = -2.197) = 1.4%, fewer than uniform's 10%
    assert (sigmas < 0.1).float().mean().item() == pytest.approx(0.014, abs=0.005)
    wider = draws("sigmoid", sigmoid_scale=3.0)
    assert (wider < 0.1).float().mean().item() > 0.2


def test_shift_moves_the_same_draws_towards_noise():
    base, shifted = draws("sigmoid"), draws("shift", discrete_flow_shift=3.0)
    torch.testing.assert_close(shifted, 3 * base / (1 + 2 * base))
    torch.testing.assert_close(draws("shift", discrete_flow_shift=1.0), base)
    assert shifted.median().item() == pytest.approx(0.75, abs=0.02)  # 3 * 0.5 / 2


def test_flux_shift_follows_the_latents_token_count():
    assert flux_mu((32, 32)) == pytest.approx(0.5)  # 256 tokens
    assert flux_mu((128, 128)) == pytest.approx(1.15)  # 4096 tokens: 1024 px
    base = draws("sigmoid")
    mu = math.exp(1.15)
    torch.testing.assert_close(draws("flux_shift", latent_size=(128, 128)), mu / (mu + (1 / base - 1)))


def test_sigma_draws_the_schedulers_discrete_levels():
    sigmas = draws("sigma", discrete_flow_shift=3.0)
    levels = shift_sigmas(torch.arange(1, 1001) / 1000, 3.0)
    assert torch.isin(sigmas, levels).all()
    assert sigmas.max() <= 1.0 and sigmas.min() >= levels.min()


def test_weighting_schemes():
    sigmas = torch.tensor([0.25, 0.5, 1.0])
    torch.testing.assert_close(loss_weights("none", sigmas), torch.ones(3))
    torch.testing.assert_close(loss_weights("sigma_sqrt", sigmas), torch.tensor([16.0, 4.0, 1.0]))
    torch.testing.assert_close(loss_weights("cosmap", sigmas), 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2)))
    with pytest.raises(ValueError, match="logit_normal"):
        loss_weights("logit_normal", sigmas)
    with pytest.raises(ValueError, match="cubic"):
        sample_sigmas("cubic", 2, torch.Generator())
