"""Pretrain the toy SDXL on coloured shapes, so that "a red circle" draws a red circle.

Run: ``python -m lllite.toy.pretrain --overwrite`` (or ``python -m lllite.sdxl.pretrain``). It trains the VAE,
then the UNet together with both text encoders with SDXL's noise objective (weighted towards the noisy timesteps
by 1 / sqrt(SNR)), writes the pipeline into ``lllite/sdxl/weights``, prints the quality gate (per colour and
shape, the fraction of seeds that show a blob of that colour with a plausible size) and how often an
unconditioned sample shows the caption's shape (:func:`lllite.toy.pretraining.report_shapes`). With
``--start-from FOLDER`` a run continues from a saved toy: its VAE stays, the UNet and the text encoders train on.

The shipped weights come from three runs, 1 hour 40 minutes in all on an idle 2-core machine:

1. ``python -m lllite.sdxl.pretrain --out-dir stage1``, every setting at its default (60 minutes in two
   processes: VAE 26.5 minutes, UNet 6000 steps in about 32; the weights shipped before, made before the two
   small changes that ``loss_weighting``'s comment names). Its unconditioned samples draw the caption's colour
   every time but only 69.8% of them its shape: the 1 / sqrt(SNR) weighting passes the colour gate fast and
   blunts corners.
2. ``--start-from stage1 --out-dir stage2 --unet-steps 3000 --unet-lr 3e-4 --text-encoder-lr 3e-4
   --warmup-steps 100 --loss-weighting uniform`` (12.5 minutes, two processes): the plain noise loss weighs the
   nearly clean timesteps, where outlines are drawn, as much as the rest. Shapes 78.1%.
3. ``--start-from stage2 --out-dir weights`` with stage 2's settings but ``--unet-steps 6000 --processes 1``
   (27.3 minutes): shapes 91.7% (circles 32 of 32, squares 28, triangles 28), colour 100%, every caption's
   gate 100%. A fourth run like it at a learning rate of 2e-4 (25 minutes) scored the same 91.7%.

Every run prints the flags it was given first, for the record.
"""
from __future__ import annotations

import copy
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import StableDiffusionXLPipeline
from tqdm.auto import tqdm

from lllite.files import write_folder_atomic
from lllite.launch import launch
from lllite.metrics import has_colour_blob
from lllite.objective import lr_factor, noise_loss
from lllite.sdxl.objective import (loss_weights, noise_scheduler, sample_noise, sample_timesteps,
                                   signal_to_noise)
from lllite.sdxl.pipeline import generate, load_pipeline
from lllite.sdxl.toy import WEIGHTS_DIR, build_pipeline
from lllite.toy import pretraining
from lllite.toy.pretraining import (GATE, MIN_LR_RATE, PretrainError, reconstruction_losses, render_training_set,
                                    round_trip_iou)
from lllite.toy.shapes import COLOURS, SHAPES, caption_for


