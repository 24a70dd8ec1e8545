"""Reading a user's files and pairing them: image + conditioning image + caption, as in kohya's layout.

One folder holds the training images and their captions (``a.png`` + ``a.txt``), another the
conditioning images with the same basename (``a.png``). :func:`pair_subset` decides, file by file,
what is usable; the same function drives :class:`lllite.data.PairedDataset` and ``python -m data_tools check``,
so what the check reports is exactly what training will use. :func:`load_rgb` reads any image file the way
training sees it, and says what it had to change.
"""
from __future__ import annotations

import codecs
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import LLLiteError
from .config import SubsetConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Problem actions, as reported by ``data_tools check``.
CONVERTED = "converted"  # the file is used after a change made in memory (mode, rotation, size, caption)
SKIPPED = "skipped"  # the file, and its pair if it has one, is left out
ERROR = "error"  # the subset cannot be read at all

# Transparent pixels of a photo are meant to be background, which viewers show as white; in a
# conditioning image "nothing here" is black (canny, soft edges), so each gets its own background.
IMAGE_BACKGROUND = (255, 255, 255)
CONDITIONING_BACKGROUND = (0, 0, 0)

# The most pixels an image may have (Pillow's own bomb limit, 89 million: more than 9000x9000), checked from
# the file's header before it is decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS

# Relative difference of width/height ratios up to which a conditioning image of another size is
# taken as a rescaled copy of its image (rounding when it was made) rather than a different framing.
ASPECT_TOLERANCE = 0.02




class ImageReadError(LLLiteError):
    """A file could not be decoded as an image."""


def load_rgb(path: str | Path, background: tuple[int, int, int] = IMAGE_BACKGROUND) -> tuple[Image.Image, list[str]]:
    """Open any image file as an 8-bit RGB image, upright, and say what had to be changed.

    Applies the EXIF orientation, flattens transparency onto ``background``, expands palette and
    greyscale, scales 16-bit samples to 8 bits and converts CMYK and other colour spaces.

    Returns:
        (image, notes): notes is a list of plain sentences, empty for a plain upright RGB file.

    Raises:
        ImageReadError: the file is not an image, or is truncated or corrupt.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged metadata: the pixels still read
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size  # from the header: checked before any pixel is decoded
                if not 0 < width * height <= MAX_PIXELS:
                    raise ImageReadError(f"its header claims {width}x{height} pixels; lllite reads images of 1 to "
                                         f"{MAX_PIXELS:,} pixels")
                opened.load()
                orientation = opened.getexif().get(0x0112, 1)
                image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise ImageReadError("not an image format Pillow can read") from None
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged file fails inside Pillow's decoders in many ways
        raise ImageReadError(str(error) or type(error).__name__) from None
    notes = [f"rotated upright by its EXIF orientation {orientation}"] if orientation not in (1, None) else []
    try:
        return _as_rgb(image, background, notes), notes
    except Exception as error:  # noqa: BLE001 - an unusual mode Pillow cannot convert
        raise ImageReadError(f"its {image.mode} pixels cannot be converted to RGB ({error})") from None


def _as_rgb(image: Image.Image, background: tuple[int, int, int], notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        wide = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
        if mode.startswith("I;16") or wide.max(initial=0) > 255:
            wide = wide / 257.0
            notes.append("16-bit samples scaled to 8 bits")
        image = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background + (255,))
        flat.alpha_composite(rgba)
        colour = {IMAGE_BACKGROUND: "white", CONDITIONING_BACKGROUND: "black"}.get(background, f"RGB {background}")
        notes.append(f"{image.mode} transparency flattened onto {colour}")
        return flat.convert("RGB")
    names = {"P": "palette", "L": "greyscale", "1": "black-and-white", "CMYK": "CMYK"}
    notes.append(f"{names.get(mode, mode)} converted to RGB")
    return image.convert("RGB")


@dataclass
class Problem:
    """Something about one file: ``action`` is ``converted``, ``skipped`` or ``error``."""

    file: Path
    problem: str
    action: str


@dataclass
class Pair:
    """A usable training pair; ``size`` is the image's upright (width, height)."""

    image: Path
    conditioning: Path
    caption_path: Path | None
    caption: str
    size: tuple[int, int]


@dataclass
class PairingReport:
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "pairs": [
                {"image": str(p.image), "conditioning": str(p.conditioning),
                 "caption": str(p.caption_path) if p.caption_path else None, "size": list(p.size)}
                for p in self.pairs
            ],
            "problems": [{"file": str(p.file), "problem": p.problem, "action": p.action} for p in self.problems],
        }


