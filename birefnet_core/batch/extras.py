"""Optional dependencies, imported only when a job needs them, with the extra that brings them."""

from __future__ import annotations

import importlib

from ..errors import BiRefNetError

PROJECT = "birefnet-nodes"


class MissingExtraError(BiRefNetError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, why: str):
    """Import ``module`` or raise :class:`MissingExtraError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{why} needs the Python package {module.split('.')[0]!r}, which is not installed "
            f"({exc}): pip install \"{PROJECT}[{extra}]\"") from None