@dataclass
class PretrainConfig:
    """Settings of the toy pretraining; the defaults (two processes) produce the shipped weights."""

    seed: int = 0
    train_samples: int = 4000
    image_size: int = 128
    vae_steps: int = 6000
    vae_batch: int = 4
    vae_crop: int = 128
    vae_lr: float = 2e-3
    kl_weight: float = 1e-7
    shape_weight: float = 8.0
    # The shape's outline decides the IoU of everything downstream: pixels within ``edge_band_px`` of it
    # weigh ``1 + edge_weight`` more, and the loss also compares image gradients. Without the two, the
    # round trip blurred corners to IoU 0.81; with them it keeps 0.97 (6000 steps).
    edge_weight: float = 20.0
    edge_band_px: int = 2
    gradient_weight: float = 1.0
    initial_logvar: float = -6.0
    # Steps the gate needs depend on the loss weighting (below). With the plain noise loss, 3500 steps
    # drew soft, warped outlines and let green drift to yellow, 8000 still drew green for only 44% to 56%
    # of the seeds, and 16000 passed. With the 1 / sqrt(SNR) weighting 6000 pass (worst caption 87.5%
    # in the shipped run, 94% in a one-process run on the earlier VAE), where min-SNR weighting in that
    # one-process run left "a green circle" at 44%.
    unet_steps: int = 6000
    unet_batch: int = 16
    unet_lr: float = 1e-3
    # The text encoders learn with the UNet, at its rate. Left frozen at their random initialisation,
    # they gave "blue" and "green" embeddings too alike: blue captions drew green shapes half the time.
    text_encoder_lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    # How each sample's noise loss is weighted by its timestep's signal-to-noise ratio: "uniform" (plain
    # MSE), "min-snr" (min(SNR, min_snr_gamma) / SNR) or "debiased" (1 / sqrt(SNR)). The last two move
    # the weight towards the noisy timesteps, where an image's colour and layout are decided; "debiased"
    # moves it furthest, and reached the gate in 6000 steps where the plain loss needed 16000. The shipped
    # weights' first stage (see the module) was trained before "debiased" capped SNR at 1000 (as the LLLite
    # trainer does; it changes the weight at t = 0 only) and before the warmup started from 0 instead of
    # 1 / warmup_steps; the hour-long run has not been repeated since. Continuing with "uniform" sharpens the
    # outlines that "debiased" leaves blunt.
    loss_weighting: str = "debiased"
    min_snr_gamma: float = 5.0
    gate_seeds: int = 16
    gate_steps: int = 20
    guidance_scale: float = 5.0
    out_dir: Path = WEIGHTS_DIR
    # One thread per process: the toy's kernels are too small to gain from more, several OpenMP threads
    # on a CPU shared with other work wait on each other, and one thread fixes the summation order.
    threads: int = 1
    # Processes that split every batch (data parallel, one per core). Each draws the whole batch and its
    # noise from the same generators and trains on its share, and the gradients are summed, so the
    # updates are those of one process up to float rounding; over thousands of steps the rounding
    # grows into other (equally good) weights. The shipped weights come from two processes.
    processes: int = 2
    # A saved toy pipeline folder to continue from (empty: build one from random weights). Its VAE and the
    # VAE's scaling factor are kept as they are (``vae_steps`` is not used); the UNet and the text encoders
    # train on from their saved weights, with this run's settings.
    start_from: str = ""


LOSS_WEIGHTINGS = ("uniform", "min-snr", "debiased")
def _check_loss_weighting(weighting: str) -> None:
    if weighting not in LOSS_WEIGHTINGS:
        raise PretrainError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {weighting!r}")


