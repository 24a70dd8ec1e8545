"""Run one function in several CPU processes that work together, and say which failed and why.

    result = launch(train_my_share, config, processes=2, threads=1, name="training process")

Each process is forked from this one, so it shares the libraries and models already loaded, and gets
the environment ``accelerate launch`` would give it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT`` on a free port): accelerate and ``torch.distributed`` with
``init_method="env://"`` find each other. This process only waits. When one process fails, the others
are stopped at once (they would wait for it forever), and :class:`ProcessFailedError` carries the
failed process's own exception and the last lines of its traceback.

The demo's training and the toy's pretraining start their processes here.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import traceback
from typing import Any, Callable

import torch

from .errors import LLLiteError

#: Innermost traceback frames that a failure message carries.
TRACEBACK_FRAMES = 4


class ProcessFailedError(LLLiteError):
    """A launched process raised an exception or died.

    Attributes:
        summary: one line: which process failed, with its exception's type and message.
        trace: the last frames of the failed process's traceback ("" when it died without one).
    """

    def __init__(self, summary: str, trace: str = ""):
        super().__init__(f"{summary}\n{trace}".rstrip())
        self.summary, self.trace = summary, trace


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(target: Callable[..., Any], *args, processes: int, threads: int = 1, name: str = "process") -> Any:
    """Run ``target(*args)`` in ``processes`` forked processes and return what rank 0's call returned.

    Args:
        target: what each process runs. It learns its rank from ``RANK`` (or from accelerate or
            ``torch.distributed``); rank 0's result travels back pickled, the others' are dropped. A
            process group it starts is destroyed when it returns.
        processes: how many processes (ranks 0 to processes - 1).
        threads: torch's CPU threads in each process (also ``OMP_NUM_THREADS``).
        name: what messages call a process: ``"training process"`` -> "training process 1 failed: ...".

    Raises:
        ProcessFailedError: a process raised (the message carries its exception and traceback) or
            died without a result (its exit code or signal); the other processes are stopped first.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    port = free_port()
    context = multiprocessing.get_context("fork")
    workers, readers = [], []
    try:
        for rank in range(processes):
            reader, writer = context.Pipe(duplex=False)
            worker = context.Process(target=_process, args=(target, args, rank, processes, port, threads, writer),
                                     name=f"{name} {rank}")
            worker.start()
            # Only the child holds the writing end now (and no later child inherits it), so the pipe
            # reports its end as soon as the child is gone, whatever killed it.
            writer.close()
            workers.append(worker)
            readers.append(reader)
        result = None
        waiting = {reader: rank for rank, reader in enumerate(readers)}
        while waiting:
            for reader in multiprocessing.connection.wait(list(waiting)):
                rank = waiting.pop(reader)
                try:
                    succeeded, value = reader.recv()
                except EOFError:
                    workers[rank].join()
                    raise ProcessFailedError(f"{name} {rank} ended without a result "
                                             f"({_exit_status(workers[rank].exitcode)})") from None
                if not succeeded:
                    summary, trace = value
                    raise ProcessFailedError(f"{name} {rank} failed: {summary}", trace)
                if rank == 0:
                    result = value
        for worker in workers:
            worker.join()
        return result
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join()
        for reader in readers:
            reader.close()


def _process(target, args, rank: int, world: int, port: int, threads: int, writer) -> None:
    """One launched process: the environment, the call, and one message back (result or error)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        # A forked process inherits its parent's single-process accelerate state; a launched one has none.
        AcceleratorState._reset_state(reset_partial_state=True)
    failed = False
    try:
        result = target(*args)
        writer.send((True, result if rank == 0 else None))
    except BaseException as error:  # noqa: BLE001 - every failure, KeyboardInterrupt too, goes to the parent
        failed = True
        frames = traceback.format_tb(error.__traceback__)[-TRACEBACK_FRAMES:]
        writer.send((False, (f"{type(error).__name__}: {error}", "".join(frames).rstrip())))
    finally:
        writer.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if failed:
        sys.exit(1)


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
