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
  activations follow the weights' layout. The Swin backbone hands its features over in the
  tokens' channels-last layout, so no NCHW copy is made only to be converted back.
- ``fast_head``: the decoder's full-size head runs without its full-size concatenation and
  upsampling of ``c1 // 2`` channels: ``conv_out1`` is split into a 1x1 conv on ``p1`` applied
  before the (affine-commuting) bilinear upsampling and a single-channel convolution of the
  image that composes ``ipt_blk1``'s two convolutions with it, and every level's ``conv_in``
  is split so that the image features are added, not concatenated (see :class:`Decoder`).
- ``fast_backbone``: the Swin stages use one cached gather for pad + shift + window partition,
  order the shift-masked windows last and run 4-D fused ``scaled_dot_product_attention``; the
  linear layers run with their bias, GELU and residual add fused into the GEMM
  (:func:`birefnet_core.ops.linear`), ``proj`` on the real tokens only, the MLP in row chunks
  (see :mod:`birefnet_core.model.swin`). PVT backbones are unchanged.

:func:`compile_for_inference` adds ``torch.compile`` on top (opt-in: it compiles per size).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .model.blocks import ASPPDeformable, DeformableConv2d
from .model.decoder import Decoder
from .model.swin import SwinStage, SwinTransformer

__all__ = ["optimize_for_inference", "compile_for_inference", "fold_batchnorms", "fuse_conv_bn"]


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


@torch.no_grad()
def _split_decoder_head(decoder: Decoder) -> None:
    """``conv_out1`` over ``cat(up(p1), ipt_blk1(image))`` as ``up(head_p1(p1))`` plus
    ``head_image(ipt_blk1.conv1(image))``, where ``head_image`` merges ``ipt_blk1.conv_out``
    with the image part of ``conv_out1`` (both linear, merged in float64)."""
    if hasattr(decoder, "head_p1"):
        return
    out1, ipt_out = decoder.conv_out1[0], decoder.ipt_blk1.conv_out
    split = out1.in_channels - ipt_out.out_channels
    weight = out1.weight.double().flatten(1)  # [1, C]
    head_p1 = nn.Conv2d(split, 1, 1, device=weight.device, dtype=out1.weight.dtype)
    head_p1.weight.copy_(weight[:, :split, None, None])
    head_p1.bias.copy_(out1.bias)
    image_w = weight[:, split:]  # [1, e]
    head_image = nn.Conv2d(ipt_out.in_channels, 1, ipt_out.kernel_size, ipt_out.stride,
                           ipt_out.padding, device=weight.device, dtype=ipt_out.weight.dtype)
    head_image.weight.copy_(torch.einsum("oe,eikl->oikl", image_w, ipt_out.weight.double()))
    head_image.bias.copy_(image_w @ ipt_out.bias.double())
    decoder.head_p1, decoder.head_image = head_p1, head_image
    decoder.head_image5 = _compose_convs(decoder.ipt_blk1.conv1, head_image)
    decoder.requires_grad_(False)
    decoder.fast = True


@torch.no_grad()
def _split_level_inputs(decoder: Decoder) -> None:
    """Split each decoder level's ``conv_in`` over ``cat(h, ipt_blk(image))`` into a conv of
    ``h`` (keeping the bias) and a bias-free conv of the image features: the same sum."""
    for level in (4, 3, 2, 1):
        block = getattr(decoder, f"decoder_block{level}")
        if level + 1 not in decoder.ipt_levels or hasattr(block, "conv_in_x"):
            continue
        conv = block.conv_in
        extra = getattr(decoder, f"ipt_blk{level + 1}").conv_out.out_channels
        split = conv.in_channels - extra
        parts = []
        for lo, hi, bias in ((0, split, conv.bias is not None), (split, conv.in_channels, False)):
            part = nn.Conv2d(hi - lo, conv.out_channels, conv.kernel_size, conv.stride,
                             conv.padding, bias=bias, device=conv.weight.device,
                             dtype=conv.weight.dtype)
            part.weight.copy_(conv.weight[:, lo:hi])
            if bias:
                part.bias.copy_(conv.bias)
            parts.append(part.requires_grad_(False))
        block.conv_in_x, block.conv_in_extra = parts