def timestep_weights(alpha_cumprod: torch.Tensor, weighting: str, min_snr_gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights of the noise loss at timesteps with these cumulative alphas (see ``loss_weighting``):
    :func:`lllite.objective.loss_weights` with min-SNR ("min-snr"), 1 / sqrt(SNR) ("debiased") or neither."""
    _check_loss_weighting(weighting)
    return loss_weights(signal_to_noise(alpha_cumprod), min_snr_gamma=min_snr_gamma if weighting == "min-snr" else None,
                        debiased=weighting == "debiased")


class _Group:
    """The processes training together: this one's rank, their number, and what they share.

    Alone (``world == 1``) every method is a no-op, so the single-process code path is the same.
    """

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, batch: int) -> slice:
        """This process's rows of a batch drawn whole by every process."""
        size = batch // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def sum_gradients(self, parameters) -> None:
        """Sum every gradient over the processes (losses are scaled so that the sum is the whole batch's)."""
        if self.world == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's rows, in rank order."""
        if self.world == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_objects(self, value) -> list:
        if self.world == 1:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values


def train_vae(pipe: StableDiffusionXLPipeline, pixels: torch.Tensor, masks: torch.Tensor, cfg: PretrainConfig,
              group: _Group | None = None) -> None:
    """Shape-weighted reconstruction (MSE), an L1 term on image gradients, and a small KL term
    (:func:`lllite.toy.pretraining.reconstruction_losses` says why each).

    ``cfg.vae_crop`` below the image size trains on random crops; whole images work better here, because
    the decoder otherwise learns that the image border is never far, and misplaces it at full size.

    With several processes each encodes its share of the batch; every term is scaled so that the
    summed gradients are those of the whole batch.
    """
    group = group or _Group()
    share = group.share(cfg.vae_batch)
    vae = pipe.vae
    # Start with a small posterior std: at the default (std 1) the sampled latents are mostly noise and
    # the decoder learns little until the encoder has slowly shrunk it.
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels :] = cfg.initial_logvar
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor("cosine", step, cfg.warmup_steps, cfg.vae_steps, min_lr_rate=MIN_LR_RATE)
    )
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    limit = cfg.image_size - cfg.vae_crop
    progress = tqdm(range(cfg.vae_steps), desc="VAE", unit="step", mininterval=10, disable=not group.main)
    for _ in progress:
        index = torch.randint(len(pixels), (cfg.vae_batch,), generator=generator)[share]
        top, left = torch.randint(limit + 1, (2,), generator=generator).tolist()
        batch = pixels[index, :, top : top + cfg.vae_crop, left : left + cfg.vae_crop]
        mask = masks[index, :, top : top + cfg.vae_crop, left : left + cfg.vae_crop]
        posterior = vae.encode(batch).latent_dist
        # The whole batch's draw (what posterior.sample would draw alone), then this process's rows.
        noise = torch.randn((cfg.vae_batch, *posterior.mean.shape[1:]), generator=generator)[share]
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        mse, gradient_loss, weight = reconstruction_losses(reconstruction, batch, mask, cfg.edge_band_px,
                                                           cfg.shape_weight, cfg.edge_weight)
        # The weighted mean over the whole batch: this share's, times its part of all shares' weight (x/x
        # is exactly 1 alone, so one process computes what it always did, bit for bit).
        weight_sum = weight.sum()
        reconstruction_loss = mse * (weight_sum / group.sum(weight_sum))
        kl = posterior.kl().mean()
        share_of_batch = 1 / group.world
        loss = (reconstruction_loss + cfg.gradient_weight * gradient_loss * share_of_batch
                + cfg.kl_weight * kl * share_of_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        group.sum_gradients(vae.parameters())
        optimizer.step()
        lr_schedule.step()
        progress.set_postfix(mse=f"{group.sum(reconstruction_loss.detach()).item():.4f}", kl=f"{kl.item():.0f}")
    vae.eval()
    vae.requires_grad_(False)


@torch.no_grad()
def encode_latents(pipe: StableDiffusionXLPipeline, pixels: torch.Tensor,
                   group: _Group | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every training image, unscaled (each process encodes a share)."""
    group = group or _Group()
    per_process = -(-len(pixels) // group.world)
    mine = pixels[group.rank * per_process : (group.rank + 1) * per_process]
    # Equal shares for gathering: the last process pads with copies of its last image, dropped after.
    padding = per_process - len(mine)
    if padding:
        mine = torch.cat([mine, mine[-1:].expand(padding, *mine.shape[1:])])
    means, stds = [], []
    for start in tqdm(range(0, len(mine), 64), desc="encoding latents", unit="batch", mininterval=10,
                      disable=not group.main):
        posterior = pipe.vae.encode(mine[start : start + 64]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return group.gather(torch.cat(means))[: len(pixels)], group.gather(torch.cat(stds))[: len(pixels)]


def caption_embeddings(pipe: StableDiffusionXLPipeline, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and pooled embeddings of ``captions``, made by the pipeline's own ``encode_prompt`` (with
    gradients, when the text encoders train), so training sees exactly what sampling will see."""
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    return prompt_embeds, pooled


def train_unet(
    pipe: StableDiffusionXLPipeline,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    captions: list[str],
    cfg: PretrainConfig,
    group: _Group | None = None,
) -> None:
    """SDXL's objective (:mod:`lllite.objective`): DDPM noise, epsilon prediction, micro-conditioning time ids.

    The UNet and both text encoders train (the encoders at ``cfg.text_encoder_lr``); every step encodes
    the twelve distinct captions once and indexes them. A dropped caption uses zero text and pooled
    embeddings: that is what the pipeline feeds as the unconditional branch of classifier-free guidance
    (``force_zeros_for_empty_prompt``). The saved weights are an exponential moving average of all three.
    With several processes each trains on its share of the batch and the gradients are summed.
    """
    group = group or _Group()
    share = group.share(cfg.unet_batch)
    unet = pipe.unet
    ddpm = noise_scheduler()
    distinct = sorted(set(captions))
    caption_index = torch.tensor([distinct.index(caption) for caption in captions])
    size = cfg.image_size
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
    scaling = pipe.vae.config.scaling_factor
    alphas_cumprod = ddpm.alphas_cumprod

    trained = torch.nn.ModuleList([unet, pipe.text_encoder, pipe.text_encoder_2])
    trained.requires_grad_(True)
    ema = copy.deepcopy(trained).requires_grad_(False)
    trained.train()
    text_parameters = [*pipe.text_encoder.parameters(), *pipe.text_encoder_2.parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": unet.parameters(), "lr": cfg.unet_lr}, {"params": text_parameters, "lr": cfg.text_encoder_lr}],
        weight_decay=0.01,
    )
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor("cosine", step, cfg.warmup_steps, cfg.unet_steps, min_lr_rate=MIN_LR_RATE)
    )
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    progress = tqdm(range(cfg.unet_steps), desc="UNet", unit="step", mininterval=10, disable=not group.main)
    running = None
    for step in progress:
        # Every process draws the whole batch from the same generator, then keeps its rows.
        index = torch.randint(len(latent_mean), (cfg.unet_batch,), generator=generator)
        noise_in_posterior = torch.randn(latent_mean[index].shape, generator=generator)[share]
        index = index[share]
        latents = (latent_mean[index] + latent_std[index] * noise_in_posterior) * scaling
        noise = sample_noise((cfg.unet_batch, *latents.shape[1:]), generator)[share]
        timesteps = sample_timesteps("uniform", cfg.unet_batch, generator)[share]
        noisy = ddpm.add_noise(latents, noise, timesteps)
        keep = (torch.rand(cfg.unet_batch, generator=generator) >= cfg.caption_dropout).float()[share]
        text, pooled = caption_embeddings(pipe, distinct)
        text, pooled = text[caption_index[index]], pooled[caption_index[index]]
        prediction = unet(
            noisy,
            timesteps,
            encoder_hidden_states=text * keep[:, None, None],
            added_cond_kwargs={"text_embeds": pooled * keep[:, None], "time_ids": time_ids.expand(len(index), 6)},
        ).sample
        loss = noise_loss(prediction, noise, timestep_weights(alphas_cumprod[timesteps], cfg.loss_weighting,
                                                              cfg.min_snr_gamma))
        optimizer.zero_grad(set_to_none=True)
        (loss / group.world).backward()
        group.sum_gradients(trained.parameters())
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), trained.parameters()):
                averaged.lerp_(current, 1 - decay)
        value = loss.item()  # this process's share; the bar shows the main process's
        running = value if running is None else 0.98 * running + 0.02 * value
        progress.set_postfix(loss=f"{running:.4f}")
    trained.load_state_dict(ema.state_dict())
    trained.eval()
    trained.requires_grad_(False)


