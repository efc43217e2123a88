"""``birefnet_core.ops.linear``: the fused CPU path computes the unfused ops' function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from birefnet_core.ops import linear as linear_mod
from birefnet_core.ops.linear import linear


def _data(rows=37, cin=24, cout=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, rows, cin, generator=g)
    w = torch.randn(cout, cin, generator=g) / cin ** 0.5
    b = torch.randn(cout, generator=g)
    r = torch.randn(2, rows, cout, generator=g)
    return x, w, b, r


@pytest.mark.parametrize("kind", ("plain", "gelu", "residual", "no_bias"))
def test_matches_the_unfused_ops(kind):
    x, w, b, r = _data()
    bias = None if kind == "no_bias" else b
    ref = F.linear(x, w, bias)
    if kind == "gelu":
        ref = F.gelu(ref)  # exact erf GELU, as nn.GELU() in the Swin MLP
    if kind == "residual":
        ref = ref + r
    out = linear(x, w, bias, gelu=kind == "gelu", residual=r if kind == "residual" else None)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


def test_the_fused_kernel_is_used_on_this_cpu():
    """Guards the speed claim: on a CPU build with oneDNN the fused op must actually be taken."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    x, w, b, r = _data()
    assert linear_mod._can_fuse(x, w, b, r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear_mod._can_fuse(x, w, b)  # autocast's reduced precision is honoured
    assert not linear_mod._can_fuse(x.double(), w.double())
    assert not linear_mod._can_fuse(x.transpose(0, 1), w)


def test_fallback_and_other_dtypes_agree(monkeypatch):
    x, w, b, r = _data()
    fused = linear(x, w, b, residual=r)
    monkeypatch.setattr(linear_mod, "_FUSED", None)
    torch.testing.assert_close(linear(x, w, b, residual=r), fused, rtol=0, atol=2e-5)
    out64 = linear(x.double(), w.double(), b.double(), gelu=True)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, F.gelu(F.linear(x.double(), w.double(), b.double())))


def test_bad_arguments():
    x, w, b, r = _data()
    with pytest.raises(ValueError, match="either"):
        linear(x, w, b, gelu=True, residual=r)
    with pytest.raises(ValueError, match="residual must be"):
        linear(x, w, b, residual=r[:, :3])


def test_lateral_block_fuses_its_addition_on_channels_last_features():
    from birefnet_core.fast import FastLatBlk
    from birefnet_core.model.blocks import BasicLatBlk

    torch.manual_seed(0)
    exact = BasicLatBlk(12, 20).eval()
    block = FastLatBlk.from_exact(exact)
    cl = torch.channels_last
    x = torch.randn(2, 12, 9, 7).contiguous(memory_format=cl)
    add = torch.randn(2, 20, 9, 7).contiguous(memory_format=cl)
    with torch.inference_mode():
        ref = exact(x) + add
        fused = block(x, add)
        plain = block(x.contiguous(), add.contiguous())  # NCHW: the convolution path
    assert fused.is_contiguous(memory_format=cl)
    torch.testing.assert_close(fused, ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(plain, ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(exact(x), exact.conv(x), rtol=0, atol=0)


def test_the_fused_call_does_no_host_side_work():
    """Calling the op by overload: no tensor formatting (``item``) per call, as resolving the
    overload packet by trial did."""
    from torch.profiler import profile

    x, w, b, r = _data()
    with profile() as prof:
        linear(x, w, b, residual=r)
        linear(x, w, b, gelu=True)
    counts = {e.key: e.count for e in prof.key_averages()}
    assert "aten::item" not in counts, counts


def test_autocast_keeps_the_residual_stream_in_float32():
    x, w, b, r = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear(x, w, b, residual=r)
        hidden = linear(x, w, b, gelu=True)
    assert out.dtype == torch.float32  # as ``r + F.linear(...)`` under autocast
    assert hidden.dtype == torch.bfloat16
    torch.testing.assert_close(out, r + F.linear(x, w, b), rtol=0, atol=0.1)
