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

With ``--compile [MODE]``, the question is what LLLite costs once both are compiled: the bare UNet
and a second UNet with LLLite (136 modules) attached, each eager (``unet``, ``lllite``) and through
``torch.compile(unet, mode=MODE, fullgraph=True, dynamic=False)`` (``unet_compiled``,
``lllite_compiled``), interleaved as above. Per variant also the operations one step launches
(``count_ops``: aten ops and compiled kernels; on a GPU the device kernels), and per compiled
variant its first call (compilation), graphs and graph breaks.

    python benches/bench_inference.py --quick          # 256 px, 3 repetitions: minutes on a CPU
    python benches/bench_inference.py --device cuda    # 256, 512, 768, 1024 px, 5 repetitions
    python benches/bench_inference.py --quick --compile                                   # CPU, 256 px
    python benches/bench_inference.py --device cuda --sizes 1024 --compile reduce-overhead   # the GPU target
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benches.common import (BenchConfig, Timing, control_image, controlnet_meta, count_ops, interleaved,  # noqa: E402
                            lllite_embeddings, lllite_network, materialize, parameter_count, parse_config,
                            require_memory, sdxl_unet_meta, summary, t2i_adapter_meta, timed, unet_inputs,
                            write_results)

BATCH = 2  # classifier-free guidance
ORDER = ["unet", "lllite", "lllite_naive", "lllite_up", "lllite_up_naive", "t2i_adapter", "controlnet"]
ONCE = ["lllite_embedding", "lllite_up_embedding", "t2i_adapter_features"]
COMPILED_ORDER = ["unet", "lllite", "unet_compiled", "lllite_compiled"]


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


# ---------------------------------------------------------------------------------------- --compile
def build_compiled(config: BenchConfig) -> dict:
    """The bare UNet, and a second one with LLLite attached: both compiled graphs stay cached side by side."""
    bare = materialize(sdxl_unet_meta(), config, seed=0)  # materialize fills the module it is given
    controlled = materialize(sdxl_unet_meta(), config, seed=0)
    network = lllite_network(controlled, up_path=False, config=config, seed=1).eval().apply_to(controlled)
    # isolated: dynamo does not watch hooks, so the two UNets must not share compiled code
    compiled = {key: torch.compile(model, mode=config.compile, fullgraph=True, dynamic=False, isolate_recompiles=True)
                for key, model in (("unet", bare), ("lllite", controlled))}
    return {"unet": bare, "lllite_unet": controlled, "lllite": network,
            "unet_compiled": compiled["unet"], "lllite_compiled": compiled["lllite"]}


def compiled_at(size: int, models: dict, config: BenchConfig) -> tuple[dict, dict]:
    """Timed rounds of the four variants at one size, and what is measured once per variant."""
    from torch._dynamo.utils import counters

    inputs = unet_inputs(size, BATCH, config)
    models["lllite"].set_cond_image(control_image(size, 1, config))
    calls = {"unet": models["unet"], "lllite": models["lllite_unet"],
             "unet_compiled": models["unet_compiled"], "lllite_compiled": models["lllite_compiled"]}
    once: dict[str, dict] = {}
    for name, model in calls.items():
        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        first = timed(lambda: model(**inputs), config.device)  # compiles the compiled variants
        once[name] = {"first_call_s": first.wall_s, "first_call_cpu_s": first.cpu_s,
                      "graphs": counters["stats"]["unique_graphs"] - graphs,
                      "graph_breaks": sum(counters["graph_break"].values()) - breaks,
                      **count_ops(lambda: model(**inputs), config.device)}
    rounds = {name: (lambda model=model, name=name: {name: timed(lambda: model(**inputs), config.device)})
              for name, model in calls.items()}
    return rounds, once


def report_compiled(size: int, stats: dict, once: dict, config: BenchConfig) -> None:
    cpu = config.device == "cpu"
    kernels = "kernels" in once["unet"]
    print(f"\n{size}x{size}, batch {BATCH} (CFG), per denoising step, medians (compile mode {config.compile}):")
    print(f"  {'variant':<17}{'wall s':>9}{'x bare':>8}" + (f"{'CPU s':>9}{'x bare':>8}" if cpu else "")
          + f"{'ops':>7}" + (f"{'kernels':>9}" if kernels else "") + f"{'graphs':>8}{'breaks':>8}{'first call s':>14}")
    for name in COMPILED_ORDER:
        row, first = stats[name], once[name]
        print(f"  {name:<17}{row['median_s']:>9.3f}{row['vs_bare']:>8.3f}"
              + (f"{row['cpu_median_s']:>9.3f}{row['cpu_vs_bare']:>8.3f}" if cpu else "")
              + f"{first['ops']:>7}" + (f"{first['kernels']:>9}" if kernels else "")
              + f"{first['graphs']:>8}{first['graph_breaks']:>8}{first['first_call_s']:>14.1f}")
    print("  x bare: LLLite against the bare UNet run the same way (eager against eager, compiled against compiled)")


def main_compiled(config: BenchConfig) -> None:
    if config.device == "cpu":
        torch._inductor.config.cpp.enable_kernel_profile = True  # inductor's CPU kernels show in the profiler
    weights_gib = {"float32": 2 * 10.3, "bfloat16": 2 * 5.2, "float16": 2 * 5.2}[config.dtype]
    require_memory(config, weights_gib + 4)
    print(f"building two SDXL UNets (bare, and with LLLite) on {config.device} in {config.dtype} ...", file=sys.stderr)
    models = build_compiled(config)
    results = {"batch": BATCH, "compile_mode": config.compile, "lllite_modules": len(models["lllite"]), "sizes": {}}
    with torch.no_grad():
        for size in config.sizes:
            rounds, once = compiled_at(size, models, config)
            times = interleaved(rounds, config.repeats, config.warmup, progress=f"{size}px")
            stats = summary(times, baseline="unet")
            for name in COMPILED_ORDER:
                bare = stats["unet_compiled" if name.endswith("_compiled") else "unet"]
                stats[name]["vs_bare"] = stats[name]["median_s"] / bare["median_s"]
                stats[name]["cpu_vs_bare"] = stats[name]["cpu_median_s"] / bare["cpu_median_s"]
                stats[name].update(once[name])
            results["sizes"][str(size)] = stats
            report_compiled(size, stats, once, config)
            path = write_results(config, "inference_compile", results)
    print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> None:
    config = parse_config("inference", __doc__.splitlines()[0], sizes=[256, 512, 768, 1024], quick_sizes=[256],
                          argv=argv, compile_option=True)
    if config.compile:
        return main_compiled(config)
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
