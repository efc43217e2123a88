"""The IMAGE / MASK contract of the pack, owned here and nowhere else.

* IMAGE: ``[B, H, W, C]`` (ComfyUI's layout; ``[H, W, C]`` is one frame), C = 1 (grey), 3 (RGB)
  or 4 (RGBA, straight alpha), float in 0..1 or uint8 (divided by 255). Float data peaking
  above 1.5 is refused as 0..255 data; NaN and inf are refused naming the frame.
* MASK: ``[B, H, W]`` (also ``[H, W]`` or ``[B, 1, H, W]``), float 0..1, **1 = foreground**.
* Batches broadcast: a batch of 1 serves every frame; any other mismatch is an error.

Every public op converts at its boundary with these functions (into ``[B, C, H, W]`` float
for the work, back to the caller's layout at the end), so a grey image, an RGBA image, a uint8
image or a 3-pixel-high image means the same to every node.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "all_finite",
    "check_finite",
    "check_images",
    "images_to_bchw",
    "masks_to_b1hw",
    "broadcast_batch",
    "fit_masks",
    "join_alpha",
    "upsampling_factor",
    "resize_bilinear",
]

_CHANNELS = (1, 3, 4)
_PEAK = 1.5  # a float frame above this is 0..255 data; a little overshoot is tolerated


def upsampling_factor(size: tuple[int, int], working_size) -> float:
    """How much a mask predicted at ``working_size`` (int side or ``(H, W)``; None: full
    detail, 1.0) was upsampled to ``size`` ``(H, W)``: the larger axis ratio.

    >>> upsampling_factor((2048, 1024), 1024), upsampling_factor((500, 800), (1024, 1024))
    (2.0, 0.78125)
    """
    if working_size is None:
        return 1.0
    if isinstance(working_size, (int, float)):
        wh = ww = float(working_size)
    else:
        wh, ww = (float(v) for v in working_size)
    if not (0 < wh < math.inf and 0 < ww < math.inf):
        raise InputError(f"working_size must be positive and finite, got {working_size!r}.")
    return max(size[0] / wh, size[1] / ww)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite (non-float tensors always are).

    A sum is NaN or inf whenever one of its terms is, so one reduction screens the tensor
    (a 2048² RGB frame: ~0.5 ms against ~15 ms for ``isfinite().all()``, which materialises
    a full-size bool tensor); ``isfinite().all()`` then decides only where the sum is not
    finite, which a sum overflowing its dtype can also cause (half-precision tensors are
    summed in float32, where a frame of values in 0..1 cannot overflow).

    >>> all_finite(torch.tensor([1.0, 2.0])), all_finite(torch.tensor([1.0, float("inf")]))
    (True, False)
    >>> all_finite(torch.full((4,), 3e38))  # the sum overflows, not a value
    True
    """
    if not t.is_floating_point():
        return True
    total = t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())


