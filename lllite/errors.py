"""The one parent of every error a user can cause and fix: a file, a setting, a dataset, an image.

A library function raises a subclass whose message names the file, key or argument and says what to
do; each command line catches :class:`LLLiteError` once and prints that message as one line.
Programming mistakes (a wrong type passed by code) stay ordinary ``TypeError`` and the like.
"""
from __future__ import annotations


class LLLiteError(ValueError):
    """Something the user gave cannot be used; the message says which and what to do."""


class OutputExistsError(LLLiteError, FileExistsError):
    """A file or folder would be overwritten; pass ``overwrite`` or choose another path."""


class InputMissingError(LLLiteError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class CompiledWithoutNetworkError(LLLiteError):
    """A compiled UNet ran code compiled before an LLLite network was attached, so the network did not act."""


class PipelineLoadError(LLLiteError):
    """A model name or path that does not load as the pipeline asked for; the message says what was tried."""


class TrainError(LLLiteError):
    """A setting, model or dataset that training cannot use; the message says which and what to do."""
