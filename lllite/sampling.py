"""Generate with LLLite networks on an SDXL or Anima pipeline, and compare strengths by looking.

    from lllite.sampling import generate, strength_grid, save_png
    images = generate(pipe, network, control, "a red circle", seed=[0, 1], multiplier=0.8)
    grid = strength_grid(pipe, network, control, ["a red circle", "a blue square"], seeds=[0, 1])
    save_png(grid, "grid.png")

Names: this is where kohya's names meet diffusers'. The network, its files and the training options
use kohya's (``multiplier``, the strength of :meth:`lllite.controls.ControlledNetwork.set_multiplier`; ``cond_emb_dim``,
``network_dim``); everything passed to the pipeline uses diffusers' (``prompt``, ``negative_prompt``,
``num_inference_steps``, ``guidance_scale``, ``height``, ``width``), and the step range is diffusers'
``control_guidance_start`` / ``control_guidance_end`` (fractions of the denoising steps), which
:meth:`ControlledNetwork.set_step_range` takes. The functions here take the pipeline, the network(s), the
control and the prompt(s) by position and everything else by keyword.

Every image carries its generation parameters in ``image.info["parameters"]`` (JSON with the keys
``prompt``, ``negative_prompt``, ``seed``, ``num_inference_steps``, ``guidance_scale``, ``multiplier``,
``control_guidance_start``, ``control_guidance_end``, ``height``, ``width`` and ``networks``, the
networks' names), and :func:`save_png` writes them into the PNG, so a picture always says how it was made.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from . import families
from .controls import ControlledNetwork, Keyframes, Multiplier, is_keyframes, keyframes
from .errors import LLLiteError
from .files import write_atomic
from .images import to_control_tensor, to_mask_tensor, to_pil

#: Multipliers of the guidance-strength comparison.
MULTIPLIERS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Step ranges of :func:`step_range_grid`: (control_guidance_start, control_guidance_end) pairs.
STEP_RANGES = ((0.0, 1.0), (0.0, 0.5), (0.0, 0.25), (0.25, 1.0), (0.5, 1.0))
#: Schedules of :func:`schedule_grid`: label -> keyframes ``(start, strength)`` over the denoising steps.
SCHEDULES = {
    "constant": 1.0,
    "strong early": ((0.0, 1.0), (0.5, 0.3)),
    "strong late": ((0.0, 0.3), (0.5, 1.0)),
    "first half only": ((0.0, 1.0), (0.5, 0.0)),
}


def _as_list(value, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise LLLiteError(f"{name}: an empty list")
    return values


def _networks(networks) -> list[ControlledNetwork]:
    networks = _as_list(networks, "networks")
    for network in networks:
        if not isinstance(network, ControlledNetwork):
            raise TypeError(f"networks: expected LLLite networks (lllite.load / create_network), got {type(network).__name__}")
    return networks


@contextmanager
def _controlled(pipe, networks: list[ControlledNetwork], controls: list, multipliers: list, masks: list,
                control_guidance_start: float, control_guidance_end: float):
    """Attach (if needed) and set up each network for one generation; restore everything after."""
    saved = [(n.cond_image, n.multiplier, n.mask, n.control_guidance_start, n.control_guidance_end, n.is_attached,
              n.training) for n in networks]
    try:
        for network, control, multiplier, mask in zip(networks, controls, multipliers, masks):
            if not network.is_attached:
                network.apply_to(pipe)
            network.eval()
            network.set_cond_image(control)
            network.set_multiplier(multiplier)
            network.set_mask(mask)
            network.set_step_range(control_guidance_start, control_guidance_end)
        yield
    finally:
        for network, (image, multiplier, mask, old_start, old_end, attached, training) in zip(networks, saved):
            network.set_cond_image(image)
            network.set_multiplier(multiplier)
            network.set_mask(mask)
            network.set_step_range(old_start, old_end)
            network.train(training)
            if not attached:
                network.remove()


def _one_multiplier(value) -> bool:
    """A number or keyframes (for every network), as opposed to a list with one per network."""
    return not isinstance(value, (list, tuple)) or is_keyframes(value)


def _per_network(value, count: int, name: str, is_one) -> list:
    """``value`` for every network, or one entry per network when it is a list of them."""
    if is_one(value):
        return [value] * count
    values = _as_list(value, name)
    if len(values) != count:
        raise LLLiteError(f"{name}: give one for every network, or a list with one per network "
                          f"({count}), got {len(values)}")
    return values


def _multiplier_record(multiplier: float | Keyframes):
    """How a picture's metadata records a multiplier: the number, or its keyframes as [start, strength] lists."""
    frames = keyframes(multiplier)
    return frames[0][1] if frames[0][0] == 0 and len(frames) == 1 else [list(frame) for frame in frames]


