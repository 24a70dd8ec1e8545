"""The process launcher: rank 0's result comes back, and a failure says which process failed and why, fast."""
from __future__ import annotations

import os
import socket
import time

import pytest
import torch

from lllite.errors import LLLiteError
from lllite.launch import ProcessFailedError, free_port, launch


def _rank_and_environment(suffix: str) -> str:
    return f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']} threads {torch.get_num_threads()}{suffix}"


def _summed_ranks() -> int:
    torch.distributed.init_process_group("gloo")
    total = torch.tensor(torch.distributed.get_rank())
    torch.distributed.all_reduce(total)
    return int(total)


def _second_process_fails_while_the_first_waits() -> None:
    if os.environ["RANK"] == "1":
        _fail_deep_inside()
    time.sleep(60)


def _fail_deep_inside() -> None:
    raise RuntimeError("the disk is full")


def _exits_without_a_word() -> None:
    os._exit(3)


def test_rank_0_returns_its_result_and_each_process_gets_rank_world_and_threads():
    assert launch(_rank_and_environment, "!", processes=3, threads=1) == "0/3 threads 1!"


def test_the_processes_find_each_other_through_the_environment():
    assert launch(_summed_ranks, processes=3) == 0 + 1 + 2


def test_a_failing_process_is_reported_with_its_own_error_and_the_others_are_stopped():
    started = time.monotonic()
    with pytest.raises(ProcessFailedError) as raised:
        launch(_second_process_fails_while_the_first_waits, processes=2, name="worker")
    assert time.monotonic() - started < 20  # the first process sleeps 60 s: it was stopped, not waited for
    message = str(raised.value)
    assert message.splitlines()[0] == "worker 1 failed: RuntimeError: the disk is full"
    assert "in _fail_deep_inside" in message and 'raise RuntimeError("the disk is full")' in message
    assert raised.value.summary == "worker 1 failed: RuntimeError: the disk is full"
    assert isinstance(raised.value, LLLiteError)


def test_a_process_that_dies_without_a_result_is_reported_with_its_exit_code():
    with pytest.raises(ProcessFailedError, match=r"^process 0 ended without a result \(exit code 3\)$"):
        launch(_exits_without_a_word, processes=1)


def test_the_free_port_is_free():
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
