"""SDXL's objective, written once: schedule, draws, loss weights and learning-rate schedule, checked by value."""
from __future__ import annotations

import math

import pytest
import torch

from lllite.objective import lr_factor, noise_loss
from lllite.sdxl.objective import (DEBIASED_SNR_CAP, SDXL_SCHEDULE, loss_weights, noise_scheduler,
                              sample_noise, sample_timesteps, signal_to_noise)
from lllite.sdxl.toy import make_scheduler


def sdxl_alphas_cumprod() -> torch.Tensor:
    """scaled_linear: betas evenly spaced in sqrt between 0.00085 and 0.012, over 1000 steps."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64).square()
    return (1 - betas).cumprod(0)


def test_the_noise_schedule_is_sdxls_and_sampling_uses_the_same_betas():
    scheduler = noise_scheduler()
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), sdxl_alphas_cumprod(), rtol=1e-6, atol=1e-7)
    assert scheduler.config.prediction_type == "epsilon"
    torch.testing.assert_close(make_scheduler().betas, scheduler.betas, rtol=0, atol=0)
    assert SDXL_SCHEDULE["num_train_timesteps"] == len(scheduler.alphas_cumprod) == 1000


def test_snr_runs_from_about_1175_at_the_cleanest_timestep_to_almost_0_at_the_noisiest():
    snr = signal_to_noise(sdxl_alphas_cumprod())
    assert float(snr[0]) == pytest.approx((1 - 0.00085) / 0.00085)  # 1175.5
    assert 500 < float(snr[1]) < DEBIASED_SNR_CAP  # only t = 0 lies above the cap
    assert float(snr[-1]) == pytest.approx(0.00468, rel=0.01)
    assert torch.all(snr[1:] < snr[:-1])
    torch.testing.assert_close(signal_to_noise(torch.tensor([0.25, 0.5, 0.9])), torch.tensor([1 / 3, 1.0, 9.0]))


def test_uniform_timesteps_are_torchs_randint_and_cubic_ones_are_one_minus_u_cubed():
    uniform = sample_timesteps("uniform", 5, torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(3)))
    cubic = sample_timesteps("cubic", 5, torch.Generator().manual_seed(3))
    u = torch.rand(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(cubic, ((1 - u**3) * 1000).long())
    assert cubic.dtype == uniform.dtype == torch.int64


def test_cubic_timesteps_average_750_of_1000_and_uniform_ones_500():
    generator = torch.Generator().manual_seed(0)
    cubic = sample_timesteps("cubic", 20000, generator).float()
    uniform = sample_timesteps("uniform", 20000, generator).float()
    assert 0 <= cubic.min() and cubic.max() <= 999 and 0 <= uniform.min() and uniform.max() <= 999
    assert cubic.mean().item() == pytest.approx(750, abs=8)  # E[1 - u^3] = 3/4
    assert uniform.mean().item() == pytest.approx(499.5, abs=8)
    with pytest.raises(ValueError, match="'logit' is not one of"):
        sample_timesteps("logit", 1, generator)


def test_the_noise_offset_adds_one_draw_per_sample_and_channel_after_the_noise():
    plain = sample_noise((2, 4, 3, 3), torch.Generator().manual_seed(1))
    offset = sample_noise((2, 4, 3, 3), torch.Generator().manual_seed(1), noise_offset=0.1)
    shift = offset - plain
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift))  # constant over each image and channel
    generator = torch.Generator().manual_seed(1)
    torch.randn((2, 4, 3, 3), generator=generator)
    torch.testing.assert_close(shift[..., 0, 0], 0.1 * torch.randn((2, 4), generator=generator))


def test_loss_weights_are_min_snr_and_debiased_with_one_cap_at_1000():
    snr = torch.tensor([1 / 3, 1.0, 9.0, 4000.0])
    assert torch.equal(loss_weights(snr), torch.ones(4))
    # min-SNR: 1 while SNR <= gamma, then gamma / SNR.
    torch.testing.assert_close(loss_weights(snr, min_snr_gamma=5.0), torch.tensor([1.0, 1.0, 5 / 9, 5 / 4000]))
    # debiased: 1 / sqrt(SNR), SNR capped at 1000 (kohya's cap).
    debiased = torch.tensor([3**0.5, 1.0, 1 / 3, 1000**-0.5])
    torch.testing.assert_close(loss_weights(snr, debiased=True), debiased)
    torch.testing.assert_close(loss_weights(snr, min_snr_gamma=5.0, debiased=True),
                               torch.tensor([1.0, 1.0, 5 / 9, 5 / 4000]) * debiased)


def test_on_sdxls_schedule_the_cap_changes_the_debiased_weight_at_t_0_only():
    snr = signal_to_noise(sdxl_alphas_cumprod()).float()
    weights = loss_weights(snr, debiased=True)
    assert weights[0].item() == pytest.approx(1000**-0.5)
    torch.testing.assert_close(weights[1:], snr[1:].rsqrt())


def test_the_noise_loss_is_each_samples_mean_squared_error_times_its_weight_averaged():
    prediction = torch.zeros(2, 4, 2, 2)
    noise = torch.stack([torch.ones(4, 2, 2), torch.full((4, 2, 2), 2.0)])  # per-sample MSE 1 and 4
    assert noise_loss(prediction, noise).item() == 2.5
    assert noise_loss(prediction, noise, torch.tensor([1.0, 0.5])).item() == 1.5
    assert noise_loss(prediction.bfloat16(), noise).dtype == torch.float32


def test_the_learning_rate_warms_up_linearly_and_decays_to_its_floor():
    assert [lr_factor("constant_with_warmup", step, 4, 100) for step in range(6)] == [0, 0.25, 0.5, 0.75, 1, 1]
    assert lr_factor("constant", 0, 4, 100) == 1.0
    assert lr_factor("linear", 52, 4, 100) == 0.5 and lr_factor("linear", 100, 4, 100) == 0.0
    assert lr_factor("cosine", 52, 4, 100) == pytest.approx(0.5) and lr_factor("cosine", 100, 4, 100) == 0.0
    # The toy's pretraining: cosine down to 10% of the peak.
    assert lr_factor("cosine", 100, 4, 100, min_lr_rate=0.1) == pytest.approx(0.1)
    assert lr_factor("cosine", 52, 4, 100, min_lr_rate=0.1) == pytest.approx(0.55)
    for step in (200, 1000, 3100, 5999):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 200) / 5800))
        assert lr_factor("cosine", step, 200, 6000, min_lr_rate=0.1) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="'step' is not one of"):
        lr_factor("step", 0, 0, 1)