def read_caption(path: Path) -> tuple[str | None, Problem | None]:
    """The caption for one image: (text, problem). Text is None when the pair must be left out."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "", Problem(path, "no caption file; trained with an empty caption", CONVERTED)
    except OSError as error:
        return None, Problem(path, f"caption cannot be read ({error.strerror})", SKIPPED)
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))  # what Windows' editors call "Unicode"
    try:
        text = raw.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError:
        return None, Problem(path, "caption is not UTF-8 text; re-save it as UTF-8", SKIPPED)
    if "\x00" in text:
        return None, Problem(path, "caption holds NUL characters, so it is not text; re-save it as UTF-8", SKIPPED)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if not text:
        return "", Problem(path, "caption is empty; trained with an empty caption", CONVERTED)
    if utf16:
        return text, Problem(path, "caption read as UTF-16 (it starts with a UTF-16 byte order mark)", CONVERTED)
    return text, None


def list_images(folder: Path, caption_extension: str | None, problems: list[Problem]) -> tuple[dict[str, Path], set[str]]:
    """Image files of one folder by basename, and the basenames that more than one file shares;
    every other entry becomes a problem."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            problems.append(Problem(entry, "hidden file ignored", SKIPPED))
        elif entry.is_dir():
            problems.append(Problem(entry, "subfolder not searched; move its images up to pair them", SKIPPED))
        elif caption_extension and entry.suffix.lower() == caption_extension.lower():
            continue
        elif entry.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(Problem(entry, f"not an image file (extension '{entry.suffix}')", SKIPPED))
        else:
            by_stem[entry.stem].append(entry)
    unique = {}
    for stem, paths in by_stem.items():
        if len(paths) == 1:
            unique[stem] = paths[0]
        else:
            names = ", ".join(p.name for p in paths)
            for p in paths:
                problems.append(Problem(p, f"{len(paths)} files share the basename '{stem}' ({names}); keep one", SKIPPED))
    return unique, set(by_stem) - set(unique)


def pair_subset(subset: SubsetConfig, progress: bool = True) -> PairingReport:
    """Pair one subset's images with conditioning images and captions, reading every file once.

    Never raises for a user's file: every file that is left out or changed gets a :class:`Problem`.
    """
    report = PairingReport()
    for folder, key in ((subset.image_dir, "image_dir"), (subset.conditioning_data_dir, "conditioning_data_dir")):
        if not folder.is_dir():
            report.problems.append(Problem(folder, f"{key} is not a folder", ERROR))
    if not report.problems and subset.image_dir.resolve() == subset.conditioning_data_dir.resolve():
        report.problems.append(Problem(subset.conditioning_data_dir, "conditioning_data_dir is image_dir; conditioning images need their own folder", ERROR))
    if report.problems:
        return report
    try:
        images, ambiguous_images = list_images(subset.image_dir, subset.caption_extension, report.problems)
        conditionings, ambiguous_conditionings = list_images(subset.conditioning_data_dir, None, report.problems)
    except OSError as error:
        report.problems.append(Problem(Path(error.filename or subset.image_dir), f"folder cannot be listed ({error.strerror})", ERROR))
        return report

    for stem in sorted(set(conditionings) - set(images)):
        problem = f"several images are named '{stem}.*', so none is paired" if stem in ambiguous_images else "conditioning image without an image of this basename"
        report.problems.append(Problem(conditionings[stem], problem, SKIPPED))
    for stem in tqdm(sorted(images), desc=f"checking {subset.image_dir.name}", disable=not progress, unit="pair"):
        image_path = images[stem]
        if stem in ambiguous_conditionings:
            report.problems.append(Problem(image_path, f"several conditioning images are named '{stem}.*'; keep one", SKIPPED))
            continue
        if stem not in conditionings:
            report.problems.append(Problem(image_path, f"no conditioning image named '{stem}.*' in {subset.conditioning_data_dir}", SKIPPED))
            continue
        pair = _check_pair(image_path, conditionings[stem], subset, report.problems)
        if pair is not None:
            report.pairs.append(pair)
    return report


def _check_pair(image_path: Path, conditioning_path: Path, subset: SubsetConfig, problems: list[Problem]) -> Pair | None:
    """The pair if usable. Conversions are reported only for pairs that are used; a skipped pair
    reports the one reason that rules it out."""
    found: list[Problem] = []
    sizes = []
    for path, background in ((image_path, IMAGE_BACKGROUND), (conditioning_path, CONDITIONING_BACKGROUND)):
        try:
            image, notes = load_rgb(path, background)
        except ImageReadError as error:
            problems.append(Problem(path, f"not a readable image, truncated or corrupt ({error})", SKIPPED))
            return None
        found.extend(Problem(path, note, CONVERTED) for note in notes)
        sizes.append(image.size)
    (width, height), (cond_width, cond_height) = sizes
    if min(width, height) < subset.min_size:
        problems.append(Problem(image_path, f"image is {width}x{height}, smaller than min_size {subset.min_size} px", SKIPPED))
        return None
    if (cond_width, cond_height) != (width, height):
        ratio = (cond_width / cond_height) / (width / height)
        if abs(ratio - 1) > ASPECT_TOLERANCE:
            problems.append(Problem(
                conditioning_path,
                f"conditioning is {cond_width}x{cond_height} but its image is {width}x{height}: another aspect ratio, "
                "so it cannot line up with the image; remake it from the image",
                SKIPPED,
            ))
            return None
        found.append(Problem(conditioning_path, f"conditioning {cond_width}x{cond_height} resized to its image's {width}x{height}", CONVERTED))
    caption_path = image_path.with_suffix(subset.caption_extension)
    caption, caption_problem = read_caption(caption_path)
    if caption is None:
        problems.append(caption_problem)
        return None
    problems.extend(found)
    if caption_problem is not None:
        problems.append(caption_problem)
    return Pair(image_path, conditioning_path, caption_path if caption_path.is_file() else None, caption, (width, height))
