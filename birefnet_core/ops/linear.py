"""``linear(x) [+ GELU] [+ residual]`` as one kernel where the CPU library can fuse it.

A float32 ``F.linear`` on the CPU first broadcasts the bias into the output, then runs the GEMM,
then every elementwise op that follows (GELU, the residual add) is another full pass over a
tensor that is up to four times the token width. oneDNN applies the bias, an exact (erf) GELU
or the addition of another tensor inside the GEMM's epilogue, while the tile is still in cache.
The Swin MLPs and projections are ~75 % of a fast Swin-L forward, so this is worth its own op.

The fused path is taken only for float32 CPU tensors outside autocast (where the result differs
from the unfused ops by summation order only); everything else (CUDA, reduced precision,
builds without oneDNN) runs the plain ops, which is the reference the tests compare against.
Whether the fast Swin stages call this op or the plain ones at all is measured per device,
dtype and shape (``linear`` in :mod:`birefnet_core.kernels`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear", "plain_linear"]


def _onednn_linear():
    """The (unary, binary) overloads, named explicitly: resolving them by trial from the packet
    would format the tensors into the rejected overload's error message on every call."""
    packet = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if not torch.backends.mkldnn.is_available() or packet is None:
        return None
    try:
        return packet.default, packet.binary
    except AttributeError:
        return None


_FUSED = _onednn_linear()


def _can_fuse(*tensors: torch.Tensor | None) -> bool:
    if _FUSED is None or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False  # torch.compile cannot trace the oneDNN op, and fuses the plain ones itself
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32
                             and t.is_contiguous()) for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then an exact GELU if ``gelu``, then ``+ residual``
    (a tensor of the output's shape) if given. ``gelu`` and ``residual`` are exclusive.

    >>> x, w, b = torch.randn(5, 4), torch.randn(3, 4), torch.randn(3)
    >>> r = torch.randn(5, 3)
    >>> torch.allclose(linear(x, w, b, residual=r), r + F.linear(x, w, b), atol=1e-5)
    True
    """
    if gelu and residual is not None:
        raise ValueError("linear() fuses either a GELU or a residual add, not both")
    out_shape = (*x.shape[:-1], weight.shape[0])
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"residual must be {out_shape}, got {tuple(residual.shape)}")
    if _can_fuse(x, weight, bias, residual):
        x2 = x.reshape(-1, x.shape[-1])
        unary, binary = _FUSED
        if residual is not None:
            y = binary(x2, residual.reshape(-1, out_shape[-1]), weight, bias, "add")
        else:
            y = unary(x2, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")
        return y.view(out_shape)
    return plain_linear(x, weight, bias, gelu=gelu, residual=residual)


def plain_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`linear` as separate plain ops (what the exact model runs)."""
    y = F.linear(x, weight, bias)
    if gelu:
        return F.gelu(y)
    if residual is None:
        return y
    # Under autocast ``y`` is reduced precision: the residual stream keeps its own (wider)
    # dtype, as ``residual + y`` does in the exact model.
    return y.add_(residual) if y.dtype == residual.dtype else residual + y
