"""The fast modulated deformable convolution computes torchvision's function (issue 6)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from birefnet_core.errors import InputError
from birefnet_core.ops import deform_conv2d

ATOL = RTOL = 1e-5  # fp32, outputs of order 1


def _case(b, c, o, h, w, k, *, offset_scale=2.0, seed=0, dtype=torch.float32):
    """Weights scaled like a trained conv (outputs of order 1); offsets large enough that many
    samples fall partly or wholly outside the image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(o, c, k, k, generator=g, dtype=dtype) / (c * k * k) ** 0.5
    bias = torch.randn(o, generator=g, dtype=dtype)
    offset = torch.randn(b, 2 * k * k, h, w, generator=g, dtype=dtype) * offset_scale
    mask = 2 * torch.rand(b, k * k, h, w, generator=g, dtype=dtype)
    return x, offset, weight, bias, mask


@pytest.mark.parametrize("k", (1, 3, 7))
@pytest.mark.parametrize("shape", ((1, 8, 6, 16, 16), (2, 5, 7, 9, 13), (3, 4, 3, 12, 5)))
def test_matches_torchvision(k, shape):
    x, offset, weight, bias, mask = _case(*shape, k)
    ref = tv_deform_conv2d(x.double(), offset.double(), weight.double(), bias.double(),
                           padding=k // 2, mask=mask.double())
    tv32 = tv_deform_conv2d(x, offset, weight, bias, padding=k // 2, mask=mask)
    out = deform_conv2d(x, offset, weight, bias, padding=k // 2, mask=mask)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out, tv32, rtol=RTOL, atol=ATOL)


def test_far_out_of_bounds_samples_are_zero():
    """Offsets that push every sample beyond the image leave only the bias."""
    x, offset, weight, bias, mask = _case(1, 3, 4, 6, 7, 3)
    offset = torch.full_like(offset, 50.0)
    out = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out), rtol=0, atol=0)
    ref = tv_deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


def test_integer_offsets_on_the_border():
    """Samples exactly on pixel centres and exactly one pixel outside (y = -1, y = H)."""
    x, offset, weight, bias, mask = _case(2, 4, 5, 8, 6, 3)
    offset = torch.randint(-3, 4, offset.shape).float()
    ref = tv_deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    out = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("hw", ((1, 5), (4, 1), (1, 1)))
def test_one_pixel_sides(hw):
    x, offset, weight, bias, mask = _case(1, 3, 4, *hw, 3, offset_scale=0.7)
    ref = tv_deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    out = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


def test_without_mask_and_bias():
    x, offset, weight, _, _ = _case(2, 4, 5, 10, 11, 3)
    ref = tv_deform_conv2d(x, offset, weight, padding=1)
    out = deform_conv2d(x, offset, weight, padding=1)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


def test_zero_offsets_unit_mask_is_a_convolution():
    x, offset, weight, bias, mask = _case(1, 6, 5, 12, 9, 7)
    out = deform_conv2d(x, torch.zeros_like(offset), weight, bias, padding=3,
                        mask=torch.ones_like(mask))
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, bias, padding=3),
                               rtol=0, atol=ATOL)


def test_non_finite_offsets_sample_nothing():
    """torchvision reads zeros at a NaN or infinite position; an overflowing fp16 offset
    predictor must not turn into an out-of-range table index."""
    x, offset, weight, bias, mask = _case(2, 4, 5, 7, 9, 3)
    offset[0, 0, 1, 2] = float("nan")
    offset[0, 3, 4, 4] = float("inf")
    offset[1, 6, 0, 0] = float("-inf")
    offset[1, 7, 5, 8] = float("nan")
    # torchvision itself reads out of bounds at a NaN offset (a segfault): its reference is
    # taken with the NaN replaced by a position far outside, which samples nothing.
    ref = tv_deform_conv2d(x, offset.nan_to_num(nan=-1e6), weight, bias, padding=1, mask=mask)
    out = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


def test_exact_module_survives_nan_offsets():
    """The exact path guards torchvision's op against NaN offsets (it would crash the host)."""
    from birefnet_core.model.blocks import DeformableConv2d

    torch.manual_seed(0)
    module = DeformableConv2d(4, 6, 3, 1)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        module.offset_conv.bias[5] = float("nan")  # every offset of that channel is NaN
        out = module(x)
        offset = module.offset_conv(x).nan_to_num(nan=-1e6)
        ref = tv_deform_conv2d(x, offset, module.regular_conv.weight, padding=1,
                               mask=2.0 * torch.sigmoid(module.modulator_conv(x)))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("tile_rows", (1, 2, 5, 13, 100))
def test_tiling_does_not_change_the_result(tile_rows):
    x, offset, weight, bias, mask = _case(2, 5, 6, 13, 10, 3)
    full = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, tile_rows=1000)
    tiled = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, tile_rows=tile_rows)
    torch.testing.assert_close(tiled, full, rtol=RTOL, atol=ATOL)


