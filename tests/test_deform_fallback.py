"""The exact model runs without a working torchvision deform_conv2d (CUDA 13 / torch 2.10 builds,
MPS before torchvision 0.23, a torchvision built for another torch): the pack's own op stands in,
decided once per device, with one line in the log."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torchvision.ops
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from birefnet_core.model.blocks import DeformableConv2d
from birefnet_core.ops import deform_conv as dc
from birefnet_core.optimize import optimize_for_inference

ATOL = RTOL = 1e-5  # fp32, outputs of order 1, as in test_deform_conv.py
CUDA_13_MESSAGE = ("Could not run 'torchvision::deform_conv2d' with arguments from the 'CPU' "
                   "backend. This could be because the operator doesn't exist for this backend.")


@pytest.fixture
def fresh_choice(monkeypatch):
    """An empty per-device cache (restored afterwards), so each test decides anew."""
    monkeypatch.setattr(dc, "_OPS", {})


@pytest.fixture
def broken_torchvision(monkeypatch, fresh_choice):
    """torchvision's op raises like a build without the CPU kernel; counts its calls."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise NotImplementedError(CUDA_13_MESSAGE)

    monkeypatch.setattr(torchvision.ops, "deform_conv2d", broken)
    return calls


def _module(k: int = 3, seed: int = 0) -> DeformableConv2d:
    """A deformable conv whose offsets are large enough that many samples fall outside."""
    torch.manual_seed(seed)
    module = DeformableConv2d(6, 8, k, k // 2).eval()
    with torch.no_grad():
        module.offset_conv.weight.mul_(20.0)
    return module


def _reference(module: DeformableConv2d, x: torch.Tensor) -> torch.Tensor:
    """The module's function computed by torchvision's op, in float64."""
    with torch.no_grad():
        m = module.double()
        xd = x.double()
        out = tv_deform_conv2d(xd, m.offset_conv(xd), m.regular_conv.weight,
                               padding=m.padding, mask=2.0 * torch.sigmoid(m.modulator_conv(xd)))
        module.float()
    return out.float()


@pytest.mark.parametrize("k", (1, 3, 7))
def test_exact_mode_without_torchvision_op_matches_torchvision(k, broken_torchvision, caplog):
    module = _module(k)
    x = torch.randn(2, 6, 13, 11)
    ref = _reference(module, x)
    caplog.set_level(logging.WARNING, logger=dc.__name__)
    with torch.inference_mode():
        out = module(x)
        again = module(x)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    notes = [r.getMessage() for r in caplog.records if r.name == dc.__name__]
    assert len(notes) == 1, notes  # one line, on first use only
    assert "Could not run 'torchvision::deform_conv2d'" in notes[0] and "cpu" in notes[0]
    assert len(notes[0].splitlines()) == 1
    assert broken_torchvision == [1], "the failing op must be tried once, then never again"


@pytest.mark.parametrize("hide", ("absent", "unimportable"))
def test_exact_mode_when_the_op_is_absent(hide, monkeypatch, fresh_choice, caplog):
    module = _module()
    x = torch.randn(1, 6, 9, 10)
    ref = _reference(module, x)
    if hide == "absent":
        monkeypatch.delattr(torchvision.ops, "deform_conv2d")
    else:  # like a torchvision built for another torch, which fails to import
        monkeypatch.setitem(sys.modules, "torchvision.ops", None)
    caplog.set_level(logging.WARNING, logger=dc.__name__)
    with torch.no_grad():
        out = module(x)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    assert dc.deform_conv2d_for("cpu") is dc.deform_conv2d
    assert any("cannot be imported" in r.getMessage() for r in caplog.records)


def test_exact_mode_survives_nan_offsets_without_torchvision(broken_torchvision):
    """The NaN guard of the exact path holds with the stand-in too."""
    module = _module()
    x = torch.randn(1, 6, 9, 9)
    with torch.no_grad():
        module.offset_conv.bias[5] = float("nan")
        out = module(x)
        offset = module.offset_conv(x).nan_to_num(nan=-1e6)
        # torchvision's own op (imported before the fixture hid it), at a far-out position.
        ref = tv_deform_conv2d(x, offset, module.regular_conv.weight, padding=1,
                               mask=2.0 * torch.sigmoid(module.modulator_conv(x)))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


def test_reduced_precision_exact_mode_runs_the_stand_in_in_fp32(monkeypatch, fresh_choice):
    """Under autocast the exact path runs the op in fp32 and hands back the caller's dtype, with
    torchvision's op and with the stand-in alike: the two agree to bf16's last bit."""
    module = _module()
    x = torch.randn(1, 6, 9, 9).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = module(x)
        monkeypatch.setattr(dc, "_OPS", {})
        monkeypatch.setattr(torchvision.ops, "deform_conv2d", _refuse)
        out = module(x)
    assert dc.deform_conv2d_for("cpu") is dc.deform_conv2d
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2**-8, atol=1e-5)


