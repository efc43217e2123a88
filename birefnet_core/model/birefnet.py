"""The BiRefNet network (eval only): backbone on two scales, context squeeze, decoder."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..variants import Architecture, PatchOrder
from .blocks import BasicDecBlk, resize_to
from .decoder import Decoder
from .pvt import PyramidVisionTransformerV2
from .swin import SwinTransformer

STRIDE = 32  # input sides must be multiples of this (the image-patch grids need exact tiling)


def build_backbone(arch: Architecture) -> nn.Module:
    spec = arch.spec
    if spec.kind == "swin":
        return SwinTransformer(spec)
    return PyramidVisionTransformerV2(spec)


class BiRefNet(nn.Module):
    """``forward(x)``: ImageNet-normalised ``[B, 3, H, W]`` (H, W multiples of 32) -> final
    logits ``[B, 1, H, W]`` (apply a sigmoid for the 1 = foreground probability).

    Runs in inference mode; :func:`birefnet_core.optimize.compile_for_inference` turns a model
    into a :class:`birefnet_core.fast.CompiledBiRefNet`, whose forward enters a compiled graph."""

    def __init__(self, arch: Architecture = Architecture(),
                 patch_order: PatchOrder | str = PatchOrder.SPLIT):
        super().__init__()
        self.arch = arch
        self.bb = build_backbone(arch)
        # Features of the image and of its half-size copy are concatenated: widths double.
        c1, c2, c3, c4 = (2 * c for c in arch.spec.channels)
        norm = nn.BatchNorm2d if arch.batch_norm else None
        kernels = (1, 3, 7) if arch.decoder.value == "current" else (3,)
        self.squeeze_module = nn.Sequential(
            BasicDecBlk(c4 + c1 + c2 + c3, c4, kernel_sizes=kernels, norm_layer=norm))
        self.decoder = Decoder((c4, c3, c2, c1), generation=arch.decoder,
                               patch_order=patch_order, norm_layer=norm)
        self.eval()

    @property
    def patch_order(self) -> PatchOrder:
        return self.decoder.patch_order

    @patch_order.setter
    def patch_order(self, order: PatchOrder | str) -> None:
        self.decoder.patch_order = PatchOrder(order)

    def reset_static(self) -> None:
        """Recompute derived buffers and drop caches (call after loading or moving weights)."""
        self.bb.reset_static()

    def clear_caches(self) -> None:
        """Drop per-size caches (e.g. after the host offloads the model); never raises."""
        self.bb.clear_caches()

    def train(self, mode: bool = True) -> "BiRefNet":
        if mode:
            raise RuntimeError("this BiRefNet re-implementation is inference-only")
        return super().train(False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, w = x.shape[-2:]
        full = self.bb(x)
        half = self.bb(resize_to(x, (h // 2, w // 2)))
        x1, x2, x3, x4 = (torch.cat((f, resize_to(g, f.shape[-2:])), dim=1)
                          for f, g in zip(full, half))
        context = [resize_to(f, x4.shape[-2:]) for f in (x1, x2, x3)]
        x4 = self.squeeze_module(torch.cat((*context, x4), dim=1))
        return x1, x2, x3, x4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected a [B, 3, H, W] image tensor, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % STRIDE or w % STRIDE:
            raise InputError(
                f"input size {w}x{h} (WxH) is not a multiple of {STRIDE}; resize it first "
                "(birefnet_core.inference does this for you)")
        return self.decoder(x, *self.encode(x))
