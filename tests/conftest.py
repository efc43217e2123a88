"""Shared pytest fixtures: the ``../shared`` data folder and small random-weight models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from comfy_host import in_ci

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIREFNET_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "birefnet"
MATTING = SHARED / "data" / "matting"

# Every process of the test session (pytest, ComfyUI, Ray workers) runs each op's default kernel
# instead of timing the candidates on first use: timings on a loaded machine differ between
# processes, and so would the last bits of their outputs (the shared ComfyUI forces one other
# candidate on purpose: tests/e2e_checkpoints.py). The selection itself is tested with a
# fake clock (tests/test_kernels.py); every candidate is tested for exactness on its own.
os.environ.setdefault("BIREFNET_KERNELS", "default")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run tests marked slow: the real ComfyUI, the real browser, the "
                          "full grad-mode matrix (always on under CI=true)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow") or in_ci():
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (CI runs every test)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def require_shared(path: Path) -> Path:
    """Skip the calling test, with the reason, when a ``../shared`` file is absent (under
    ``CI=true``, fail: CI must never pass by skipping)."""
    if not path.exists():
        if in_ci():
            pytest.fail(f"{path} is absent, and CI must run every test", pytrace=False)
        pytest.skip(f"{path} is absent: the ../shared folder beside the repo holds the fixtures "
                    "(developer checkouts and CI have it; set BIREFNET_SHARED to point elsewhere)")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require_shared(FIXTURES)


@pytest.fixture(scope="session")
def matting_dir() -> Path:
    return require_shared(MATTING)


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised PVT-v2-b0 BiRefNet (the smallest architecture), eval mode, CPU."""
    import torch

    from birefnet_core.model import BiRefNet
    from birefnet_core.variants import Architecture

    torch.manual_seed(0)
    model = BiRefNet(Architecture("pvt_v2_b0"))
    # Non-trivial BatchNorm statistics so that eval-mode normalisation is exercised.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def fresh(monkeypatch):
    """Isolated kernel state: registry, choices, probes, settings, disk entries, clock (a
    :class:`kernel_fakes.FakeClock`, returned)."""
    from birefnet_core import kernels
    from kernel_fakes import FakeClock

    monkeypatch.setattr(kernels, "_REGISTRY", {op: dict(c) for op, c in kernels._REGISTRY.items()})
    monkeypatch.setattr(kernels, "_DEFAULT", dict(kernels._DEFAULT))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.setattr(kernels, "_AVAILABLE", {})
    monkeypatch.setattr(kernels, "_DISK", {})
    monkeypatch.setattr(kernels, "_SETTINGS", {"force": {}, "cache_dir": None})
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    monkeypatch.delenv(kernels.CACHE_ENV, raising=False)
    clock = FakeClock()
    monkeypatch.setattr(kernels, "_clock", clock)
    return clock
