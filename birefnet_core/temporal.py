"""Temporal smoothing of video masks across a frame batch, restarting at scene cuts.

Masks are ``[B, H, W]`` or ``[B, 1, H, W]`` of consecutive frames, 0..1, **1 = foreground**;
the frames are the batch dimension. Used by the Refine node and by the batch engines, which
smooth across chunk borders.
"""

from __future__ import annotations

import torch

from .errors import InputError
from .layout import check_finite, masks_to_b1hw

__all__ = [
    "scene_cuts",
    "temporal_smooth",
    "TEMPORAL_MODES",
]

TEMPORAL_MODES = ("none", "ema", "median")


def scene_cuts(frames: torch.Tensor, cut_threshold: float) -> torch.Tensor:
    """Bool ``[B]``: True where frame ``t`` starts a new shot (frame 0 always does).

    A cut is a mean absolute difference to the previous frame above ``cut_threshold``.
    ``frames`` is any ``[B, ...]`` tensor (masks or images).

    >>> scene_cuts(torch.tensor([[0.], [0.], [1.], [1.]]), 0.5).tolist()
    [True, False, True, False]
    """
    cuts = torch.zeros(frames.shape[0], dtype=torch.bool, device=frames.device)
    cuts[0] = True
    if frames.shape[0] > 1:
        diff = (frames[1:] - frames[:-1]).abs().flatten(1).mean(1)
        cuts[1:] = diff > cut_threshold
    return cuts


def _windowed_median(seg: torch.Tensor, k: int) -> torch.Tensor:
    """Median over frames ``t - k .. t + k`` of ``seg`` ``[n, ...]``, the ends repeated.

    A half-width ``k >= n - 1`` gives the same result as ``k = n - 1``: every window then holds
    all ``n`` frames plus extra copies of the first and the last one, and one more ``k`` adds
    one copy of each. At most ``n - 2`` values lie outside ``[min(first, last), max(first,
    last)]`` on either side, fewer than the ``k`` on each side of the median, so the median
    lies between first and last, and adding a value on each side of it does not move it. So
    ``k`` is clamped, and the windows are taken a few frames at a time: memory stays within
    about the input's size, whatever the window.
    """
    n = seg.shape[0]
    k = min(k, n - 1)
    width = 2 * k + 1
    t = torch.arange(n, device=seg.device)
    index = (t[:, None] + torch.arange(-k, k + 1, device=seg.device)).clamp_(0, n - 1)
    out = torch.empty_like(seg)
    step = max(1, n // width)
    for t0 in range(0, n, step):
        out[t0:t0 + step] = seg[index[t0:t0 + step]].median(dim=1).values
    return out


def temporal_smooth(mask: torch.Tensor, mode: str = "ema", strength: float = 0.5,
                    window: int = 3, cut_threshold: float = 0.1,
                    frames: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce flicker across a batch of video frames, restarting at scene cuts.

    Args:
        mask: ``[B,H,W]`` or ``[B,1,H,W]`` masks of consecutive frames, 1 = foreground.
        mode: ``"ema"`` (exponential moving average, forward then backward so edges do not
            lag; ``strength`` 0..1 is the weight of the history) or ``"median"`` (windowed
            median over ``window`` frames, odd); ``"none"`` returns the mask.
        cut_threshold: mean absolute difference between consecutive frames (of ``frames``
            when given, e.g. the images, else of the masks) above which smoothing restarts.

    >>> m = torch.zeros(5, 4, 4); m[2] = 1
    >>> temporal_smooth(m, "median", window=3, cut_threshold=2.0).sum().item()
    0.0
    """
    if mode not in TEMPORAL_MODES:
        raise InputError(f"temporal_smooth: mode {mode!r} is not one of {TEMPORAL_MODES}.")
    if not 0.0 <= strength < 1.0:
        raise InputError(f"temporal_smooth: strength must be in [0, 1), got {strength}.")
    if mode == "median" and (window < 1 or window % 2 == 0):
        raise InputError(f"temporal_smooth: window must be a positive odd number, got {window}.")
    m4, back = masks_to_b1hw(mask)
    if mode == "none" or m4.shape[0] < 2:
        return mask
    ref = m4 if frames is None else check_finite(frames, "frames")
    if ref.shape[0] != m4.shape[0]:
        raise InputError(f"temporal_smooth: {ref.shape[0]} frames for {m4.shape[0]} masks.")
    cuts = scene_cuts(ref.to(m4.device, m4.dtype), cut_threshold).tolist()
    starts = [i for i, c in enumerate(cuts) if c] + [m4.shape[0]]
    out = torch.empty_like(m4)
    for s, e in zip(starts[:-1], starts[1:]):  # one loop step per shot, not per frame
        seg = m4[s:e]
        if mode == "median":
            out[s:e] = _windowed_median(seg, window // 2)
        else:
            fwd = seg.clone()
            for t in range(1, fwd.shape[0]):  # EMA is a recurrence: one step per frame
                fwd[t] = strength * fwd[t - 1] + (1 - strength) * seg[t]
            bwd = seg.clone()
            for t in range(bwd.shape[0] - 2, -1, -1):
                bwd[t] = strength * bwd[t + 1] + (1 - strength) * seg[t]
            out[s:e] = 0.5 * (fwd + bwd)
    return back(out)
