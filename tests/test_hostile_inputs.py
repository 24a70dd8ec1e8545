"""Every reader a user feeds, given what a careless or hostile source could give it: the answer is a result, or
an LLLiteError that names the file or the argument; never another exception, a hang, or memory a header claims.

Property-based (hypothesis). The fast suite runs a few dozen examples per reader; a longer search is
``HYPOTHESIS_PROFILE=long python -m pytest tests/test_hostile_inputs.py``.
"""
from __future__ import annotations

import io
import json
import math
import os
import resource
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ANIMA_CONFIG, make_tiny_unet, randomize
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

import lllite
from lllite.controls import keyframes
from lllite.data import ImageReadError, SubsetConfig, load_dataset_config, load_rgb, pair_subset, read_caption
from lllite.errors import LLLiteError
from lllite.images import to_mask_tensor

settings.register_profile("fast", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


# ------------------------------------------------------------------------------------------ LLLite files


def _sdxl_file(folder: Path) -> bytes:
    network = randomize(lllite.create_network(make_tiny_unet(), cond_emb_dim=8, network_dim=8))
    return network.save(folder / "sdxl.safetensors", dtype=torch.float16).read_bytes()


def _anima_file(folder: Path) -> bytes:
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    transformer = CosmosTransformer3DModel(**TINY_ANIMA_CONFIG)
    network = randomize(lllite.create_network(transformer, target_layers="self_attn_qkv", use_aspp=True))
    return network.save(folder / "anima.safetensors").read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("files")
    return {"sdxl": _sdxl_file(folder), "anima": _anima_file(folder)}


def split(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's header (as JSON) and its tensor bytes."""
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def loads_or_names_the_file(path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lllite.load(path)
    except LLLiteError as error:
        assert path.name in str(error), f"the error does not name the file: {error}"


@given(family=st.sampled_from(["sdxl", "anima"]), cuts=st.lists(st.integers(0, 2**16), max_size=4),
       flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(1, 255)), max_size=8))
def test_files_with_bytes_cut_or_flipped_load_or_are_named(files, tmp_path, family, cuts, flips):
    data = bytearray(files[family])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    for cut in cuts:
        del data[cut % max(1, len(data)):]
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(data))
    loads_or_names_the_file(path)


dtypes = st.sampled_from(["F16", "BF16", "F32", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "X9"])
numbers = st.one_of(st.integers(-5, 2**62), st.just(2**40))


@given(family=st.sampled_from(["sdxl", "anima"]), data=st.data())
def test_files_whose_header_lies_load_or_are_named(files, tmp_path, family, data):
    header, body = split(files[family])
    keys = sorted(k for k in header if k != "__metadata__")
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        entry = header[key]
        change = data.draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "rename"]))
        if change == "dtype":
            entry["dtype"] = data.draw(dtypes)
        elif change == "shape":
            entry["shape"] = data.draw(st.lists(numbers, max_size=5))
        elif change == "offsets":
            entry["data_offsets"] = data.draw(st.lists(numbers, min_size=0, max_size=3))
        elif change == "drop":
            del header[key]
        else:
            header[data.draw(st.text(max_size=40))] = header.pop(key)
    metadata = header.setdefault("__metadata__", {})
    for key in data.draw(st.lists(st.sampled_from(sorted(metadata) + ["lllite.version", "lllite.trunk"]), max_size=4)):
        metadata[key] = data.draw(st.one_of(st.text(max_size=30), st.sampled_from(["-1", "0", "1e9", "nan", "true"])))
    path = tmp_path / "lying.safetensors"
    path.write_bytes(join(header, body))
    loads_or_names_the_file(path)


@given(values=st.lists(st.sampled_from([float("nan"), float("inf"), -float("inf")]), min_size=1, max_size=3),
       family=st.sampled_from(["sdxl", "anima"]))
