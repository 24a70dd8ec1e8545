"""Exact counts for kohya's Anima LLLite (v2) at Anima's real size, no timing: parameters, file sizes, arithmetic.

The DiT (Cosmos-Predict2 2B as Anima configures it) lives on the ``meta`` device; each LLLite network is
made for real (a few million parameters) and written in bf16 to measure its file. Arithmetic is counted
by PyTorch's ``FlopCounterMode`` (matrix multiplies, convolutions and attention; elementwise work is not
counted) per DiT call at batch 1: Anima's modular pipeline calls the DiT once per guidance branch. The
trunk runs once per control image, so it is counted apart from the per-call cost of the modules.

    python benches/bench_anima_counts.py --quick     # 512 px
    python benches/bench_anima_counts.py             # 512 and 1024 px
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benches.common import parameter_count, parse_config, write_results  # noqa: E402

#: The networks compared: kohya's presets, every atomic, and the default with ASPP.
VARIANTS = {
    "self_attn_q": dict(target_layers="self_attn_q"),
    "self_attn_qkv": dict(target_layers="self_attn_qkv"),
    "self_attn_qkv_cross_q": dict(target_layers="self_attn_qkv_cross_q"),
    "all_atomics": dict(target_layers="self_attn_q_pre,self_attn_kv_pre,cross_attn_q_pre,mlp_fc1_pre"),
    "self_attn_q_aspp": dict(target_layers="self_attn_q", use_aspp=True),
}
TEXT_TOKENS = 512  # the LLM adapter pads its output to 512 tokens


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> None:
    from lllite.anima import create_network
    from lllite.anima.pipeline import anima_transformer

    config = parse_config("anima_counts", __doc__.splitlines()[0], sizes=[512, 1024], quick_sizes=[512], argv=argv)
    # the padding-mask channel (8192 weights, no FLOPs) is resized by torchvision, which runs without it here
    dit = anima_transformer(concat_padding_mask=False).eval()
    networks = {name: create_network(dit, **options) for name, options in VARIANTS.items()}  # real weights, CPU
    parameters = {"dit": parameter_count(dit), **{name: parameter_count(n) for name, n in networks.items()}}
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, network in networks.items():
            files[name] = network.save(Path(tmp) / f"{name}.safetensors").stat().st_size
    print(f"{'network':<24}{'modules':>8}{'parameters':>14}{'bf16 file':>12}{'x DiT':>10}")
    for name, network in networks.items():
        print(f"{name:<24}{len(network):>8}{parameters[name]:>14,}{files[name] / 2**20:>8.1f} MiB"
              f"{parameters[name] / parameters['dit']:>10.5f}")
    results = {"parameters": parameters, "modules": {n: len(net) for n, net in networks.items()},
               "file_bytes_bf16": files, "flops": {}}
    for size in config.sizes:
        latent = size // 8
        x = torch.zeros(1, 16, 1, latent, latent, device="meta")
        t = torch.full((1,), 0.5, device="meta")
        text = torch.zeros(1, TEXT_TOKENS, 1024, device="meta")
        bare = flops(lambda: dit(x, t, text))
        counted = {"dit": {"flops": bare, "ratio": 1.0}}
        for name, network in networks.items():
            network.to("meta")
            trunk = flops(lambda: network.trunk(torch.zeros(1, 3, size, size, device="meta")))
            network.apply_to(dit)
            network.set_cond_image(torch.zeros(1, 3, size, size))
            with_network = flops(lambda: dit(x, t, text))
            network.remove()
            per_call = with_network - trunk  # the trunk's embedding is cached for every later call
            counted[name] = {"flops": per_call, "ratio": per_call / bare, "trunk_once_per_image": trunk}
        results["flops"][str(size)] = counted
        print(f"\n{size}x{size}: TFLOPs per DiT call (x the bare DiT), and the trunk's once per image")
        for name, row in counted.items():
            trunk = f"  trunk {row['trunk_once_per_image'] / 1e9:7.2f} GFLOPs" if "trunk_once_per_image" in row else ""
            print(f"  {name:<24}{row['flops'] / 1e12:9.4f}  {row['ratio']:8.5f}{trunk}")
        path = write_results(config, "anima_counts", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
