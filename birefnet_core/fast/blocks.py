"""Fast forms of the decoder's building blocks, each built from an exact module by
``from_exact`` (the same function; weights fused or split, never retrained).

- :class:`FastConv2d`: a convolution run directly or through the FFT, as
  :mod:`birefnet_core.kernels` measured faster for the device and shape.
- :class:`FastDeformableConv2d`: offset and modulator predictors fused into one
  :class:`FastConv2d`; the deformable convolution itself is the kernel
  :mod:`birefnet_core.kernels` chose for the device (the pack's gather + GEMM op, or
  torchvision's).
- :class:`FastASPPDeformable`: the branches write straight into one channels-last buffer (on a
  CPU in float32 one branch at a time, the fusing convolution accumulated branch by branch) and
  the spatially constant pooled branch enters the fusing 1x1 convolution as a per-image bias, so
  neither its broadcast nor the concatenation is materialised (needs the norms folded).
- :class:`FastDecBlk`: ``conv_in`` over ``cat(h, image_features)`` split by input channels, so
  the concatenation is never materialised.
- :class:`FastLatBlk`: the lateral 1x1 convolution with the decoder's addition fused into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..model.blocks import ASPPDeformable, BasicDecBlk, BasicLatBlk, DeformableConv2d
from ..ops.fft_conv import conv_spectrum
from ..ops.linear import linear

__all__ = ["FastConv2d", "FastDeformableConv2d", "FastASPPDeformable", "FastDecBlk", "FastLatBlk"]

_REDUCED = (torch.float16, torch.bfloat16)


def _frozen(module: nn.Module) -> nn.Module:
    return module.requires_grad_(False)


class FastConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state dict) that runs directly or through the FFT
    (:mod:`birefnet_core.ops.fft_conv`), whichever :func:`birefnet_core.kernels.conv2d_for`
    measured faster for the device, dtype and shape. The FFT form keeps the kernels' spectra
    for the last device and dtype it ran in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._spectrum: tuple | None = None

    @classmethod
    @torch.no_grad()
    def from_exact(cls, exact: nn.Conv2d) -> "FastConv2d":
        fast = cls(exact.in_channels, exact.out_channels, exact.kernel_size, exact.stride,
                   exact.padding, exact.dilation, exact.groups, exact.bias is not None,
                   exact.padding_mode, device=exact.weight.device, dtype=exact.weight.dtype)
        fast.load_state_dict(exact.state_dict())
        return _frozen(fast)

    @property
    def fft_applies(self) -> bool:
        """Stride 1, dilation 1, one group, an odd square kernel and zero "same" padding: the
        convolutions :func:`~birefnet_core.ops.fft_conv.fft_conv2d` computes."""
        k = self.kernel_size[0]
        return (self.kernel_size == (k, k) and k % 2 == 1 and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding == (k // 2,) * 2
                and self.padding_mode == "zeros")

    @property
    def has_spectrum(self) -> bool:
        return self._spectrum is not None

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """The kernels' spectra (:func:`~birefnet_core.ops.fft_conv.conv_spectrum`) on ``x``'s
        device and dtype, built from the weight at first use there (like every fast module's
        fused weights: a weight changed in place afterwards needs :meth:`drop_spectrum`)."""
        key = (x.device, x.dtype, self.weight.data_ptr())
        if self._spectrum is None or self._spectrum[0] != key:
            self._spectrum = None  # free the old one first
            with torch.no_grad():
                self._spectrum = (key, conv_spectrum(self.weight.to(x.device, x.dtype)))
        return self._spectrum[1]

    def drop_spectrum(self) -> None:
        self._spectrum = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.conv2d_for(self, x)(self, x)


class FastDeformableConv2d(nn.Module):
    """:class:`~birefnet_core.model.blocks.DeformableConv2d` with its two predictors fused into
    ``offset_modulator_conv`` (a :class:`FastConv2d`: offsets in the first ``2k²`` channels, the
    modulator in the last ``k²``).

    The deformable convolution is the implementation :func:`birefnet_core.kernels.select`
    measured fastest for the device, dtype and shape (``deform_conv``: the pack's gather + GEMM
    op or torchvision's). Precision is fixed at construction: under autocast the pack's op runs
    in the input's reduced dtype (sampling positions in fp32; accuracy in
    ``benchmarks/RESULTS.md``), or in fp32 like the exact module if ``fp32_under_autocast``.
    """

    def __init__(self, offset_modulator_conv: nn.Conv2d, regular_conv: nn.Conv2d, padding: int,
                 *, fp32_under_autocast: bool = False):
        super().__init__()
        self.padding = padding
        self.fp32_under_autocast = fp32_under_autocast
        self.offset_modulator_conv = offset_modulator_conv
        self.regular_conv = regular_conv

    @classmethod
    @torch.no_grad()
    def from_exact(cls, exact: DeformableConv2d, *,
                   fp32_under_autocast: bool = False) -> "FastDeformableConv2d":
        off, mod = exact.offset_conv, exact.modulator_conv
        fused = FastConv2d(off.in_channels, off.out_channels + mod.out_channels,
                           off.kernel_size, off.stride, off.padding, bias=True,
                           device=off.weight.device, dtype=off.weight.dtype)
        fused.weight.copy_(torch.cat((off.weight, mod.weight)))
        fused.bias.copy_(torch.cat((off.bias, mod.bias)))
        return cls(_frozen(fused), exact.regular_conv, exact.padding,
                   fp32_under_autocast=fp32_under_autocast)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: optional destination (e.g. a channel slice of the caller's buffer)."""
        predicted = self.offset_modulator_conv(x)
        k2 = predicted.shape[1] // 3
        offset, modulator = predicted[:, :2 * k2], torch.sigmoid(predicted[:, 2 * k2:]) * 2.0
        weight, bias = self.regular_conv.weight, self.regular_conv.bias
        with torch.autocast(x.device.type, enabled=False):
            if self.fp32_under_autocast and (x.dtype in _REDUCED or offset.dtype in _REDUCED):
                args = (x.float(), offset.float(), weight.float(),
                        None if bias is None else bias.float())
                mask = modulator.float()
                op = kernels.deform_conv_for(*args, self.padding, mask)
                y = op(*args, padding=self.padding, mask=mask).to(x.dtype)
                return y if out is None else out.copy_(y)
            # In x's dtype, also a reduced one (the pack's kernel computes the positions in fp32;
            # torchvision's computes in fp32 as the exact model does).
            op = kernels.deform_conv_for(x, offset, weight, bias, self.padding, modulator)
            return op(x, offset, weight, bias, padding=self.padding, mask=modulator, out=out)