def test_non_finite_tensors_are_named(files, tmp_path, values, family):
    header, body = split(files[family])
    key = sorted(k for k in header if k != "__metadata__" and header[k]["dtype"] in ("F16", "BF16"))[0]
    start = header[key]["data_offsets"][0]
    tensor = bytearray(body)
    for index, value in enumerate(values):
        bits = np.array([value], np.float16).tobytes() if header[key]["dtype"] == "F16" else \
            torch.tensor([value], dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
        tensor[start + 2 * index:start + 2 * index + 2] = bits
    path = tmp_path / "nonfinite.safetensors"
    path.write_bytes(join(header, bytes(tensor)))
    with pytest.raises(LLLiteError, match=rf"nonfinite.safetensors: tensor '{key}' holds"):
        lllite.load(path)


def test_headers_that_claim_terabytes_are_refused_without_allocating_them(files, tmp_path):
    header, body = split(files["sdxl"])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [2**20, 2**20]
    header[key]["data_offsets"] = [0, 2 * 2**40]
    claims = {
        "length.safetensors": struct.pack("<Q", 2**40) + files["sdxl"][8:],
        "tensor.safetensors": join(header, body),
    }
    huge = Image.new("L", (1, 1))
    png = io.BytesIO()
    huge.save(png, format="PNG")
    raw = bytearray(png.getvalue())
    raw[16:24] = struct.pack(">II", 60000, 60000)  # IHDR's width and height
    claims["bomb.png"] = bytes(raw)
    for name, data in claims.items():
        (tmp_path / name).write_bytes(data)
    pid = os.fork()
    if pid == 0:  # a child with 3 GiB of address space more than it has: any allocation on a claim fails
        status = 1
        try:
            mapped = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
            limit = mapped + 3 * 2**30  # what is mapped already, and 3 GiB; the claims are terabytes
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            refused = 0
            for name in claims:
                try:
                    (load_rgb if name.endswith(".png") else lllite.load)(tmp_path / name)
                except LLLiteError:
                    refused += 1
            status = 0 if refused == len(claims) else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------------------------------------ dataset TOML

toml_values = st.recursive(
    st.one_of(st.integers(-10, 5000), st.floats(allow_nan=False), st.booleans(), st.text(max_size=12)),
    lambda children: st.lists(children, max_size=3), max_leaves=6)
keys = st.sampled_from(["image_dir", "conditioning_data_dir", "resolution", "batch_size", "num_repeats", "flip_aug",
                        "caption_dropout_rate", "enable_bucket", "bucket_reso_steps", "min_bucket_reso",
                        "caption_extension", "random_crop", "shuffle_caption", "subsets", "datasets", "general",
                        "min_size", "unknown_key"])


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@given(general=st.dictionaries(keys, toml_values, max_size=4),
       datasets=st.lists(st.tuples(st.dictionaries(keys, toml_values, max_size=4),
                                   st.lists(st.dictionaries(keys, toml_values, max_size=4), max_size=2)), max_size=2),
       garbage=st.text(max_size=20))
def test_dataset_toml_loads_or_names_the_file(tmp_path, general, datasets, garbage):
    lines = ["[general]", *(f"{k} = {_toml(v)}" for k, v in general.items() if k not in ("datasets", "subsets", "general"))]
    for own, subsets in datasets:
        lines += ["[[datasets]]", *(f"{k} = {_toml(v)}" for k, v in own.items() if k not in ("datasets", "subsets", "general"))]
        for subset in subsets:
            lines += ["[[datasets.subsets]]",
                      *(f"{k} = {_toml(v)}" for k, v in subset.items() if k not in ("datasets", "subsets", "general"))]
    path = tmp_path / "dataset.toml"
    path.write_text("\n".join(lines) + "\n" + garbage, encoding="utf-8")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_dataset_config(path)
    except LLLiteError as error:
        assert str(path) in str(error), error


# ------------------------------------------------------------------------------------------ image and caption files


def _image_bytes(mode: str, size: tuple[int, int], fmt: str, orientation: int) -> bytes:
    channels = {"1": 1, "L": 1, "P": 1, "RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4, "I;16": 1, "I": 1, "F": 1}[mode]
    rng = np.random.default_rng(size[0] * 31 + size[1])
    if mode in ("I;16", "I", "F"):
        image = Image.fromarray(rng.integers(0, 65535, size[::-1]).astype(np.uint16 if mode == "I;16" else np.int32))
        image = image if mode != "F" else image.convert("F")
    else:
        image = Image.fromarray(rng.integers(0, 255, (*size[::-1], channels)).astype(np.uint8).squeeze(-1)
                                if channels == 1 else rng.integers(0, 255, (*size[::-1], channels)).astype(np.uint8),
                                {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels])
        image = image.convert(mode)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    try:
        image.save(buffer, format=fmt, exif=exif.tobytes()) if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else \
            image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this mode in this format
    return buffer.getvalue()


@given(mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"]),
       size=st.tuples(st.integers(1, 40), st.integers(1, 40)), fmt=st.sampled_from(["PNG", "JPEG", "TIFF", "BMP", "WEBP"]),
       orientation=st.integers(0, 9), cut=st.one_of(st.none(), st.integers(0, 400)),
       flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3))
def test_image_files_of_any_mode_read_as_rgb_or_are_refused(tmp_path, mode, size, fmt, orientation, cut, flips):
    data = bytearray(_image_bytes(mode, size, fmt, orientation))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    if cut is not None:
        del data[cut:]
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        image, notes = load_rgb(path)
    except ImageReadError:
        return
    assert image.mode == "RGB" and min(image.size) >= 1 and all(isinstance(n, str) for n in notes)


@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=60).map(lambda t: t.encode("utf-16")),
                     st.text(max_size=60).map(lambda t: t.encode("utf-8"))))
