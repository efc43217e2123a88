"""The examples in the core's docstrings run and say what they show (DESIGN.md, example 9)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import birefnet_core

# Every module of the core; ``__main__`` would run the command line on import.
MODULES = ["birefnet_core"] + sorted(
    info.name for info in pkgutil.walk_packages(birefnet_core.__path__, "birefnet_core.")
    if not info.name.endswith(".__main__"))


def test_every_module_is_found():
    assert {"birefnet_core.refine", "birefnet_core.edges", "birefnet_core.matting",
            "birefnet_core.temporal", "birefnet_core.filters", "birefnet_core.foreground",
            "birefnet_core.composite", "birefnet_core.inference",
            "birefnet_core.model.swin"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=False)
    # testmod prints each failing example with what it gave, which pytest shows on failure.
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
