"""Exact counts at SDXL's real size, no timing involved: parameters, file sizes, training state, arithmetic.

Every model lives on the ``meta`` device (no memory, no weights); only the LLLite files are real,
written in fp16 and measured on disk. Arithmetic is counted by PyTorch's ``FlopCounterMode`` (matrix
multiplies, convolutions and attention; elementwise work is not counted), per denoising step at
batch 2 (classifier-free guidance), so it reaches sizes a CPU is too slow to time.

    python benches/bench_counts.py --quick     # 256 and 512 px
    python benches/bench_counts.py             # 256, 512, 768, 1024 px
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benches.common import (control_image, controlnet_meta, lllite_embeddings, lllite_network,  # noqa: E402
                            parameter_count, parse_config, sdxl_unet_meta, t2i_adapter_meta, unet_inputs,
                            write_results)

BATCH = 2
FP16_BYTES = 2
ADAMW_BYTES = 8  # exp_avg and exp_avg_sq in fp32, per trainable parameter
ADAMW_8BIT_BYTES = 2  # bitsandbytes' AdamW8bit, kohya's published recipe


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def file_sizes(models: dict) -> dict:
    """fp16 bytes on disk: LLLite files written for real, the others as 2 bytes per parameter."""
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in ("lllite", "lllite_up"):
            path = Path(tmp) / f"{key}.safetensors"
            models[key].save(path, dtype=torch.float16)
            sizes[key] = path.stat().st_size
    for key in ("controlnet", "t2i_adapter"):
        sizes[key] = parameter_count(models[key]) * FP16_BYTES
    return sizes


def arithmetic(size: int, models: dict) -> dict:
    """FLOPs of one denoising step per variant, and of the once-per-image work."""
    unet, controlnet, adapter = models["unet"], models["controlnet"], models["t2i_adapter"]
    inputs = unet_inputs(size, BATCH)
    image = control_image(size, 1)
    counts = {"unet": flops(lambda: unet(**inputs))}

    def controlnet_step():
        down, mid = controlnet(**inputs, controlnet_cond=image.repeat(BATCH, 1, 1, 1), return_dict=False)
        unet(**inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    counts["controlnet"] = flops(controlnet_step)
    counts["t2i_adapter_features"] = flops(lambda: adapter(image))
    counts["t2i_adapter"] = counts["unet"]  # the residual adds are elementwise
    for key in ("lllite", "lllite_up"):
        network = models[key]
        counts[f"{key}_embedding"] = flops(lambda: lllite_embeddings(network, image, size))
        network.apply_to(unet)
        network.set_cond_image(torch.zeros(1, 3, size, size))  # values are read on set; the network moves it to meta
        counts[f"{key}_naive"] = flops(lambda: unet(**inputs))
        network.remove()
        counts[key] = counts[f"{key}_naive"] - counts[f"{key}_embedding"]
    return {name: {"flops": value, "ratio": value / counts["unet"]} for name, value in counts.items()}


def main(argv: list[str] | None = None) -> None:
    config = parse_config("counts", __doc__.splitlines()[0], sizes=[256, 512, 768, 1024], quick_sizes=[256, 512],
                          argv=argv)
    unet = sdxl_unet_meta()
    models = {
        "unet": unet,
        "controlnet": controlnet_meta(unet),
        "t2i_adapter": t2i_adapter_meta(),
        "lllite": lllite_network(unet, up_path=False),
        "lllite_up": lllite_network(unet, up_path=True),
    }
    params = {key: parameter_count(model) for key, model in models.items()}
    files = file_sizes(models)
    for key in ("lllite", "lllite_up"):
        models[key].to("meta")  # the files are written: from here on only shapes matter
    training = {}
    for key in ("lllite", "lllite_up", "controlnet"):
        n = params[key]
        training[key] = {"trainable_parameters": n, "gradient_bytes_fp32": 4 * n,
                         "adamw_state_bytes": ADAMW_BYTES * n, "adamw8bit_state_bytes": ADAMW_8BIT_BYTES * n}
    for key in ("lllite", "lllite_up"):
        training[key]["ratio_to_controlnet"] = params[key] / params["controlnet"]

    print(f"{'model':<14}{'parameters':>15}{'fp16 file':>13}{'x ControlNet':>14}")
    for key in ("unet", "controlnet", "t2i_adapter", "lllite", "lllite_up"):
        file = f"{files[key] / 2**20:>10.1f} MiB" if key in files else " " * 14
        print(f"{key:<14}{params[key]:>15,}{file:>13}{params[key] / params['controlnet']:>14.4f}")
    print("\ntraining state (AdamW fp32: 8 bytes per trainable parameter; AdamW 8-bit: 2):")
    for key, row in training.items():
        print(f"  {key:<12}{row['trainable_parameters']:>15,} trainable  "
              f"{row['adamw_state_bytes'] / 2**30:8.3f} GiB AdamW  {row['adamw8bit_state_bytes'] / 2**30:8.3f} GiB 8-bit")

    results = {"batch": BATCH, "parameters": params, "file_bytes_fp16": files, "training": training, "flops": {}}
    for size in config.sizes:
        counted = arithmetic(size, models)
        results["flops"][str(size)] = counted
        print(f"\n{size}x{size}, batch {BATCH}: TFLOPs per step (x UNet)")
        for name, row in counted.items():
            print(f"  {name:<22}{row['flops'] / 1e12:9.4f}  {row['ratio']:7.4f}")
        path = write_results(config, "counts", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
