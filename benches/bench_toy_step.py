"""The demo's training step on the toy SDXL: the control embeddings of every module computed together (one
matmul per layer for all modules, what training does) against one module at a time (what it did before, and
still does under gradient checkpointing).

One step as each of the demo's processes makes it: batch 8 at 128 px (16 x 16 latents), the toy recipe's
network (up path, 32/64, 28 modules), a forward through the frozen UNet, the backward, and the fused AdamW
step that training makes. The inputs are random: the time does not depend on their values.

    python benches/bench_toy_step.py --threads 1 --repeats 40  # one demo process's core, about a minute
    python benches/bench_toy_step.py --quick                   # 3 repetitions: a smoke test
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benches.common import interleaved, parse_config, summary, timed, write_results  # noqa: E402

import lllite  # noqa: E402
from lllite.sdxl import toy  # noqa: E402
from lllite.sdxl.network import LLLiteNetwork  # noqa: E402
from lllite.train.parts import make_optimizer  # noqa: E402

BATCH = 8


def main(argv: list[str] | None = None) -> dict:
    config = parse_config("toy_step", __doc__.splitlines()[0], sizes=[toy.IMAGE_SIZE], quick_sizes=[toy.IMAGE_SIZE],
                          argv=argv)
    size = config.sizes[0]
    pipe = toy.load_pretrained()
    unet = pipe.unet.requires_grad_(False)
    recipe = toy.ToyRecipe()
    network = lllite.create_network(unet, cond_emb_dim=recipe.cond_emb_dim, network_dim=recipe.network_dim,
                                    up_path=recipe.up_path, zero_init=False)
    network.apply_to(unet).train()
    optimizer = make_optimizer("adamw", network.parameters(), 1e-4, 1e-2, config.device)  # training's, fused
    generator = torch.Generator().manual_seed(0)
    latent = size // 8
    inputs = dict(
        sample=torch.randn(BATCH, 4, latent, latent, generator=generator),
        timestep=torch.randint(0, 1000, (BATCH,), generator=generator),
        encoder_hidden_states=torch.randn(BATCH, 16, unet.config.cross_attention_dim, generator=generator),
        added_cond_kwargs=dict(
            text_embeds=torch.randn(BATCH, pipe.text_encoder_2.config.projection_dim, generator=generator),
            time_ids=torch.tensor([[size, size, 0, 0, size, size]] * BATCH, dtype=torch.float32)),
    )
    target = torch.randn(inputs["sample"].shape, generator=generator)
    control = torch.rand(BATCH, 3, size, size, generator=generator) * 2 - 1

    def step():
        network.set_cond_image(control)
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(unet(**inputs).sample, target).backward()
        optimizer.step()

    def together():
        return {"together": timed(step, config.device)}

    def one_by_one():
        # Without the batched embedding before the first block, every group embeds its modules in its block.
        started = LLLiteNetwork._step_started
        LLLiteNetwork._step_started = lambda self: None
        try:
            return {"one by one": timed(step, config.device)}
        finally:
            LLLiteNetwork._step_started = started

    times = interleaved({"together": together, "one by one": one_by_one}, config.repeats, config.warmup,
                        progress="toy training step")
    stats = summary(times, baseline="one by one")
    for name, s in stats.items():
        print(f"{name:>10}: {1000 * s['median_s']:.1f} ms per step (CPU {1000 * s['cpu_median_s']:.1f} ms), "
              f"{s['ratio']:.3f} x one by one's time")
    results = {"batch": BATCH, "size": size, "modules": len(network), "stats": stats}
    print(f"written to {write_results(config, 'toy_step', results)}")
    return results


if __name__ == "__main__":
    main()
