"""Fakes for testing kernel choice by measurement (``birefnet_core.kernels``) without real
timing: a clock that only the injected implementations advance."""

from __future__ import annotations

from birefnet_core import kernels


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def slowed(fresh, op: str, costs: dict[str, float]):
    """Re-register ``op``'s real candidates with a fake cost each; returns the call log."""
    calls: list[str] = []
    for name, cand in kernels.candidates(op).items():
        def fn(*args, _fn=cand.fn, _name=name, **kwargs):
            calls.append(_name)
            fresh.now += costs[_name]
            return _fn(*args, **kwargs)
        kernels.register(op, name, fn, available=cand.available, exact=cand.exact,
                         default=kernels._DEFAULT[op] == name)
    return calls
