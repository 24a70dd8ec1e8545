"""The GPU check's Anima sections: kohya's v2 LLLite on Anima's real DiT at 1024 px, training and inference memory.

- e. One training step at 1024 px, batch 1, as the trainer takes it with its memory options: the frozen DiT
  (Cosmos-Predict2-2B at Anima's configuration) in the precision :mod:`lllite.precision` picks for the device
  (bfloat16 where it is native; float32 on a GPU without it, a T4: Anima overflows in float16), kohya's default
  v2 network in float32 under autocast, latents and the adapter's text context given as tensors (cached),
  rectified flow with velocity prediction, gradient checkpointing on and off, AdamW and bitsandbytes' AdamW8bit.
  On a GPU with bf16 the float32 rows run too: they are what a T4 holds.
- f. Inference at 1024 px: Qwen3 0.6B with the LLM adapter on a prompt and a negative prompt (512 tokens), one
  denoising call of the DiT with LLLite at batch 2 (classifier-free guidance), the Qwen-Image VAE's decode. Each
  phase's peak above the weights, and the footprint when all stay on the device (diffusers' default).

Both write into the same results as :mod:`benches.gpu_check`, which runs them; on a CPU they are an estimate
(``python benches/gpu_check.py --cpu-estimate --sections e f``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benches.common import (CUDA_CONTEXT_BYTES, DTYPES, L4_BYTES, T4_BYTES, PeakMemory, gib,  # noqa: E402
                            memory_ceiling, release_freed_memory, timed)
from benches.realsize import QWEN3_06B, built_on_cpu, padding_mask_resize  # noqa: E402
from lllite.precision import native_bf16  # noqa: E402
from lllite.sdxl.pipeline import fill_weights  # noqa: E402

#: kohya's Anima recipe: learning rate 1e-4 (its recommendation), AdamW's weight decay, clipping at 1.
LEARNING_RATE, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-4, 0.01, 1.0
#: Tokens per prompt after the adapter: Anima pads the adapter's output to 512 (``min_sequence_length``).
TEXT_TOKENS = 512
#: The quick run's DiT: Anima's layout at a tiny width, 2 blocks.
QUICK_TRANSFORMER = dict(num_layers=2, num_attention_heads=2, attention_head_dim=32, adaln_lora_dim=16,
                         text_embed_dim=64)


def precisions(device: str, cpu_estimate: bool) -> tuple[list[str], dict[str, str]]:
    """The DiT's dtypes to run: the device's choice first (bfloat16 where native, float32 where not), then
    float32 on a GPU with bf16, which is what a GPU without it (a T4) holds."""
    if device.startswith("cuda"):
        return (["bfloat16", "float32"], {}) if native_bf16(device) else (
            ["float32"], {"bfloat16": "no bf16 arithmetic on this GPU: Anima runs in float32 here (lllite.precision)"})
    return ["bfloat16", "float32"] if cpu_estimate else ["bfloat16"], {}


def transformer(config, dtype: str, seed: int = 0) -> nn.Module:
    """Anima's DiT with filled weights in ``dtype`` on the check's device (the quick run: a tiny one)."""
    from lllite.anima.pipeline import anima_transformer

    model = anima_transformer(**(QUICK_TRANSFORMER if config.quick else {}))
    model = nn.Module.to(model, DTYPES[dtype]).to_empty(device=config.device)
    return fill_weights(model, seed).eval().requires_grad_(False)


def network_for(model: nn.Module, device: str, seed: int = 1):
    """kohya's default v2 network, in float32, every tensor filled so that no module is a no-op."""
    from lllite.anima import create_network

    return fill_weights(create_network(model).to(device), seed)


