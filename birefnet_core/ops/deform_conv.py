"""Modulated deformable convolution (DCNv2) as a weighted row gather plus one matrix product.

``torchvision.ops.deform_conv2d`` fills its im2col columns with a scalar, single-threaded loop on
the CPU. Here the input is read as a table of channels-last pixel rows, and each of the ``k*k``
sampling points of a pixel is one "bag" of the four rows around it, summed with the bilinear
weights times the modulator: a single ``embedding_bag`` call per tile of output rows produces
the im2col columns in pixel-major order (``[pixels, k*k*C]``), already modulated, and one GEMM
with the kernel in ``(i, j, c)`` order writes the channels-last output straight into its
destination. That is about twice as fast as stacking the points into one ``grid_sample``
(whose CPU kernel gathers channel by channel) and then scaling by the modulator. Tiling over
output rows bounds the column memory. Same function as torchvision's op for stride 1,
dilation 1 and one group (the only configuration BiRefNet uses); other configurations are
refused rather than approximated.

It needs no torchvision kernel, so it also stands in for torchvision's op where that one is
missing or broken (:func:`deform_conv2d_for`).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["deform_conv2d", "deform_conv2d_for", "DEFAULT_TILE_BYTES", "DEFAULT_GPU_TILE_BYTES"]

logger = logging.getLogger(__name__)

# Columns per tile: bounded memory, few large GEMMs. On the CPU, tiles that stay in the
# allocator's reused memory (larger ones are fresh, page-faulted mappings there); on a GPU,
# few tiles, since each costs ~30 kernel launches.
DEFAULT_TILE_BYTES = 32 * 2**20
DEFAULT_GPU_TILE_BYTES = 512 * 2**20
_POINT_OVERHEAD_BYTES = 96  # per sampling point: corner indices, weights and temporaries


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise InputError(f"{name} must be an int or a pair of ints, got {value!r}")


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, *, padding: int | tuple[int, int] = 0,
                  mask: torch.Tensor | None = None, stride: int | tuple[int, int] = 1,
                  dilation: int | tuple[int, int] = 1, tile_rows: int | None = None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Same result as ``torchvision.ops.deform_conv2d`` (stride 1, dilation 1, one group).

    ``input`` ``[B, C, H, W]``; ``weight`` ``[O, C, kh, kw]``; ``offset`` ``[B, 2*kh*kw, Ho, Wo]``
    as (dy, dx) pairs per kernel point in row-major order; ``mask`` ``[B, kh*kw, Ho, Wo]`` or None
    (all ones); ``Ho = H + 2*ph - kh + 1``. A sample at ``(y, x)`` is bilinear with zeros outside
    the image. Samples, GEMM and output are in the input's dtype (weight and bias are cast to
    it: fp16/bf16 inputs give a reduced-precision op); sampling positions and bilinear weights
    are computed in at least fp32 from the offsets and mask, whatever their dtype.
    ``tile_rows``: output rows per tile (default: ~32 MiB of columns per tile on the CPU,
    ~512 MiB elsewhere); the result does not depend on it. ``out``: an optional ``[B, O, Ho, Wo]`` destination (e.g. a
    channel slice of a concatenation buffer, NCHW or channels-last) written by the GEMM directly;
    otherwise the result has the input's memory format.

    >>> x = torch.randn(1, 4, 8, 8); w = torch.randn(5, 4, 3, 3)
    >>> off = torch.zeros(1, 18, 8, 8); m = torch.ones(1, 9, 8, 8)
    >>> y = deform_conv2d(x, off, w, padding=1, mask=m)
    >>> torch.allclose(y, F.conv2d(x, w, padding=1), atol=1e-5)
    True
    """
    if _pair(stride, "stride") != (1, 1) or _pair(dilation, "dilation") != (1, 1):
        raise InputError(f"only stride 1 and dilation 1 are supported, got stride={stride!r}, "
                         f"dilation={dilation!r}; use torchvision.ops.deform_conv2d for others")
    if input.ndim != 4 or weight.ndim != 4:
        raise InputError(f"expected a 4-D input and weight, got {tuple(input.shape)} and "
                         f"{tuple(weight.shape)}")
    b, c, h, w = input.shape
    o, cw, kh, kw = weight.shape
    if cw != c:
        raise InputError(f"weight expects {cw} input channels (groups are not supported), "
                         f"the input has {c}")
    ph, pw = _pair(padding, "padding")
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    k = kh * kw
    if ho <= 0 or wo <= 0:
        raise InputError(f"kernel {kh}x{kw} with padding {ph},{pw} does not fit a {h}x{w} input")
    if tuple(offset.shape) != (b, 2 * k, ho, wo):
        raise InputError(f"offset must be {(b, 2 * k, ho, wo)} (one offset group), "
                         f"got {tuple(offset.shape)}")
    if mask is not None and tuple(mask.shape) != (b, k, ho, wo):
        raise InputError(f"mask must be {(b, k, ho, wo)}, got {tuple(mask.shape)}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise InputError(f"bias must be ({o},), got {tuple(bias.shape)}")

    dtype, device = input.dtype, input.device
    if out is None:
        out = torch.empty(b, o, ho, wo, dtype=dtype, device=device,
                          memory_format=torch.channels_last
                          if input.is_contiguous(memory_format=torch.channels_last) and c > 1
                          else torch.contiguous_format)
    elif tuple(out.shape) != (b, o, ho, wo) or out.dtype != dtype:
        raise InputError(f"out must be {(b, o, ho, wo)} of {dtype}, got {tuple(out.shape)} of "
                         f"{out.dtype}")
    if tile_rows is None:
        row_bytes = b * k * wo * (c * input.element_size() + _POINT_OVERHEAD_BYTES)
        budget = DEFAULT_TILE_BYTES if device.type == "cpu" else DEFAULT_GPU_TILE_BYTES
        tile_rows = max(1, min(ho, budget // row_bytes))
    elif tile_rows < 1:
        raise InputError(f"tile_rows must be >= 1, got {tile_rows}")

    table = input.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view if channels-last
    kernel = weight.to(dtype).permute(0, 2, 3, 1).reshape(o, k * c).t()  # [(i, j, c), O]
    bias = None if bias is None else bias.to(dtype)
    # Positions in at least fp32 whatever the sample dtype: bf16 cannot address pixel 257.
    pos = torch.promote_types(offset.dtype, torch.float32)
    # Undeformed sampling position of kernel point (i, j) for output row r / column q:
    # (r - ph + i, q - pw + j); indexed [row, 1, point] and [column, point].
    ki = torch.arange(kh, device=device, dtype=pos).repeat_interleave(kw)
    kj = torch.arange(kw, device=device, dtype=pos).repeat(kh)
    base_y = (torch.arange(ho, device=device, dtype=pos) - ph)[:, None, None] + ki
    base_x = (torch.arange(wo, device=device, dtype=pos) - pw)[:, None] + kj
    offset = offset.view(b, k, 2, ho, wo).permute(0, 3, 4, 1, 2)  # [B, Ho, Wo, k, (dy, dx)]
    mask = None if mask is None else mask.permute(0, 2, 3, 1)  # [B, Ho, Wo, k]
    first_row = (torch.arange(b, device=device) * (h * w)).view(b, 1, 1, 1)

    for r0 in range(0, ho, tile_rows):
        r1 = min(ho, r0 + tile_rows)
        n = r1 - r0
        index, weights = _bilinear_corners(
            offset[:, r0:r1, :, :, 0] + base_y[r0:r1], offset[:, r0:r1, :, :, 1] + base_x,
            h, w, None if mask is None else mask[:, r0:r1], first_row)
        cols = _weighted_rows(table, index, weights.to(dtype))
        cols = cols.view(b, n * wo, k * c)  # pixel-major im2col columns, modulated
        for i in range(b):
            dst = out[i, :, r0:r1]
            try:
                # [pixels, O]: row-major for a channels-last destination (also a channel
                # slice of one), column-major for NCHW; the GEMM writes it in place.
                flat = dst.view(o, n * wo).t()
            except RuntimeError:
                flat = None
            if flat is None:
                y = torch.mm(cols[i], kernel)
                dst.copy_((y if bias is None else y.add_(bias)).t().view(o, n, wo))
            elif bias is None:
                flat.addmm_(cols[i], kernel, beta=0)  # beta=0: the destination is not read
            else:
                # The bias goes in tile by tile, just before the GEMM reads it back from cache.
                flat.copy_(bias.expand(n * wo, o)).addmm_(cols[i], kernel)
    return out


def _weighted_rows(table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor,
                   fused: bool | None = None) -> torch.Tensor:
    """``sum_j weights[p, j] * table[index[p, j]]`` -> ``[P, C]``: one fused ``embedding_bag``
    on the CPU and CUDA; elsewhere (e.g. MPS, whose kernels vary by release) a plain gather
    and reduction of the same value. ``fused`` overrides the choice (tests)."""
    if fused is None:
        fused = table.device.type in ("cpu", "cuda")
    if fused:
        return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")
    return torch.einsum("pj,pjc->pc", weights, table[index])


def _bilinear_corners(y: torch.Tensor, x: torch.Tensor, h: int, w: int,
                      mask: torch.Tensor | None, first_row: torch.Tensor):
    """Table rows and weights of the four pixels around each sampling position ``(y, x)``
    (``[B, ...]``, in pixels): ``[P, 4]`` each, P = every position in order. A corner outside
    the image gets weight 0 (torchvision reads zeros there); ``mask`` scales all four. A
    non-finite position samples nothing, as in torchvision (an infinite or NaN offset from an
    overflowing fp16 predictor must not become an out-of-range index)."""
    y, x = y.nan_to_num_(nan=-2.0), x.nan_to_num_(nan=-2.0)
    y0, x0 = y.floor(), x.floor()
    ly, lx = y - y0, x - x0
    wy0 = (1.0 - ly).mul_((y0 >= 0) & (y0 <= h - 1))
    wy1 = ly.mul_((y0 >= -1) & (y0 <= h - 2))
    wx0 = (1.0 - lx).mul_((x0 >= 0) & (x0 <= w - 1))
    wx1 = lx.mul_((x0 >= -1) & (x0 <= w - 2))
    if mask is not None:
        wy0.mul_(mask)
        wy1.mul_(mask)
    row0 = y0.clamp(0, h - 1).long().mul_(w).add_(first_row)
    row1 = y0.add_(1).clamp_(0, h - 1).long().mul_(w).add_(first_row)
    col0 = x0.clamp(0, w - 1).long()
    col1 = x0.add_(1).clamp_(0, w - 1).long()
    index = torch.stack((row0 + col0, row0 + col1, row1 + col0, row1 + col1), -1)
    weights = torch.stack((wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1), -1)
    return index.view(-1, 4), weights.view(-1, 4)


# -- which op the exact model runs -------------------------------------------------------------

_OPS: dict[tuple[str, int | None], Callable[..., torch.Tensor]] = {}  # per device, on first use
_OPS_LOCK = threading.Lock()


def deform_conv2d_for(device: torch.device | str) -> Callable[..., torch.Tensor]:
    """The deformable convolution the exact model runs on ``device``: torchvision's, which
    defines the function, where it works there; otherwise :func:`deform_conv2d` (the same
    function to 1e-5), with a one-line note in the log.

    Decided on first use per device and cached, by running torchvision's op once on a tiny
    input: builds whose torchvision lacks the op for a backend fail only when it is called
    there ("Could not run 'torchvision::deform_conv2d' with arguments from the 'CUDA' backend"
    on some CUDA 13 builds of torch 2.10; no MPS kernel before torchvision 0.23, which has one),
    and a torchvision built for another torch fails to import.
    """
    device = torch.device(device)
    key = (device.type, device.index)
    op = _OPS.get(key)
    if op is None:
        with _OPS_LOCK:
            op = _OPS.get(key)
            if op is None:
                op = _OPS[key] = _choose_op(device)
    return op


def _choose_op(device: torch.device) -> Callable[..., torch.Tensor]:
    try:
        from torchvision.ops import deform_conv2d as torchvision_op
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError from a mismatched build
        problem = f"torchvision's deform_conv2d cannot be imported ({_first_line(exc)})"
    else:
        problem = _torchvision_problem(torchvision_op, device)
        if problem is None:
            return torchvision_op
    logger.warning("BiRefNet: %s; the exact model uses the pack's own deformable convolution "
                   "on %s instead (the same result to 1e-5).", problem, device)
    return deform_conv2d


def _torchvision_problem(op: Callable[..., torch.Tensor], device: torch.device) -> str | None:
    """Why torchvision's ``op`` cannot serve on ``device``, or None: with zero offsets and a
    unit mask it must compute the plain convolution of a 4x4 input."""
    x = torch.arange(16.0).view(1, 1, 4, 4)
    weight = torch.linspace(-1.0, 1.0, 9).view(1, 1, 3, 3)
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            y = op(x.to(device), torch.zeros(1, 18, 4, 4, device=device), weight.to(device),
                   padding=1, mask=torch.ones(1, 9, 4, 4, device=device)).float().cpu()
            ref = F.conv2d(x, weight, padding=1)
    except RuntimeError as exc:  # NotImplementedError included
        return f"torchvision's deform_conv2d does not run on {device.type} ({_first_line(exc)})"
    if not torch.allclose(y, ref, atol=1e-3):
        return f"torchvision's deform_conv2d computes wrong values on {device.type}"
    return None


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
