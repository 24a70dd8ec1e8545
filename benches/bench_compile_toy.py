"""torch.compile with LLLite, tried as a new user would, on the toy SDXL: graphs, breaks, recompiles, seconds.

For the bare UNet, then with one LLLite network attached: ``pipe.unet = torch.compile(pipe.unet)``
and three 2-step generations, the strength, the step range, the control image and the seed changed
before the second and the third. Per generation: seconds (the first includes compiling) and what
dynamo compiled during it (``torch._dynamo.utils.counters``): frames, graphs, graph breaks; any
graph compiled after the first generation is a recompile. Then the median seconds of a generation
eager and compiled (interleaved repetitions), and the operations one UNet call launches, eager and
compiled (``benches.common.count_ops``). Each variant runs in a process of its
own with a fresh inductor cache directory: its compilation starts cold, as a new user's does.

    python benches/bench_compile_toy.py                  # torch.compile's defaults (inductor)
    python benches/bench_compile_toy.py --fullgraph      # fullgraph=True: a graph break is an error
    python benches/bench_compile_toy.py --backend eager  # dynamo alone, no code generation: fast
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lllite  # noqa: E402
from benches.common import RESULTS_DIR, BenchConfig, count_ops, write_results  # noqa: E402
from lllite.sdxl.toy import build_pipeline  # noqa: E402

SIZE = 128  # the toy's native size
STEPS = 2
REPEATS = 7  # timed generations per way of running, after the three above
GENERATIONS = [  # multiplier, step range, control image seed, generation seed
    (1.0, (0.0, 1.0), 0, 0),
    (0.5, (0.0, 0.5), 1, 1),
    (0.8, (0.5, 1.0), 2, 2),
]


def dynamo_counts() -> dict[str, int]:
    """What dynamo compiled so far (frames: the Python frames it translated, counted without fullgraph only)."""
    from torch._dynamo.utils import counters

    return {"frames": counters["frames"]["total"], "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values())}


def control(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def unet_call(pipe, unet):
    """One UNet call as the pipeline makes it (batch 2: classifier-free guidance)."""
    config = unet.config
    generator = torch.Generator().manual_seed(0)
    text = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    latent = SIZE // 8
    inputs = dict(
        sample=torch.randn(2, 4, latent, latent, generator=generator),
        timestep=pipe.scheduler.timesteps[0],
        encoder_hidden_states=torch.randn(2, pipe.tokenizer.model_max_length, config.cross_attention_dim,
                                          generator=generator),
        added_cond_kwargs=dict(text_embeds=torch.randn(2, text, generator=generator),
                               time_ids=torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)),
    )
    return lambda: unet(**inputs)


def run_variant(with_lllite: bool, backend: str, fullgraph: bool) -> dict:
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    pipe = build_pipeline("toy", seed=0)
    pipe.set_progress_bar_config(disable=True)
    network = None
    if with_lllite:
        network = lllite.create_network(pipe.unet).eval()
        network.apply_to(pipe)
    eager_unet = pipe.unet
    pipe.unet = compiled_unet = torch.compile(eager_unet, backend=backend, fullgraph=fullgraph)
    result: dict = {"generations": []}
    for multiplier, step_range, image, seed in GENERATIONS:
        if network is not None:
            network.set_multiplier(multiplier)
            network.set_step_range(*step_range)
            network.set_cond_image(control(image))
        before = dynamo_counts()
        start = time.perf_counter()
        try:
            pipe("a red circle", num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE, width=SIZE,
                 generator=torch.Generator().manual_seed(seed))
        except Exception as error:  # what a user meets, e.g. fullgraph=True refusing a graph break
            result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            break
        after = dynamo_counts()
        result["generations"].append({"seconds": time.perf_counter() - start,
                                      **{k: after[k] - before[k] for k in after}})
    result["totals"] = dynamo_counts()
    result["recompiles"] = None if "error" in result else sum(g["graphs"] for g in result["generations"][1:])
    if "error" not in result:
        seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
        cpu_seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(REPEATS):
            for way, unet in (("eager", eager_unet), ("compiled", compiled_unet)):
                pipe.unet = unet
                start, cpu = time.perf_counter(), time.process_time()
                pipe("a red circle", num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE, width=SIZE,
                     generator=torch.Generator().manual_seed(0))
                seconds[way].append(time.perf_counter() - start)
                cpu_seconds[way].append(time.process_time() - cpu)
        pipe.unet = compiled_unet
        result["generation_median_s"] = {way: statistics.median(times) for way, times in seconds.items()}
        result["generation_cpu_median_s"] = {way: statistics.median(times) for way, times in cpu_seconds.items()}
        result["recompiles_while_timing"] = dynamo_counts()["graphs"] - result["totals"]["graphs"]
    if network is not None:  # count the operations of a controlled step
        network.set_multiplier(1.0)
        network.set_step_range(0.0, 1.0)
    with torch.no_grad():
        for key, unet in (("ops_eager", eager_unet), ("ops_compiled", pipe.unet)):
            if key == "ops_compiled" and "error" in result:
                continue
            call = unet_call(pipe, unet)
            call()  # the pipeline's shapes: compiled already, this only warms up
            result[key] = count_ops(call, "cpu")["ops"]
    return result


def in_fresh_process(name: str, args: argparse.Namespace) -> dict:
    """Run one variant in a new Python process with an empty inductor cache; return its results."""
    with tempfile.TemporaryDirectory(prefix="inductor_cold_") as cache:
        out = Path(cache) / "result.json"
        command = [sys.executable, __file__, "--variant", name, "--backend", args.backend, "--result", str(out)]
        subprocess.run(command + (["--fullgraph"] if args.fullgraph else []), check=True,
                       env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor; eager: dynamo only)")
    parser.add_argument("--fullgraph", action="store_true", help="torch.compile(..., fullgraph=True)")
    parser.add_argument("--out", type=Path, help="JSON results file (default benches/results/compile_toy_cpu_<time>.json)")
    parser.add_argument("--variant", choices=["unet", "lllite"], help=argparse.SUPPRESS)  # one variant, in this process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.variant:
        torch._inductor.config.cpp.enable_kernel_profile = True  # inductor's CPU kernels show in the profiler
        args.result.write_text(json.dumps(run_variant(args.variant == "lllite", args.backend, args.fullgraph)))
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    config = BenchConfig(device="cpu", dtype="float32", sizes=[SIZE], repeats=1, warmup=0, threads=1,
                         out=args.out or RESULTS_DIR / f"compile_toy_cpu_{stamp}.json")
    results = {"backend": args.backend, "fullgraph": args.fullgraph, "size": SIZE, "steps": STEPS,
               "generations": [dict(multiplier=m, step_range=r, image_seed=i, seed=s) for m, r, i, s in GENERATIONS]}
    for name in ("unet", "lllite"):
        print(f"{name}: compiling and generating ...", file=sys.stderr)
        row = results[name] = in_fresh_process(name, args)
        seconds = ", ".join(f"{g['seconds']:.1f}" for g in row["generations"])
        frames = "-" if args.fullgraph else row["totals"]["frames"]
        print(f"  {name:<7} frames {frames:>3}  graphs {row['totals']['graphs']:>3}  "
              f"graph breaks {row['totals']['graph_breaks']:>3}  recompiles after the first generation "
              f"{row['recompiles']!s:>4}  seconds per generation [{seconds}]  ops per UNet call: eager "
              f"{row['ops_eager']}, compiled {row.get('ops_compiled', '-')}" + (f"\n  error: {row['error']}" if "error" in row else ""))
        if "generation_median_s" in row:
            wall, cpu = row["generation_median_s"], row["generation_cpu_median_s"]
            print(f"  {'':<7} then a generation takes {wall['eager']:.3f} s eager, {wall['compiled']:.3f} s compiled; "
                  f"CPU time {cpu['eager']:.3f} s and {cpu['compiled']:.3f} s (medians of {REPEATS}); "
                  f"recompiles meanwhile: {row['recompiles_while_timing']}")
    print(f"wrote {write_results(config, 'compile_toy', results)}")


if __name__ == "__main__":
    main()
