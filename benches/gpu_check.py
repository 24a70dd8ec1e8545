"""GPU truth in one run: does lllite train, fit and compute right on CUDA, and how fast is it at SDXL's size?
And what do SDXL and Anima need of a T4 or an L4 at 1024 px?

Six sections, in the order of what their numbers are worth. Each is guarded: one that fails records
its error (type and message) and the next one runs. The JSON is rewritten after every section and
every training variant, so a run killed at its time limit keeps what it measured.

- b. SDXL's real size, one training step at 1024 px, batch 1, with the trainer's memory options:
  the frozen UNet in the half type, LLLite in float32 under autocast, latents and text embeddings
  given as tensors (cached: no VAE or text encoder on the device), gradient checkpointing on and
  off, AdamW (fused) and bitsandbytes' AdamW8bit. Peak memory per variant against a T4's 15 GB.
- e. Anima's real size, one training step at 1024 px with the same memory options, the DiT in the
  precision lllite picks for the device (bf16, or float32 where the GPU has no bf16), and f. Anima's
  inference at 1024 px, phase by phase (text encoder and adapter, a guided DiT call, the VAE's decode):
  :mod:`benches.gpu_check_anima`.
- a. The real trainer (``lllite.train.train``) on the toy world: 50 steps with ``mixed_precision``
  fp16 (loss scaling) and bf16 (where the GPU has it), ``optimizer_type="adamw8bit"`` (or the
  trainer's fallback; which one ran is read from its checkpoint), a validation grid, sampling, and
  the written file loaded back. Losses finite, weights moved from their initial values.
- d. fp16 numerics: LLLite's 136 modules (kohya's canny dimensions, 32/64, filled weights) on the
  inputs their Linears see in an SDXL forward at 1024 px, in fp16 against float32; and the whole
  UNet's output with and without LLLite, fp16 against float32, at 512 px.
- c. Inference at 1024 px in fp16, batch 2 (classifier-free guidance): bare UNet, LLLite, LLLite
  with the up path, ControlNet; medians of interleaved repetitions, ratios to the bare UNet, and
  with ``--compile`` the bare UNet and the UNet with LLLite under ``torch.compile``.

The models are SDXL's, built from their configurations with weights filled locally (nothing is
downloaded); the toy world ships with the package.

    python benches/gpu_check.py                  # on a CUDA machine: all sections, budgeted for 8 minutes on a T4
    python benches/gpu_check.py --quick          # tiny models, seconds on a CPU (the tests run this)
    python benches/gpu_check.py --cpu-estimate   # sections b e f at 1024 px on this CPU (~16 GiB, an hour or more)
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import inspect
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lllite  # noqa: E402
from benches.common import (CUDA_CONTEXT_BYTES, DTYPES, T4_BYTES, TINY_SDXL_UNET_CONFIG, BenchConfig, PeakMemory, Timing, control_image,  # noqa: E402
                            controlnet_meta, cpu_has_fast_bf16, gib, interleaved, lllite_network, materialize,
                            memory_ceiling, parameter_count, parse_config, release_freed_memory, require_memory,
                            sdxl_unet_meta, summary, synchronize, timed, unet_inputs, write_results)
from benches import gpu_check_anima as anima  # noqa: E402
from lllite.sdxl.module import token_grid  # noqa: E402
from lllite.precision import native_bf16  # noqa: E402
from lllite.sdxl.names import find_targets  # noqa: E402

#: The sections' time budget by default: the whole check must end within 8 minutes on a T4, start-up
#: included, and a section or variant already running when the budget ends still finishes.
BUDGET_S = 400
#: Seconds of budget a compilation needs left to start (inductor takes minutes on SDXL's UNet).
COMPILE_S = 120
SECTIONS = {"b": "sdxl_training_memory", "e": "anima_training_memory", "a": "toy_training",
            "f": "anima_inference_memory", "d": "fp16_numerics", "c": "sdxl_inference"}
#: The sections a CPU estimate can run.
CPU_ESTIMATE_SECTIONS = ("b", "e", "f")
PRECISION_NAMES = {"float16": "fp16", "bfloat16": "bf16"}
# The trainer's optimizer settings (kohya's canny recipe).
LEARNING_RATE = 2e-4
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


def error_text(error: BaseException) -> str:
    """``Type: message``, the message cut to a few lines (CUDA's out-of-memory text runs long)."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message[:600]}"


def bitsandbytes_problem(device: str) -> str | None:
    """Why bitsandbytes' AdamW8bit cannot run here, or None when it can."""
    if not device.startswith("cuda"):
        return "bitsandbytes' AdamW8bit runs on CUDA only (the trainer falls back to AdamW elsewhere)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # its import fails in many ways when the CUDA libraries do not match
        return f"bitsandbytes does not import: {error_text(error)}"
    return None


def mixed_precisions(device: str) -> tuple[list[str], dict[str, str]]:
    """The half types a training run can use here (dtype names), and why the others are left out."""
    if device.startswith("cuda"):
        if native_bf16(device):
            return ["float16", "bfloat16"], {}
        return ["float16"], {"bfloat16": "this GPU has no bf16 arithmetic (the trainer switches to fp16 on it)"}
    return ["bfloat16"], {"float16": "fp16 mixed precision needs CUDA: the trainer refuses it on a CPU"}


def tensor_bytes(*items) -> int:
    """Bytes of the parameters and buffers of modules, of tensors, and of dicts of tensors."""
    total = 0
    for item in items:
        if isinstance(item, nn.Module):
            total += sum(t.numel() * t.element_size() for t in [*item.parameters(), *item.buffers()])
        elif isinstance(item, dict):
            total += tensor_bytes(*item.values())
        elif isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
    return total


def as_float32(config: BenchConfig) -> BenchConfig:
    return dataclasses.replace(config, dtype="float32")


class Budget:
    """The run's seconds left; sections and variants that would start too late are skipped, not cut."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()


class SharedUNet:
    """The SDXL UNet that sections b, c and d share: built once, cast in place between dtypes.

    Filling 2.6 B parameters takes tens of seconds; casting them takes a fraction of that. Values
    filled in fp16 survive a cast to float32 and back exactly.
    """

    def __init__(self, config: BenchConfig):
        self.config = config
        self.meta = sdxl_unet_meta(TINY_SDXL_UNET_CONFIG if config.quick else None)
        self.unet: nn.Module | None = None

    def get(self, dtype: str) -> nn.Module:
        if self.unet is None:
            self.unet = materialize(self.meta, dataclasses.replace(self.config, dtype=dtype), seed=0)
        # every parameter, not only the first: a cast cut short by an error leaves a mix
        return nn.Module.to(self.unet, DTYPES[dtype])


@dataclasses.dataclass
class Check:
    """What every section reads: the settings, the budget, the shared UNet, and the results to fill."""

    config: BenchConfig
    budget: Budget
    models: SharedUNet
    results: dict

    @property
    def device(self) -> str:
        return self.config.device

    def save(self) -> Path:
        return write_results(self.config, "gpu_check", self.results)


# ---------------------------------------------------------------------------------------- b: one training step
# The trainer's objective (lllite.objective) on cached inputs, as lllite.train computes it.


def cached_batch(size: int, unet: nn.Module, config: BenchConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """One sample as a step reads it when latents and text embeddings are cached: tensors only."""
    inputs = unet_inputs(size, 1, as_float32(config), seed=seed, unet_config=unet.config)
    return {"latents": inputs["sample"], "prompt_embeds": inputs["encoder_hidden_states"],
            "pooled_prompt_embeds": inputs["added_cond_kwargs"]["text_embeds"],
            "time_ids": inputs["added_cond_kwargs"]["time_ids"], "control": control_image(size, 1, as_float32(config))}


def step_loss(unet: nn.Module, network, batch: dict, ddpm, weight_dtype: torch.dtype,
              generator: torch.Generator) -> torch.Tensor:
    """SDXL's noise objective on one batch: uniform timesteps, epsilon prediction, MSE in float32."""
    from lllite.objective import noise_loss
    from lllite.sdxl.objective import sample_noise, sample_timesteps

    latents = batch["latents"]
    noise = sample_noise(latents.shape, generator).to(latents.device)
    timesteps = sample_timesteps("uniform", latents.shape[0], generator).to(latents.device)
    noisy = ddpm.add_noise(latents, noise, timesteps)
    network.set_cond_image(batch["control"])
    added = {"text_embeds": batch["pooled_prompt_embeds"].to(weight_dtype), "time_ids": batch["time_ids"].to(weight_dtype)}
    with torch.autocast(latents.device.type, dtype=weight_dtype):
        prediction = unet(noisy.to(weight_dtype), timesteps, encoder_hidden_states=batch["prompt_embeds"].to(weight_dtype),
                          added_cond_kwargs=added).sample
    return noise_loss(prediction, noise)


def train_step(unet: nn.Module, network, batch: dict, optimizer, scaler, weight_dtype: torch.dtype, ddpm,
               generator: torch.Generator) -> float:
    """One optimizer step as the trainer takes it (accelerate's loss scaling in fp16, gradient clipping)."""
    loss = step_loss(unet, network, batch, ddpm, weight_dtype, generator)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(network.parameters(), MAX_GRAD_NORM)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def training_variant(unet: nn.Module, size: int, precision: str, checkpointing: bool, optimizer_name: str,
                     config: BenchConfig, steps: int) -> dict:
    """``steps`` training steps of a fresh LLLite on the frozen UNet: peak memory over all, time of the last.

    The first step creates the optimizer's state, so the peak counts it.
    """
    from lllite.sdxl.objective import noise_scheduler
    from lllite.train.parts import make_optimizer

    device, weight_dtype = config.device, DTYPES[precision]
    if checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    network = lllite_network(unet, up_path=False, config=as_float32(config), seed=1).train()
    batch = cached_batch(size, unet, config)
    network.apply_to(unet)
    row: dict = {"precision": precision, "gradient_checkpointing": checkpointing, "optimizer": optimizer_name}
    try:
        optimizer = make_optimizer(optimizer_name, network.parameters(), LEARNING_RATE, WEIGHT_DECAY, device)
        scaler = torch.amp.GradScaler(device.split(":")[0]) if precision == "float16" else None
        ddpm = noise_scheduler()
        generator = torch.Generator().manual_seed(0)
        held = tensor_bytes(unet, network, batch)
        losses: list[float] = []

        def step():
            losses.append(train_step(unet, network, batch, optimizer, scaler, weight_dtype, ddpm, generator))

        with memory_ceiling(device), PeakMemory(device) as peak:
            timings = [timed(step, device) for _ in range(steps)]
        row.update(losses=losses, step_s=timings[-1].wall_s, step_cpu_s=timings[-1].cpu_s,
                   steps_s=[t.wall_s for t in timings], step_peak_extra_bytes=peak.extra_bytes)
        if device.startswith("cuda"):
            free, total = torch.cuda.mem_get_info(device)
            outside = (total - free) - torch.cuda.memory_reserved(device)  # CUDA context, libraries' own memory
            footprint = peak.reserved_peak_bytes + outside
            row.update(held_bytes=peak.start_bytes, max_memory_allocated=peak.peak_bytes,
                       max_memory_reserved=peak.reserved_peak_bytes, outside_allocator_bytes=outside,
                       t4_footprint_bytes=footprint,
                       t4_footprint_how="max_memory_reserved + memory outside PyTorch's allocator")
        else:
            # The tensors held before the step, counted exactly, plus what the step added to the resident set.
            footprint = held + peak.extra_bytes + CUDA_CONTEXT_BYTES
            row.update(held_bytes=held, rss_start_bytes=peak.start_bytes, rss_peak_bytes=peak.peak_bytes,
                       estimate_allocated_bytes=held + peak.extra_bytes, t4_footprint_bytes=footprint,
                       t4_footprint_how="tensors held (exact) + the step's peak resident set above the start "
                                        f"+ {gib(CUDA_CONTEXT_BYTES)} assumed for the CUDA context")
        row.update(fits_t4=footprint <= T4_BYTES, t4_margin_bytes=T4_BYTES - footprint,
                   optimizer_state_bytes=tensor_bytes(*[dict(state) for state in optimizer.state.values()]))
        if scaler is not None:
            row["grad_scaler_scale"] = scaler.get_scale()
        return row
    finally:
        network.remove()
        unet.disable_gradient_checkpointing()
        unet.zero_grad(set_to_none=True)


def measure(check: Check, what: dict, run: Callable[[], dict]) -> dict:
    """One variant of a section within the budget: its row; or ``what`` with the error (and whether it ran out of
    memory); or why it was skipped. Memory it freed is given back either way."""
    if check.budget.left() < 20:
        return {"skipped": f"time budget: {check.budget.left():.0f} s left"}
    try:
        return run()
    except Exception as error:
        return {**what, "error": error_text(error), "out_of_memory": isinstance(error, torch.OutOfMemoryError)}
    finally:
        release_freed_memory(check.device)


def section_b(entry: dict, check: Check) -> None:
    config, device = check.config, check.device
    options = config.options
    precisions, left_out = mixed_precisions(device)
    optimizers = ["adamw8bit", "adamw"]
    bnb = bitsandbytes_problem(device)
    if bnb is not None:
        optimizers.remove("adamw8bit")
        left_out["adamw8bit"] = bnb
    if options.get("cpu_estimate"):
        optimizers = ["adamw"]
    steps = 1 if options.get("cpu_estimate") else 1 + config.warmup
    entry.update(left_out=left_out, t4_bytes=T4_BYTES, steps_per_variant=steps, batch=1, sizes={})
    for size in config.sizes:
        rows = entry["sizes"][str(size)] = {}
        for precision in precisions:
            unet = check.models.get(precision)
            entry["unet_parameters"] = parameter_count(unet)
            # The T4 recipe first: what a Colab user runs is the most valuable number.
            for checkpointing in (True, False):
                for optimizer_name in optimizers:
                    key = f"{PRECISION_NAMES[precision]}_{'ckpt' if checkpointing else 'no_ckpt'}_{optimizer_name}"
                    what = {"precision": precision, "gradient_checkpointing": checkpointing, "optimizer": optimizer_name}
                    rows[key] = measure(check, what, lambda: training_variant(
                        unet, size, precision, checkpointing, optimizer_name, config, steps))
                    if "error" in rows[key]:  # running out of memory answers the question too
                        rows[key]["fits_t4"] = False if rows[key]["out_of_memory"] else None
                    row = rows[key]
                    print(f"  b {size}px {key}: " + (row.get("error") or row.get("skipped") or
                          f"{gib(row['t4_footprint_bytes'])} on a T4 ({'fits' if row['fits_t4'] else 'does not fit'}), "
                          f"step {row['step_s']:.1f} s"), file=sys.stderr)
                    check.save()


# ---------------------------------------------------------------------------------------- a: the trainer, toy world
def optimizer_that_ran(output_dir: Path) -> dict:
    """Read from the newest checkpoint which optimizer the trainer used, and its loss scale."""
    from lllite.train.checkpoints import find_checkpoints, read_training_state

    checkpoints = find_checkpoints(output_dir)
    if not checkpoints:
        return {"optimizer_ran": None}
    state = read_training_state(checkpoints[-1])
    first = next(iter(state["optimizer"]["state"].values()), {})
    keys = sorted(first)
    ran = "bitsandbytes AdamW8bit" if "state1" in keys else "torch AdamW" if "exp_avg" in keys else None
    scaler = state.get("scaler") or {}
    return {"optimizer_ran": ran, "optimizer_state_keys": keys, "checkpoint": checkpoints[-1].name,
            "grad_scaler_scale": scaler.get("scale")}


def sample_check(pipe, network, size: int, steps: int) -> dict:
    """Draw a held-out shape at strength 0 and 1 through :func:`lllite.sampling.generate`."""
    from lllite.conditioning import canny
    from lllite.sampling import generate
    from lllite.toy.shapes import eval_samples

    sample = eval_samples(1, size=size)[0]
    started = time.perf_counter()
    images = [np.asarray(generate(pipe, network, canny(sample.image), sample.caption, seed=0, num_inference_steps=steps,
                                  multiplier=multiplier)[0], dtype=np.float32) for multiplier in (0.0, 1.0)]
    return {"seconds": time.perf_counter() - started, "image_shape": list(images[1].shape),
            "image_mean": float(images[1].mean()), "image_std": float(images[1].std()),
            "strength_effect": float(np.abs(images[1] - images[0]).mean())}


@dataclasses.dataclass(frozen=True)
class ToySetting:
    """Size of section a's runs: pixels, dataset samples, batch, steps, denoising steps of the samples."""

    size: int
    samples: int
    batch: int
    steps: int
    sample_steps: int


TOY_RUN = ToySetting(size=128, samples=16, batch=4, steps=50, sample_steps=8)
TOY_RUN_QUICK = ToySetting(size=64, samples=8, batch=2, steps=4, sample_steps=2)


def toy_run(run: dict, mixed_precision: str, data: Path, output_dir: Path, toy: ToySetting) -> None:
    """One training run of the real trainer; fills ``run`` as it goes."""
    from lllite.data import DatasetConfig, SubsetConfig
    from lllite.auto import load_pipeline
    from lllite.toy import TOY
    from lllite.train import TrainConfig, train

    size, steps = toy.size, toy.steps
    train_config = TrainConfig(
        pretrained_model_name_or_path=TOY,
        dataset_config=DatasetConfig([SubsetConfig(data / "images", data / "conditioning")], resolution=size,
                                     batch_size=toy.batch),
        output_dir=str(output_dir), max_train_steps=steps, learning_rate=1e-3, mixed_precision=mixed_precision,
        gradient_checkpointing=True, cache_latents=True, cache_text_encoder_outputs=True, optimizer_type="adamw8bit",
        save_every_n_steps=steps // 2, sample_every_n_steps=steps, num_validation_images=1,
        sample_num_inference_steps=toy.sample_steps, progress=False, overwrite=True)
    run.update(steps_asked=steps, resolution=size, optimizer_type=train_config.optimizer_type,
               gradient_checkpointing=True, cached_latents_and_text=True)
    pipe = load_pipeline(TOY)
    torch.manual_seed(train_config.seed)  # the trainer seeds the same way before creating its network
    initial = {k: v.clone() for k, v in lllite.create_network(pipe.unet, train_config.cond_emb_dim,
                                                             train_config.network_dim).state_dict().items()}
    result = train(train_config, pipe)
    losses = [loss for _, loss in result.losses]
    trained = {k: v.detach().float().cpu() for k, v in result.network.state_dict().items()}
    moved = {k: float((trained[k] - initial[k]).abs().max()) for k in initial}
    run.update(steps=result.steps, train_seconds=result.train_seconds, losses=losses,
               losses_finite=all(math.isfinite(x) for x in losses), loss_first=losses[0], loss_last=losses[-1],
               network_device=str(next(result.network.parameters()).device),
               unet_dtype=str(pipe.unet.dtype).removeprefix("torch."),
               tensors_moved=sum(d > 0 for d in moved.values()), tensors=len(moved), max_weight_change=max(moved.values()),
               validation_grids=len(list((output_dir / "samples").glob("*.png"))))
    run.update(optimizer_that_ran(output_dir))

    # The kohya file the trainer wrote holds the trained weights in fp16, exactly; a float32 save holds them as they are.
    written = lllite.load(result.weights).state_dict()
    fp16_diff = max(float((written[k] - trained[k].half().float()).abs().max()) for k in trained)
    result.network.save(output_dir / "float32.safetensors", dtype=torch.float32, overwrite=True)
    float32 = lllite.load(output_dir / "float32.safetensors").state_dict()
    float32_diff = max(float((float32[k] - trained[k]).abs().max()) for k in trained)
    run.update(round_trip_fp16_max_diff=fp16_diff, round_trip_float32_max_diff=float32_diff,
               round_trip_equal=fp16_diff == 0 and float32_diff == 0 and written.keys() == trained.keys())

    # Sampling with the pipeline as train() left it (what a notebook's next cell does), then, if that
    # failed, with every part of it moved back to the training device.
    run["pipeline_after_train"] = {name: f"{part.device} {str(part.dtype).removeprefix('torch.')}" for name, part in
                                   (("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder),
                                    ("text_encoder_2", pipe.text_encoder_2))}
    try:
        run["sampling"] = sample_check(pipe, result.network, size, toy.sample_steps)
    except Exception as error:
        run["sampling_as_left_by_train_error"] = error_text(error)
        pipe.to(next(result.network.parameters()).device)
        run["sampling"] = sample_check(pipe, result.network, size, toy.sample_steps)


def section_a(entry: dict, check: Check) -> None:
    from lllite.toy.shapes import write_dataset

    precisions, left_out = mixed_precisions(check.device)
    bnb = bitsandbytes_problem("cuda" if torch.cuda.is_available() else "cpu")
    entry.update(left_out=left_out, bitsandbytes=bnb or "imports", runs={})
    toy = TOY_RUN_QUICK if check.config.quick else TOY_RUN
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        data = write_dataset(Path(folder) / "shapes", toy.samples, size=toy.size)
        for precision in precisions:
            name = PRECISION_NAMES[precision]
            run = entry["runs"][name] = {"mixed_precision": name}
            try:
                toy_run(run, name, data, Path(folder) / f"run_{name}", toy)
            except Exception as error:
                run["error"] = error_text(error)
            print(f"  a {name}: " + (run.get("error") or f"{run['steps']} steps, loss {run['loss_first']:.4f} -> "
                                      f"{run['loss_last']:.4f}, {run['optimizer_ran']}"), file=sys.stderr)
            check.save()


# ---------------------------------------------------------------------------------------- d: fp16 numerics
def errors(low: torch.Tensor, reference: torch.Tensor) -> dict:
    """How far a half-precision result lies from its float32 reference, relative to the reference's scale."""
    low, reference = low.detach().float(), reference.detach().float()
    finite = torch.isfinite(low)
    difference = (low - reference).abs()[finite]
    scale = float(reference.abs().max())
    max_error = float(difference.max()) if difference.numel() else math.nan
    return {"max_abs_error": max_error, "reference_max_abs": scale,
            "max_rel_error": max_error / scale if scale else math.nan,
            "rms_rel_error": float(difference.norm() / reference[finite].norm()) if scale else math.nan,
            "inf": int(torch.isinf(low).sum()), "nan": int(torch.isnan(low).sum())}


def module_errors(unet: nn.Module, size: int, config: BenchConfig) -> dict:
    """Every LLLite module in fp16 and in float32 on the very inputs its Linear sees in one UNet forward.

    The weights are the same fp16 values in both (the published files are fp16), and so is the control image.
    """
    half = lllite_network(unet, up_path=False, config=dataclasses.replace(config, dtype="float16"), seed=1)
    full = copy.deepcopy(half).float()
    image_half = control_image(size, 1, dataclasses.replace(config, dtype="float16"))
    image_full = image_half.float()
    latent = (size // 8, size // 8)
    rows: dict[str, dict] = {}

    def compare(name: str, depth: int):
        def hook(linear, args):
            x = args[0].to(torch.float16)
            grid = token_grid(latent, depth)
            low, ref = getattr(half, name), getattr(full, name)
            emb_low, emb_ref = low.embed(image_half, grid), ref.embed(image_full, grid)
            repeat = x.shape[0] // emb_low.shape[0]
            rows[name] = {"input_max_abs": float(x.float().abs().max()), "embedding": errors(emb_low, emb_ref),
                          **errors(low(x, emb_low.repeat(repeat, 1, 1)), ref(x.float(), emb_ref.repeat(repeat, 1, 1)))}
        return hook

    targets = find_targets(unet, up_path=False)
    handles = [unet.get_submodule(t.path).register_forward_pre_hook(compare(name, t.depth)) for name, t in targets.items()]
    try:
        with torch.no_grad():
            unet(**unet_inputs(size, 2, dataclasses.replace(config, dtype=str(unet.dtype).removeprefix("torch.")),
                               unet_config=unet.config))
    finally:
        for handle in handles:
            handle.remove()
    worst = max(rows, key=lambda n: rows[n]["max_rel_error"])
    return {"modules": len(rows), "unet_dtype": str(unet.dtype).removeprefix("torch."),
            "max_rel_error": rows[worst]["max_rel_error"], "worst_module": worst,
            "median_max_rel_error": float(np.median([r["max_rel_error"] for r in rows.values()])),
            "embedding_max_rel_error": max(r["embedding"]["max_rel_error"] for r in rows.values()),
            "inf": sum(r["inf"] + r["embedding"]["inf"] for r in rows.values()),
            "nan": sum(r["nan"] + r["embedding"]["nan"] for r in rows.values()),
            "input_max_abs": max(r["input_max_abs"] for r in rows.values()), "per_module": rows}


def unet_errors(check: Check, size: int) -> dict:
    """The whole UNet's output, bare and with LLLite, in fp16 against float32 on the same inputs and weights."""
    config, device = check.config, check.device
    unet = check.models.get("float16")
    half_config = dataclasses.replace(config, dtype="float16")
    network = lllite_network(unet, up_path=False, config=half_config, seed=1).eval()
    inputs = unet_inputs(size, 2, half_config, unet_config=unet.config)
    image = control_image(size, 1, half_config)
    outputs = {}
    try:
        for dtype in ("float16", "float32"):
            if dtype == "float32" and device.startswith("cuda"):
                free, _ = torch.cuda.mem_get_info(device)
                # the cast frees each fp16 tensor as it makes its float32 one: one more fp16 size, and activations
                if free < 1.2 * tensor_bytes(unet) + 2 * 2**30:
                    return {"skipped": f"a float32 UNet needs {gib(2 * tensor_bytes(unet))}; {gib(free)} free"}
            unet = check.models.get(dtype)
            network.to(DTYPES[dtype])
            cast = {k: v.to(DTYPES[dtype]) if torch.is_tensor(v) and v.is_floating_point() else v
                    for k, v in inputs.items()}
            cast["added_cond_kwargs"] = {k: v.to(DTYPES[dtype]) for k, v in inputs["added_cond_kwargs"].items()}
            with torch.no_grad():
                outputs[f"bare_{dtype}"] = unet(**cast).sample.float().cpu()
                network.apply_to(unet)
                try:
                    network.set_cond_image(image.to(DTYPES[dtype]))
                    outputs[f"lllite_{dtype}"] = unet(**cast).sample.float().cpu()
                finally:
                    network.remove()
    finally:
        del unet
        release_freed_memory(device)
        check.models.get("float16")
    return {"size": size, "bare": errors(outputs["bare_float16"], outputs["bare_float32"]),
            "lllite": errors(outputs["lllite_float16"], outputs["lllite_float32"]),
            "lllite_change": errors(outputs["lllite_float16"] - outputs["bare_float16"],
                                    outputs["lllite_float32"] - outputs["bare_float32"])}


def section_d(entry: dict, check: Check) -> None:
    config, device = check.config, check.device
    # On CUDA the UNet runs in fp16, as it would for inference; on a CPU in the benchmark's dtype
    # (fp16 convolutions there take seconds each), which only sets the inputs the modules see.
    entry["sizes"] = {}
    for size in config.sizes:
        rows = entry["sizes"][str(size)] = {}
        unet = check.models.get("float16" if device.startswith("cuda") else config.dtype)
        rows["lllite_modules"] = module_errors(unet, size, config)
        check.save()
        whole = size if config.quick else min(size, 512)
        if device.startswith("cuda") or config.quick:
            try:
                rows["unet"] = unet_errors(check, whole)
            except Exception as error:
                rows["unet"] = {"error": error_text(error)}
        else:
            rows["unet"] = {"skipped": "a CPU runs fp16 convolutions on a reference path (seconds each): CUDA only"}
        summary_row = rows["lllite_modules"]
        print(f"  d {size}px: LLLite modules max rel error {summary_row['max_rel_error']:.2e}, "
              f"inf {summary_row['inf']}, nan {summary_row['nan']}", file=sys.stderr)


# ---------------------------------------------------------------------------------------- c: inference speed
def inference_rounds(unet: nn.Module, models: dict, inputs: dict, image: torch.Tensor, device: str,
                     compiled: dict[str, Callable]) -> dict[str, Callable[[], dict[str, Timing]]]:
    """The timed rounds of one size; each returns ``{variant: Timing}``."""
    batch = inputs["sample"].shape[0]

    def lllite_round(key: str, run: Callable) -> dict[str, Timing]:
        network = models[key].apply_to(unet)
        try:
            network.set_cond_image(image)  # the first step computes the embeddings, the second reuses them
            first = timed(run, device)
            cached = timed(run, device)
        finally:
            network.remove()
        return {f"{key}_first_step": first, key: cached}

    def bare():
        return unet(**inputs)

    def with_controlnet():
        down, mid = models["controlnet"](**inputs, controlnet_cond=image.repeat(batch, 1, 1, 1), return_dict=False)
        return unet(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    rounds = {
        "unet": lambda: {"unet": timed(bare, device)},
        "lllite": lambda: lllite_round("lllite", bare),
        "lllite_up": lambda: lllite_round("lllite_up", bare),
        "controlnet": lambda: {"controlnet": timed(with_controlnet, device)},
    }
    if "unet_compiled" in compiled:
        rounds["unet_compiled"] = lambda: {"unet_compiled": timed(lambda: compiled["unet_compiled"](**inputs), device)}
    if "lllite_compiled" in compiled:
        def lllite_compiled():
            times = lllite_round("lllite", lambda: compiled["lllite_compiled"](**inputs))
            return {name.replace("lllite", "lllite_compiled"): t for name, t in times.items()}
        rounds["lllite_compiled"] = lllite_compiled
    return rounds


def compile_variants(unet: nn.Module, network, inputs: dict, image: torch.Tensor, check: Check,
                     report: dict) -> dict:
    """``torch.compile`` the bare UNet and the UNet with LLLite attached; time each first call (the compiling).

    Fills ``report`` per variant with the compile seconds, the error, or why it was skipped.
    """
    compiled, device, config = {}, check.device, check.config
    for name in ("unet_compiled", "lllite_compiled"):
        if check.budget.left() < COMPILE_S:
            report[name] = {"skipped": f"time budget: {check.budget.left():.0f} s left; raise --budget"}
            continue
        try:
            # fullgraph, as lllite supports it; each variant keeps its own compiled code, since dynamo does
            # not watch hooks (isolate_recompiles is missing from older torch versions)
            isolated = {"isolate_recompiles": True} if "isolate_recompiles" in inspect.signature(torch.compile).parameters else {}
            model = torch.compile(unet, mode=config.compile, fullgraph=True, **isolated)
            if name == "lllite_compiled":
                network.apply_to(unet)
                network.set_cond_image(image)
            try:
                with torch.no_grad():
                    first = timed(lambda: model(**inputs), device)
            finally:
                network.remove()
            compiled[name] = model
            report[name] = {"compile_s": first.wall_s}
        except Exception as error:
            report[name] = {"error": error_text(error)}
        check.save()
    return compiled


def section_c(entry: dict, check: Check) -> None:
    config, device = check.config, check.device
    unet = check.models.get(config.dtype)
    models = {"lllite": lllite_network(unet, up_path=False, config=config, seed=1).eval(),
              "lllite_up": lllite_network(unet, up_path=True, config=config, seed=2).eval(),
              "controlnet": materialize(controlnet_meta(check.models.meta), config, seed=3)}
    entry.update(dtype=config.dtype, batch=2, parameters={"unet": parameter_count(unet),
                 **{key: parameter_count(model) for key, model in models.items()}},
                 lllite_modules=len(models["lllite"]), lllite_up_modules=len(models["lllite_up"]), sizes={})
    for size in config.sizes:
        inputs = unet_inputs(size, 2, config, unet_config=unet.config)
        image = control_image(size, 1, config)
        row = entry["sizes"][str(size)] = {}
        with torch.no_grad():
            compiled = {}
            if config.compile:
                row["compile"] = {}
                compiled = compile_variants(unet, models["lllite"], inputs, image, check, row["compile"])
            rounds = inference_rounds(unet, models, inputs, image, device, compiled)
            warm = timed(lambda: [round_() for round_ in rounds.values()], device)  # cuDNN's choices, caches
            # as many repetitions as the budget leaves room for, at least one
            repeats = max(1, min(config.repeats, int((check.budget.left() - 10) / max(warm.wall_s, 1e-3))))
            times = interleaved(rounds, repeats, warmup=0, progress=f"{size}px")
        stats = summary(times, baseline="unet")
        row.update(repeats=repeats, warmup_round_s=warm.wall_s, variants=stats)
        print(f"  c {size}px: " + ", ".join(f"{name} {row['ratio']:.3f}x" for name, row in stats.items()
                                            if not name.endswith("first_step")), file=sys.stderr)
        check.save()


# ---------------------------------------------------------------------------------------- the run
SECTION_RUNNERS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": anima.section_e,
                   "f": anima.section_f}


def run_section(letter: str, check: Check) -> None:
    """Run one section into its own entry; an exception there is recorded, and the run goes on."""
    entry = check.results["sections"][SECTIONS[letter]] = {"section": letter}
    started = time.monotonic()
    left = check.budget.left()
    budget_note = f" ({left:.0f} s of the budget left)" if left < math.inf else ""
    print(f"{letter}: {SECTIONS[letter]}{budget_note}", file=sys.stderr)
    if left < 30:
        entry.update(status="skipped", reason=f"time budget: {left:.0f} s left")
    else:
        try:
            SECTION_RUNNERS[letter](entry, check)
            entry["status"] = "ok"
        except Exception as error:
            entry.update(status="error", error=error_text(error))
        release_freed_memory(check.device)
    entry["seconds"] = time.monotonic() - started
    print(f"{letter}: {entry['status']} in {entry['seconds']:.1f} s", file=sys.stderr)
    check.save()


def cuda_facts(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    properties = torch.cuda.get_device_properties(device)
    return {"name": properties.name, "capability": list(torch.cuda.get_device_capability(device)),
            "total_memory_bytes": properties.total_memory, "bf16_native": native_bf16(device),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def report(results: dict) -> None:
    """The short table: one line per section, one per measured variant."""
    print(f"\n{'section':<28}{'status':>9}{'seconds':>9}")
    for letter, key in SECTIONS.items():
        entry = results["sections"].get(key)
        if entry is None:
            continue
        problem = entry.get("error") or entry.get("reason") or ""
        print(f"{letter} {key:<26}{entry['status']:>9}{entry['seconds']:>9.1f}  {problem}")
        if letter == "b":
            for size, rows in entry.get("sizes", {}).items():
                for name, row in rows.items():
                    detail = row.get("error") or row.get("skipped") or (
                        f"T4 footprint {gib(row['t4_footprint_bytes'])} ({'fits' if row['fits_t4'] else 'does not fit'}), "
                        f"step {row['step_s']:.2f} s")
                    print(f"    {size}px {name:<22}{detail}")
        elif letter == "a":
            for name, run in entry.get("runs", {}).items():
                detail = run.get("error") or (
                    f"{run['steps']} steps, loss {run['loss_first']:.3f} -> {run['loss_last']:.3f}, finite "
                    f"{run['losses_finite']}, {run['tensors_moved']}/{run['tensors']} tensors moved, "
                    f"{run['optimizer_ran']}, round trip {'equal' if run['round_trip_equal'] else 'DIFFERS'}")
                print(f"    {name:<28}{detail}")
                if "sampling_as_left_by_train_error" in run:
                    print(f"    {'':<28}sampling as train() left the pipeline: {run['sampling_as_left_by_train_error']}")
        elif letter == "d":
            for size, rows in entry.get("sizes", {}).items():
                modules = rows.get("lllite_modules", {})
                if "max_rel_error" in modules:
                    print(f"    {size}px LLLite modules: max rel error {modules['max_rel_error']:.2e}, "
                          f"inf {modules['inf']}, nan {modules['nan']}")
                whole = rows.get("unet", {})
                if "lllite" in whole:
                    print(f"    {whole['size']}px UNet: max rel error bare {whole['bare']['max_rel_error']:.2e}, "
                          f"with LLLite {whole['lllite']['max_rel_error']:.2e}, LLLite's change "
                          f"{whole['lllite_change']['max_rel_error']:.2e}")
        elif letter in ("e", "f"):
            for size, rows in entry.get("sizes", {}).items():
                for name, row in rows.items():
                    print(f"    {size}px {name:<22}{anima.describe(row)}")
        elif letter == "c":
            for size, rows in entry.get("sizes", {}).items():
                for name, row in rows.get("variants", {}).items():
                    if not name.endswith("first_step"):
                        print(f"    {size}px {name:<22}{row['median_s']:>8.3f} s {row['ratio']:>7.3f}x")
                for name, row in rows.get("compile", {}).items():
                    detail = row.get("error") or row.get("skipped") or f"compiled in {row['compile_s']:.0f} s"
                    print(f"    {size}px {name:<22}{detail}")


def add_arguments(parser) -> None:
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                        help="which sections to run (default all, in the order b e a f d c)")
    parser.add_argument("--budget", type=float,
                        help=f"seconds the sections may take in all (default {BUDGET_S}; none with --cpu-estimate)")
    parser.add_argument("--cpu-estimate", action="store_true",
                        help="sections b, e and f (those of --sections among them) on this CPU at 1024 px in bf16 "
                             "(Anima in float32 too) with AdamW, one step per variant: the T4 and L4 estimates "
                             "without a GPU (about 16 GiB free memory, an hour or more)")


def main(argv: list[str] | None = None) -> dict:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    config = parse_config("gpu_check", __doc__.splitlines()[0], sizes=[1024], quick_sizes=[64], argv=argv,
                          default_device=default_device, add_arguments=add_arguments, compile_option=True)
    options = config.options
    if options["cpu_estimate"]:
        if config.device != "cpu" or config.quick:
            sys.exit("error: --cpu-estimate runs on the CPU at full size; drop --device cuda and --quick")
        if not cpu_has_fast_bf16():
            sys.exit("error: --cpu-estimate trains in bf16, which this CPU has no instructions for "
                     "(it would take hours); run it on a CPU with avx512_bf16 or amx_bf16")
        require_memory(config, 9)
        options["sections"] = [s for s in options["sections"] if s in CPU_ESTIMATE_SECTIONS]
    elif not config.quick:
        require_memory(config, 9)
    budget_s = options["budget"] if options["budget"] is not None else None if options["cpu_estimate"] else BUDGET_S
    check = Check(config, Budget(budget_s), SharedUNet(config),
                  {"budget_s": budget_s, "cuda": cuda_facts(config.device), "sections": {}})
    order = [letter for letter in SECTIONS if letter in options["sections"]]
    print(f"gpu_check on {config.device}: sections {' '.join(order)}, budget "
          f"{'none' if budget_s is None else f'{budget_s:.0f} s'}", file=sys.stderr)
    for letter in order:
        run_section(letter, check)
        synchronize(config.device)
    report(check.results)
    print(f"\nwrote {check.save()}")
    return check.results


if __name__ == "__main__":
    main()