def test_caption_files_of_any_bytes_give_text_or_a_problem_naming_the_file(tmp_path, raw):
    path = tmp_path / "caption.txt"
    path.write_bytes(raw)
    text, problem = read_caption(path)
    assert text is None or isinstance(text, str)
    assert problem is None or problem.file == path
    assert text is not None or problem is not None


@given(images=st.lists(st.binary(max_size=300), min_size=1, max_size=3))
def test_a_folder_of_anything_pairs_without_raising_and_names_every_file_it_leaves_out(tmp_path, images):
    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    (folder / "images").mkdir(parents=True)
    (folder / "conditioning").mkdir()
    for index, data in enumerate(images):
        (folder / "images" / f"{index}.png").write_bytes(data)
        (folder / "conditioning" / f"{index}.png").write_bytes(data[::-1])
        (folder / "images" / f"{index}.txt").write_bytes(data[:20])
    report = pair_subset(SubsetConfig(folder / "images", folder / "conditioning"), progress=False)
    assert len(report.pairs) <= len(images)
    assert all(folder in problem.file.parents for problem in report.problems)


# ------------------------------------------------------------------------------------------ masks and keyframes

odd = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(), st.integers(-3, 3), st.just(math.nan))


@given(value=st.one_of(odd, st.lists(odd, max_size=4), st.lists(st.lists(odd, max_size=3), max_size=18),
                       st.lists(st.tuples(st.floats(-1, 2), st.floats()), max_size=18)))
def test_keyframes_are_checked_or_refused_naming_the_argument(value):
    try:
        frames = keyframes(value)
    except LLLiteError as error:
        assert "multiplier" in str(error)
        return
    assert all(0 <= start <= 1 and math.isfinite(strength) for start, strength in frames)
    assert [start for start, _ in frames] == sorted({start for start, _ in frames})


@given(array=st.one_of(
    arrays(st.sampled_from([np.uint8, np.float32, np.float64, np.int32, np.bool_]),
           st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)),
    st.builds(lambda a: torch.from_numpy(a), arrays(np.float32, st.lists(st.integers(0, 5), max_size=4).map(tuple))),
    odd))
def test_masks_become_a_tensor_in_0_1_or_are_refused_naming_the_argument(array):
    try:
        mask = to_mask_tensor(array)
    except LLLiteError as error:
        assert "mask" in str(error)
        return
    assert mask.dim() == 4 and mask.shape[1] == 1 and float(mask.min()) >= 0 and float(mask.max()) <= 1
