"""Inference-time rewrites of a loaded BiRefNet that compute the same function faster.

:func:`optimize_for_inference` rewrites the model once, in place, by module replacement: each
fast module of :mod:`birefnet_core.fast` is built from an exact one (``FastX.from_exact``) and
set in its place in the parent, like ``torch.ao.quantization.fuse_modules``. No ``forward`` reads
a flag; the exact mode is simply a model on which it was never called. Every rewrite is exact in
real arithmetic; in float32 the outputs differ from the exact mode by summation order only (max
|Δ sigmoid| ≤ 1e-4 on the fidelity fixtures, see ``tests/test_optimize.py``).

- ``fold_batchnorm``: every eval-mode ``BatchNorm2d`` that follows a convolution is folded into
  its weight and bias and replaced by ``nn.Identity`` (a conv without bias gets one).
- ``fast_deform``: every ``DeformableConv2d`` becomes a
  :class:`~birefnet_core.fast.FastDeformableConv2d` (offset and modulator predictors fused into
  one convolution, run directly or through the FFT; the deformable convolution is the kernel
  measured fastest on the device, :mod:`birefnet_core.kernels`: the pack's gather + GEMM op or
  torchvision's), and every
  deformable ASPP whose norms are folded a :class:`~birefnet_core.fast.FastASPPDeformable` (the
  branches write into one buffer, the pooled branch enters the fusing 1x1 conv as a bias).
  ``deform_fp32_under_autocast`` makes the fast deformable convolutions compute in fp32 under
  autocast, as the exact ones do (default: in the reduced dtype, positions in fp32).
- ``channels_last``: the squeeze module's and the decoder's convolutions keep their weights in
  channels-last layout, which oneDNN runs markedly faster on the CPU (and tensor cores prefer);
  activations follow the weights' layout. The Swin backbone becomes a
  :class:`~birefnet_core.fast.FastSwinTransformer`, which hands its features over in the tokens'
  channels-last layout, so no NCHW copy is made only to be converted back.
- ``fast_head``: the decoder becomes a :class:`~birefnet_core.fast.FastDecoder`: the full-size
  head runs without its full-size concatenation and upsampling of ``c1 // 2`` channels
  (``conv_out1`` split into a 1x1 conv on ``p1`` applied before the bilinear upsampling and a
  single-channel convolution of the image composed with ``ipt_blk1``'s two convolutions), every
  level's ``conv_in`` is split so that the image features are added, not concatenated, and the
  lateral blocks fuse the decoder's addition into their 1x1 convolution.
- ``fast_backbone``: each Swin stage becomes a :class:`~birefnet_core.fast.FastSwinStage`: one
  cached gather for pad + shift + window partition, the shift-masked windows ordered last, 4-D
  fused ``scaled_dot_product_attention``, ``proj`` on the real tokens only, the MLP in row
  chunks, the linear layers run by the implementation measured fastest on the device (oneDNN's
  with bias, GELU and residual add fused into the GEMM, or the plain ops; see
  :mod:`birefnet_core.fast.swin`). PVT backbones are unchanged.

:func:`compile_for_inference` adds ``torch.compile`` on top (opt-in: it compiles per size).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from . import kernels
from .filters import has_float64
from .fast import (CompiledBiRefNet, FastASPPDeformable, FastDecoder, FastDeformableConv2d,
                   FastSwinStage, FastSwinTransformer)
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


def _replace(model: nn.Module, exact_type: type, build: Callable[[nn.Module], nn.Module],
             when: Callable[[nn.Module], bool] = lambda m: True) -> int:
    """Set ``build(child)`` in place of every child of exactly ``exact_type`` (not a subclass:
    a fast module is never rebuilt) for which ``when(child)``; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is exact_type and when(child):
                setattr(parent, name, build(child))
                count += 1
    return count


def _to_channels_last(module: nn.Module) -> int:
    count = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.weight.ndim == 4:
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
            count += 1
    return count


