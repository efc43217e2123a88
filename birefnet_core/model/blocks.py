"""Convolutional building blocks of the BiRefNet squeeze module and decoder.

Attribute names are the weight contract (they match the official state-dict keys); whether a
block has BatchNorm is decided by the caller through ``norm_layer`` (``None`` -> ``nn.Identity``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import deform_conv2d as pack_deform_conv2d
from ..ops import deform_conv2d_for

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

    Runs torchvision's op where it works on the input's device, and the pack's own otherwise
    (:func:`birefnet_core.ops.deform_conv2d_for`: decided once per device). Under autocast the
    op runs in fp32 and hands back the caller's dtype (see :meth:`forward`). The optimiser's
    :class:`birefnet_core.fast.FastDeformableConv2d` computes the same function faster.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        k2 = kernel_size * kernel_size
        self.padding = padding
        self.offset_conv = nn.Conv2d(in_channels, 2 * k2, kernel_size, 1, padding, bias=True)
        self.modulator_conv = nn.Conv2d(in_channels, k2, kernel_size, 1, padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's CPU kernel reads out of bounds at a NaN offset (a segfault, e.g. after
        # an fp16 overflow); -inf is a position that samples nothing, as NaN should.
        offset = torch.nan_to_num(self.offset_conv(x), nan=float("-inf"),
                                  posinf=float("inf"), neginf=float("-inf"))
        modulator = 2.0 * torch.sigmoid(self.modulator_conv(x))
        op = deform_conv2d_for(x.device)
        weight, bias = self.regular_conv.weight, self.regular_conv.bias
        reduced = bool({x.dtype, offset.dtype} & {torch.float16, torch.bfloat16})
        if reduced and (op is pack_deform_conv2d or x.device.type != "cuda"):
            # Only torchvision's CUDA kernel has an autocast rule (it upcasts); run any other op
            # in fp32 the same way and hand back the caller's dtype.
            with torch.autocast(x.device.type, enabled=False):
                y = op(x.float(), offset.float(), weight.float(),
                       None if bias is None else bias.float(), padding=self.padding,
                       mask=modulator.float())
            return y.to(x.dtype)
        return op(x, offset, weight, bias, padding=self.padding, mask=modulator)


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
    branch, fused by a 1x1 convolution (:class:`birefnet_core.fast.FastASPPDeformable` is the
    optimiser's faster form).
    """

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
        branches = [self.aspp1(x)]
        branches += [branch(x) for branch in self.aspp_deforms]
        # Bilinear upsampling of a 1x1 map is a constant: broadcast instead of interpolating.
        branches.append(self.global_avg_pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1))))


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
        y = self.dec_att(self.relu_in(self.bn_in(self.conv_in(x))))
        return self.bn_out(self.conv_out(y))


class BasicLatBlk(nn.Module):
    """Lateral 1x1 projection of an encoder feature."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SimpleConvs(nn.Module):
    """Two 3x3 convolutions without activation: embeds the stacked image patches."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, 1, 1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))