@torch.no_grad()
def quality_gate(
    pipe: StableDiffusionXLPipeline, seeds: int = 16, num_inference_steps: int = 20, guidance_scale: float = 5.0,
    size: int = 128, group: _Group | None = None,
) -> dict[str, float]:
    """For every caption, the fraction of ``seeds`` whose image shows a blob of the caption's colour
    with a plausible size (:func:`lllite.metrics.has_colour_blob`). Several processes share the captions."""
    group = group or _Group()
    pairs = [(colour, caption_for(colour, shape)) for colour in COLOURS for shape in SHAPES]
    rates = {}
    for colour, caption in tqdm(pairs[group.rank :: group.world], desc="quality gate", unit="caption",
                                disable=not group.main):
        images = pipe(
            [caption] * seeds,
            height=size,
            width=size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(seed) for seed in range(seeds)],
            output_type="np",
        ).images
        images = (images * 255).round().astype(np.uint8)
        rates[caption] = float(np.mean([has_colour_blob(image, colour) for image in images]))
    shared = {}
    for part in group.gather_objects(rates):
        shared.update(part)
    return {caption: shared[caption] for _, caption in pairs}


def save_atomically(pipe: StableDiffusionXLPipeline, out_dir: Path) -> None:
    """Write into a temporary sibling folder, then swap it in, so a crash never leaves half a pipeline."""
    write_folder_atomic(out_dir, pipe.save_pretrained)


def vae_round_trip_iou(pipe: StableDiffusionXLPipeline, size: int, count: int = 48) -> dict[str, float]:
    """:func:`lllite.toy.pretraining.round_trip_iou` of the toy SDXL's VAE (the posterior's mean, decoded)."""
    return round_trip_iou(lambda pixels: pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample, size, count)


def pretrain(cfg: PretrainConfig) -> dict[str, float]:
    """Train the toy pipeline, save it to ``cfg.out_dir`` and return the quality gate's rates.

    With ``cfg.processes > 1`` the work runs in that many forked processes (one core each, started by
    :func:`lllite.launch.launch`) while this one waits; the first of them prints and writes.
    """
    _check_loss_weighting(cfg.loss_weighting)
    if cfg.processes < 1:
        raise PretrainError(f"processes must be at least 1, got {cfg.processes}")
    for name in ("vae_batch", "unet_batch"):
        if getattr(cfg, name) % cfg.processes:
            raise PretrainError(f"{name} ({getattr(cfg, name)}) must be a multiple of processes ({cfg.processes}): "
                                "every process trains on an equal share of each batch")
    if cfg.processes == 1:
        torch.set_num_threads(cfg.threads)
        return _pretrain(cfg, _Group())
    return launch(_pretrain_in_group, cfg, processes=cfg.processes, threads=cfg.threads, name="pretraining process")


