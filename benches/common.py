"""What every benchmark shares: the models at SDXL's real size, their inputs, timing, memory, results.

Every model is built from its configuration on the ``meta`` device, cast there (free), and only then
given memory in the benchmark's dtype, so a bf16 run never holds an fp32 copy. Weights are filled
locally (:func:`lllite.sdxl.fill_weights`): timings do not depend on the values, and nothing is
downloaded.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple

import torch
import torch.nn as nn

import lllite
from lllite.files import write_text_atomic
from lllite.sdxl.module import token_grid
from lllite.sdxl.pipeline import SDXL_UNET_CONFIG, fill_weights, sdxl_unet

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROMPT_TOKENS = 77  # one CLIP context, as SDXL pipelines pass for a short prompt
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: What Colab's T4 and L4 offer, in bytes as Colab lists them (15 GB, 24 GB); a run on a GPU records its own total.
T4_BYTES, L4_BYTES = 15 * 10**9, 24 * 10**9
#: The CUDA context and libraries outside PyTorch's allocator, which max_memory_allocated does not see: about 0.3
#: to 0.5 GB. Used only where it cannot be measured (a CPU estimate).
CUDA_CONTEXT_BYTES = 512 * 2**20
#: SDXL's UNet layout (the same blocks and transformer depths, so LLLite still has 136 modules) at a
#: tiny width: the models of ``--quick`` runs that must take seconds on a CPU.
TINY_SDXL_UNET_CONFIG = {**SDXL_UNET_CONFIG, "block_out_channels": [32, 64, 128], "attention_head_dim": [1, 2, 4],
                         "cross_attention_dim": 64, "addition_time_embed_dim": 8,
                         "projection_class_embeddings_input_dim": 6 * 8 + 32, "norm_num_groups": 8, "sample_size": 8}


@dataclass
class BenchConfig:
    """Settings every benchmark script takes from its command line.

    Args:
        device: ``cpu`` or ``cuda`` (or ``cuda:N``).
        dtype: weights and activations of every model, one of :data:`DTYPES`.
        sizes: square image sizes in pixels (multiples of 32).
        repeats: interleaved repetitions per variant; the medians are reported.
        warmup: untimed rounds through every variant before timing.
        quick: the few-minutes setting (recorded in the results).
        threads: CPU threads for PyTorch (None: its default, one per core).
        out: where the JSON goes.
        overwrite: replace ``out`` if it exists.
        compile: ``torch.compile`` mode for the scripts that take ``--compile`` (None: eager only).
        options: the script's own flags, by name (those ``parse_config``'s ``add_arguments`` added).
    """

    device: str = "cpu"
    dtype: str = "bfloat16"
    sizes: list[int] = field(default_factory=lambda: [512])
    repeats: int = 5
    warmup: int = 1
    quick: bool = False
    threads: int | None = None
    out: Path | None = None
    overwrite: bool = False
    compile: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def parse_config(name: str, description: str, sizes: list[int], quick_sizes: list[int],
                 argv: list[str] | None = None, default_device: str = "cpu",
                 add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 compile_option: bool = False) -> BenchConfig:
    """Read a :class:`BenchConfig` from the command line; a bad argument exits with one clear line.

    Args:
        default_device: ``--device`` when it is not given.
        add_arguments: adds a script's own flags to the parser; their values land in ``config.options``.
        compile_option: add ``--compile [MODE]``; its results go to ``<name>_compile_<device>_<time>.json``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default=default_device, help=f"cpu or cuda (default {default_device})")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="default: float16 on cuda; on cpu bfloat16 (half the memory of float32) where "
                             "the CPU has bf16 instructions, float32 elsewhere (bf16 convolutions are hundreds "
                             "of times slower without them)")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"image sizes in pixels (default {sizes}, --quick {quick_sizes})")
    parser.add_argument("--repeats", type=int, help="interleaved repetitions per variant (default 5, --quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (default 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions: minutes on a CPU")
    parser.add_argument("--threads", type=int, help="CPU threads (default: one per core); on a machine shared with "
                        "other work, 1 keeps threads from waiting on each other")
    parser.add_argument("--out", type=Path, help=f"JSON results file (default benches/results/{name}_<device>_<time>.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    if compile_option:
        parser.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES,
                            help="compare torch.compile(fullgraph=True) variants (mode: default; on a GPU "
                                 "reduce-overhead adds CUDA graphs)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    compile_mode = getattr(args, "compile", None)
    if compile_mode:
        name = f"{name}_compile"
    common = {f.name for f in fields(BenchConfig)}
    options = {key: value for key, value in vars(args).items() if key not in common}

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: --device {device}: this PyTorch sees no CUDA GPU; use --device cpu\n")
    if not (device == "cpu" or device.startswith("cuda")):
        parser.exit(2, f"{parser.prog}: error: --device must be cpu or cuda[:N], got {device!r}\n")
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "bfloat16" if cpu_has_fast_bf16() else "float32")
    chosen = args.sizes or (quick_sizes if args.quick else sizes)
    bad = [s for s in chosen if s <= 0 or s % 32]
    if bad:
        parser.exit(2, f"{parser.prog}: error: --sizes must be positive multiples of 32 (LLLite's coarsest grid), got {bad}\n")
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.exit(2, f"{parser.prog}: error: --repeats and --threads must be >= 1, --warmup >= 0\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"{name}_{device.split(':')[0]}_{stamp}.json"
    if out.exists() and not args.overwrite:
        parser.exit(2, f"{parser.prog}: error: {out} exists; pass --overwrite to replace it or choose another --out\n")
    return BenchConfig(device, dtype, list(chosen), repeats, args.warmup, args.quick, args.threads, out, args.overwrite,
                       compile_mode, options)


# ---------------------------------------------------------------------------------------- models
def materialize(model: nn.Module, config: BenchConfig, seed: int = 0) -> nn.Module:
    """Give a meta-device model memory in the benchmark's dtype and device, then fill it."""
    model = nn.Module.to(model, config.torch_dtype)  # on meta: costs nothing
    model = model.to_empty(device=config.device)
    return fill_weights(model, seed).eval().requires_grad_(False)


def sdxl_unet_meta(unet_config: Mapping | None = None) -> nn.Module:
    """SDXL's UNet on the meta device (no memory): for counting, and as the template of the others.

    Args:
        unet_config: another layout, e.g. :data:`TINY_SDXL_UNET_CONFIG`; default SDXL's own.
    """
    if unet_config is None:
        return sdxl_unet(device="meta")
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(unet_config))