def cached_batch(model: nn.Module, size: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """One sample as a step reads it with cached latents and text: normalised latents, the adapter's context,
    and the control image in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    latent = size // 8
    width = model.config.text_embed_dim
    return {"latents": torch.randn(1, 16, latent, latent, generator=generator).to(device),
            "context": torch.randn(1, TEXT_TOKENS, width, generator=generator).to(device),
            "control": (torch.rand(1, 3, size, size, generator=generator) * 2 - 1).to(device)}


def step_loss(model: nn.Module, network, batch: dict, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """The trainer's Anima objective on one batch: kohya's sigmoid timesteps, shift 3 where asked, velocity MSE."""
    from lllite.anima.objective import noisy_latents, sample_sigmas, velocity
    from lllite.anima.pipeline import transformer_inputs
    from lllite.objective import noise_loss

    latents = batch["latents"]
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    sigmas = sample_sigmas("sigmoid", len(latents), generator, latent_size=tuple(latents.shape[-2:])).to(latents.device)
    network.set_cond_image(batch["control"])
    inputs = transformer_inputs(noisy_latents(latents, noise, sigmas).to(dtype), sigmas.to(dtype),
                                batch["context"].to(dtype))
    with torch.autocast(latents.device.type, dtype=dtype, enabled=dtype != torch.float32):
        prediction = model(**inputs, return_dict=False)[0][:, :, 0]
    return noise_loss(prediction, velocity(latents, noise))


def training_variant(model: nn.Module, size: int, dtype: str, checkpointing: bool, optimizer_name: str,
                     config, steps: int) -> dict:
    """``steps`` steps of a fresh network on the frozen DiT: the peak over all (the first creates the
    optimizer's state), the time of the last."""
    from benches.gpu_check import tensor_bytes
    from lllite.train.parts import make_optimizer

    device = config.device
    if checkpointing:
        model.enable_gradient_checkpointing()
    network = network_for(model, device).train()
    batch = cached_batch(model, size, device)
    network.apply_to(model)
    row: dict = {"dtype": dtype, "gradient_checkpointing": checkpointing, "optimizer": optimizer_name}
    try:
        optimizer = make_optimizer(optimizer_name, network.parameters(), LEARNING_RATE, WEIGHT_DECAY, device)
        generator = torch.Generator().manual_seed(0)
        held = tensor_bytes(model, network, batch)
        losses: list[float] = []

        def step():
            loss = step_loss(model, network, batch, DTYPES[dtype], generator)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())

        with memory_ceiling(device), PeakMemory(device) as peak:
            timings = [timed(step, device) for _ in range(steps)]
        row.update(losses=losses, step_s=timings[-1].wall_s, step_cpu_s=timings[-1].cpu_s,
                   optimizer_state_bytes=tensor_bytes(*[dict(state) for state in optimizer.state.values()]))
        row.update(footprint(peak, held, device))
        return row
    finally:
        network.remove()
        model.disable_gradient_checkpointing()


def footprint(peak: PeakMemory, held: int, device: str) -> dict:
    """The device memory a step needs, measured on a GPU or estimated on a CPU, with the T4 and L4 verdicts."""
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(device)
        outside = (total - free) - torch.cuda.memory_reserved(device)
        need = peak.reserved_peak_bytes + outside
        row = {"held_bytes": peak.start_bytes, "max_memory_allocated": peak.peak_bytes,
               "max_memory_reserved": peak.reserved_peak_bytes, "outside_allocator_bytes": outside,
               "footprint_how": "max_memory_reserved + memory outside PyTorch's allocator"}
    else:
        need = held + peak.extra_bytes + CUDA_CONTEXT_BYTES
        row = {"held_bytes": held, "rss_peak_extra_bytes": peak.extra_bytes,
               "footprint_how": "tensors held (exact) + the peak resident set above the start "
                                f"+ {gib(CUDA_CONTEXT_BYTES)} assumed for the CUDA context"}
    return {**row, "footprint_bytes": need, "fits_t4": need <= T4_BYTES, "fits_l4": need <= L4_BYTES}


def section_e(entry: dict, check) -> None:
    from benches.gpu_check import PRECISION_NAMES, bitsandbytes_problem, measure

    config, device = check.config, check.device
    cpu_estimate = bool(config.options.get("cpu_estimate"))
    dtypes, left_out = precisions(device, cpu_estimate)
    optimizers = ["adamw8bit", "adamw"]
    problem = bitsandbytes_problem(device)
    if problem is not None:
        optimizers.remove("adamw8bit")
        left_out["adamw8bit"] = problem
    # On a CPU the step without checkpointing needs more memory than a 24 GB machine has beside the DiT.
    checkpointing_options = (True,) if cpu_estimate else (True, False)
    if cpu_estimate:
        left_out["no_gradient_checkpointing"] = "not estimated on the CPU: its activations exceed this machine's memory"
    steps = 1 if cpu_estimate else 1 + config.warmup
    entry.update(padding_mask_resize=padding_mask_resize(), left_out=left_out, steps_per_variant=steps, batch=1,
                 t4_bytes=T4_BYTES, l4_bytes=L4_BYTES, sizes={})
    for size in config.sizes:
        rows = entry["sizes"][str(size)] = {}
        for dtype in dtypes:
            model = transformer(config, dtype)
            entry["dit_parameters"] = sum(p.numel() for p in model.parameters())
            for checkpointing in checkpointing_options:
                for optimizer_name in optimizers:
                    key = f"{PRECISION_NAMES.get(dtype, 'fp32')}_{'ckpt' if checkpointing else 'no_ckpt'}_{optimizer_name}"
                    what = {"dtype": dtype, "gradient_checkpointing": checkpointing, "optimizer": optimizer_name}
                    rows[key] = measure(check, what, lambda: training_variant(
                        model, size, dtype, checkpointing, optimizer_name, config, steps))
                    print(f"  e {size}px {key}: {describe(rows[key])}", file=sys.stderr)
                    check.save()
            model = None  # the next dtype's DiT is built after this one is freed
            release_freed_memory(device)


def text_models(config, dtype: str, seed: int = 2) -> tuple[nn.Module, nn.Module]:
    """Qwen3 0.6B and the LLM adapter at Anima's sizes (the quick run: tiny ones), filled, on the device."""
    from diffusers import AnimaTextConditioner
    from transformers import Qwen3Config, Qwen3Model

    from lllite.anima.pipeline import REAL_ANIMA

    qwen = dict(QWEN3_06B)
    adapter = dict(REAL_ANIMA["text_conditioner"])
    if config.quick:
        qwen.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, head_dim=32, vocab_size=1024)
        adapter.update(source_dim=64, target_dim=QUICK_TRANSFORMER["text_embed_dim"], model_dim=64, num_layers=1,
                       num_attention_heads=2, target_vocab_size=256)
    # built on the CPU: their rotary frequencies are buffers computed at init
    encoder = built_on_cpu(lambda: Qwen3Model(Qwen3Config(**qwen)), DTYPES[dtype], seed)
    conditioner = built_on_cpu(lambda: AnimaTextConditioner(**adapter), DTYPES[dtype], seed + 1)
    return tuple(m.to(config.device).requires_grad_(False) for m in (encoder, conditioner))