def check_finite(t: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Return ``t``, or raise :class:`InputError` naming the first frame that holds NaN or inf.

    One NaN pixel would otherwise spread through every box filter (their running sums) to the
    whole frame, and a morphology or threshold step would hide it: refuse it at the boundary.
    Frames are indexed along dim 0 of a tensor with 3 or more dims.

    >>> check_finite(torch.tensor([[[0.0, float("nan")]]]), "mask")
    Traceback (most recent call last):
    ...
    birefnet_core.errors.InputError: mask: frame 0 has 1 NaN and 0 infinite value(s); one would ...
    """
    if all_finite(t):
        return t
    what, part = name, t
    if t.ndim >= 3:
        i = int((~torch.isfinite(t)).flatten(1).any(1).nonzero()[0])
        what, part = f"{name}: frame {i}", t[i]
    nan, inf = int(torch.isnan(part).sum()), int(torch.isinf(part).sum())
    raise InputError(
        f"{what} has {nan} NaN and {inf} infinite value(s); one would spread over the whole "
        "frame. Fix the step that produced them (e.g. a division by zero), or replace them "
        "first (torch.nan_to_num).")


def check_images(images, name: str = "images") -> None:
    """Raise :class:`InputError` unless ``images`` is an IMAGE ``[B, H, W, C]`` (C = 1, 3 or
    4), uint8 or float 0..1 without NaN/inf. Frame by frame: no full-batch temporaries.

    >>> check_images(torch.zeros(2, 3, 5, 4))  # 3 px high, RGBA: fine
    >>> check_images(torch.zeros(2, 3, 5, 2))
    Traceback (most recent call last):
    ...
    birefnet_core.errors.InputError: images must be a [B, H, W, C] tensor with C in (1, 3, 4) ...
    """
    if (not isinstance(images, torch.Tensor) or images.ndim != 4
            or images.shape[-1] not in _CHANNELS):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be a [B, H, W, C] tensor with C in (1, 3, 4) (ComfyUI "
                         f"IMAGE layout), got {shape}")
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise InputError(f"{name} must be float 0..1 or uint8, got {images.dtype}")
    if images.is_floating_point():
        for i in range(images.shape[0]):
            frame = images[i]
            if not all_finite(frame):
                nan, inf = int(torch.isnan(frame).sum()), int(torch.isinf(frame).sum())
                raise InputError(f"{name}: frame {i} has {nan} NaN and {inf} infinite value(s); "
                                 "check the node that produced them")
            peak = float(frame.amax()) if frame.numel() else 0.0
            if peak > _PEAK:
                raise InputError(f"{name}: frame {i} has values up to {peak:.4g}, but float "
                                 "images must be 0..1: divide them by 255 (or pass uint8, "
                                 "which is converted)")


def images_to_bchw(images: torch.Tensor, name: str = "images", *,
                   dtype: torch.dtype | None = None, alpha: bool = False) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` or ``[H, W, C]`` -> RGB ``[B, 3, H, W]`` in 0..1, in ``dtype``
    (``None``: a float image's own dtype, float32 for uint8).

    Grey is repeated into RGB, an alpha channel is dropped (kept as a 4th channel with
    ``alpha=True``), uint8 is divided by 255; the result is a view where no conversion was
    needed.

    >>> images_to_bchw(torch.full((1, 2, 3, 1), 255, dtype=torch.uint8)).shape
    torch.Size([1, 3, 2, 3])
    >>> images_to_bchw(torch.zeros(1, 2, 3, 4), alpha=True).shape
    torch.Size([1, 4, 2, 3])
    """
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images[None]
    check_images(images, name)
    channels = images.shape[-1]
    if channels == 1:
        rgb = images.expand(*images.shape[:3], 3)
    else:
        rgb = images if (alpha and channels == 4) else images[..., :3]
    out = rgb.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        return out.to(dtype or torch.float32).div_(255)
    return out if dtype is None else out.to(dtype)


def masks_to_b1hw(mask: torch.Tensor, name: str = "mask") -> tuple[torch.Tensor, Callable]:
    """MASK -> ``(float [B, 1, H, W], function giving a result back the caller's shape)``.

    >>> m4, back = masks_to_b1hw(torch.zeros(5, 7)); tuple(m4.shape), tuple(back(m4).shape)
    ((1, 1, 5, 7), (5, 7))
    """
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}.")
    shape = tuple(mask.shape)
    if mask.ndim == 2:
        m4 = mask[None, None]
    elif mask.ndim == 3:
        m4 = mask[:, None]
    elif mask.ndim == 4 and mask.shape[1] == 1:
        m4 = mask
    else:
        raise InputError(f"{name}: expected shape [H,W], [B,H,W] or [B,1,H,W], got {list(shape)}. "
                         "Pass a single-channel mask (convert an image with ImageToMask first).")
    if not m4.is_floating_point():
        m4 = m4.float()
    check_finite(m4, name)
    return m4, (lambda t: t.reshape(t.shape[0], *shape[1:]) if len(shape) != 2
                else t.reshape(shape[-2:]))


