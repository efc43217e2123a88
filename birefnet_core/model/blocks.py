"""Convolutional building blocks of the BiRefNet squeeze module and decoder.

Attribute names are the weight contract (they match the official state-dict keys); whether a
block has BatchNorm is decided by the caller through ``norm_layer`` (``None`` -> ``nn.Identity``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import deform_conv2d as fast_deform_conv2d
from ..ops import deform_conv2d_for
from ..ops.linear import linear

NormLayer = Optional[Callable[[int], nn.Module]]


def make_norm(norm_layer: NormLayer, channels: int) -> nn.Module:
    return norm_layer(channels) if norm_layer is not None else nn.Identity()


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the decoder's convention); a no-op when the
    size already matches, which is exactly what the interpolation would compute."""
    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class DeformableConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2): offsets and a 0..2 modulator are predicted from
    the input by two plain convolutions of the same kernel.

    The exact path runs torchvision's op where it works on the input's device, and the pack's
    own otherwise (:func:`birefnet_core.ops.deform_conv2d_for`: decided once per device).

    ``fast`` (set by :func:`birefnet_core.optimize.optimize_for_inference`, together with
    ``offset_modulator_conv``, the two predictors fused into one convolution) switches to
    :func:`birefnet_core.ops.deform_conv2d`, the same function computed faster; under autocast
    it runs in the reduced dtype unless ``fp32_under_autocast``.
    """

    fast: bool = False
    fp32_under_autocast: bool = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        k2 = kernel_size * kernel_size
        self.padding = padding
        self.offset_conv = nn.Conv2d(in_channels, 2 * k2, kernel_size, 1, padding, bias=True)
        self.modulator_conv = nn.Conv2d(in_channels, k2, kernel_size, 1, padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, padding, bias=False)

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``out``: optional destination (e.g. a channel slice of the caller's buffer)."""
        if self.fast:
            predicted = self.offset_modulator_conv(x)
            k2 = predicted.shape[1] // 3
            offset, modulator = predicted[:, :2 * k2], torch.sigmoid(predicted[:, 2 * k2:]) * 2.0
            op = fast_deform_conv2d
        else:
            # torchvision's CPU kernel reads out of bounds at a NaN offset (a segfault, e.g.
            # after an fp16 overflow); -inf is a position that samples nothing, as NaN should.
            offset = torch.nan_to_num(self.offset_conv(x), nan=float("-inf"),
                                      posinf=float("inf"), neginf=float("-inf"))
            modulator = 2.0 * torch.sigmoid(self.modulator_conv(x))
            op = deform_conv2d_for(x.device)
        weight, bias = self.regular_conv.weight, self.regular_conv.bias
        reduced = bool({x.dtype, offset.dtype} & {torch.float16, torch.bfloat16})
        if self.fast and not (reduced and self.fp32_under_autocast):
            # In x's dtype, also a reduced one: the op computes the sampling positions in fp32
            # (bf16 cannot address pixels past 256); accuracy in benchmarks/RESULTS.md.
            with torch.autocast(x.device.type, enabled=False):
                return op(x, offset, weight, bias, padding=self.padding, mask=modulator, out=out)
        if reduced and (op is fast_deform_conv2d or x.device.type != "cuda"):
            # Only torchvision's CUDA kernel has an autocast rule (it upcasts); run any other op
            # in fp32 the same way and hand back the caller's dtype.
            with torch.autocast(x.device.type, enabled=False):
                y = op(x.float(), offset.float(), weight.float(),
                       None if bias is None else bias.float(), padding=self.padding,
                       mask=modulator.float())
            y = y.to(x.dtype)
        else:
            y = op(x, offset, weight, bias, padding=self.padding, mask=modulator)
        return y if out is None else out.copy_(y)