def optimize_for_inference(model: nn.Module, *, fold_batchnorm: bool = True,
                           fast_deform: bool = True, channels_last: bool = True,
                           fast_backbone: bool = True, fast_head: bool = True,
                           deform_fp32_under_autocast: bool = False) -> nn.Module:
    """Rewrite an eval-mode BiRefNet in place for faster inference; returns the same model.

    Idempotent: a second call only applies what the first did not (an exact module of the kind
    an option replaces is left only where the option is off). What was done is recorded in
    ``model.optimizations`` (a tuple of names). The rewritten model is inference-only and its
    state dict no longer has the official keys (norms folded, predictors fused): save the
    original weights, not this model.
    """
    # The weight algebra (folded norms, composed convolutions) runs in float64: on a device
    # without it (MPS) the model is rewritten on the CPU and moved back.
    home = next(model.parameters()).device
    if not has_float64(home):
        model.cpu()
    try:
        _rewrite(model, fold_batchnorm=fold_batchnorm, fast_deform=fast_deform,
                 channels_last=channels_last, fast_backbone=fast_backbone, fast_head=fast_head,
                 deform_fp32_under_autocast=deform_fp32_under_autocast)
    finally:
        model.to(home)
    return model


def _rewrite(model: nn.Module, *, fold_batchnorm: bool, fast_deform: bool, channels_last: bool,
             fast_backbone: bool, fast_head: bool, deform_fp32_under_autocast: bool) -> None:
    done = dict.fromkeys(getattr(model, "optimizations", ()))
    if fold_batchnorm:
        fold_batchnorms(model)
        done["fold_batchnorm"] = None
    if fast_deform:
        fp32 = deform_fp32_under_autocast
        _replace(model, ASPPDeformable,
                 lambda m: FastASPPDeformable.from_exact(m, fp32_under_autocast=fp32),
                 when=FastASPPDeformable.can_convert)
        _replace(model, DeformableConv2d,
                 lambda m: FastDeformableConv2d.from_exact(m, fp32_under_autocast=fp32))
        done["fast_deform"] = None
    if fast_head:
        _replace(model, Decoder, FastDecoder.from_exact)
        done["fast_head"] = None
    if channels_last:
        for name in ("squeeze_module", "decoder"):
            if hasattr(model, name):
                _to_channels_last(getattr(model, name))
        _replace(model, SwinTransformer, FastSwinTransformer.from_exact)
        done["channels_last"] = None
    if fast_backbone:
        _replace(model, SwinStage, FastSwinStage.from_exact)
        done["fast_backbone"] = None
    model.optimizations = tuple(done)


def compile_for_inference(model: nn.Module, *, mode: str | None = None,
                          backend: str = "inductor", dynamic: bool | None = None,
                          warmup_sizes: Sequence[tuple[int, int]] = ()) -> nn.Module:
    """Optimise ``model`` (if not yet done) and compile it in place with ``torch.compile``.

    Opt-in, because the first call at each input size compiles (minutes on a CPU; needs a C++
    compiler, or Triton on CUDA). ``mode``, ``backend`` and ``dynamic`` go to
    ``torch.compile`` (e.g. ``mode="max-autotune"`` or ``"reduce-overhead"`` for CUDA graphs).
    The fused oneDNN linear op gives way to the plain ops, which the compiler fuses itself.
    The model becomes a :class:`~birefnet_core.fast.CompiledBiRefNet` (its class changes in
    place; it stays a :class:`~birefnet_core.model.BiRefNet`).
    The Swin window layout of a new size is found outside the graph (data-dependent): a size
    first met inside a compiled call costs a few graph breaks, so give the sizes you will run,
    ``(H, W)`` multiples of 32, as ``warmup_sizes``: one eager forward each, before compiling,
    and each of them compiles into a single graph. Compiled graphs run each op's default kernel
    (:func:`birefnet_core.kernels.defaults`); the compiler tunes them itself. The compiled function is the model's
    ``_forward``, always entered outside inference mode and without gradients (see
    ``CompiledBiRefNet.forward``), so callers in any autograd mode share its graphs. Returns
    the same model.
    """
    optimize_for_inference(model)
    weight = next(model.parameters())
    with kernels.defaults():  # the implementations the graph will trace, caches filled
        for height, width in warmup_sizes:
            model(torch.zeros(1, 3, height, width, device=weight.device, dtype=weight.dtype))
    compiled = torch.compile(model._forward, mode=mode, backend=backend, dynamic=dynamic)
    CompiledBiRefNet.from_model(model, compiled)
    model.optimizations = tuple(dict.fromkeys((*model.optimizations, "compile")))
    return model
