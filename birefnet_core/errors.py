"""Error classes of the core.

Every error is also a builtin (``ValueError``, ``RuntimeError``...), so callers that do not know
this library can still catch it sensibly. Messages say what went wrong, where, what was expected
and what to do about it.
"""

from __future__ import annotations


class BiRefNetError(Exception):
    """Base class of every error raised on purpose by ``birefnet_core``."""


class CheckpointError(BiRefNetError, ValueError):
    """A weights file cannot be read, is not a BiRefNet checkpoint, or does not fit the model."""


class InputError(BiRefNetError, ValueError):
    """An image, mask or option passed to the core has the wrong shape, type or value."""


class OutOfMemoryError(BiRefNetError, RuntimeError):
    """Even a chunk of a single frame did not fit in device memory."""


class CancelledError(BiRefNetError, RuntimeError):
    """The caller's ``is_cancelled`` callback asked to stop between chunks."""


class DownloadError(BiRefNetError, OSError):
    """A requested checkpoint download could not be completed (offline, refused, corrupt)."""
