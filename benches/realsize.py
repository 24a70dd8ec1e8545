"""Real architectures, random weights: every path a Colab user takes, at SDXL base's and Anima's full size.

Builds each model at its published configuration with random weights (nothing is downloaded), saves it as a
local diffusers folder, and runs through that folder what a user runs: loading, a default network and a
kohya-style file at real size, generation (one call at 1024 px, the rest at 512 px), image-to-image, two
training steps with the memory options, the trained file saved and loaded back, and the notebooks' real-model
paths. Each part is timed, with the process's peak memory; the JSON is rewritten after every part.

    python benches/realsize.py --family sdxl --folder /tmp/realsize            # build once, then run every part
    python benches/realsize.py --family anima --parts load network --json anima.json

The configurations: SDXL base's UNet (:data:`lllite.sdxl.pipeline.SDXL_UNET_CONFIG`), its VAE and text encoders
(:data:`SDXL_VAE_CONFIG`, :data:`CLIP_L_CONFIG`, :data:`CLIP_BIGG_CONFIG`); Anima as diffusers'
``scripts/convert_anima_to_diffusers.py`` builds it (:data:`lllite.anima.pipeline.REAL_ANIMA`, :data:`QWEN3_06B`,
``AutoencoderKLQwenImage()``'s defaults). The tokenizers are the toys', whose ids all fall inside the real
vocabularies. Weights are bfloat16, N(0, 1/fan_in) (:func:`lllite.sdxl.pipeline.fill_weights`).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lllite  # noqa: E402
from lllite.files import write_text_atomic  # noqa: E402
from lllite.sdxl.pipeline import SDXL_UNET_CONFIG, fill_weights  # noqa: E402

#: SDXL base's ``vae/config.json``, as diffusers' single-file conversion also writes it (VAE_CONFIG_SDXL).
SDXL_VAE_CONFIG = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025,
}
#: SDXL's first text encoder, OpenAI's CLIP ViT-L/14 (its text model), and its second, OpenCLIP's ViT-bigG/14
#: with the text projection: the fields that shape them (Stability's SD3 reference code lists the same).
CLIP_L_CONFIG = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                     hidden_act="quick_gelu", projection_dim=768, vocab_size=49408, max_position_embeddings=77)
CLIP_BIGG_CONFIG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                        hidden_act="gelu", projection_dim=1280, vocab_size=49408, max_position_embeddings=77)
#: Qwen3-0.6B, Anima's text encoder, as diffusers' conversion script configures it (the rest is read there from
#: the checkpoint's shapes: 28 layers of width 1024, 16 heads of 128 over 8 key-value heads, MLP 3072).
QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                 rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=False, tie_word_embeddings=False)
def nearest_resize_transforms():
    """A stand-in for torchvision's ``transforms`` where diffusers' Cosmos DiT uses it (the padding mask's resize),
    whose resize is a plain nearest interpolate: torchvision's wheels do not match this machine's CPU torch.
    torchvision's nearest resize of a tensor is this same interpolate."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    def resize(tensor, size, interpolation=None):
        return F.interpolate(tensor, size=list(size), mode="nearest")

    return SimpleNamespace(functional=SimpleNamespace(resize=resize), InterpolationMode=SimpleNamespace(NEAREST="nearest"))


def needs_resize_double() -> bool:
    """Install :func:`nearest_resize_transforms` where torchvision is missing; whether it was needed."""
    from diffusers.models.transformers import transformer_cosmos

    if getattr(transformer_cosmos, "transforms", None) is not None:
        return False
    transformer_cosmos.transforms = nearest_resize_transforms()
    return True


def padding_mask_resize() -> str:
    """What resizes real Anima's padding mask in this run, the stand-in installed where needed."""
    return "a stand-in: nearest interpolate (torchvision is not installed)" if needs_resize_double() else "torchvision"


PARTS = ("load", "network", "file", "generate_1024", "generate_512", "img2img", "train", "notebook")
PROMPT = "a red circle"


def _materialize(module: torch.nn.Module, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A module built on the meta device, given memory in ``dtype`` only, then random weights. Only modules
    without buffers: a buffer is computed at init (position ids, rotary frequencies), and the meta device
    computes nothing."""
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        raise ValueError(f"{type(module).__name__} has buffers ({', '.join(buffers[:3])}); build it on the CPU")
    module = torch.nn.Module.to(module, dtype).to_empty(device="cpu")
    fill_weights(module, seed)
    return module.eval()


def built_on_cpu(build: Callable[[], torch.nn.Module], dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A module built on the CPU in ``dtype`` (its buffers computed as at init), then random weights: for the
    text encoders and the LLM adapter, which hold position ids and rotary frequencies."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        module = build()
    finally:
        torch.set_default_dtype(default)
    fill_weights(module, seed)
    return module.eval()


def build_sdxl(folder: Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """SDXL base's architecture with random weights, saved as a diffusers folder."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lllite.sdxl.toy import make_scheduler, make_tokenizer

    tokenizer, tokenizer_2 = make_tokenizer(77), make_tokenizer(77)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
        vae = AutoencoderKL.from_config(SDXL_VAE_CONFIG)
    models = [_materialize(m, dtype, seed + i) for i, m in enumerate((unet, vae))]
    models.append(built_on_cpu(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG, **ids)), dtype, seed + 2))
    models.append(built_on_cpu(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG_CONFIG, **ids)), dtype, seed + 3))
    pipe = StableDiffusionXLPipeline(unet=models[0], vae=models[1], text_encoder=models[2], text_encoder_2=models[3],
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=make_scheduler(),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(str(folder))
    return folder


def build_anima(folder: Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """Anima's architecture as diffusers' conversion script builds it, with random weights, saved as a modular
    pipeline folder."""
    from diffusers import AnimaAutoBlocks, AnimaTextConditioner, AutoencoderKLQwenImage
    from transformers import Qwen3Config, Qwen3Model

    from lllite.anima.pipeline import REAL_ANIMA, anima_transformer, save_pipeline
    from lllite.anima.toy import make_qwen_tokenizer, make_scheduler, make_t5_tokenizer

    tokenizer, t5_tokenizer = make_qwen_tokenizer(), make_t5_tokenizer()
    transformer = _materialize(anima_transformer(), dtype, seed)  # built on the meta device
    text_conditioner = built_on_cpu(lambda: AnimaTextConditioner(**REAL_ANIMA["text_conditioner"]), dtype, seed + 1)
    text_encoder = built_on_cpu(lambda: Qwen3Model(Qwen3Config(**QWEN3_06B, pad_token_id=tokenizer.pad_token_id)),
                           dtype, seed + 2)
    vae = built_on_cpu(AutoencoderKLQwenImage, dtype, seed + 3)  # small (0.25 B)
    pipe = AnimaAutoBlocks().init_pipeline()
    pipe.update_components(transformer=transformer, text_conditioner=text_conditioner, text_encoder=text_encoder, vae=vae,
                           tokenizer=tokenizer, t5_tokenizer=t5_tokenizer, scheduler=make_scheduler())
    save_pipeline(pipe, folder)
    return folder


BUILDERS: dict[str, Callable[[Path], Path]] = {"sdxl": build_sdxl, "anima": build_anima}


def peak_gib() -> float:
    """The process's peak resident memory so far, GiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


class Run:
    """One family's parts, on its folder, with what the parts hand each other and what they measured."""

    def __init__(self, family: str, folder: Path, json_path: Path | None = None):
        self.family, self.folder, self.json_path = family, Path(folder), json_path
        self.work = Path(tempfile.mkdtemp(prefix=f"realsize-{family}-"))
        self.pipe = self.network = self.trained = None
        self.results: dict = {"family": family, "folder": str(folder), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "parts": {}}

    def part(self, name: str, function: Callable[["Run"], dict]) -> dict:
        started = time.monotonic()
        try:
            details = function(self)
            entry = {"seconds": round(time.monotonic() - started, 1), "peak_gib": peak_gib(), **details}
        except Exception as error:  # noqa: BLE001 - a part's failure is recorded; the caller decides
            entry = {"seconds": round(time.monotonic() - started, 1), "peak_gib": peak_gib(),
                     "error": f"{type(error).__name__}: {error}"}
        self.results["parts"][name] = entry
        if self.json_path is not None:
            write_text_atomic(self.json_path, json.dumps(self.results, indent=2) + "\n")
        return entry

    def control(self, size: int) -> np.ndarray:
        from lllite.conditioning import canny
        from lllite.toy.shapes import render_sample

        return canny(render_sample(3, size=size).image)


def load(run: Run) -> dict:
    run.pipe = lllite.load_pipeline(run.folder, dtype=torch.bfloat16)
    denoiser = getattr(run.pipe, "unet", None) or run.pipe.transformer
    return {"pipeline": type(run.pipe).__name__, "denoiser_parameters": sum(p.numel() for p in denoiser.parameters())}


def network(run: Run) -> dict:
    denoiser = getattr(run.pipe, "unet", None) or run.pipe.transformer
    run.network = lllite.create_network(denoiser)
    run.network.apply_to(run.pipe)
    run.network.remove()
    return {"modules": len(run.network), "parameters": sum(p.numel() for p in run.network.parameters())}


def file(run: Run) -> dict:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in run.network.parameters():  # kohya's trained files are not zero: every tensor carries values
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
    path = run.network.save(run.work / "kohya_style.safetensors")
    loaded = lllite.load(path)
    same = all(torch.equal(loaded.state_dict()[k], v.to(run.network.file_dtype).float())
               for k, v in run.network.state_dict().items())
    run.network = loaded
    return {"file_mib": round(path.stat().st_size / 2**20, 1), "round_trip_exact": same}


def generate(run: Run, size: int) -> dict:
    from lllite.sampling import generate as sample

    images = sample(run.pipe, run.network, run.control(size), PROMPT, num_inference_steps=2, guidance_scale=5.0,
                    height=size, width=size, multiplier=1.0)
    pixels = np.asarray(images[0])
    return {"size": list(images[0].size), "steps": 2, "guidance_scale": 5.0, "pixel_std": round(float(pixels.std()), 2)}


def img2img(run: Run) -> dict:
    """Image-to-image at 512 px, strength 0.5 of 4 steps: the denoiser's calls are counted, so that the steps the
    strength skips show (SDXL's pipeline calls its UNet once per step at batch 2; Anima's guider calls the DiT
    once per guidance branch)."""
    size, control, steps, strength = 512, run.control(512), 4, 0.5
    start = Image.fromarray(np.full((size, size, 3), 128, np.uint8))
    denoiser = getattr(run.pipe, "unet", None) or run.pipe.transformer
    calls: list[int] = []
    counter = denoiser.register_forward_pre_hook(lambda module, args: calls.append(1))
    run.network.set_cond_image(control)
    try:
        if hasattr(run.pipe, "unet"):
            from diffusers import StableDiffusionXLImg2ImgPipeline

            image_pipe = StableDiffusionXLImg2ImgPipeline(**run.pipe.components)
            image_pipe.set_progress_bar_config(disable=True)
            run.network.apply_to(image_pipe)
            image = image_pipe(PROMPT, image=start, strength=strength, num_inference_steps=steps,
                               guidance_scale=5.0).images[0]
        else:
            run.network.apply_to(run.pipe)
            image = run.pipe(prompt=PROMPT, image=start, strength=strength, num_inference_steps=steps, height=size,
                             width=size, output_type="pil", output="images")[0]
    finally:
        run.network.remove()
        counter.remove()
        run.network.set_cond_image(None)
    return {"size": list(image.size), "strength": strength, "num_inference_steps": steps,
            "denoiser_calls": len(calls)}


def train_steps(run: Run) -> dict:
    from lllite.data import DatasetConfig, SubsetConfig
    from lllite.toy.shapes import write_dataset
    from lllite.train import TrainConfig, train

    data = write_dataset(run.work / "data", 2, size=512)
    config = TrainConfig(pretrained_model_name_or_path=str(run.folder), model_family=run.family,
                         dataset_config=DatasetConfig([SubsetConfig(data / "images", data / "conditioning")],
                                                      resolution=512, batch_size=1, enable_bucket=False),
                         output_dir=str(run.work / "train"), max_train_steps=2, mixed_precision="bf16",
                         gradient_checkpointing=True, cache_latents=True, cache_text_encoder_outputs=True,
                         optimizer_type="adamw8bit", save_every_n_steps=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8-bit AdamW is absent on a CPU: the trainer says so and uses AdamW
        result = train(config, run.pipe)
    result.network.remove()
    run.trained = result.weights
    reloaded = lllite.load(result.weights)
    return {"steps": result.steps, "losses": [round(loss, 5) for _, loss in result.losses],
            "train_seconds": round(result.train_seconds, 1), "file_mib": round(result.weights.stat().st_size / 2**20, 1),
            "reloaded_modules": len(reloaded)}


def notebook(run: Run) -> dict:
    from lllite import families
    from lllite.environment import Environment, find_weights, load_pipeline
    from lllite.recipes import shapes_dataset, training_config

    family = families.get(run.family)
    env = Environment(False, None, "cpu", family.real_model, quick=True, path=str(run.folder))
    run.pipe = None  # the notebook loads its own
    pipe = load_pipeline(env)
    config = training_config(env, shapes_dataset(env, run.work / "shapes", count=2), run.work / "notebook")
    weights = find_weights(env, run.trained)
    network = lllite.load(weights)
    network.apply_to(pipe)
    network.remove()
    return {"model": env.model, "source": env.source, "pipeline": type(pipe).__name__,
            "recipe": {k: getattr(config, k) for k in ("learning_rate", "mixed_precision", "optimizer_type",
                                                       "train_batch_size")}, "weights": Path(weights).name}


RUNNERS: dict[str, Callable[[Run], dict]] = {
    "load": load, "network": network, "file": file, "generate_1024": lambda run: generate(run, 1024),
    "generate_512": lambda run: generate(run, 512), "img2img": img2img, "train": train_steps, "notebook": notebook,
}


def run_family(family: str, folder: Path, parts=PARTS, json_path: Path | None = None, build: bool = True) -> dict:
    """Build the folder when it is missing (``build``), then run ``parts`` in order; the results by part."""
    folder = Path(folder)
    run = Run(family, folder, json_path)
    if family == "anima":  # real Anima's DiT resizes its padding mask with torchvision
        run.results["padding_mask_resize"] = padding_mask_resize()
    if build and not folder.exists():
        if "error" in run.part("build", lambda run: {"gib_on_disk": _build(family, folder)}):
            print(f"{family} build: {run.results['parts']['build']['error']}", flush=True)
            shutil.rmtree(run.work, ignore_errors=True)
            return run.results
    try:
        for name in parts:
            entry = run.part(name, RUNNERS[name])
            print(f"{family} {name}: {json.dumps(entry)}", flush=True)
    finally:
        shutil.rmtree(run.work, ignore_errors=True)
    return run.results


def _build(family: str, folder: Path) -> float:
    """Build into a sibling folder, renamed into place once complete: a failed build leaves no half folder."""
    staging = folder.with_name(folder.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    BUILDERS[family](staging)
    staging.rename(folder)
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(BUILDERS), required=True)
    parser.add_argument("--folder", type=Path, required=True, help="the model's folder, built there when missing")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--json", type=Path, help="write the results here after every part")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_family(args.family, args.folder / args.family, args.parts, args.json)
    failed = [name for name, entry in results["parts"].items() if "error" in entry]
    print(f"{len(results['parts']) - len(failed)} of {len(results['parts'])} parts ran" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
