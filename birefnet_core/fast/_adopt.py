"""Build a module of a subclass around an existing module's children, without copying."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def adopt(cls: type[M], exact: nn.Module) -> M:
    """A new ``cls`` (a subclass of ``type(exact)``) holding ``exact``'s parameters, buffers,
    submodules and plain attributes (shared, not copied); ``exact`` is left as it was.

    For fast modules whose children are the exact ones and only ``forward`` differs: no
    ``__init__`` runs, so nothing is built and randomly initialised only to be replaced."""
    if not issubclass(cls, type(exact)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(exact).__name__}")
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    fresh = set(vars(new))
    for name, value in vars(exact).items():
        if name not in fresh:
            object.__setattr__(new, name, value)  # plain attributes (sizes, caches, settings)
    new._parameters.update(exact._parameters)
    new._buffers.update(exact._buffers)
    new._non_persistent_buffers_set.update(exact._non_persistent_buffers_set)
    new._modules.update(exact._modules)
    new.training = exact.training
    return new
