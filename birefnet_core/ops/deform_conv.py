"""Modulated deformable convolution (DCNv2) as bilinear sampling plus one matrix product.

``torchvision.ops.deform_conv2d`` fills its im2col columns with a scalar, single-threaded loop on
the CPU. Here the ``k*k`` sampling points of a tile of output rows are stacked along the height
of one ``grid_sample`` call (vectorised and multi-threaded), scaled by the modulator in place and
reduced by one GEMM that writes straight into the output. Tiling over output rows bounds the
column memory. Same function as torchvision's op for stride 1, dilation 1 and one group (the
only configuration BiRefNet uses); other configurations are refused rather than approximated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["deform_conv2d", "DEFAULT_TILE_BYTES"]

DEFAULT_TILE_BYTES = 32 * 2**20  # columns per tile: bounded memory, few large GEMMs


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
    the image. ``tile_rows``: output rows per tile (default: ~32 MiB of columns per tile); the
    result does not depend on it. ``out``: an optional ``[B, O, Ho, Wo]`` destination (e.g. a
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

    # grid_sample with align_corners=True maps -1..1 onto pixel centres 0..size-1, which cannot
    # express a one-pixel side; a zero row/column beyond the edge changes no sample (torchvision
    # reads zeros there too) and makes the scale finite.
    if h == 1 or w == 1:
        input = F.pad(input, (0, int(w == 1), 0, int(h == 1)))
    hs, ws = input.shape[-2:]
    # grid_sample gathers all channels of a corner at once from a channels-last input (~2.5x
    # faster on the CPU); its output stays NCHW, i.e. the (c, i, j) x pixels column matrix.
    channels_last = input.is_contiguous(memory_format=torch.channels_last) and c > 1
    input = input.contiguous(memory_format=torch.channels_last)
    sy, sx = 2.0 / (hs - 1), 2.0 / (ws - 1)

    if tile_rows is None:
        row_bytes = b * c * k * wo * input.element_size()
        tile_rows = max(1, min(ho, DEFAULT_TILE_BYTES // max(row_bytes, 1)))
    elif tile_rows < 1:
        raise InputError(f"tile_rows must be >= 1, got {tile_rows}")

    dtype, device = input.dtype, input.device
    # Normalised grid_sample coordinate of every undeformed sampling point: [k, Ho, 1] for rows
    # (row - ph + i) and [k, 1, Wo] for columns (col - pw + j); offsets are added scaled.
    ki = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw)
    kj = torch.arange(kw, device=device, dtype=dtype).repeat(kh)
    base_y = ki[:, None, None] + (torch.arange(ho, device=device, dtype=dtype) - ph)[None, :, None]
    base_x = kj[:, None, None] + (torch.arange(wo, device=device, dtype=dtype) - pw)[None, None, :]
    base_y, base_x = base_y * sy - 1.0, base_x * sx - 1.0
    w2d = weight.reshape(o, c * k)
    offset = offset.view(b, k, 2, ho, wo)
    if out is None:
        out = torch.empty(b, o, ho, wo, dtype=dtype, device=device,
                          memory_format=torch.channels_last if channels_last
                          else torch.contiguous_format)
    elif tuple(out.shape) != (b, o, ho, wo) or out.dtype != dtype:
        raise InputError(f"out must be {(b, o, ho, wo)} of {dtype}, got {tuple(out.shape)} of "
                         f"{out.dtype}")
    bias_col = None if bias is None else bias.view(o, 1)

    for r0 in range(0, ho, tile_rows):
        r1 = min(ho, r0 + tile_rows)
        n = r1 - r0
        grid = torch.empty(b, k, n, wo, 2, dtype=dtype, device=device)  # (x, y) pairs
        torch.add(base_x, offset[:, :, 1, r0:r1], alpha=sx, out=grid[..., 0])
        torch.add(base_y[:, r0:r1], offset[:, :, 0, r0:r1], alpha=sy, out=grid[..., 1])
        grid = grid.view(b, k * n, wo, 2)  # the k points stacked along the grid's height
        cols = F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True)  # [B, C, k*n, Wo]
        if mask is not None:
            cols = cols.view(b, c, k, n, wo).mul_(mask[:, None, :, r0:r1])
        cols = cols.view(b, c * k, n * wo)
        for i in range(b):
            dst = out[i, :, r0:r1]
            try:
                flat = dst.view(o, n * wo)  # NCHW and channels-last rows are one strided matrix
            except RuntimeError:
                flat = None
            if flat is None:
                y = (torch.mm(w2d, cols[i]) if bias_col is None
                     else torch.addmm(bias_col, w2d, cols[i]))
                dst.copy_(y.view(o, n, wo))
            elif bias_col is None:
                flat.addmm_(w2d, cols[i], beta=0)  # beta=0: the destination is not read
            else:
                # The bias goes in tile by tile, just before the GEMM reads it back from cache.
                flat.copy_(bias_col.expand(o, n * wo)).addmm_(w2d, cols[i])
    return out