def _mask_record(mask: torch.Tensor | None):
    """How a picture's metadata records a mask: its size and the share of the image it lets the control act on."""
    if mask is None:
        return None
    return {"height": mask.shape[-2], "width": mask.shape[-1], "coverage": round(float(mask.mean()), 4)}


def _pixel_size(family: families.Family, control: torch.Tensor, height: int | None, width: int | None) -> tuple[int, int]:
    height = height or control.shape[-2]
    width = width or control.shape[-1]
    pipeline = family.role("pipeline")
    multiple = pipeline.PIXEL_MULTIPLE
    if height % multiple or width % multiple:
        raise LLLiteError(f"height and width must be multiples of {multiple} ({pipeline.PIXEL_MULTIPLE_REASON}), "
                          f"got {height}x{width}")
    return height, width


@torch.no_grad()
def generate(
    pipe,
    networks,
    control,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    seed: int | Sequence[int] = 0,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    multiplier: Multiplier | Sequence[Multiplier] = 1.0,
    mask=None,
    control_guidance_start: float = 0.0,
    control_guidance_end: float = 1.0,
    height: int | None = None,
    width: int | None = None,
) -> list[Image.Image]:
    """Generate images with one or more LLLite networks applied to an SDXL or Anima pipeline.

    The networks are attached for the call when they are not attached yet, and left as they were
    (control image, multiplier, mask, step range, attachment) afterwards. Several networks add up,
    each with its own control, multiplier and mask (canny on the left, depth on the right).

    Args:
        pipe: a pipeline of one of lllite's families (:mod:`lllite.families`): a diffusers
            ``StableDiffusionXLPipeline`` (or one with the same call signature), or an Anima pipeline
            (``AnimaModularPipeline``, see :mod:`lllite.anima.pipeline`).
        networks: one :class:`lllite.LLLiteNetwork` (or :class:`lllite.anima.AnimaLLLiteNetwork`) or a list of them.
        control: the control image (PIL, uint8 numpy, or tensor in [-1, 1]; see
            :meth:`ControlledNetwork.set_cond_image`) for one network; a list with one per network for
            several. A batch of images gives one control per generated image.
        prompt: one prompt, or one per image.
        negative_prompt: None (the pipeline's default), one, or one per image.
        seed: one seed, or one per image; prompts and seeds broadcast to the longer list.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale (1 switches guidance off).
        multiplier: the strength of every network, or a list with one per network: a number (0
            switches a network off) or keyframes, ``(start, strength)`` pairs over the denoising steps
            (see :meth:`lllite.controls.ControlledNetwork.set_multiplier`).
        mask: where the networks act: None (everywhere), one mask for every network, or a list with
            one per network (None for everywhere); see :meth:`ControlledNetwork.set_mask`.
        control_guidance_start, control_guidance_end: fractions of the denoising steps where the
            networks act (0 <= start < end <= 1), as in diffusers' ControlNet pipelines.
        height, width: pixel size; by default the first control image's size.

    Returns:
        PIL images, each with its parameters as JSON in ``image.info["parameters"]``.
    """
    networks = _networks(networks)
    controls = [control] if len(networks) == 1 else _as_list(control, "control")
    if len(controls) != len(networks):
        raise LLLiteError(f"{len(networks)} networks need one control image and one strength each; got "
                          f"{len(controls)} control image(s)")
    multipliers = [keyframes(m, f"multiplier[{i}]" if len(networks) > 1 else "multiplier") for i, m in
                   enumerate(_per_network(multiplier, len(networks), "multiplier", _one_multiplier))]
    masks = [None if m is None else to_mask_tensor(m, f"mask[{i}]" if len(networks) > 1 else "mask")
             for i, m in enumerate(_per_network(mask, len(networks), "mask", lambda m: not isinstance(m, (list, tuple))))]
    controls = [to_control_tensor(c, f"control[{i}]", channels=n.cond_in_channels)
                for i, (c, n) in enumerate(zip(controls, networks))]
    prompts = [str(p) for p in _as_list(prompt, "prompt")]
    seeds = [int(s) for s in _as_list(seed, "seed")]
    count = max(len(prompts), len(seeds))
    for name, values in (("prompt", prompts), ("seed", seeds)):
        if len(values) not in (1, count):
            raise LLLiteError(f"{name}: give one or {count} values (one per image), got {len(values)}")
    prompts = prompts * count if len(prompts) == 1 else prompts
    seeds = seeds * count if len(seeds) == 1 else seeds
    negatives = None
    if negative_prompt is not None:
        negatives = [str(p) for p in _as_list(negative_prompt, "negative_prompt")]
        if len(negatives) not in (1, count):
            raise LLLiteError(f"negative_prompt: give one or {count} values (one per image), got {len(negatives)}")
        negatives = negatives * count if len(negatives) == 1 else negatives
    family = families.of_pipeline(pipe)
    height, width = _pixel_size(family, controls[0], height, width)

    with _controlled(pipe, networks, controls, multipliers, masks, control_guidance_start, control_guidance_end):
        images = family.role("pipeline").generate(
            pipe, prompts, negative_prompt=negatives, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, height=height, width=width,
            generator=[torch.Generator().manual_seed(s) for s in seeds])
    records = [_multiplier_record(m) for m in multipliers]
    mask_records = [_mask_record(m) for m in masks]
    names = [n.metadata.get("ss_output_name") or n.metadata.get("lllite.name") or f"network {i}" for i, n in enumerate(networks)]
    for i, image in enumerate(images):
        image.info["parameters"] = json.dumps({
            "prompt": prompts[i],
            "negative_prompt": None if negatives is None else negatives[i],
            "seed": seeds[i],
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "multiplier": records[0] if len(records) == 1 else records,
            "mask": mask_records[0] if len(mask_records) == 1 else mask_records,
            "control_guidance_start": control_guidance_start,
            "control_guidance_end": control_guidance_end,
            "height": height,
            "width": width,
            "networks": names,
        })
    return images


