"""Simple mask operations: levels, threshold, morphology, holes/islands, the edge band; and the
working-size tag a segmentation leaves on its masks.

Conventions (every public function):

* masks are float tensors ``[H, W]``, ``[B, H, W]`` (ComfyUI MASK) or ``[B, 1, H, W]``, values
  0..1 with **1 = foreground**; the result has the shape that was passed in;
* everything runs batched on the input's device; radii are in pixels of the mask.

Edge refinement from the full-resolution image is in :mod:`.edges` (with the matting solver in
:mod:`.matting`), smoothing across video frames in :mod:`.temporal`.

>>> m = torch.zeros(1, 8, 8); m[:, 2:6, 2:6] = 1
>>> grow_shrink(m, 1).sum().item() > m.sum().item()
True
"""

from __future__ import annotations

import math

import torch

from .errors import InputError
from .layout import check_finite, masks_to_b1hw
from .filters import component_areas, connected_components, dilate, erode, gaussian_blur

__all__ = [
    "levels",
    "threshold",
    "grow_shrink",
    "feather",
    "fill_holes",
    "remove_islands",
    "edge_band",
    "tag_working_size",
    "working_size_of",
]


# --------------------------------------------------------------------------------------------
# Validation (shapes and layouts: birefnet_core.layout)
# --------------------------------------------------------------------------------------------
def _radius(value, name: str) -> int:
    try:
        r = int(round(float(value)))
    except (TypeError, ValueError, OverflowError):  # OverflowError: inf
        raise InputError(f"{name}: expected a finite number of pixels, got {value!r}.") from None
    return r


# --------------------------------------------------------------------------------------------
# Point operations and morphology
# --------------------------------------------------------------------------------------------
def levels(mask: torch.Tensor, black: float = 0.0, white: float = 1.0,
           gamma: float = 1.0) -> torch.Tensor:
    """Map ``[black, white]`` to ``[0, 1]`` (clamped), then apply ``gamma`` (>1 brightens).

    >>> levels(torch.tensor([0.1, 0.5, 0.9]), 0.1, 0.9).round(decimals=4).tolist()
    [0.0, 0.5, 1.0]
    """
    if not white > black:
        raise InputError(f"levels: white point ({white}) must be above the black point ({black}).")
    if not gamma > 0:
        raise InputError(f"levels: gamma must be > 0, got {gamma}.")
    check_finite(mask)
    out = ((mask - black) / (white - black)).clamp(0, 1)
    return out if gamma == 1.0 else out.pow(1.0 / gamma)


def threshold(mask: torch.Tensor, value: float = 0.5) -> torch.Tensor:
    """Binary mask: 1 where ``mask >= value``, else 0 (same dtype).

    >>> threshold(torch.tensor([0.2, 0.5, 0.8])).tolist()
    [0.0, 1.0, 1.0]
    """
    return (check_finite(mask) >= value).to(mask.dtype)


