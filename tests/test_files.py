"""Atomic writes: complete files or none, never an overwrite unasked, the user's usual permissions."""
import os
import stat

import pytest
import torch

import lllite
from lllite.files import write_atomic, write_bytes_atomic, write_text_atomic
from lllite.sdxl.module import LLLiteModule
from lllite.sdxl.network import LLLiteNetwork


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_write_lands_under_the_final_name_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "report.txt"
    assert write_text_atomic(target, "héllo\n") == target
    assert target.read_text(encoding="utf-8") == "héllo\n"
    assert [p.name for p in target.parent.iterdir()] == ["report.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def half_then_crash(temporary):
        temporary.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_an_existing_file_is_replaced_only_when_asked(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="a.bin exists; pass overwrite=True"):
        write_bytes_atomic(target, b"new", overwrite=False)
    assert target.read_bytes() == b"mine"
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"


def test_the_temporary_file_is_hidden_and_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    seen = []
    write_atomic(tmp_path / "plot.png", lambda temporary: seen.append(temporary) or temporary.write_bytes(b"x"))
    assert seen[0].name.startswith(".plot.png.") and seen[0].suffix == ".png"


def test_files_get_the_umask_permissions_even_from_writers_that_make_private_files(tmp_path, umask_022):
    def private_writer(temporary):
        temporary.write_bytes(b"x")
        temporary.chmod(0o600)

    assert mode(write_atomic(tmp_path / "a.bin", private_writer)) == 0o644
    os.umask(0o077)
    assert mode(write_bytes_atomic(tmp_path / "b.bin", b"x")) == 0o600


def test_a_saved_lllite_file_is_readable_by_others_like_any_file_the_user_makes(tmp_path, umask_022):
    # safetensors itself writes 0600 files; a trained network is meant to be shared and loaded by other tools.
    network = LLLiteNetwork({"lllite_unet_middle_block_1_transformer_blocks_0_attn1_to_q": LLLiteModule(16, 4, 4, 3)})
    path = network.save(tmp_path / "net.safetensors")
    assert mode(path) == 0o644
    assert torch.equal(lllite.load(path).state_dict()["lllite_unet_middle_block_1_transformer_blocks_0_attn1_to_q.down.0.weight"],
                       network.state_dict()["lllite_unet_middle_block_1_transformer_blocks_0_attn1_to_q.down.0.weight"].half().float())