class FastASPPDeformable(nn.Module):
    """:class:`~birefnet_core.model.blocks.ASPPDeformable` whose norms are folded away
    (identities): ``branches`` (the 1x1 branch, then the deformable ones, as
    :class:`FastDeformableConv2d`) write into one buffer; ``conv1`` is the fusing convolution's
    part over them and ``conv1_pool`` its part over the pooled branch, a per-image bias."""

    def __init__(self, branches: nn.ModuleList, global_avg_pool: nn.Sequential, conv1: nn.Conv2d,
                 conv1_pool: nn.Linear):
        super().__init__()
        self.branches = branches
        self.global_avg_pool = global_avg_pool
        self.conv1 = conv1
        self.conv1_pool = conv1_pool
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def can_convert(exact: ASPPDeformable) -> bool:
        """Only once every norm is an identity (folded): the buffer path applies none."""
        norms = [exact.bn1, exact.global_avg_pool[2], exact.aspp1.bn,
                 *(branch.bn for branch in exact.aspp_deforms)]
        return all(isinstance(n, nn.Identity) for n in norms)

    @classmethod
    @torch.no_grad()
    def from_exact(cls, exact: ASPPDeformable, *,
                   fp32_under_autocast: bool = False) -> "FastASPPDeformable":
        if not cls.can_convert(exact):
            raise ValueError("fold the ASPP's BatchNorms first (optimize.fold_batchnorms)")
        branches = nn.ModuleList()
        for branch in (exact.aspp1, *exact.aspp_deforms):
            dcn = branch.atrous_conv
            if not isinstance(dcn, FastDeformableConv2d):
                dcn = FastDeformableConv2d.from_exact(dcn, fp32_under_autocast=fp32_under_autocast)
            branches.append(dcn)
        conv = exact.conv1
        planes = exact.global_avg_pool[1].out_channels
        spatial = conv.in_channels - planes
        weight = conv.weight.flatten(1)
        main = nn.Conv2d(spatial, conv.out_channels, 1, bias=False, device=weight.device,
                         dtype=weight.dtype)
        main.weight.copy_(weight[:, :spatial, None, None])
        pool = nn.Linear(planes, conv.out_channels, bias=True, device=weight.device,
                         dtype=weight.dtype)
        pool.weight.copy_(weight[:, spatial:])
        if conv.bias is not None:
            pool.bias.copy_(conv.bias)
        else:
            pool.bias.zero_()
        return cls(branches, exact.global_avg_pool, _frozen(main), _frozen(pool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = self.conv1.in_channels // len(self.branches)
        b, _, h, w = x.shape
        pooled = self.global_avg_pool(x).flatten(1)  # [B, planes]
        bias = F.linear(pooled, self.conv1_pool.weight, self.conv1_pool.bias)  # [B, C]
        if x.device.type == "cpu" and kernels._compute_dtype(x) == torch.float32:
            return self.relu(self._fused_branch_by_branch(x, planes, bias))
        # Channels-last: each branch's GEMM writes its slice as a strided matrix, and the 1x1
        # fusing conv reads it ~3x faster than NCHW on the CPU.
        buf = torch.empty(b, planes * len(self.branches), h, w, dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        for i, dcn in enumerate(self.branches):
            dcn(x, out=buf[:, i * planes:(i + 1) * planes])
        buf.relu_()  # the branches' (folded) norms are identities
        if b == 1:
            return self.relu(F.conv2d(buf, self.conv1.weight, bias[0]))
        return self.relu(self.conv1(buf).add_(bias[:, :, None, None]))

    def _fused_branch_by_branch(self, x: torch.Tensor, planes: int,
                                bias: torch.Tensor) -> torch.Tensor:
        """The fusing 1x1 convolution accumulated one branch at a time (CPU, float32): each
        branch is written to one reused ``planes``-channel buffer, and its part of the
        convolution is a linear op that adds the running sum in its epilogue. A quarter of the
        all-branch buffer (256 MiB at 256² for lite), which is a fresh, page-faulted mapping on
        every call: 4-8 % faster at 128² and 256² (``benchmarks/RESULTS.md``)."""
        b, _, h, w = x.shape
        buf = torch.empty(b, planes, h, w, dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        rows = buf.permute(0, 2, 3, 1)  # [B, H, W, planes], contiguous
        weight = self.conv1.weight.flatten(1)
        out = None
        for i, dcn in enumerate(self.branches):
            dcn(x, out=buf)
            buf.relu_()  # the branches' (folded) norms are identities
            part = weight[:, i * planes:(i + 1) * planes].contiguous()
            out = (linear(rows, part, bias[0] if b == 1 else None) if out is None else
                   linear(rows, part, residual=out))
        out = out.permute(0, 3, 1, 2)  # [B, C, H, W], channels-last
        return out if b == 1 else out.add_(bias[:, :, None, None])


class FastDecBlk(nn.Module):
    """:class:`~birefnet_core.model.blocks.BasicDecBlk` applied to ``cat(x, extra)`` without
    materialising the concatenation: ``conv_in`` split by input channels into ``conv_in_x``
    (with the bias) and ``conv_in_extra`` (the last ``extra_channels``)."""

    def __init__(self, conv_in_x: nn.Conv2d, conv_in_extra: nn.Conv2d, exact: BasicDecBlk):
        super().__init__()
        self.conv_in_x, self.conv_in_extra = conv_in_x, conv_in_extra
        self.bn_in, self.relu_in, self.dec_att = exact.bn_in, exact.relu_in, exact.dec_att
        self.conv_out, self.bn_out = exact.conv_out, exact.bn_out

    @classmethod
    @torch.no_grad()
    def from_exact(cls, exact: BasicDecBlk, extra_channels: int) -> "FastDecBlk":
        conv = exact.conv_in
        split = conv.in_channels - extra_channels
        parts = []
        for lo, hi, bias in ((0, split, conv.bias is not None), (split, conv.in_channels, False)):
            part = nn.Conv2d(hi - lo, conv.out_channels, conv.kernel_size, conv.stride,
                             conv.padding, bias=bias, device=conv.weight.device,
                             dtype=conv.weight.dtype)
            part.weight.copy_(conv.weight[:, lo:hi])
            if bias:
                part.bias.copy_(conv.bias)
            parts.append(_frozen(part))
        return cls(*parts, exact)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        y = self.conv_in_x(x).add_(self.conv_in_extra(extra))
        y = self.dec_att(self.relu_in(self.bn_in(y)))
        return self.bn_out(self.conv_out(y))


class FastLatBlk(nn.Module):
    """:class:`~birefnet_core.model.blocks.BasicLatBlk` plus an addition: ``conv(x) + add``.
    For channels-last inputs the 1x1 convolution is a per-pixel linear map of contiguous rows
    and runs as one linear op with the addition fused (:func:`birefnet_core.ops.linear`)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    @classmethod
    def from_exact(cls, exact: BasicLatBlk) -> "FastLatBlk":
        return cls(exact.conv)

    def forward(self, x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        cl = torch.channels_last
        if x.is_contiguous(memory_format=cl) and add.is_contiguous(memory_format=cl):
            y = linear(x.permute(0, 2, 3, 1), self.conv.weight.flatten(1), self.conv.bias,
                       residual=add.permute(0, 2, 3, 1))
            return y.permute(0, 3, 1, 2)
        return self.conv(x) + add
