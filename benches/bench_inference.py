"""Inference cost per denoising step, at SDXL's real size: LLLite against the bare UNet and its rivals.

One step = what an SDXL pipeline runs per step with classifier-free guidance: the UNet on a batch of
2 (uncond, cond), one control image. Variants, all against the same UNet in one process:

- ``unet``: the bare UNet.
- ``lllite``: + LLLite, 136 modules (kohya's canny dimensions 32/64), embedding cached per image.
- ``lllite_naive``: the same, recomputing every module's conditioning embedding in the step, as a
  port that does not cache it would (measured by setting the control image again before the step).
- ``lllite_up`` / ``lllite_up_naive``: with the up path's transformer blocks too (280 modules).
- ``controlnet``: + diffusers' SDXL ControlNet (``ControlNetModel.from_unet``), run every step.
- ``t2i_adapter``: + an SDXL T2I-Adapter (TencentARC's config); its features are computed once per
  image, so a step adds only the residuals.

Once per control image, timed separately: ``lllite_embedding`` (all 136 embeddings),
``lllite_up_embedding`` (280) and ``t2i_adapter_features``.

    python benches/bench_inference.py --quick          # 256 px, 3 repetitions: minutes on a CPU
    python benches/bench_inference.py --device cuda    # 256, 512, 768, 1024 px, 5 repetitions
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benches.common import (BenchConfig, Timing, control_image, controlnet_meta, interleaved, lllite_embeddings,  # noqa: E402
                            lllite_network, materialize, parameter_count, parse_config, require_memory,
                            sdxl_unet_meta, summary, t2i_adapter_meta, timed, unet_inputs, write_results)

BATCH = 2  # classifier-free guidance
ORDER = ["unet", "lllite", "lllite_naive", "lllite_up", "lllite_up_naive", "t2i_adapter", "controlnet"]
ONCE = ["lllite_embedding", "lllite_up_embedding", "t2i_adapter_features"]


def build(config: BenchConfig) -> dict:
    unet_meta = sdxl_unet_meta()
    unet = materialize(unet_meta, config, seed=0)
    return {
        "unet": unet,
        "controlnet": materialize(controlnet_meta(unet_meta), config, seed=3),
        "t2i_adapter": materialize(t2i_adapter_meta(), config, seed=4),
        "lllite": lllite_network(unet, up_path=False, config=config, seed=1).eval(),
        "lllite_up": lllite_network(unet, up_path=True, config=config, seed=2).eval(),
    }


def rounds_at(size: int, models: dict, config: BenchConfig) -> dict:
    """The timed rounds at one image size; each returns ``{variant: Timing}``."""
    unet, controlnet, adapter = models["unet"], models["controlnet"], models["t2i_adapter"]
    inputs = unet_inputs(size, BATCH, config)
    image = control_image(size, 1, config)
    device = config.device

    def bare():
        return unet(**inputs)

    def with_controlnet():
        down, mid = controlnet(**inputs, controlnet_cond=image.repeat(BATCH, 1, 1, 1), return_dict=False)
        return unet(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    # as diffusers' SDXL adapter pipeline does: features once, repeated for both CFG halves, cloned per step
    adapter_state = [torch.cat([f] * BATCH) for f in adapter(image)]

    def with_adapter():
        return unet(**inputs, down_intrablock_additional_residuals=[s.clone() for s in adapter_state])

    def lllite_round(key: str) -> dict[str, Timing]:
        network = models[key].apply_to(unet)
        try:
            network.set_cond_image(image)  # clears the cache: the first step computes every embedding
            naive = timed(bare, device)
            cached = timed(bare, device)
        finally:
            network.remove()
        return {f"{key}_naive": naive, key: cached}

    return {
        "unet": lambda: {"unet": timed(bare, device)},
        "lllite": lambda: lllite_round("lllite"),
        "lllite_up": lambda: lllite_round("lllite_up"),
        "t2i_adapter": lambda: {"t2i_adapter": timed(with_adapter, device)},
        "controlnet": lambda: {"controlnet": timed(with_controlnet, device)},
        "once": lambda: {
            "lllite_embedding": timed(lambda: lllite_embeddings(models["lllite"], image, size), device),
            "lllite_up_embedding": timed(lambda: lllite_embeddings(models["lllite_up"], image, size), device),
            "t2i_adapter_features": timed(lambda: adapter(image), device),
        },
    }


def report(size: int, stats: dict, config: BenchConfig) -> None:
    cpu = config.device == "cpu"
    print(f"\n{size}x{size}, batch {BATCH} (CFG), per denoising step, medians:")
    print(f"  {'variant':<22}{'wall s':>9}{'x UNet':>8}" + (f"{'CPU s':>9}{'x UNet':>8}" if cpu else ""))
    for name in ORDER + ONCE:
        row = stats[name]
        if name == ONCE[0]:
            print("  once per control image (x UNet: a fraction of one bare step):")
        print(f"  {name:<22}{row['median_s']:>9.3f}{row['ratio']:>8.3f}"
              + (f"{row['cpu_median_s']:>9.3f}{row['cpu_ratio']:>8.3f}" if cpu else ""))


def main(argv: list[str] | None = None) -> None:
    config = parse_config("inference", __doc__.splitlines()[0], sizes=[256, 512, 768, 1024], quick_sizes=[256],
                          argv=argv)
    weights_gib = {"float32": 16, "bfloat16": 8, "float16": 8}[config.dtype]
    require_memory(config, weights_gib + 3)
    print(f"building SDXL UNet, ControlNet, T2I-Adapter, LLLite on {config.device} in {config.dtype} ...", file=sys.stderr)
    models = build(config)
    counts = {name: parameter_count(model) for name, model in models.items()}
    counts["lllite_modules"], counts["lllite_up_modules"] = len(models["lllite"]), len(models["lllite_up"])
    results = {"batch": BATCH, "parameters": counts, "sizes": {}}
    with torch.no_grad():
        for size in config.sizes:
            times = interleaved(rounds_at(size, models, config), config.repeats, config.warmup, progress=f"{size}px")
            stats = summary(times, baseline="unet")
            results["sizes"][str(size)] = stats
            report(size, stats, config)
            path = write_results(config, "inference", results)  # after every size: a long run keeps what it measured
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