def test_whole_exact_model_without_torchvision_op(tiny_model, monkeypatch, fresh_choice):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = tiny_model(x).sigmoid()
    monkeypatch.setattr(dc, "_OPS", {})
    monkeypatch.setattr(torchvision.ops, "deform_conv2d", _refuse)
    with torch.inference_mode():
        out = tiny_model(x).sigmoid()
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)


def test_optimised_mode_never_needs_torchvision(tiny_model, broken_torchvision, monkeypatch):
    """torchvision's op is one of the optimised model's kernel candidates; a broken one is
    probed once per device, found wanting and never chosen."""
    import copy

    from birefnet_core import kernels

    monkeypatch.setattr(kernels, "_AVAILABLE", {})
    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)  # measure, as users' processes do
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fast = optimize_for_inference(copy.deepcopy(tiny_model))
    with torch.inference_mode():
        out = fast(x).sigmoid()
        again = fast(torch.randn(2, 3, 96, 64)).sigmoid()
    assert broken_torchvision == [1], "torchvision's op must be probed once, then never again"
    chosen = {c["chosen"] for c in kernels.choices() if c["op"] == "deform_conv"}
    assert chosen == {"gather_gemm"} and again.shape == (2, 1, 96, 64)
    assert dc._OPS == {}, "the optimised model consulted the exact model's op choice"
    dc._OPS[("cpu", None)] = tv_deform_conv2d  # the reference: the exact model, torchvision's op
    with torch.inference_mode():
        ref = tiny_model(x).sigmoid()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


def test_decided_once_per_device(monkeypatch, fresh_choice):
    probed = []
    monkeypatch.setattr(dc, "_torchvision_problem",
                        lambda op, device: probed.append(str(device)))
    assert dc.deform_conv2d_for("cpu") is tv_deform_conv2d
    assert dc.deform_conv2d_for(torch.device("cpu")) is tv_deform_conv2d
    dc.deform_conv2d_for("cuda:1")
    dc.deform_conv2d_for("cuda:1")
    assert probed == ["cpu", "cuda:1"]


def test_apple_silicon_uses_torchvision_where_it_runs(monkeypatch, fresh_choice, caplog):
    """torchvision >= 0.23 runs deform_conv2d on MPS: the policy asks the op, it does not assume.
    The device is faked: the probe answers as an MPS build of each version would."""
    caplog.set_level(logging.WARNING, logger=dc.__name__)
    monkeypatch.setattr(dc, "_torchvision_problem", lambda op, device: None)  # 0.23 and newer
    assert dc.deform_conv2d_for("mps") is tv_deform_conv2d
    assert caplog.records == []

    monkeypatch.setattr(dc, "_OPS", {})
    older = "torchvision's deform_conv2d does not run on mps (not implemented for 'MPS')"
    monkeypatch.setattr(dc, "_torchvision_problem", lambda op, device: older)  # before 0.23
    assert dc.deform_conv2d_for("mps") is dc.deform_conv2d
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [f"BiRefNet: {older}"]


def test_probe_rejects_an_op_that_computes_wrong_values(fresh_choice):
    def wrong(x, offset, weight, bias=None, padding=0, mask=None):
        return torch.zeros(1, 1, 4, 4)

    assert "wrong values" in dc._torchvision_problem(wrong, torch.device("cpu"))
    assert dc._torchvision_problem(tv_deform_conv2d, torch.device("cpu")) is None


def _refuse(*args, **kwargs):
    raise NotImplementedError(CUDA_13_MESSAGE)
