"""The optimiser's decoder: :class:`~birefnet_core.model.decoder.Decoder`'s function without its
full-size concatenation and upsampling of ``c1 // 2`` channels.

``conv_out1`` is per-pixel affine and bilinear weights sum to one, so its ``p_1`` part
(``head_p1``) commutes with the upsampling: one channel is upsampled instead of ``c1 // 2``. Its
image part is linear after ``ipt_blk1.conv_out`` and merges with it into one 3x3 convolution to
a single channel (``head_image``), which in turn composes with ``ipt_blk1.conv1`` into one 5x5
convolution of the image (``head_image5``); only the one-pixel edge, where the composed kernel
would read the zero padding of the inner convolution as the inner convolution of zeros, is
computed in two steps. The lateral blocks add ``up(p_{L+1})`` inside their 1x1 convolution
(:class:`~birefnet_core.fast.blocks.FastLatBlk`) instead of in a separate pass, and each
level's ``conv_in`` is split into its ``h`` and image-feature parts
(:class:`~birefnet_core.fast.blocks.FastDecBlk`), so ``cat(h, ipt)`` is never materialised (480
channels at 256² for Swin-L's level 1).

Whether the split head or the exact one runs is measured per device, dtype and size
(``decoder_head`` in :mod:`birefnet_core.kernels`).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..model.blocks import resize_to
from ..model.decoder import Decoder
from ._adopt import adopt
from .blocks import FastDecBlk, FastLatBlk

__all__ = ["FastDecoder", "compose_convs"]


@torch.no_grad()
def compose_convs(inner: nn.Conv2d, outer: nn.Conv2d) -> nn.Conv2d:
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


class FastDecoder(Decoder):
    """Built by :meth:`from_exact`: the exact decoder's modules, with ``head_p1``,
    ``head_image`` and ``head_image5`` added and the level blocks swapped for their fast forms
    (module docstring). The training-only heads stay, unused, as in the exact decoder."""

    @classmethod
    @torch.no_grad()
    def from_exact(cls, exact: Decoder) -> "FastDecoder":
        fast = adopt(cls, exact)
        out1, ipt_out = exact.conv_out1[0], exact.ipt_blk1.conv_out
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
        fast.head_p1 = head_p1.requires_grad_(False)
        fast.head_image = head_image.requires_grad_(False)
        fast.head_image5 = compose_convs(exact.ipt_blk1.conv1, head_image)
        for level in (4, 3, 2, 1):
            if level + 1 in exact.ipt_levels:
                extra = getattr(exact, f"ipt_blk{level + 1}").conv_out.out_channels
                block = getattr(exact, f"decoder_block{level}")
                setattr(fast, f"decoder_block{level}", FastDecBlk.from_exact(block, extra))
        for level in (4, 3, 2):
            lateral = getattr(exact, f"lateral_block{level}")
            setattr(fast, f"lateral_block{level}", FastLatBlk.from_exact(lateral))
        return fast.requires_grad_(False)

    def forward(self, image: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
                x4: torch.Tensor) -> torch.Tensor:
        skips = {3: x3, 2: x2, 1: x1}
        h = p = x4
        for level in (4, 3, 2, 1):
            if level != 4:
                skip = skips[level]
                h = getattr(self, f"lateral_block{level + 1}")(skip, resize_to(p, skip.shape[-2:]))
            block = getattr(self, f"decoder_block{level}")
            if level + 1 in self.ipt_levels:
                p = block(h, self._image_features(image, h.shape[-2:], level + 1))
            else:
                p = block(h)
            if level in self.gdt_levels:
                gdt = getattr(self, f"gdt_convs_{level}")(p)
                p = p * getattr(self, f"gdt_convs_attn_{level}")(gdt).sigmoid()
        choice = kernels.head_impl_for(p, image, {
            "split": lambda: self._head_split(p, image),
            "exact": lambda: self._head_exact(p, image)})
        return self._head_exact(p, image) if choice == "exact" else self._head_split(p, image)

    def _head_split(self, p: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        logits = resize_to(self.head_p1(p), image.shape[-2:])
        return logits.add_(self._image_logit(image))

    def _head_exact(self, p: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The exact decoder's head (a kernel candidate where it is the faster one)."""
        return self.conv_out1(self._with_image(resize_to(p, image.shape[-2:]), image, 1))

    def _image_logit(self, image: torch.Tensor) -> torch.Tensor:
        """``head_image(ipt_blk1.conv1(image))``, composed except on the one-pixel edge."""
        def two_step(x: torch.Tensor) -> torch.Tensor:
            return self.head_image(self.ipt_blk1.conv1(x))

        if min(image.shape[-2:]) < 3:
            return two_step(image)
        out = self.head_image5(image)
        out[:, :, :1] = two_step(image[:, :, :3])[:, :, :1]
        out[:, :, -1:] = two_step(image[:, :, -3:])[:, :, -1:]
        out[..., :1] = two_step(image[..., :3])[..., :1]
        out[..., -1:] = two_step(image[..., -3:])[..., -1:]
        return out
