"""Every architecture in the fixture manifest: exact keys/shapes, and detection (issue 2)."""

from __future__ import annotations

import json

import pytest
import torch

from birefnet_core.model import BiRefNet
from birefnet_core.weights import detect_architecture, filter_checkpoint
from tests.conftest import FIXTURES

_MANIFEST_PATH = FIXTURES / "manifest.json"
MANIFEST = json.loads(_MANIFEST_PATH.read_text())["architectures"] if _MANIFEST_PATH.exists() else {}
NAMES = sorted(MANIFEST) or ["<manifest absent>"]


def _manifest(name):
    if not MANIFEST:
        pytest.skip(f"{_MANIFEST_PATH} is absent (the ../shared fixtures are not beside the repo)")
    return MANIFEST[name]


def _fake_state_dict(entry):
    """Zero-size-cost stand-ins with the manifest's shapes and dtypes."""
    return {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            for k, (shape, dtype) in entry["keys"].items()}


@pytest.mark.parametrize("name", NAMES)
def test_model_has_exactly_the_official_keys_and_shapes(name):
    entry = _manifest(name)
    detected = detect_architecture(_fake_state_dict(entry))
    assert detected.name == name
    with torch.device("meta"):
        model = BiRefNet(detected)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: shape for k, (shape, _) in entry["keys"].items()}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == entry["n_params"]


@pytest.mark.parametrize("name", NAMES)
def test_detection_through_wrapper_prefixes(name):
    entry = _manifest(name)
    wrapped = {f"module._orig_mod.{k}": v for k, v in _fake_state_dict(entry).items()}
    wrapped["module._orig_mod.cls_head.0.weight"] = torch.empty(2, 2, device="meta")
    clean, _ = filter_checkpoint(wrapped)
    assert set(clean) == set(entry["keys"])
    assert detect_architecture(clean).name == name

