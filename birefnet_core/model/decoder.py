"""BiRefNet's decoder: four refinement levels from stride 32 to stride 4, then the full-size head.

Level ``L`` (4 = coarsest) computes ``p_L = decoder_block{L}(h_L)`` with

    h_4 = x4                                               (the squeezed encoder context)
    h_L = up(p_{L+1}) + lateral_block{L+1}(x_L)            (L = 3, 2, 1)

and, where the checkpoint has ``ipt_blk{L+1}``, the image patches embedded at that size
concatenated to ``h_L``. Where it has ``gdt_convs_{L}``, ``p_L`` is gated by a sigmoid attention
map. The head upsamples ``p_1`` to the image size, adds ``ipt_blk1`` of the image and predicts one
logit channel with ``conv_out1``.

:class:`birefnet_core.fast.FastDecoder` (built by the optimiser from this one) computes the same
function without the full-size concatenation and with the level inputs split.

The training-only heads (``conv_ms_spvn_*``, ``gdt_convs_pred_*``) are built so that published
state dicts load strictly, and are never run.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..variants import DecoderGeneration, PatchOrder
from .blocks import BasicDecBlk, BasicLatBlk, NormLayer, SimpleConvs, make_norm, resize_to

_GDT_CHANNELS = 16


def image_patches(image: torch.Tensor, size: tuple[int, int], order: PatchOrder) -> torch.Tensor:
    """Stack the GxG grid of ``size``-sized patches of ``image`` on the channel axis.

    ``image``: ``[B, C, G*h, G*w]`` -> ``[B, C*G*G, h, w]``; channel index ``(wg*G + hg)*C + c`` for
    ``split`` and ``c*G*G + hg*G + wg`` for ``einops`` (see :class:`PatchOrder`).
    """
    b, c, height, width = image.shape
    h, w = size
    if height % h or width % w:
        raise InputError(f"image of {height}x{width} cannot be cut into {h}x{w} patches")
    gh, gw = height // h, width // w
    if gh == gw == 1:
        return image
    grid = image.view(b, c, gh, h, gw, w)
    if PatchOrder(order) is PatchOrder.SPLIT:
        grid = grid.permute(0, 4, 2, 1, 3, 5)  # b, wg, hg, c, h, w
    else:
        grid = grid.permute(0, 1, 2, 4, 3, 5)  # b, c, hg, wg, h, w
    return grid.reshape(b, c * gh * gw, h, w)


class Decoder(nn.Module):
    def __init__(self, channels: tuple[int, int, int, int], *, generation: DecoderGeneration,
                 patch_order: PatchOrder, norm_layer: NormLayer):
        """``channels``: encoder widths deep first, ``(c4, c3, c2, c1)`` (after the 2x of the
        multi-scale concatenation)."""
        super().__init__()
        c4, c3, c2, c1 = channels
        current = DecoderGeneration(generation) is DecoderGeneration.CURRENT
        self.patch_order = PatchOrder(patch_order)
        kernels = (1, 3, 7) if current else (3,)

        # ipt_blk{L+1} feeds level L; its input is the image cut into a (2**(L+1))² grid.
        ipt_out = {5: c4 // 8, 4: c4 // 8, 3: c3 // 8, 2: c2 // 8, 1: c1 // 8}
        self.ipt_levels = (5, 4, 3, 2, 1) if current else (4, 3, 2, 1)
        for n in self.ipt_levels:
            grid = 2 ** n if n > 1 else 1
            setattr(self, f"ipt_blk{n}", SimpleConvs(3 * grid * grid, ipt_out[n]))

        level_in = {4: c4, 3: c3, 2: c2, 1: c1}
        level_out = {4: c3, 3: c2, 2: c1, 1: c1 // 2}
        for level in (4, 3, 2, 1):
            extra = ipt_out[level + 1] if level + 1 in self.ipt_levels else 0
            setattr(self, f"decoder_block{level}", BasicDecBlk(
                level_in[level] + extra, level_out[level], kernel_sizes=kernels,
                norm_layer=norm_layer))
        self.conv_out1 = nn.Sequential(nn.Conv2d(c1 // 2 + ipt_out[1], 1, 1, 1, 0))

        for level in (4, 3, 2):
            setattr(self, f"lateral_block{level}", BasicLatBlk(level_out[level], level_out[level]))
        for level in (4, 3, 2):
            setattr(self, f"conv_ms_spvn_{level}", nn.Conv2d(level_out[level], 1, 1, 1, 0))

        self.gdt_levels = (4, 3, 2) if current else (3, 2)
        for level in self.gdt_levels:
            setattr(self, f"gdt_convs_{level}", nn.Sequential(
                nn.Conv2d(level_out[level], _GDT_CHANNELS, 3, 1, 1),
                make_norm(norm_layer, _GDT_CHANNELS),
                nn.ReLU(inplace=True),
            ))
            setattr(self, f"gdt_convs_pred_{level}", nn.Sequential(nn.Conv2d(_GDT_CHANNELS, 1, 1)))
            setattr(self, f"gdt_convs_attn_{level}", nn.Sequential(nn.Conv2d(_GDT_CHANNELS, 1, 1)))

    def _image_features(self, image: torch.Tensor, size, blk: int) -> torch.Tensor:
        patches = image_patches(image, tuple(size), self.patch_order)
        return getattr(self, f"ipt_blk{blk}")(patches)

    def _with_image(self, h: torch.Tensor, image: torch.Tensor, blk: int) -> torch.Tensor:
        if blk not in self.ipt_levels:
            return h
        return torch.cat((h, self._image_features(image, h.shape[-2:], blk)), dim=1)

    def forward(self, image: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
                x4: torch.Tensor) -> torch.Tensor:
        skips = {3: x3, 2: x2, 1: x1}
        p = x4
        for level in (4, 3, 2, 1):
            if level == 4:
                h = x4
            else:
                skip = skips[level]
                h = resize_to(p, skip.shape[-2:]) + getattr(self, f"lateral_block{level + 1}")(skip)
            p = getattr(self, f"decoder_block{level}")(self._with_image(h, image, level + 1))
            if level in self.gdt_levels:
                gdt = getattr(self, f"gdt_convs_{level}")(p)
                p = p * getattr(self, f"gdt_convs_attn_{level}")(gdt).sigmoid()
        h = self._with_image(resize_to(p, image.shape[-2:]), image, 1)
        return self.conv_out1(h)