def test_writes_into_a_channel_slice_of_a_buffer():
    """``out`` may be a channel slice of a larger NCHW or channels-last buffer."""
    x, offset, weight, bias, mask = _case(2, 4, 6, 9, 8, 3)
    ref = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    for fmt in (torch.contiguous_format, torch.channels_last):
        buf = torch.zeros(2, 18, 9, 8).contiguous(memory_format=fmt)
        result = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask,
                               out=buf[:, 6:12], tile_rows=4)
        assert result.data_ptr() == buf[:, 6:12].data_ptr()
        torch.testing.assert_close(buf[:, 6:12], ref, rtol=RTOL, atol=ATOL)
        assert buf[:, :6].abs().max() == 0 and buf[:, 12:].abs().max() == 0


def test_writes_into_a_spatial_crop_of_a_buffer():
    """A destination whose rows are not one strided matrix (a spatial crop) gets a copy."""
    x, offset, weight, bias, mask = _case(2, 4, 6, 9, 8, 3)
    ref = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    for fmt in (torch.contiguous_format, torch.channels_last):
        buf = torch.zeros(2, 6, 12, 11).contiguous(memory_format=fmt)
        deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, out=buf[:, :, 2:11, 1:9],
                      tile_rows=4)
        torch.testing.assert_close(buf[:, :, 2:11, 1:9], ref, rtol=RTOL, atol=ATOL)
        buf[:, :, 2:11, 1:9] = 0
        assert buf.abs().max() == 0


def test_unfused_row_gather_matches_embedding_bag():
    """The gather fallback for devices without the fused kernel computes the same columns."""
    from birefnet_core.ops.deform_conv import _weighted_rows

    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 6, generator=g)
    index = torch.randint(0, 50, (40, 4), generator=g)
    weights = torch.rand(40, 4, generator=g)
    fused = _weighted_rows(table, index, weights, fused=True)
    torch.testing.assert_close(_weighted_rows(table, index, weights, fused=False), fused,
                               rtol=1e-6, atol=1e-6)
    ref = (table[index] * weights[..., None]).sum(1)
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-6)


def test_channels_last_input():
    x, offset, weight, bias, mask = _case(1, 8, 6, 10, 12, 3)
    ref = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    out = deform_conv2d(x.contiguous(memory_format=torch.channels_last), offset, weight, bias,
                        padding=1, mask=mask)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)


def test_rejects_unsupported_configurations():
    x, offset, weight, bias, mask = _case(1, 4, 5, 8, 8, 3)
    with pytest.raises(InputError, match="stride"):
        deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, stride=2)
    with pytest.raises(InputError, match="dilation"):
        deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, dilation=2)
    with pytest.raises(InputError, match="groups"):
        deform_conv2d(x, offset, weight[:, :2], bias, padding=1, mask=mask)
    with pytest.raises(InputError, match="offset"):  # two offset groups
        deform_conv2d(x, offset.repeat(1, 2, 1, 1), weight, bias, padding=1, mask=mask)
    with pytest.raises(InputError, match="mask"):
        deform_conv2d(x, offset, weight, bias, padding=1, mask=mask[:, :4])
    with pytest.raises(InputError, match="tile_rows"):
        deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, tile_rows=0)


def test_module_keeps_float64_and_runs_reduced_precision_in_fp32():
    """The exact module routes only fp16/bf16 inputs through fp32 (tests/test_inference.py
    covers bf16); float64 stays float64 end to end."""
    from birefnet_core.model.blocks import DeformableConv2d

    torch.manual_seed(0)
    module = DeformableConv2d(4, 8, 3, 1).double()
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    ref = tv_deform_conv2d(x, module.offset_conv(x), module.regular_conv.weight, padding=1,
                           mask=2.0 * torch.sigmoid(module.modulator_conv(x)))
    out = module(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_reduced_precision_samples_at_fp32_positions():
    """bf16 samples and GEMM, but positions in fp32: past pixel 256, bf16 positions would be
    off by whole pixels (spacing 2 there), fp32 ones are exact."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 3, 600, generator=g)
    weight = torch.randn(5, 4, 1, 1, generator=g) / 2
    offset = torch.zeros(1, 2, 3, 600)
    offset[:, 1] = 0.5  # every sample halfway between two pixels
    ref = tv_deform_conv2d(x, offset, weight)
    out = deform_conv2d(x.bfloat16(), offset.bfloat16(), weight)  # weight cast to bf16 inside
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs()
    assert err[..., 256:].max() <= 0.05 and err.max() <= 0.05  # bf16 rounding only
    unshifted = tv_deform_conv2d(x, torch.zeros_like(offset), weight)
    assert (ref - unshifted)[..., 256:].abs().max() > 0.5  # a misplaced sample would show