def grow_shrink(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate (``radius > 0``) or erode (``radius < 0``) by a near-disk of ``|radius|`` px.

    Works on soft masks (grey-scale morphology), O(log r) passes.

    >>> m = torch.zeros(1, 9, 9); m[:, 4, 4] = 1
    >>> int(grow_shrink(m, 1).sum()), int(grow_shrink(grow_shrink(m, 1), -1).sum())
    (9, 1)
    """
    r = _radius(radius, "grow_shrink radius")
    m4, back = masks_to_b1hw(mask)
    if r == 0:
        return mask
    return back(dilate(m4, r) if r > 0 else erode(m4, -r))


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Soften edges with a Gaussian blur (sigma = radius / 2) whose visible reach is about
    ``radius`` px (:func:`~birefnet_core.filters.gaussian_blur`).

    >>> feather(torch.ones(1, 6, 6), 3).allclose(torch.ones(1, 6, 6))
    True
    """
    if not 0 <= radius < math.inf:
        raise InputError(f"feather radius must be a finite number >= 0 px, got {radius}.")
    m4, back = masks_to_b1hw(mask)
    # (gaussian_blur clamps its radius to the image: bounded memory.)
    return back(gaussian_blur(m4, radius / 2.0).clamp(0, 1))


def fill_holes(mask: torch.Tensor, max_area: int = 0, level: float = 0.5) -> torch.Tensor:
    """Fill background regions (``mask < level``) that do not touch the image border.

    Args:
        max_area: fill only holes of at most this many pixels; 0 fills every enclosed hole
            (beware: the gap between an arm and a body is a hole too).

    >>> m = torch.ones(1, 5, 5); m[:, 2, 2] = 0
    >>> fill_holes(m).min().item()
    1.0
    """
    m4, back = masks_to_b1hw(mask)
    bg = m4[:, 0] < level
    labels = connected_components(bg)
    border = torch.zeros_like(bg)
    border[:, 0, :] = border[:, -1, :] = True
    border[:, :, 0] = border[:, :, -1] = True
    touching = torch.zeros(labels.numel() + 1, dtype=torch.bool, device=labels.device)
    touching[labels[border & bg] ] = True
    lab = labels.clamp(min=0)
    hole = bg & ~touching[lab]
    if max_area > 0:
        hole &= component_areas(labels) <= max_area
    return back(torch.where(hole[:, None], torch.ones_like(m4), m4))


def remove_islands(mask: torch.Tensor, min_area: int, level: float = 0.5) -> torch.Tensor:
    """Zero foreground components (``mask >= level``, 4-connected) smaller than ``min_area`` px.

    >>> m = torch.zeros(1, 6, 6); m[:, 0, 0] = 1; m[:, 2:6, 2:6] = 1
    >>> remove_islands(m, 2).sum().item()
    16.0
    """
    if min_area < 0:
        raise InputError(f"remove_islands: min_area must be >= 0 px, got {min_area}.")
    m4, back = masks_to_b1hw(mask)
    if min_area <= 1:
        return mask
    fg = m4[:, 0] >= level
    small = fg & (component_areas(connected_components(fg)) < min_area)
    # Also drop the soft fringe around a removed island.
    small = dilate(small[:, None].to(m4.dtype), 1) > 0.5
    small &= ~(dilate((fg & ~small[:, 0])[:, None].to(m4.dtype), 1) > 0.5)
    return back(torch.where(small, torch.zeros_like(m4), m4))


def edge_band(mask: torch.Tensor, width: int, level: float | None = None) -> torch.Tensor:
    """The band around edges: ``dilate(mask) - erode(mask)`` with a total width of ``width`` px.

    With ``level`` set, the mask is binarised at that level first (a crisp band).

    >>> m = torch.zeros(1, 9, 9); m[:, :, 4:] = 1
    >>> edge_band(m, 2)[0, 0].tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    if width < 0:
        raise InputError(f"edge_band width must be >= 0 px, got {width}.")
    m4, back = masks_to_b1hw(mask)
    if level is not None:
        m4 = threshold(m4, level)
    r = max(1, int(math.ceil(width / 2))) if width > 0 else 0
    if r == 0:
        return back(torch.zeros_like(m4))
    return back((dilate(m4, r) - erode(m4, r)).clamp(0, 1))


# --------------------------------------------------------------------------------------------
# The working size a mask was predicted at (the Refine node's "auto" working size)
# --------------------------------------------------------------------------------------------
_WORKING_SIZE_ATTR = "birefnet_working_size"


def tag_working_size(mask: torch.Tensor, size) -> torch.Tensor:
    """Record on ``mask`` (in place, returned) the ``(H, W)`` working size it was predicted at.

    The tag is a plain attribute of the tensor object: it travels with the mask from a
    segmentation to :func:`working_size_of` as long as the same tensor is passed on (a new
    tensor made from it, e.g. by an inversion or a resize, does not carry it).

    >>> m = tag_working_size(torch.zeros(1, 4, 4), (512, 512)); working_size_of(m)
    (512, 512)
    """
    h, w = (size, size) if isinstance(size, (int, float)) else size
    setattr(mask, _WORKING_SIZE_ATTR, (int(h), int(w)))
    return mask


def working_size_of(mask: torch.Tensor):
    """The ``(H, W)`` working size recorded by :func:`tag_working_size`, or ``None``.

    >>> working_size_of(torch.zeros(2, 2)) is None
    True
    """
    return getattr(mask, _WORKING_SIZE_ATTR, None)
