"""What the data_tools commands share: the user-error type and atomic file writing."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


class CommandError(Exception):
    """A user mistake (a missing folder, a bad option); printed as one line, exit status 2."""


def write_atomic(path: Path, write) -> None:
    """Call ``write(temporary_path)`` then move the result onto ``path``, so that an interrupted run
    never leaves a half-written file under the final name. The temporary name is hidden (leading dot)
    so that the pairing rules ignore leftovers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
