"""Training cost at SDXL's real size: one forward + backward of LLLite against one of diffusers' ControlNet.

Both train against the same frozen SDXL UNet, batch 1, with an MSE loss on the UNet's output, as
their training scripts do. LLLite: 136 modules (32/64), its conditioning embeddings recomputed with
gradients. ControlNet: ``ControlNetModel.from_unet``, every parameter trained; the gradient flows
back through the UNet's decoder to its residuals. Neither uses gradient checkpointing.

Per variant: median seconds of forward + backward (interleaved repetitions), and the peak memory the
step adds above the loaded models (gradients + activations kept for backward). The optimizer step
is left out: its state is counted exactly by ``bench_counts.py`` and added to the total reported here.

    python benches/bench_training.py --quick           # 256 px, 3 repetitions
    python benches/bench_training.py --device cuda
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benches.common import (BenchConfig, PeakMemory, control_image, controlnet_meta, gib, interleaved,  # noqa: E402
                            lllite_network, materialize, parameter_count, parse_config, require_memory,
                            sdxl_unet_meta, summary, timed, unet_inputs, write_results)

BATCH = 1
ADAMW_BYTES = 8  # exp_avg and exp_avg_sq in fp32, per trainable parameter


def build(config: BenchConfig) -> dict:
    unet_meta = sdxl_unet_meta()
    unet = materialize(unet_meta, config, seed=0)
    controlnet = materialize(controlnet_meta(unet_meta), config, seed=3).train().requires_grad_(True)
    network = lllite_network(unet, up_path=False, config=config, seed=1).train()
    return {"unet": unet, "controlnet": controlnet, "lllite": network}


def rounds_at(size: int, models: dict, config: BenchConfig, peaks: dict[str, list[int]]) -> dict:
    unet, controlnet, network = models["unet"], models["controlnet"], models["lllite"]
    inputs = unet_inputs(size, BATCH, config)
    target = torch.randn_like(inputs["sample"])
    image = control_image(size, BATCH, config)

    def lllite_step():
        loss = F.mse_loss(unet(**inputs).sample.float(), target.float())
        loss.backward()

    def controlnet_step():
        down, mid = controlnet(**inputs, controlnet_cond=image, return_dict=False)
        out = unet(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        F.mse_loss(out.float(), target.float()).backward()

    def lllite_round():
        network.apply_to(unet)
        network.set_cond_image(image)
        try:
            with PeakMemory(config.device) as peak:
                timing = timed(lllite_step, config.device)
        finally:
            network.remove()
            network.zero_grad(set_to_none=True)
        peaks.setdefault("lllite", []).append(peak.extra_bytes)
        return {"lllite": timing}

    def controlnet_round():
        with PeakMemory(config.device) as peak:
            timing = timed(controlnet_step, config.device)
        controlnet.zero_grad(set_to_none=True)
        peaks.setdefault("controlnet", []).append(peak.extra_bytes)
        return {"controlnet": timing}

    return {"lllite": lllite_round, "controlnet": controlnet_round}


def main(argv: list[str] | None = None) -> None:
    config = parse_config("training", __doc__.splitlines()[0], sizes=[256], quick_sizes=[256], argv=argv)
    need_gib = {"float32": 30, "bfloat16": 15, "float16": 15}[config.dtype]
    require_memory(config, need_gib)
    print(f"building SDXL UNet, ControlNet, LLLite on {config.device} in {config.dtype} ...", file=sys.stderr)
    models = build(config)
    element = models["unet"].dtype.itemsize
    trainable = {key: parameter_count(models[key], trainable_only=True) for key in ("lllite", "controlnet")}
    weights = {key: parameter_count(model) * element for key, model in models.items()}
    results = {"batch": BATCH, "trainable_parameters": trainable, "weight_bytes": weights, "sizes": {}}
    for size in config.sizes:
        peaks: dict[str, list[int]] = {}
        times = interleaved(rounds_at(size, models, config, peaks), config.repeats, config.warmup,
                            progress=f"{size}px")
        stats = summary(times, baseline="controlnet")
        for key in stats:
            step_peak = max(peaks[key][config.warmup:])
            stats[key]["step_peak_extra_bytes"] = step_peak
            stats[key]["adamw_state_bytes"] = ADAMW_BYTES * trainable[key]
            # what training this variant alone holds at its peak: frozen UNet, trained weights, the step, AdamW
            stats[key]["total_peak_bytes"] = weights["unet"] + weights[key] + step_peak + ADAMW_BYTES * trainable[key]
        for key in stats:
            for field in ("step_peak_extra_bytes", "total_peak_bytes"):
                stats[key][field.replace("_bytes", "_ratio")] = stats[key][field] / stats["controlnet"][field]
        results["sizes"][str(size)] = stats
        print(f"\n{size}x{size}, batch {BATCH}: forward + backward, medians (x CN: ratio to ControlNet)")
        print(f"  {'variant':<12}{'wall s':>8}{'x CN':>7}{'CPU s':>8}{'x CN':>7}{'step peak':>12}{'x CN':>7}"
              f"{'total':>12}{'x CN':>7}")
        for key in ("lllite", "controlnet"):
            row = stats[key]
            print(f"  {key:<12}{row['median_s']:>8.2f}{row['ratio']:>7.3f}{row['cpu_median_s']:>8.2f}{row['cpu_ratio']:>7.3f}"
                  f"{gib(row['step_peak_extra_bytes']):>12}{row['step_peak_extra_ratio']:>7.3f}"
                  f"{gib(row['total_peak_bytes']):>12}{row['total_peak_ratio']:>7.3f}")
        path = write_results(config, "training", results)
    print(f"  trainable parameters: LLLite {trainable['lllite']:,}, ControlNet {trainable['controlnet']:,} "
          f"({trainable['lllite'] / trainable['controlnet']:.4f}x)")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
