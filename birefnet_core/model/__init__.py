"""The BiRefNet network: backbones (Swin v1, PVT v2), decoder blocks and the top-level model."""

from .birefnet import STRIDE, BiRefNet, build_backbone
from .decoder import image_patches

__all__ = ["BiRefNet", "STRIDE", "build_backbone", "image_patches"]