@torch.no_grad()
def _compose_convs(inner: nn.Conv2d, outer: nn.Conv2d) -> nn.Conv2d:
    """One convolution equal to ``outer(inner(x))`` (stride 1, "same" padding) away from the
    edge of width ``outer.padding``, where ``outer`` reads zeros instead of ``inner``'s values."""
    w1, w2 = inner.weight.double(), outer.weight.double()  # [m, c, a, b], [o, m, i, j]
    (a, b), (i, j) = w1.shape[-2:], w2.shape[-2:]
    weight = w1.new_zeros(w2.shape[0], w1.shape[1], a + i - 1, b + j - 1)
    for di in range(i):
        for dj in range(j):
            weight[:, :, di:di + a, dj:dj + b] += torch.einsum("om,mcab->ocab", w2[:, :, di, dj], w1)
    bias = w2.sum((2, 3)) @ inner.bias.double() if inner.bias is not None else 0.0
    if outer.bias is not None:
        bias = bias + outer.bias.double()
    conv = nn.Conv2d(w1.shape[1], w2.shape[0], weight.shape[-2:],
                     padding=(inner.padding[0] + outer.padding[0],
                              inner.padding[1] + outer.padding[1]),
                     device=inner.weight.device, dtype=inner.weight.dtype)
    conv.weight.copy_(weight)
    conv.bias.copy_(torch.as_tensor(bias).expand(w2.shape[0]))
    return conv.requires_grad_(False)


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
                           fast_deform: bool = True, channels_last: bool = True,
                           fast_backbone: bool = True, fast_head: bool = True) -> nn.Module:
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
    if fast_head:
        for m in model.modules():
            if isinstance(m, Decoder):
                _split_decoder_head(m)
                _split_level_inputs(m)
        done["fast_head"] = None
    if channels_last:
        for name in ("squeeze_module", "decoder"):
            if hasattr(model, name):
                _to_channels_last(getattr(model, name))
        for m in model.modules():
            if isinstance(m, SwinTransformer):
                m.channels_last = True
        done["channels_last"] = None
    if fast_backbone:
        for m in model.modules():
            if isinstance(m, SwinStage):
                m.fast = True
        done["fast_backbone"] = None
    model.optimizations = tuple(done)
    return model


def compile_for_inference(model: nn.Module, *, mode: str | None = None,
                          backend: str = "inductor", dynamic: bool | None = None,
                          warmup_sizes: Sequence[tuple[int, int]] = ()) -> nn.Module:
    """Optimise ``model`` (if not yet done) and compile it in place with ``torch.compile``.

    Opt-in, because the first call at each input size compiles (minutes on a CPU; needs a C++
    compiler, or Triton on CUDA). ``mode``, ``backend`` and ``dynamic`` go to
    ``torch.compile`` (e.g. ``mode="max-autotune"`` or ``"reduce-overhead"`` for CUDA graphs).
    The fused oneDNN linear op gives way to the plain ops, which the compiler fuses itself.
    The Swin window layout of a new size is found outside the graph (data-dependent): a size
    first met inside a compiled call costs a few graph breaks, so give the sizes you will run,
    ``(H, W)`` multiples of 32, as ``warmup_sizes``: one eager forward each, before compiling,
    and each of them compiles into a single graph. The compiled function is the model's
    ``_forward``, always entered outside inference mode and without gradients (see
    ``BiRefNet.forward``), so callers in any autograd mode share its graphs. Returns the same
    model.
    """
    optimize_for_inference(model)
    weight = next(model.parameters())
    for height, width in warmup_sizes:
        model(torch.zeros(1, 3, height, width, device=weight.device, dtype=weight.dtype))
    model.compiled_forward = torch.compile(model._forward, mode=mode, backend=backend,
                                           dynamic=dynamic)
    model.optimizations = tuple(dict.fromkeys((*model.optimizations, "compile")))
    return model
