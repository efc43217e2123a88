"""The core reproduces the official BiRefNet output for the same weights (issue 2)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from birefnet_core.weights import load_model
from devices import DEVICE

TOLERANCE = 1e-4  # max |Δ sigmoid| in float32 on the CPU, as the fixtures' README states
SIZES = ("256x256", "256x384")
ORDERS = ("split", "einops")


@pytest.fixture(scope="module")
def lite_fp16(fixtures_dir):
    return fixtures_dir / "lite_fp16.safetensors"


@pytest.fixture(scope="module")
def lite_pth_with_prefix(lite_fp16, tmp_path_factory):
    """A ``.pth`` copy of the lite weights as a compiled, DataParallel-wrapped training run saves
    it: ``module._orig_mod.`` prefixes inside a ``{'state_dict': ...}`` container."""
    sd = load_file(str(lite_fp16))
    path = tmp_path_factory.mktemp("ckpt") / "BiRefNet_lite-epoch_100.pth"
    torch.save({"epoch": 100, "state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
               path)
    return path


def _check(model, fixtures_dir, order, size):
    """On ``BIREFNET_TEST_DEVICE`` (tests/devices.py), against the CPU reference."""
    x = load_file(str(fixtures_dir / f"input_{size}.safetensors"))["input"]
    ref = load_file(str(fixtures_dir / order / f"output_{size}.safetensors"))
    model.to(DEVICE).patch_order = order
    logits = model(x.to(DEVICE))
    assert logits.shape == ref["logits"].shape and logits.device.type == DEVICE.type
    assert logits.dtype == torch.float32
    err = (logits.sigmoid().cpu() - ref["prob"]).abs().max().item()
    assert err <= TOLERANCE, f"{order} {size}: max |Δ sigmoid| = {err:.2e}"


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("size", SIZES)
def test_lite_fp16_safetensors_matches_official(lite_fp16, fixtures_dir, order, size):
    loaded = load_model(lite_fp16, family="lite", patch_order=order)
    assert loaded.info.arch.name == "swin_v1_t"
    assert loaded.info.stored_dtype == "float16"
    _check(loaded.model, fixtures_dir, order, size)


@pytest.mark.parametrize("order", ORDERS)
def test_lite_prefixed_pth_matches_official(lite_pth_with_prefix, fixtures_dir, order):
    loaded = load_model(lite_pth_with_prefix, patch_order=order)
    assert loaded.info.family.name == "lite"
    assert loaded.info.patch_order.value == order
    for size in SIZES:
        _check(loaded.model, fixtures_dir, order, size)


def test_patch_orders_really_differ(lite_fp16, fixtures_dir):
    """Guards the fixture's premise: the wrong order is a different function."""
    a = load_file(str(fixtures_dir / "split" / "output_256x256.safetensors"))["prob"]
    b = load_file(str(fixtures_dir / "einops" / "output_256x256.safetensors"))["prob"]
    assert (a - b).abs().max() > 0.1


def test_statics_are_cached_and_stable(lite_fp16, fixtures_dir):
    """A second forward (served from the window-mask cache) gives the same output; clearing the
    caches rebuilds them."""
    model = load_model(lite_fp16).model
    x = load_file(str(fixtures_dir / "input_256x256.safetensors"))["input"]
    first = model(x)
    stage = model.bb.layers[0]
    assert len(stage._masks) == 2  # the image and its half-size copy
    mask = next(iter(stage._masks.values()))
    torch.testing.assert_close(model(x), first, rtol=0, atol=0)
    assert len(stage._masks) == 2 and next(iter(stage._masks.values())) is mask
    model.clear_caches()
    assert not stage._masks
    torch.testing.assert_close(model(x), first, rtol=0, atol=0)
