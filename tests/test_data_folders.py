"""Image folders built on the fly for the data tests, a messy one among them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB picture whose every pixel differs from its neighbours, so crops and flips show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return ((base + rng.integers(0, 16, base.shape)) % 256).astype(np.uint8)


def save(path: Path, image: Image.Image | np.ndarray, **kwargs) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def write_pair(images: Path, conditioning: Path, stem: str, size=(96, 64), caption: str | None = "a picture", seed: int = 0):
    """A clean pair: image, conditioning image (the same picture) and caption."""
    picture = gradient(*size, seed=seed)
    save(images / f"{stem}.png", picture)
    save(conditioning / f"{stem}.png", picture)
    if caption is not None:
        (images / f"{stem}.txt").write_text(caption, encoding="utf-8")


def truncated_png(path: Path, size=(96, 64)) -> Path:
    save(path, gradient(*size))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# (file in images/ or conditioning/, action, words the problem must contain)
MESSY_EXPECTATIONS = [
    ("images/rgba.png", "converted", "transparency"),
    ("images/palette.png", "converted", "palette"),
    ("images/grey.png", "converted", "greyscale"),
    ("images/deep.png", "converted", "16-bit"),
    ("images/cmyk.jpg", "converted", "CMYK"),
    ("images/rotated.jpg", "converted", "EXIF"),
    ("images/truncated.png", "skipped", "truncated"),
    ("images/notimage.png", "skipped", "not a readable image"),
    ("images/notes.md", "skipped", "not an image file"),
    ("images/.DS_Store", "skipped", "hidden"),
    ("images/._good.png", "skipped", "hidden"),
    ("images/dup.png", "skipped", "share the basename"),
    ("images/dup.jpg", "skipped", "share the basename"),
    ("conditioning/dup.png", "skipped", "several images are named 'dup.*'"),
    ("images/conddup.png", "skipped", "several conditioning images"),
    ("conditioning/conddup.jpg", "skipped", "share the basename"),
    ("conditioning/conddup.png", "skipped", "share the basename"),
    ("images/nocond.png", "skipped", "no conditioning image"),
    ("conditioning/orphan.png", "skipped", "without an image"),
    ("images/nocaption.txt", "converted", "no caption file"),
    ("images/emptycap.txt", "converted", "caption is empty"),
    ("images/latin1.txt", "skipped", "not UTF-8"),
    ("images/tiny.png", "skipped", "smaller than min_size"),
    ("conditioning/bigcond.png", "converted", "resized"),
    ("conditioning/othershape.png", "skipped", "aspect ratio"),
    ("conditioning/badcond.png", "skipped", "truncated"),
]
MESSY_USABLE = ["bigcond", "cmyk", "deep", "emptycap", "good", "grey", "nocaption", "palette", "rgba", "rotated"]


def make_messy_folder(root: Path) -> tuple[Path, Path]:
    """Every case a user's folder can hold; returns (image_dir, conditioning_dir)."""
    images, conditioning = root / "images", root / "conditioning"
    images.mkdir(parents=True)
    conditioning.mkdir(parents=True)
    write_pair(images, conditioning, "good", caption="a good picture")

    rgba = np.dstack([gradient(96, 64), np.full((64, 96), 255, np.uint8)])
    rgba[:, :10, 3] = 0
    save(images / "rgba.png", rgba)
    save(images / "palette.png", Image.fromarray(gradient(96, 64)).convert("P"))
    save(images / "grey.png", gradient(96, 64)[:, :, 0])
    save(images / "deep.png", (gradient(96, 64)[:, :, 0].astype(np.uint16) * 257))
    save(images / "cmyk.jpg", Image.fromarray(gradient(96, 64)).convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    save(images / "rotated.jpg", gradient(96, 64), exif=exif)
    for stem, size in [("rgba", (96, 64)), ("palette", (96, 64)), ("grey", (96, 64)), ("deep", (96, 64)),
                       ("cmyk", (96, 64)), ("rotated", (64, 96))]:
        save(conditioning / f"{stem}.png", gradient(*size))
        (images / f"{stem}.txt").write_text(f"a {stem} picture", encoding="utf-8")

    truncated_png(images / "truncated.png")
    save(conditioning / "truncated.png", gradient(96, 64))
    (images / "notimage.png").write_text("this is a note, not a picture")
    save(conditioning / "notimage.png", gradient(96, 64))
    (images / "notes.md").write_text("shooting notes")
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (images / "._good.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    save(images / "dup.png", gradient(96, 64))
    save(images / "dup.jpg", gradient(96, 64))
    save(conditioning / "dup.png", gradient(96, 64))
    write_pair(images, conditioning, "conddup")
    save(conditioning / "conddup.jpg", gradient(96, 64))
    save(images / "nocond.png", gradient(96, 64))
    save(conditioning / "orphan.png", gradient(96, 64))
    write_pair(images, conditioning, "nocaption", caption=None)
    write_pair(images, conditioning, "emptycap", caption="  \n")
    write_pair(images, conditioning, "latin1", caption="x")
    (images / "latin1.txt").write_bytes("un caf\u00e9".encode("latin-1"))
    write_pair(images, conditioning, "tiny", size=(16, 16))
    write_pair(images, conditioning, "bigcond")
    save(conditioning / "bigcond.png", gradient(192, 128))
    write_pair(images, conditioning, "othershape")
    save(conditioning / "othershape.png", gradient(64, 64))
    write_pair(images, conditioning, "badcond")
    truncated_png(conditioning / "badcond.png")
    return images, conditioning
