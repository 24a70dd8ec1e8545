"""Writing files atomically: a file appears complete under its final name, or not at all.

Every file the project writes for a user (LLLite weights, pictures, reports, caches, datasets) goes
through :func:`write_atomic`: the content is written to a hidden temporary file beside the target and
then renamed onto it, so an interrupted run never leaves half a file behind, and the finished file gets
the permissions of any other file the user makes (some writers, such as safetensors, make theirs
private).
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import OutputExistsError


def write_atomic(path, write: Callable[[Path], object], overwrite: bool = True) -> Path:
    """Call ``write(temporary)`` for a temporary file beside ``path``, then rename it onto ``path``.

    Args:
        path: the file to write; missing parent folders are made.
        write: writes the whole content to the path it is given (the file already exists, empty). The
            temporary name ends with ``path``'s suffix, for writers that choose a format by it.
        overwrite: replace an existing ``path``; otherwise an existing ``path`` raises
            :class:`lllite.errors.OutputExistsError` (a ``FileExistsError``) before anything is written.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden (leading dot), so that dataset folders never pair a leftover; the suffix keeps the format.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    # Created here with the user's umask, so its mode is what any new file of theirs would get.
    handle = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        mode = os.fstat(handle).st_mode & 0o777
    finally:
        os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path, data: bytes, overwrite: bool = True) -> Path:
    """:func:`write_atomic` for content already in memory."""
    return write_atomic(path, lambda temporary: temporary.write_bytes(data), overwrite)


def write_text_atomic(path, text: str, overwrite: bool = True) -> Path:
    """:func:`write_atomic` for UTF-8 text."""
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), overwrite)


def write_folder_atomic(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_folder)`` for a hidden folder beside ``path``, then swap it in for ``path``.

    A crash never leaves half a folder: ``path`` holds the old content or the new, whole. The files come out
    readable by everyone (folders 755, files 644), as package data must be; safetensors writes its own private.

    Args:
        path: the folder to write; an existing one is replaced (callers ask before they overwrite).
        write: writes the whole content into the (empty) folder it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        write(staging)
        staging.chmod(0o755)
        for item in staging.rglob("*"):
            item.chmod(0o755 if item.is_dir() else 0o644)
        if path.exists():
            retired = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path
