"""What the data_tools commands share: the user-error type and atomic file writing (the package's)."""
from __future__ import annotations

from lllite.errors import LLLiteError
from lllite.files import write_atomic, write_text_atomic

__all__ = ["CommandError", "write_atomic", "write_text_atomic"]


class CommandError(LLLiteError):
    """A user mistake (a missing folder, a bad option); printed as one line, exit status 2."""