def controlnet_meta(unet: nn.Module) -> nn.Module:
    """diffusers' SDXL ControlNet (``ControlNetModel.from_unet``), on the meta device.

    The published SDXL ControlNets (e.g. diffusers/controlnet-canny-sdxl-1.0) have this architecture:
    a copy of the UNet's encoder and middle block plus a conditioning embedding.
    """
    from diffusers import ControlNetModel

    with torch.device("meta"):
        return ControlNetModel.from_unet(unet, load_weights_from_unet=False)


def t2i_adapter_meta() -> nn.Module:
    """diffusers' SDXL T2I-Adapter on the meta device, with the config of TencentARC's SDXL adapters."""
    from diffusers import T2IAdapter

    with torch.device("meta"):
        return T2IAdapter(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2,
                          downscale_factor=16, adapter_type="full_adapter_xl")


def lllite_network(unet: nn.Module, up_path: bool, config: BenchConfig | None = None, seed: int = 1):
    """kohya's canny dimensions (cond_emb_dim 32, network_dim 64), weights filled so no module is a no-op."""
    network = lllite.create_network(unet, cond_emb_dim=32, network_dim=64, up_path=up_path)
    if config is not None:
        network = network.to(device=config.device, dtype=config.torch_dtype)
    return fill_weights(network, seed)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------- inputs
def unet_inputs(size: int, batch: int, config: BenchConfig | None = None, seed: int = 0,
                unet_config: Mapping | None = None) -> dict:
    """UNet keyword arguments for one denoising step at ``size`` x ``size`` pixels, as SDXL pipelines pass them.

    Args:
        unet_config: the UNet's configuration, whose text widths the inputs take; default SDXL's.
    """
    unet_config = SDXL_UNET_CONFIG if unet_config is None else unet_config
    text_width = unet_config["cross_attention_dim"]
    pooled_width = unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]
    device = "meta" if config is None else config.device
    dtype = torch.float32 if config is None else config.torch_dtype
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        if device == "meta":
            return torch.empty(shape, device="meta", dtype=dtype)
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype)

    latent = size // 8
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=dtype, device=device)
    return dict(
        sample=randn(batch, 4, latent, latent),
        # on meta the UNet moves it itself; LLLite reads its value, which a meta tensor has not
        timestep=torch.tensor(500.0, device="cpu" if device == "meta" else device),
        encoder_hidden_states=randn(batch, PROMPT_TOKENS, text_width),
        added_cond_kwargs=dict(text_embeds=randn(batch, pooled_width), time_ids=time_ids),
    )