class _ASPPBranch(nn.Module):
    def __init__(self, in_channels: int, planes: int, kernel_size: int, norm_layer: NormLayer):
        super().__init__()
        self.atrous_conv = DeformableConv2d(in_channels, planes, kernel_size, kernel_size // 2)
        self.bn = make_norm(norm_layer, planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPPDeformable(nn.Module):
    """ASPP with deformable branches: a 1x1 branch, one branch per kernel in ``kernel_sizes``
    (``(1, 3, 7)`` for the current decoder, ``(3,)`` for the legacy one) and a global-pool
    branch, fused by a 1x1 convolution.

    ``fast`` (set by :func:`birefnet_core.optimize.optimize_for_inference` once the norms are
    folded away and ``conv1`` is split into ``conv1`` over the spatial branches and
    ``conv1_pool`` over the pooled one): the branches write straight into one buffer, and the
    spatially constant pooled branch enters ``conv1`` as a per-image bias, so neither its
    broadcast nor the concatenation is materialised.
    """

    fast: bool = False

    def __init__(self, in_channels: int, kernel_sizes: Sequence[int] = (1, 3, 7),
                 norm_layer: NormLayer = None, planes: int = 256):
        super().__init__()
        self.aspp1 = _ASPPBranch(in_channels, planes, 1, norm_layer)
        self.aspp_deforms = nn.ModuleList(
            _ASPPBranch(in_channels, planes, k, norm_layer) for k in kernel_sizes
        )
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Conv2d(in_channels, planes, 1, bias=False),
            make_norm(norm_layer, planes),
            nn.ReLU(inplace=True),
        )
        self.conv1 = nn.Conv2d(planes * (2 + len(kernel_sizes)), in_channels, 1, bias=False)
        self.bn1 = make_norm(norm_layer, in_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self._forward_fast(x)
        branches = [self.aspp1(x)]
        branches += [branch(x) for branch in self.aspp_deforms]
        # Bilinear upsampling of a 1x1 map is a constant: broadcast instead of interpolating.
        branches.append(self.global_avg_pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1))))

    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        spatial = [self.aspp1, *self.aspp_deforms]
        planes = self.conv1.in_channels // len(spatial)
        b, _, h, w = x.shape
        # Channels-last: each branch's GEMM writes its slice as a strided matrix, and the 1x1
        # fusing conv reads it ~3x faster than NCHW on the CPU.
        buf = torch.empty(b, planes * len(spatial), h, w, dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        for i, branch in enumerate(spatial):
            branch.atrous_conv(x, out=buf[:, i * planes:(i + 1) * planes])
        buf.relu_()  # the branches' (folded) norms are identities
        pooled = self.global_avg_pool(x).flatten(1)  # [B, planes]
        bias = F.linear(pooled, self.conv1_pool.weight, self.conv1_pool.bias)  # [B, C]
        if b == 1:
            return self.relu(F.conv2d(buf, self.conv1.weight, bias[0]))
        return self.relu(self.conv1(buf).add_(bias[:, :, None, None]))


class BasicDecBlk(nn.Module):
    """conv3x3 -> norm -> ReLU -> deformable ASPP -> conv3x3 -> norm (64 inner channels)."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_sizes: Sequence[int],
                 norm_layer: NormLayer, inter_channels: int = 64):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, inter_channels, 3, 1, 1)
        self.relu_in = nn.ReLU(inplace=True)
        self.dec_att = ASPPDeformable(inter_channels, kernel_sizes, norm_layer)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, 1, 1)
        self.bn_in = make_norm(norm_layer, inter_channels)
        self.bn_out = make_norm(norm_layer, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._after_conv_in(self.conv_in(x))

    def forward_split(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """``forward(cat(x, extra))`` without materialising the concatenation: ``conv_in``
        split by input channels into ``conv_in_x`` (with the bias) and ``conv_in_extra`` (set
        by :func:`birefnet_core.optimize.optimize_for_inference`)."""
        return self._after_conv_in(self.conv_in_x(x).add_(self.conv_in_extra(extra)))

    def _after_conv_in(self, y: torch.Tensor) -> torch.Tensor:
        y = self.dec_att(self.relu_in(self.bn_in(y)))
        return self.bn_out(self.conv_out(y))


class BasicLatBlk(nn.Module):
    """Lateral 1x1 projection of an encoder feature."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor, add: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``conv(x)``, plus ``add`` if given. For channels-last inputs the 1x1 convolution is a
        per-pixel linear map of contiguous rows and runs as one linear op with the addition
        fused (:func:`birefnet_core.ops.linear`)."""
        cl = torch.channels_last
        if add is not None and x.is_contiguous(memory_format=cl) and add.is_contiguous(
                memory_format=cl) and add.shape[1] == self.conv.out_channels:
            y = linear(x.permute(0, 2, 3, 1), self.conv.weight.flatten(1), self.conv.bias,
                       residual=add.permute(0, 2, 3, 1))
            return y.permute(0, 3, 1, 2)
        y = self.conv(x)
        return y if add is None else y + add


class SimpleConvs(nn.Module):
    """Two 3x3 convolutions without activation: embeds the stacked image patches."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, 1, 1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))
