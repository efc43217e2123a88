"""Inference-time rewrites of a loaded BiRefNet that compute the same function faster.

:func:`optimize_for_inference` rewrites the model once, in place; the modules read the flags it
sets when they run (no global is consulted in ``forward``). The exact mode is simply a model on
which it was never called. Every rewrite is exact in real arithmetic; in float32 the outputs
differ from the exact mode by summation order only (max |Δ sigmoid| ≤ 1e-4 on the fidelity
fixtures, see ``tests/test_optimize.py``).

- ``fold_batchnorm``: every eval-mode ``BatchNorm2d`` that follows a convolution is folded into
  its weight and bias and replaced by ``nn.Identity`` (a conv without bias gets one).
- ``fast_deform``: the deformable convolutions use :func:`birefnet_core.ops.deform_conv2d`
  (vectorised sampling plus one GEMM instead of torchvision's scalar im2col loop), their offset
  and modulator predictors are fused into one convolution, and each deformable ASPP writes its
  branches into one buffer with the pooled branch entering the fusing 1x1 conv as a bias.
- ``channels_last``: the squeeze module's and the decoder's convolutions keep their weights in
  channels-last layout, which oneDNN runs markedly faster on the CPU (and tensor cores prefer);
  activations follow the weights' layout.
"""

from __future__ import annotations

import torch
from torch import nn

from .model.blocks import ASPPDeformable, DeformableConv2d

__all__ = ["optimize_for_inference", "fold_batchnorms", "fuse_conv_bn"]


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` (which follows ``conv``) into ``conv``'s weight and bias, in float64.

    >>> conv, bn = nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3).eval()
    >>> x = torch.randn(1, 2, 5, 5); ref = bn(conv(x))
    >>> fuse_conv_bn(conv, bn); torch.allclose(conv(x), ref, atol=1e-6)
    True
    """
    if bn.training or bn.running_mean is None:
        raise ValueError("only an eval-mode BatchNorm with running statistics can be folded")
    weight = conv.weight.double()
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((weight * scale.view(-1, 1, 1, 1)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _conv_bn_pairs(module: nn.Module):
    """(owner, conv, bn attribute name) for every convolution followed by a BatchNorm2d."""
    from .model.blocks import BasicDecBlk, _ASPPBranch

    for m in module.modules():
        if isinstance(m, BasicDecBlk):
            yield m, m.conv_in, "bn_in"
            yield m, m.conv_out, "bn_out"
        elif isinstance(m, _ASPPBranch):
            yield m, m.atrous_conv.regular_conv, "bn"  # the deform output is linear in its weight
        elif isinstance(m, ASPPDeformable):
            yield m, m.conv1, "bn1"
        elif isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (_, first), (name, second) in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                    yield m, first, name


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every foldable BatchNorm2d into its convolution; returns how many were folded."""
    folded = 0
    for owner, conv, name in list(_conv_bn_pairs(model)):
        bn = getattr(owner, name)
        if isinstance(bn, nn.BatchNorm2d):
            fuse_conv_bn(conv, bn)
            setattr(owner, name, nn.Identity())
            folded += 1
    return folded


@torch.no_grad()
def _fuse_deform_predictors(dcn: DeformableConv2d) -> None:
    """One convolution predicting offsets (first 2k² channels) then the modulator (k²)."""
    if hasattr(dcn, "offset_modulator_conv"):
        return
    off, mod = dcn.offset_conv, dcn.modulator_conv
    fused = nn.Conv2d(off.in_channels, off.out_channels + mod.out_channels, off.kernel_size,
                      off.stride, off.padding, bias=True, device=off.weight.device,
                      dtype=off.weight.dtype)
    fused.weight.copy_(torch.cat((off.weight, mod.weight)))
    fused.bias.copy_(torch.cat((off.bias, mod.bias)))
    fused.requires_grad_(False)
    dcn.offset_modulator_conv = fused
    del dcn.offset_conv, dcn.modulator_conv
    dcn.fast = True


@torch.no_grad()
def _split_aspp_pool(aspp: ASPPDeformable) -> None:
    """Split the fusing 1x1 conv into its spatial part and a linear map of the pooled branch."""
    if hasattr(aspp, "conv1_pool"):
        return
    conv = aspp.conv1
    planes = aspp.global_avg_pool[1].out_channels
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
    main.requires_grad_(False)
    pool.requires_grad_(False)
    aspp.conv1, aspp.conv1_pool = main, pool
    aspp.fast = True


def _norms_folded(aspp: ASPPDeformable) -> bool:
    norms = [aspp.bn1, aspp.global_avg_pool[2], aspp.aspp1.bn,
             *(branch.bn for branch in aspp.aspp_deforms)]
    return all(isinstance(n, nn.Identity) for n in norms)


def _to_channels_last(module: nn.Module) -> int:
    count = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.weight.ndim == 4:
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
            count += 1
    return count


def optimize_for_inference(model: nn.Module, *, fold_batchnorm: bool = True,
                           fast_deform: bool = True, channels_last: bool = True) -> nn.Module:
    """Rewrite an eval-mode BiRefNet in place for faster inference; returns the same model.

    Idempotent: a second call only applies what the first did not. What was done is recorded in
    ``model.optimizations`` (a tuple of names). The rewritten model is inference-only and its
    state dict no longer has the official keys (norms folded, predictors fused): save the
    original weights, not this model.
    """
    done = dict.fromkeys(getattr(model, "optimizations", ()))
    if fold_batchnorm:
        fold_batchnorms(model)
        done["fold_batchnorm"] = None
    if fast_deform:
        for m in model.modules():
            if isinstance(m, DeformableConv2d):
                _fuse_deform_predictors(m)
        for m in model.modules():
            if isinstance(m, ASPPDeformable) and _norms_folded(m):
                _split_aspp_pool(m)
        done["fast_deform"] = None
    if channels_last and "channels_last" not in done:
        for name in ("squeeze_module", "decoder"):
            if hasattr(model, name):
                _to_channels_last(getattr(model, name))
        done["channels_last"] = None
    model.optimizations = tuple(done)
    return model
