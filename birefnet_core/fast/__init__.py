"""Fast forms of the network's modules, each built from an exact one by ``from_exact``.

:mod:`birefnet_core.model` is the exact network and the weight contract (one forward per
class); :func:`birefnet_core.optimize.optimize_for_inference` swaps these in for the modules
they are built from, like ``torch.ao.quantization.fuse_modules``. Which kernel a fast module
runs on a device is chosen there by measurement (:mod:`birefnet_core.kernels`).
"""

from .blocks import FastASPPDeformable, FastConv2d, FastDecBlk, FastDeformableConv2d, FastLatBlk
from .compiled import CompiledBiRefNet
from .decoder import FastDecoder, compose_convs
from .swin import FastSwinBlock, FastSwinStage, FastSwinTransformer

__all__ = ["FastConv2d", "FastDeformableConv2d", "FastASPPDeformable", "FastDecBlk", "FastLatBlk",
           "FastDecoder", "FastSwinBlock", "FastSwinStage", "FastSwinTransformer",
           "CompiledBiRefNet", "compose_convs"]
