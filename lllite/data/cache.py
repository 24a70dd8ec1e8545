"""The latent and text-encoder caches: each image and each caption encoded once, keyed by what it depends on
(the file's bytes, its placement and flip, the models' weights), in memory or in a folder kept between runs.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..files import write_atomic


def _hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _hash_text(text: str) -> str:
    return _hash_bytes(text.encode("utf-8"))


def fingerprint_module(module: torch.nn.Module) -> str:
    """A hash of a model's class, config and every weight: changes when any of them changes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_")}
        digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def fingerprint_tokenizer(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return _hash_text(f"{type(tokenizer).__name__}:{tokenizer.model_max_length}:{vocab}")


class TensorCache:
    """Named groups of tensors, in memory or as one ``.safetensors`` file per key in a folder."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return key in self._memory if self.folder is None else self._path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor]:
        return self._memory[key] if self.folder is None else load_file(self._path(key))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self._memory[key] = tensors
            return
        write_atomic(self._path(key), lambda temporary: save_file(tensors, str(temporary)))


class CachedSamples:
    """The caches of a dataset (:class:`lllite.data.PairedDataset`): it lists ``items`` and renders an item's image
    with ``_image_tensor(index, flip)``; its samples read ``_latents`` and ``_texts`` once they are filled."""

    items: list
    _latents: TensorCache | None
    _latent_keys: dict[tuple[int, bool], str]
    _control_latents: TensorCache | None
    _control_latent_keys: dict[tuple[int, bool], str]
    _texts: TensorCache | None
    _text_keys: dict[str, str]

    def _image_tensor(self, index: int, flip: bool) -> torch.Tensor:
        raise NotImplementedError

    def _conditioning_tensor(self, index: int, flip: bool) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def cache_latents(self, vae, cache_dir: str | Path | None = None, batch_size: int = 4, progress: bool = True,
                      encode: Callable[[torch.Tensor], torch.Tensor] | None = None, source: str = "image") -> int:
        """Encode every training image once with ``vae``; samples then hold ``latents`` instead of ``image``.

        With ``source="conditioning"`` the conditioning images are encoded instead, for networks that read the
        control's latent (Anima's v2.1 and v3): samples then hold ``control_latents`` beside ``conditioning_image``.

        By default latents are the mean of the VAE's distribution times its ``scaling_factor`` (0.13025 for
        SDXL), as diffusers' ``AutoencoderKL`` gives them.
        Entries are keyed by the image file's bytes, its placement, the flip and the VAE's weights, so
        a changed image or VAE is encoded again and everything else is reused.

        Args:
            vae: a diffusers ``AutoencoderKL``, on the device and dtype to encode with.
            cache_dir: folder of ``.safetensors`` files kept between runs; None keeps them in memory.
            batch_size: images encoded together (same bucket).
            progress: show a progress bar.
            encode: pixels (B, 3, H, W) in [-1, 1], on the VAE's device and dtype -> latents, for a model
                whose latents are made otherwise (the family's ``Training.encode_images``).

        Returns:
            How many images were encoded (not found in the cache).
        """
        if source not in ("image", "conditioning"):
            raise ValueError(f"source must be 'image' or 'conditioning', got {source!r}")
        store = TensorCache(cache_dir)
        model = fingerprint_module(vae)
        render = self._image_tensor if source == "image" else self._conditioning_tensor
        file_hashes: dict[Path, str] = {}
        todo: dict[str, tuple[int, bool]] = {}
        keys = {}
        for index, item in enumerate(self.items):
            path = item.pair.image if source == "image" else item.pair.conditioning
            if path not in file_hashes:
                file_hashes[path] = _hash_bytes(path.read_bytes())
            for flip in ((False, True) if item.subset.flip_aug else (False,)):
                key = _hash_text(json.dumps([*([] if source == "image" else [source]), model, file_hashes[path], list(item.placement.resized), list(item.placement.crop_top_left), list(item.placement.target), flip]))
                keys[(index, flip)] = key
                if key not in todo and not store.has(key):
                    todo[key] = (index, flip)
        groups: dict[tuple[int, int], list[str]] = defaultdict(list)
        for key, (index, _) in todo.items():
            groups[self.items[index].placement.target].append(key)
        parameter = next(vae.parameters())
        bar = tqdm(total=len(todo), desc="caching latents" if source == "image" else "caching control latents", disable=not progress, unit="image")
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                rendered = []
                for key in chunk:
                    index, flip = todo[key]
                    rendered.append(render(index, flip))
                pixels = torch.stack(rendered).to(parameter.device, parameter.dtype)
                if encode is None:
                    latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
                else:
                    latents = encode(pixels)
                if not torch.isfinite(latents).all():
                    raise FloatingPointError(
                        f"the VAE returned NaN/inf latents in {parameter.dtype} (SDXL's VAE overflows in float16); "
                        "encode with vae.to(torch.float32) or an fp16-safe VAE"
                    )
                for key, latent in zip(chunk, latents):
                    store.put(key, {"latents": latent.float().cpu().contiguous()})
                bar.update(len(chunk))
        bar.close()
        if source == "image":
            self._latents, self._latent_keys = store, keys
        else:
            self._control_latents, self._control_latent_keys = store, keys
        return len(todo)

    @torch.no_grad()
    def cache_text_encoder_outputs(self, tokenizers, text_encoders, cache_dir: str | Path | None = None,
                                   batch_size: int = 8, progress: bool = True,
                                   *, encode: Callable[[list[str]], dict[str, torch.Tensor]]) -> int:
        """Encode every caption once with ``encode``; samples then hold the tensors it returns, by their names.

        Keyed by the caption and the tokenizers' and encoders' identity. The empty caption is cached
        too when a subset drops captions.

        Args:
            tokenizers, text_encoders: the models ``encode`` uses; their vocabularies, configs and weights
                key the cache.
            cache_dir: folder of ``.safetensors`` files kept between runs; None keeps them in memory.
            batch_size: captions encoded together.
            progress: show a progress bar.
            encode: captions -> tensors by name, one row per caption: the family's text conditioning (SDXL's
                ``prompt_embeds`` and ``pooled_prompt_embeds``, :meth:`lllite.sdxl.training.Training.encode_text`;
                Anima's ``encoder_hidden_states``).

        Returns:
            How many captions were encoded (not found in the cache).
        """
        store = TensorCache(cache_dir)
        model = _hash_text(json.dumps([fingerprint_tokenizer(t) for t in tokenizers] + [fingerprint_module(e) for e in text_encoders]))
        captions = {item.pair.caption for item in self.items}
        if any(item.subset.caption_dropout_rate > 0 for item in self.items):
            captions.add("")
        keys = {caption: _hash_text(json.dumps([model, caption])) for caption in sorted(captions)}
        todo = [caption for caption, key in keys.items() if not store.has(key)]
        bar = tqdm(total=len(todo), desc="caching text-encoder outputs", disable=not progress, unit="caption")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            encoded = encode(chunk)
            for row, caption in enumerate(chunk):
                store.put(keys[caption], {name: value[row].float().cpu().contiguous() for name, value in encoded.items()})
            bar.update(len(chunk))
        bar.close()
        self._texts, self._text_keys = store, keys
        return len(todo)