def broadcast_batch(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """``t`` with ``batch`` entries along dim 0: itself, or a batch of 1 expanded (a view).

    >>> broadcast_batch(torch.zeros(1, 2), 3, "masks").shape
    torch.Size([3, 2])
    """
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise InputError(f"{what} batch has {t.shape[0]} frames but the image batch has {batch}; "
                     f"pass one for all frames or one per frame.")


def fit_masks(mask4: torch.Tensor, size_hw: tuple[int, int], batch: int,
              name: str = "mask") -> torch.Tensor:
    """A ``[B, 1, h, w]`` mask resized bilinearly to ``size_hw`` and broadcast to ``batch``.

    >>> fit_masks(torch.ones(1, 1, 4, 4), (8, 6), 3).shape
    torch.Size([3, 1, 8, 6])
    """
    if tuple(mask4.shape[-2:]) != tuple(size_hw):
        mask4 = F.interpolate(mask4, size=tuple(size_hw), mode="bilinear", align_corners=False)
    return broadcast_batch(mask4, batch, name)


def join_alpha(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` + MASK ``[B, H, W]`` -> RGBA ``[B, H, W, 4]`` float32 on the
    masks' device: the RGB as it is (grey repeated), straight alpha = the mask (an input alpha
    channel is replaced).

    >>> join_alpha(torch.zeros(1, 2, 2, 1), torch.ones(1, 2, 2))[..., 3].tolist()
    [[[1.0, 1.0], [1.0, 1.0]]]
    """
    rgb = images_to_bchw(images, dtype=torch.float32).permute(0, 2, 3, 1)
    rgb = rgb.to(masks.device)
    return torch.cat((rgb, masks.unsqueeze(-1).to(torch.float32)), dim=-1)


def bilinear_taps(first: int, n: int, n_in: int, n_out: int, device, dtype):
    """Output pixels ``first .. first + n - 1`` of a bilinear resize of ``n_in`` to ``n_out``
    along one axis, as F.interpolate (``align_corners=False``) maps them: ``(i0, i1, lam)``,
    each output = ``lerp(x[i0], x[i1], lam)``. Positions in float32, as F.interpolate computes
    them (and MPS has no float64)."""
    src = ((torch.arange(first, first + n, dtype=torch.float32, device=device) + 0.5)
           * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    return i0, (i0 + 1).clamp(max=n_in - 1), (src - i0).to(dtype)


# Device types whose torch has no antialiased bilinear kernel (MPS before torch 2.7 raises
# NotImplementedError): there those resizes run on the CPU.
_NO_ANTIALIAS: set[str] = set()


def resize_bilinear(x: torch.Tensor, size, antialias: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=antialias)``
    on any device: where the device has no antialiased kernel, that resize runs on the CPU and
    the result comes back (noted once in the log). Every antialiased resize of the pack goes
    through here."""
    size = (int(size[0]), int(size[1]))
    kind = x.device.type
    if not (antialias and kind in _NO_ANTIALIAS):
        try:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                 antialias=antialias)
        except NotImplementedError:
            if not antialias:
                raise
            _NO_ANTIALIAS.add(kind)
            logger.warning("BiRefNet: this torch has no antialiased resize on %s; those "
                           "resizes run on the CPU (torch 2.7 or newer has it)", kind)
    return _antialiased_on_cpu(x, size).to(x.device)


def _antialiased_on_cpu(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x.cpu(), size=size, mode="bilinear", align_corners=False,
                         antialias=True)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """``[N, C, h, w]`` resized bilinearly to ``size`` (H, W), antialiased when shrinking
    (``align_corners=False``); ``x`` itself when it has that size. The ops' internal resize
    (:mod:`.edges`, :mod:`.foreground`, :mod:`.composite`)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return resize_bilinear(x, size, antialias=down)