# ------------------------------------------------------------------------------------------ grids


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # a scalable font from Pillow 10.1 on (the declared floor)


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    column_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Image.Image:
    """Paste images into a labelled grid (every cell takes the size of the largest image).

    Args:
        rows: images, row by row; rows may differ in length.
        column_labels: text above each column.
        row_labels: text left of each row.
        title: text above everything.
    """
    if not rows or not any(rows):
        raise LLLiteError("image_grid needs at least one image")
    cell_w = max(im.width for row in rows for im in row)
    cell_h = max(im.height for row in rows for im in row)
    font_size = max(10, min(28, cell_h // 10))
    font = _font(font_size)
    pad = font_size // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        return int(measure.textlength(text, font=font))

    def wrap(text: str, limit: int) -> list[str]:
        lines, line = [], ""
        for word in text.split():
            candidate = f"{line} {word}".strip()
            if line and text_width(candidate) > limit:
                lines.append(line)
                line = word
            else:
                line = candidate
        return lines + [line] if line else lines

    line_h = font_size + 4
    left = 0
    row_text = []
    if row_labels:
        limit = max(cell_w, 4 * font_size)
        row_text = [wrap(label, limit) for label in row_labels]
        left = min(limit, max(text_width(line) for lines in row_text for line in lines)) + 2 * pad
    col_text = [wrap(label, cell_w - pad) for label in column_labels] if column_labels else []
    header = (max(len(lines) for lines in col_text) * line_h + pad) if col_text else 0
    title_h = (line_h + pad) if title else 0
    columns = max(len(row) for row in rows)
    grid = Image.new("RGB", (left + columns * cell_w + (columns - 1) * pad, title_h + header + len(rows) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, pad // 2), title, fill="black", font=font)
    for c, lines in enumerate(col_text):
        for k, line in enumerate(lines):
            x = left + c * (cell_w + pad) + (cell_w - text_width(line)) // 2
            draw.text((x, title_h + k * line_h), line, fill="black", font=font)
    for r, row in enumerate(rows):
        y = title_h + header + r * (cell_h + pad)
        if row_text:
            lines = row_text[r]
            top = y + (cell_h - len(lines) * line_h) // 2
            for k, line in enumerate(lines):
                draw.text((pad, top + k * line_h), line, fill="black", font=font)
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (left + c * (cell_w + pad), y))
    return grid


def _control_picture(control: torch.Tensor, index: int, size: tuple[int, int]) -> Image.Image:
    picture = to_pil(control[min(index, len(control) - 1)][None])[0]
    return picture if picture.size == (size[1], size[0]) else picture.resize((size[1], size[0]))


def _row_controls(control, rows: int) -> torch.Tensor:
    """One control tensor per row: a single image is used for every row."""
    if isinstance(control, (list, tuple)) and len(control) == rows and rows > 1:
        tensors = [to_control_tensor(c, f"control[{i}]") for i, c in enumerate(control)]
    else:
        tensors = [to_control_tensor(control)]
    return torch.cat(tensors)


def describe_multiplier(multiplier: Multiplier) -> str:
    """A short label for a multiplier or keyframes: ``"0.8"``, ``"1 → 0.3 at 50%"``."""
    frames = keyframes(multiplier)
    if len(frames) == 1 and frames[0][0] == 0:
        return f"{frames[0][1]:g}"
    parts = [f"{strength:g}" if start == 0 else f"{strength:g} at {start:.0%}" for start, strength in frames]
    return ("0 → " if frames[0][0] > 0 else "") + " → ".join(parts)


@torch.no_grad()
def comparison_grid(
    pipe,
    network: ControlledNetwork,
    control,
    prompts: str | Sequence[str],
    *,
    columns: Mapping[str, Mapping[str, Any]],
    seeds: int | Sequence[int] = (0,),
    negative_prompt: str | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    pictures: Mapping[str, Image.Image] | None = None,
    title: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> Image.Image:
    """Settings side by side: one column per setting, prompts x seeds in rows, the control first.

    Args:
        pipe, network: an SDXL pipeline and one LLLite network.
        control: one control image for every row, or a list with one per prompt.
        prompts: the rows' prompts; each prompt gets one row per seed.
        columns: label -> the :func:`generate` settings of that column (``multiplier``, ``mask``,
            ``control_guidance_start``, ``control_guidance_end``).
        seeds: the seeds of each prompt's rows.
        pictures: label -> a picture shown after the control in every row (e.g. the mask).
        title: text above the grid.
        batch_size: images generated at once (lower it if a GPU runs out of memory).
        progress: show a progress bar over the images.
        negative_prompt, num_inference_steps, guidance_scale: as in :func:`generate`.

    Returns:
        The grid, with every generated cell's parameters as JSON in ``grid.info["parameters"]``
        (rows of cells) and the columns' labels in ``grid.info["columns"]``.
    """
    prompts = [str(p) for p in _as_list(prompts, "prompts")]
    seeds = [int(s) for s in _as_list(seeds, "seeds")]
    if not columns:
        raise LLLiteError("columns: give at least one column of settings")
    per_prompt = _row_controls(control, len(prompts))
    rows = [(p, prompt, seed) for p, prompt in enumerate(prompts) for seed in seeds]
    cells: list[list[Image.Image]] = [[] for _ in rows]
    bar = tqdm(total=len(columns) * len(rows), desc="comparison grid", unit="image", disable=not progress)
    for settings in columns.values():
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size]
            controls = per_prompt[[p if len(per_prompt) > 1 else 0 for p, _, _ in chunk]]
            images = generate(pipe, network, controls, [prompt for _, prompt, _ in chunk],
                              negative_prompt=negative_prompt, seed=[seed for _, _, seed in chunk],
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **settings)
            for offset, image in enumerate(images):
                cells[first + offset].append(image)
            bar.update(len(chunk))
    bar.close()
    size = (cells[0][0].height, cells[0][0].width)
    shown = [picture.convert("RGB").resize((size[1], size[0])) for picture in (pictures or {}).values()]
    grid_rows = [[_control_picture(per_prompt, p, size), *shown] + cells[r] for r, (p, _, _) in enumerate(rows)]
    labels = [f"{prompt} | seed {seed}" if len(prompts) > 1 or not title else f"seed {seed}" for _, prompt, seed in rows]
    grid = image_grid(grid_rows, ["control", *(pictures or {}), *columns], labels, title=title)
    grid.info["parameters"] = json.dumps([[json.loads(im.info["parameters"]) for im in row] for row in cells])
    grid.info["columns"] = json.dumps(list(columns))
    return grid


def strength_grid(pipe, network: ControlledNetwork, control, prompts: str | Sequence[str], *,
                  multipliers: Sequence[float] = MULTIPLIERS, control_guidance_start: float = 0.0,
                  control_guidance_end: float = 1.0, **options) -> Image.Image:
    """The guidance-strength comparison: multipliers in columns, prompts x seeds in rows, the control first.

    Args:
        multipliers: the columns (the network's strength in each).
        control_guidance_start, control_guidance_end: as in :func:`generate`, in every column.
        **options: ``seeds``, ``negative_prompt``, ``num_inference_steps``, ``guidance_scale``,
            ``batch_size``, ``progress``, as in :func:`comparison_grid`.
    """
    columns = {f"strength {float(m):g}": dict(multiplier=float(m), control_guidance_start=control_guidance_start,
                                              control_guidance_end=control_guidance_end)
               for m in _as_list(multipliers, "multipliers")}
    return comparison_grid(pipe, network, control, prompts, columns=columns, **options)


def step_range_grid(pipe, network: ControlledNetwork, control, prompt: str, *,
                    control_guidance_ranges: Sequence[tuple[float, float]] = STEP_RANGES, multiplier: float = 1.0,
                    **options) -> Image.Image:
    """Where in the denoising the control acts: step ranges (start-end) in columns, seeds in rows.

    Args:
        control_guidance_ranges: (control_guidance_start, control_guidance_end) pairs, one column each.
        multiplier: the network's strength in every cell.
        **options: as in :func:`strength_grid`.
    """
    columns = {f"steps {a:g}-{b:g}": dict(multiplier=multiplier, control_guidance_start=a, control_guidance_end=b)
               for a, b in control_guidance_ranges}
    return comparison_grid(pipe, network, control, prompt, columns=columns,
                           title=f"{prompt} | strength {describe_multiplier(multiplier)}", **options)


def schedule_grid(pipe, network: ControlledNetwork, control, prompts: str | Sequence[str], *,
                  schedules: Mapping[str, Multiplier] = SCHEDULES, mask=None, **options) -> Image.Image:
    """Strength schedules over the denoising steps side by side (strong early, strong late, constant...).

    Args:
        schedules: label -> a multiplier or keyframes (see ``set_multiplier``), one column each.
        mask: the mask of every column (see :func:`generate`).
        **options: as in :func:`strength_grid`.
    """
    columns = {f"{label}: {describe_multiplier(schedule)}": dict(multiplier=schedule, mask=mask)
               for label, schedule in schedules.items()}
    return comparison_grid(pipe, network, control, prompts, columns=columns, **options)


def mask_grid(pipe, network: ControlledNetwork, control, prompts: str | Sequence[str], mask, *,
              multiplier: Multiplier = 1.0, **options) -> Image.Image:
    """Masked against unmasked: the mask, then the image without the network, with it everywhere, and
    with it only where the mask lets it act.

    Args:
        mask: the mask compared (see :meth:`ControlledNetwork.set_mask`); one for every row.
        multiplier: the network's strength (or keyframes) in the last two columns.
        **options: as in :func:`strength_grid`.
    """
    tensor = to_mask_tensor(mask)
    picture = to_pil(tensor[:1].expand(1, 3, -1, -1) * 2 - 1)[0]
    label = describe_multiplier(multiplier)
    columns = {"without": dict(multiplier=0.0), f"everywhere ({label})": dict(multiplier=multiplier),
               f"masked ({label})": dict(multiplier=multiplier, mask=tensor)}
    return comparison_grid(pipe, network, control, prompts, columns=columns, pictures={"mask": picture}, **options)


@torch.no_grad()
def side_by_side(
    pipe,
    network: ControlledNetwork,
    control,
    prompt: str,
    *,
    seed: int = 0,
    multiplier: Multiplier = 1.0,
    mask=None,
    negative_prompt: str | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    control_guidance_start: float = 0.0,
    control_guidance_end: float = 1.0,
) -> Image.Image:
    """Three pictures in a row: the control, the image without the network and the image with it.

    Arguments as in :func:`generate`; the image without the network is made at multiplier 0.
    """
    controls = to_control_tensor(control)
    settings = dict(negative_prompt=negative_prompt, seed=seed, num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale)
    without, = generate(pipe, network, controls, prompt, multiplier=0.0, **settings)
    with_, = generate(pipe, network, controls, prompt, multiplier=multiplier, mask=mask,
                      control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end, **settings)
    size = (with_.height, with_.width)
    where = "" if mask is None else ", masked"
    grid = image_grid([[_control_picture(controls, 0, size), without, with_]],
                      ["control", "without", f"with (strength {describe_multiplier(multiplier)}{where})"],
                      title=f"{prompt} | seed {seed}")
    grid.info["parameters"] = json.dumps([json.loads(without.info["parameters"]), json.loads(with_.info["parameters"])])
    return grid


def gate_map_picture(pipe, network: ControlledNetwork, control, prompt: str, *, columns: int = 7, **options) -> Image.Image:
    """Where each module lets the control in, for a network with gates (Anima's v3 with ``lllite.gate`` "scalar" or
    "vector"): one generation with the gates recorded (kohya's inference ``--save_gate_maps``), shown as the
    generated image, the modules' mean gate and each module's gate on the DiT's token grid (black 0: the control
    held back, white 1: let in), from the last model call (the last step). A vector gate shows its mean over
    channels.

    Args:
        columns: module maps per row.
        options: :func:`generate`'s keyword arguments (seed, steps, multiplier, ...).

    Raises:
        LLLiteError: a network without gates.
    """
    network.record_gates(True)
    try:
        image = generate(pipe, network, control, prompt, **options)[0]
        maps = network.gate_maps()
    finally:
        network.record_gates(False)
    if not maps:
        raise LLLiteError("no gate was recorded: the network did not act (strength 0, or outside its step range)")

    scale = max(1, -(-160 // max(image.size)))  # cells of at least 160 px
    size = (image.width * scale, image.height * scale)

    def picture(gate: torch.Tensor) -> Image.Image:
        pixels = (gate[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return Image.fromarray(pixels, mode="L").convert("RGB").resize(size, Image.NEAREST)

    mean = torch.stack(list(maps.values())).mean(0)
    tiles = [picture(gate) for gate in maps.values()]
    rows = [[image.resize(size, Image.LANCZOS), picture(mean)]]
    rows += [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    labels = [f"image, mean gate {mean.mean():.2f}"]
    labels += [f"modules {i + 1}-{min(i + columns, len(tiles))}" for i in range(0, len(tiles), columns)]
    return image_grid(rows, row_labels=labels, title=f"gates of {len(maps)} modules (black: closed, white: open)")


def save_png(image: Image.Image, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``image`` as a PNG with its text metadata (``image.info["parameters"]`` and other strings), atomically.

    Args:
        path: destination ``.png``; folders are created.
        overwrite: replace an existing file; otherwise an existing file raises
            :class:`lllite.errors.OutputExistsError` (a ``FileExistsError``).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise LLLiteError(f"{path}: save_png writes .png files; give a path that ends in .png")
    info = PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    return write_atomic(path, lambda temporary: image.save(temporary, format="PNG", pnginfo=info), overwrite)