def control_image(size: int, batch: int, config: BenchConfig | None = None, seed: int = 2) -> torch.Tensor:
    """A control image (batch, 3, size, size) in [-1, 1]."""
    if config is None:
        return torch.empty(batch, 3, size, size, device="meta")
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    return image.to(device=config.device, dtype=config.torch_dtype)


def lllite_embeddings(network, image: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Every module's conditioning embedding: the work LLLite does once per control image."""
    latent = (size // 8, size // 8)
    return [module.embed(image, token_grid(latent, module.depth)) for _, module in network.lllite_modules()]


# ---------------------------------------------------------------------------------------- timing
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


class Timing(NamedTuple):
    """Seconds of one call: wall clock, and CPU time of this process (all its threads).

    On a CPU shared with other work, wall time counts the time other programs held the cores; the
    process's CPU time counts only the work done, so its ratios stay fair under load. On a GPU only
    wall time means anything.
    """

    wall_s: float
    cpu_s: float


def timed(fn: Callable[[], object], device: str) -> Timing:
    """Time one call, waiting for the GPU to finish."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def interleaved(rounds: dict[str, Callable[[], dict[str, Timing]]], repeats: int, warmup: int,
                progress: str = "") -> dict[str, list[Timing]]:
    """Run every round ``repeats`` times, interleaved, rotating the order each repetition.

    A round returns ``{variant: Timing}`` (one round may time two variants that share setup).
    Interleaving spreads slow drifts (thermal state, other load on the machine) over every variant
    alike, so the ratios of medians stay fair where absolute times wander.
    """
    from tqdm import tqdm

    names = list(rounds)
    times: dict[str, list[Timing]] = {}
    total = (warmup + repeats) * len(names)
    with tqdm(total=total, desc=progress, unit="round", file=sys.stderr) as bar:
        for rep in range(warmup + repeats):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                bar.set_postfix_str(name)
                result = rounds[name]()
                if rep >= warmup:
                    for variant, timing in result.items():
                        times.setdefault(variant, []).append(timing)
                bar.update()
    return times


def summary(times: dict[str, list[Timing]], baseline: str) -> dict[str, dict]:
    """Per variant: median wall and CPU seconds, their ratios of medians to ``baseline``, every run."""
    base_wall = statistics.median(t.wall_s for t in times[baseline])
    base_cpu = statistics.median(t.cpu_s for t in times[baseline])
    stats = {}
    for name, timings in times.items():
        wall, cpu = [t.wall_s for t in timings], [t.cpu_s for t in timings]
        stats[name] = {"median_s": statistics.median(wall), "ratio": statistics.median(wall) / base_wall,
                       "cpu_median_s": statistics.median(cpu), "cpu_ratio": statistics.median(cpu) / base_cpu,
                       "runs_s": wall, "cpu_runs_s": cpu}
    return stats


# ---------------------------------------------------------------------------------------- op counts
#: aten ops that only describe memory (views, allocation) or do nothing here; an op counts as work only if
#: it, or an op it calls, is not one of these (``aten::linear`` counts through its ``aten::addmm``).
NO_WORK_OPS = frozenset(f"aten::{name}" for name in (
    "view", "_unsafe_view", "_reshape_alias", "reshape", "as_strided", "as_strided_", "t", "transpose", "permute",
    "expand", "unsqueeze", "squeeze", "slice", "select", "split", "chunk", "unbind", "flatten", "unflatten",
    "detach", "alias", "lift_fresh", "resolve_conj", "resolve_neg", "empty", "empty_like", "empty_strided",
    "resize_", "_nnpack_available", "contiguous", "to", "dropout", "linear", "matmul", "conv2d", "convolution",
    "_convolution", "result_type", "is_nonzero", "item", "_local_scalar_dense", "size", "stride", "numel",
))


def _does_work(event) -> bool:
    return event.name not in NO_WORK_OPS or any(_does_work(child) for child in event.cpu_children)


def count_ops(fn: Callable[[], object], device: str) -> dict[str, int]:
    """How many operations one call launches, counted by ``torch.profiler``.

    ``ops``: host-side operations that do work: top-level aten ops (views, allocations and no-ops
    left out: see :data:`NO_WORK_OPS`) plus the kernels a compiled graph runs as its own (inductor's
    fused C++ kernels, visible with ``torch._inductor.config.cpp.enable_kernel_profile``). On a GPU
    also ``kernels``: the device kernels launched, the number the per-launch overhead multiplies.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    ops = 0
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        parent = event.cpu_parent
        if event.name.startswith("aten::"):
            top = parent is None or not parent.name.startswith("aten::")
            ops += top and _does_work(event)
        elif event.name.startswith("cpp_fused"):
            ops += 1
    counts = {"ops": ops}
    if device.startswith("cuda"):
        counts["kernels"] = sum(1 for event in events if event.device_type == torch.autograd.DeviceType.CUDA)
    return counts


# ---------------------------------------------------------------------------------------- memory
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}; CPU peak memory needs Linux")


def release_freed_memory(device: str) -> None:
    """Hand freed memory back (glibc heap, CUDA cache) so the next peak starts from what is live."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory within a ``with`` block, in bytes: ``peak_bytes``, and ``extra_bytes`` above the start.

    On CUDA: ``torch.cuda.max_memory_allocated`` (tensors only), and in ``reserved_peak_bytes``
    ``max_memory_reserved`` (what PyTorch's caching allocator held of the GPU). On CPU: the process's
    peak resident set (VmHWM), reset on entry through ``/proc/self/clear_refs`` (Linux); it counts every
    allocation, PyTorch's and the allocator's slack alike, and ``reserved_peak_bytes`` is the same.
    """

    def __init__(self, device: str):
        self.device = device
        self.extra_bytes = 0
        self.start_bytes = 0
        self.peak_bytes = 0
        self.reserved_peak_bytes = 0

    def __enter__(self) -> "PeakMemory":
        release_freed_memory(self.device)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
            self.start_bytes = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        if self.device.startswith("cuda"):
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.reserved_peak_bytes = torch.cuda.max_memory_reserved(self.device)
        else:
            self.peak_bytes = self.reserved_peak_bytes = _status_kib("VmHWM") * 1024
        self.extra_bytes = self.peak_bytes - self.start_bytes


def available_memory_bytes() -> int:
    """MemAvailable of the machine (Linux)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


@contextlib.contextmanager
def memory_ceiling(device: str, spare_bytes: int = 2 * 2**30) -> Iterator[None]:
    """On CPU (Linux), let the block allocate only what the machine has free, less ``spare_bytes``.

    Work that does not fit then fails with PyTorch's "can't allocate memory" error instead of
    swapping, or of waking the OOM killer, which may pick another program. It caps this process's
    address space (``RLIMIT_AS``) and restores the limit afterwards. On CUDA it does nothing.
    """
    if device != "cpu" or not sys.platform.startswith("linux"):
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = _status_kib("VmSize") * 1024 + max(0, available_memory_bytes() - spare_bytes)
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def require_memory(config: BenchConfig, needed_gib: float) -> None:
    """Refuse to start a CPU run that would push the machine into swapping or the OOM killer."""
    if config.device != "cpu":
        return
    available = available_memory_bytes() / 2**30
    if available < needed_gib:
        sys.exit(f"error: this benchmark needs about {needed_gib:.0f} GiB of free memory at --dtype {config.dtype}; "
                 f"{available:.1f} GiB are available. Close other programs or use a smaller --dtype.")


# ---------------------------------------------------------------------------------------- results
def machine(config: BenchConfig) -> dict:
    info = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_features": cpu_features(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if config.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(config.device)
    return info


def _cpuinfo(field_name: str) -> str | None:
    """The first value of ``field_name`` in /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.split(":", 1)[0].strip() == field_name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


#: CPU features that decide which kernels PyTorch runs: bf16 is fast only with the first two.
CPU_FEATURES = ("avx512_bf16", "amx_bf16", "avx512f", "avx2")


def cpu_features() -> list[str]:
    flags = set((_cpuinfo("flags") or "").split())
    return [feature for feature in CPU_FEATURES if feature in flags]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions. Without them PyTorch runs bf16 convolutions on a
    reference path: one 320-channel 3x3 convolution at 64x64 took 91 s in bf16 and 0.33 s in float32
    on an AMD EPYC with AVX2 only."""
    return any(feature in cpu_features() for feature in ("avx512_bf16", "amx_bf16"))


def write_results(config: BenchConfig, benchmark: str, results: dict) -> Path:
    """Write the JSON atomically: the command, the settings, the machine, the results."""
    document = {
        "benchmark": benchmark,
        "command": " ".join(["python"] + sys.argv),
        "config": {**asdict(config), "out": str(config.out)},
        "machine": machine(config),
        "results": results,
    }
    return write_text_atomic(config.out, json.dumps(document, indent=1))


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"
