"""Held-out fidelity by strength on the tiny "test" SDXL."""
from __future__ import annotations

import pytest

from lllite.evaluate import fidelity_by_strength, plot_fidelity
from lllite.sdxl.toy import build_pipeline
from lllite.toy.shapes import eval_samples


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("test")


def test_fidelity_by_strength_scores_every_sample_at_every_strength(pipe):
    import lllite

    network = lllite.create_network(pipe.unet, cond_emb_dim=8, network_dim=8)
    samples = eval_samples(2, size=64)
    fidelity = fidelity_by_strength(pipe, network, samples, multipliers=(0.0, 1.0), num_inference_steps=2, progress=False)
    assert fidelity.multipliers == [0.0, 1.0]
    assert all(len(fidelity.iou[s]) == len(fidelity.edge_f[s]) == 2 for s in fidelity.multipliers)
    assert all(0.0 <= v <= 1.0 for s in fidelity.multipliers for v in fidelity.iou[s] + fidelity.edge_f[s])
    # a zero-initialised network changes nothing: every strength scores like the base model
    assert fidelity.iou[0.0] == fidelity.iou[1.0]
    legend = plot_fidelity(fidelity).axes[0].get_legend()
    assert sorted(t.get_text() for t in legend.get_texts()) == ["IoU at strength 0 (no control)", "edge F-score", "shape IoU"]