def _pretrain_in_group(cfg: PretrainConfig) -> dict[str, float]:
    """One of the launched processes: join the others (rank and address from the environment), then train."""
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=10))
    return _pretrain(cfg, _Group(dist.get_rank(), dist.get_world_size()))


def _starting_pipeline(cfg: PretrainConfig) -> StableDiffusionXLPipeline:
    """A fresh toy (random weights), or the saved toy that ``cfg.start_from`` names, in float32."""
    if not cfg.start_from:
        return build_pipeline("toy", seed=cfg.seed)
    folder = Path(cfg.start_from)
    if not (folder / "model_index.json").is_file():
        raise PretrainError(f"start_from {str(folder)!r} holds no saved toy pipeline (no model_index.json); "
                            "pass the folder of one, or leave start_from empty to pretrain from scratch")
    pipe = load_pipeline(folder, dtype=torch.float32)
    pretraining.forget_source_folder(pipe)
    pipe.vae.requires_grad_(False)
    pipe.vae.eval()
    return pipe


def _pretrain(cfg: PretrainConfig, group: _Group) -> dict[str, float]:
    say = print if group.main else (lambda *args, **kwargs: None)
    torch.manual_seed(cfg.seed)
    pipe = _starting_pipeline(cfg)
    started = time.monotonic()
    pixels, masks, captions = render_training_set(cfg, progress=group.main)

    if not cfg.start_from:
        train_vae(pipe, pixels, masks, cfg, group)
    latent_mean, latent_std = encode_latents(pipe, pixels, group)
    if cfg.start_from:
        say(f"continuing from {cfg.start_from}: its VAE and scaling_factor {pipe.vae.config.scaling_factor:.4f} kept")
    else:
        generator = torch.Generator().manual_seed(cfg.seed + 3)
        sampled = latent_mean + latent_std * torch.randn(latent_mean.shape, generator=generator)
        pipe.vae.register_to_config(scaling_factor=float(1 / sampled.std()))
        say(f"VAE scaling_factor {pipe.vae.config.scaling_factor:.4f} (latent mean {sampled.mean():.3f})")
    if group.main:
        with torch.no_grad():
            reconstruction = pipe.vae.decode(latent_mean[:64]).sample
        say(f"VAE reconstruction L1 on 64 training images: {F.l1_loss(reconstruction, pixels[:64]).item():.4f} (range -1..1)")
        say("VAE round trip, mean shape IoU by colour on held-out images: " + ", ".join(
            f"{colour} {iou:.2f}" for colour, iou in vae_round_trip_iou(pipe, cfg.image_size).items()))
        say(f"VAE done after {(time.monotonic() - started) / 60:.1f} min")
    del pixels, masks

    train_unet(pipe, latent_mean, latent_std, captions, cfg, group)
    process_note = f" ({group.world} processes)" if group.world > 1 else ""
    say(f"training took {(time.monotonic() - started) / 60:.1f} min{process_note}")

    if group.main:
        save_atomically(pipe, cfg.out_dir)
        size_mb = sum(path.stat().st_size for path in cfg.out_dir.rglob("*") if path.is_file()) / 2**20
        say(f"saved the toy pipeline to {cfg.out_dir} ({size_mb:.1f} MB)")

    rates = quality_gate(pipe, cfg.gate_seeds, cfg.gate_steps, cfg.guidance_scale, cfg.image_size, group)
    for caption, rate in rates.items():
        say(f"  {caption:<18} {rate:6.1%}")
    worst = min(rates.values())
    say(f"quality gate: worst caption {worst:.1%} (target >= 80%): {'PASS' if worst >= GATE else 'FAIL'}")
    if group.main:
        pretraining.report_shapes(pipe, generate, cfg.image_size, max(1, cfg.gate_seeds // 2), cfg.gate_steps)
    say(f"pretraining and gate took {(time.monotonic() - started) / 60:.1f} min in all")
    return rates


def main(argv: list[str] | None = None) -> int:
    """``python -m lllite.sdxl.pretrain`` (also ``python -m lllite.toy.pretrain``): exit status 0 when the gate
    passed, 2 when the pipeline was written but failed its gate, 1 for a setting or an existing pipeline."""
    return pretraining.main(argv, PretrainConfig, pretrain, "model_index.json", __doc__.split("\n\n")[0],
                           "python -m lllite.sdxl.pretrain")


if __name__ == "__main__":
    sys.exit(main())
