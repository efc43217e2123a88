"""Fast, exact re-implementations of the operators that dominate BiRefNet's runtime."""

from .deform_conv import deform_conv2d, deform_conv2d_for

__all__ = ["deform_conv2d", "deform_conv2d_for"]