def vae_model(config, dtype: str) -> nn.Module:
    from diffusers import AutoencoderKLQwenImage

    vae = built_on_cpu(lambda: AutoencoderKLQwenImage(**({"base_dim": 16} if config.quick else {})), DTYPES[dtype], 4)
    return vae.to(config.device).requires_grad_(False)


def inference_phases(config, dtype: str, size: int) -> dict:
    """Each phase's peak above the weights, run with every model on the device, and the footprint."""
    from benches.gpu_check import tensor_bytes
    from lllite.anima.pipeline import transformer_inputs

    device, torch_dtype = config.device, DTYPES[dtype]
    encoder, conditioner = text_models(config, dtype)
    model, vae = transformer(config, dtype), vae_model(config, dtype)
    network = network_for(model, device)
    weights = tensor_bytes(encoder, conditioner, model, vae, network)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, TEXT_TOKENS), generator=generator).to(device)
    t5_ids = torch.randint(0, 200, (2, TEXT_TOKENS), generator=generator).to(device)
    latents = torch.randn(2, 16, size // 8, size // 8, generator=generator).to(device, torch_dtype)
    control = (torch.rand(1, 3, size, size, generator=generator) * 2 - 1).to(device)
    phases: dict = {}

    def text():
        hidden = encoder(input_ids=ids).last_hidden_state
        phases["context"] = conditioner(hidden, t5_ids)

    def denoise():
        network.set_cond_image(control)
        inputs = transformer_inputs(latents, torch.full((2,), 0.5, device=device, dtype=torch_dtype),
                                    phases["context"].to(torch_dtype))
        phases["velocity"] = model(**inputs, return_dict=False)[0]

    def decode():
        vae.decode(phases["velocity"][:1], return_dict=False)

    network.apply_to(model)
    rows = {}
    try:
        with torch.no_grad():
            for name, phase in (("text", text), ("denoise_cfg_batch2", denoise), ("vae_decode", decode)):
                with memory_ceiling(device), PeakMemory(device) as peak:
                    timing = timed(phase, device)
                rows[name] = {"seconds": timing.wall_s, "peak_above_start_bytes": peak.extra_bytes}
    finally:
        network.remove()
    worst = max(row["peak_above_start_bytes"] for row in rows.values())
    need = weights + worst + (CUDA_CONTEXT_BYTES if not device.startswith("cuda") else 0)
    return {"weights_bytes": weights, "phases": rows, "footprint_bytes": need, "fits_t4": need <= T4_BYTES,
            "fits_l4": need <= L4_BYTES,
            "footprint_how": "every model's weights (exact) + the largest phase's peak above its start"
                             + ("" if device.startswith("cuda") else f" + {gib(CUDA_CONTEXT_BYTES)} for a CUDA context")}


def section_f(entry: dict, check) -> None:
    from benches.gpu_check import measure

    config = check.config
    dtypes, left_out = precisions(config.device, bool(config.options.get("cpu_estimate")))
    entry.update(padding_mask_resize=padding_mask_resize(), left_out=left_out, sizes={})
    for size in config.sizes:
        rows = entry["sizes"][str(size)] = {}
        for dtype in dtypes:
            started = time.monotonic()
            rows[dtype] = measure(check, {"dtype": dtype}, lambda: inference_phases(config, dtype, size))
            rows[dtype]["seconds"] = round(time.monotonic() - started, 1)
            print(f"  f {size}px {dtype}: {describe(rows[dtype])}", file=sys.stderr)
            check.save()


def describe(row: dict) -> str:
    if "error" in row or "skipped" in row:
        return row.get("error") or row["skipped"]
    verdict = f"{gib(row['footprint_bytes'])}: T4 {'fits' if row['fits_t4'] else 'does not fit'}, " \
              f"L4 {'fits' if row['fits_l4'] else 'does not fit'}"
    return verdict + (f", step {row['step_s']:.1f} s" if "step_s" in row else "")
