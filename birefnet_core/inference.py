"""Batched inference: images in, masks out, the way BiRefNet was trained.

Conventions (all public functions):

* IMAGE: float ``[B, H, W, C]`` in 0..1 (C = 3; C = 4 uses the RGB part; C = 1 is broadcast to
  grey RGB), on the CPU or a device. uint8 images are accepted and divided by 255.
* MASK: float32 ``[B, H, W]`` in 0..1, **1 = foreground** (BiRefNet's sigmoid output).
* Sizes named ``*_wh`` are ``(width, height)`` (like the variant table and PIL); sizes named
  ``*_hw`` are ``(height, width)`` (like tensor shapes).

Data flow of :func:`predict_masks`: frames are taken ``k`` at a time (one chunk), moved to the
device, cropped to their region if one is given, resized to the working size (antialiased
bilinear, as torchvision's ``Resize`` on a PIL image), ImageNet-normalised, run through the model
(autocast on CUDA), turned into probabilities (sigmoid of the final logits), resized back
(bilinear) and written into a preallocated output. Host memory holds the inputs, the outputs and
one chunk; nothing of full-batch size is ever resized or copied.

>>> import torch
>>> net = torch.nn.Conv2d(3, 1, 3, padding=1)
>>> masks = predict_masks(net, torch.rand(2, 48, 80, 3), resolution=(64, 32))
>>> masks.shape, masks.dtype
(torch.Size([2, 48, 80]), torch.float32)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .errors import CancelledError, InputError, OutOfMemoryError
from .layout import broadcast_batch, check_images, images_to_bchw, resize_bilinear
from .refine import tag_working_size
from .plan import (
    DEFAULT_REGION_MARGIN,
    DYNAMIC_MAX_MEGAPIXELS,
    DYNAMIC_MIN_SIDE,
    InferenceOptions,
    InferencePlan,
    Precision,
    WorkingSize,
    plan_inference,
)
from .variants import Family

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "preprocess",
    "resize_masks",
    "postprocess",
    "regions_to_boxes",
    "predict_masks",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NoteFn = Callable[[str], None]
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
DeviceLike = Union[str, torch.device]


# --------------------------------------------------------------------------------------------
# Pre- and post-processing
# --------------------------------------------------------------------------------------------


def preprocess(images: torch.Tensor, size_wh: Sequence[int]) -> torch.Tensor:
    """Images ``[k, H, W, C]`` in 0..1 -> model input ``[k, 3, h, w]`` with ``(w, h) = size_wh``.

    Antialiased bilinear resize (``align_corners=False``, the tensor equivalent of torchvision's
    ``Resize`` on a PIL image in the official pipeline), then ImageNet mean/std normalisation.
    Runs on the images' device, in float32.

    >>> preprocess(torch.ones(2, 40, 60, 4), (64, 32)).shape
    torch.Size([2, 3, 32, 64])
    """
    width, height = (int(v) for v in size_wh)
    # One contiguous NCHW copy of the chunk: resize kernels and the model get the usual layout.
    x = images_to_bchw(images, dtype=torch.float32).contiguous()
    if tuple(x.shape[-2:]) != (height, width):
        x = resize_bilinear(x, (height, width), antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_masks(masks: torch.Tensor, out_hw: Sequence[int]) -> torch.Tensor:
    """Probabilities ``[k, 1, h, w]`` or ``[k, h, w]`` -> float32 ``[k, H, W]`` in 0..1.

    Bilinear (antialiased when shrinking, ``align_corners=False``), clamped to 0..1.
    """
    if masks.ndim == 3:
        masks = masks.unsqueeze(1)
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise InputError(f"expected masks [k, 1, h, w] or [k, h, w], got {tuple(masks.shape)}")
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    masks = masks.float()
    if tuple(masks.shape[-2:]) != out_hw:
        masks = resize_bilinear(masks, out_hw, antialias=True)
    return masks[:, 0].clamp_(0.0, 1.0)


def postprocess(logits: torch.Tensor, out_hw: Sequence[int]) -> torch.Tensor:
    """Final logits ``[k, 1, h, w]`` -> masks float32 ``[k, H, W]`` in 0..1, 1 = foreground:
    sigmoid (in float32), bilinear resize to ``out_hw = (H, W)``, clamp.

    >>> postprocess(torch.zeros(1, 1, 32, 32), (10, 20)).shape
    torch.Size([1, 10, 20])
    """
    return resize_masks(torch.sigmoid(logits.float()), out_hw)


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------


def regions_to_boxes(regions, batch: int, frame_hw: Sequence[int]) -> torch.Tensor:
    """Per-frame regions -> int64 boxes ``[B, 4]`` ``(x0, y0, x1, y1)`` in frame pixels (x1, y1
    exclusive, clipped to the frame); a whole-frame box where no region applies.

    ``regions`` is ``None``; boxes ``[B, 4]`` (or ``[4]``/``[1, 4]`` for all frames) in pixels,
    where a zero-area box means the whole frame; or region masks ``[B, h, w]`` (or ``[1, h, w]``,
    ``[h, w]``; any size, scaled to the frame), where the bounding box of the pixels > 0.5 is the
    region and an all-zero mask means the whole frame.
    """
    height, width = (int(v) for v in frame_hw)
    full = torch.tensor([0, 0, width, height], dtype=torch.int64)
    if regions is None:
        return full.expand(batch, 4).clone()
    regions = torch.as_tensor(regions)
    if regions.ndim == 1 or (regions.ndim == 2 and regions.shape[1] == 4):
        return _boxes_from_coordinates(regions, batch, width, height)
    if regions.ndim in (2, 3):
        return _boxes_from_masks(regions, batch, width, height)
    raise InputError(f"regions must be boxes [B, 4] or region masks [B, h, w], got "
                     f"{tuple(regions.shape)}")


def _boxes_from_coordinates(boxes: torch.Tensor, batch: int, width: int,
                            height: int) -> torch.Tensor:
    # On the CPU first: a device such as MPS has no float64.
    boxes = broadcast_batch(boxes.reshape(-1, 4).cpu().double(), batch, "region boxes")
    if not torch.isfinite(boxes).all():
        raise InputError("region boxes contain NaN or infinite coordinates")
    x0, y0, x1, y1 = boxes.unbind(1)
    if bool(((x1 < x0) | (y1 < y0)).any()):
        raise InputError("region boxes must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0 "
                         "(pixels, x1/y1 exclusive)")
    whole = (x1 == x0) | (y1 == y0)
    out = torch.stack((x0.floor().clamp(0, width), y0.floor().clamp(0, height),
                       x1.ceil().clamp(0, width), y1.ceil().clamp(0, height)), 1).long()
    empty = ((out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])) & ~whole
    if bool(empty.any()):
        frame = int(empty.nonzero()[0])
        raise InputError(f"region box {boxes[frame].tolist()} of frame {frame} lies outside "
                         f"the {width}x{height} (WxH) frame")
    out[whole] = torch.tensor([0, 0, width, height])
    return out


def _boxes_from_masks(masks: torch.Tensor, batch: int, width: int, height: int) -> torch.Tensor:
    if masks.ndim == 2:
        masks = masks.unsqueeze(0)
    masks = broadcast_batch(masks, batch, "region masks")
    out = torch.tensor([0, 0, width, height], dtype=torch.int64).repeat(batch, 1)
    mh, mw = masks.shape[-2:]
    for i in range(batch):  # one frame at a time: no full-batch boolean copy
        inside = masks[i] > 0.5
        rows = inside.any(dim=1).nonzero()
        if rows.numel() == 0:
            continue  # all zero: whole frame
        cols = inside.any(dim=0).nonzero()
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        out[i] = torch.tensor([math.floor(c0 * width / mw), math.floor(r0 * height / mh),
                               math.ceil(c1 * width / mw), math.ceil(r1 * height / mh)])
    return out


def _expand_box(box: Sequence[int], margin: float, width: int, height: int) -> tuple[int, ...]:
    """Grow ``box`` by ``margin`` x its width/height on each side, clipped to the frame."""
    x0, y0, x1, y1 = box
    dx, dy = math.ceil(margin * (x1 - x0)), math.ceil(margin * (y1 - y0))
    return (max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy))


# --------------------------------------------------------------------------------------------
# The chunked loop
# --------------------------------------------------------------------------------------------


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _final_logits(output) -> torch.Tensor:
    """A tensor, or a list/tuple of side outputs whose last item is the final logits."""
    if isinstance(output, (list, tuple)):
        output = output[-1]
    return output


@dataclass
class _Run:
    """State of one :func:`predict_masks` call (internal): the plan and what happened."""

    model: nn.Module
    plan: InferencePlan
    notify: NoteFn
    fell_back: bool = False
    # The largest crop side / working side seen so far, per axis ``(y, x)``: how much the
    # blurriest frame's mask was upsampled (whole frames: frame side / working side).
    upsampled: tuple[float, float] = (0.0, 0.0)

    def _saw(self, crop_hw: Sequence[int], size: WorkingSize) -> None:
        self.upsampled = (max(self.upsampled[0], crop_hw[0] / size.height),
                          max(self.upsampled[1], crop_hw[1] / size.width))

    def frame_working_size(self, frame_hw: Sequence[int]) -> tuple[int, int]:
        """``(H, W)``: the working size as seen from the whole frame, for the blurriest frame
        (a crop segmented at the working size is upsampled by crop / working size only)."""
        return tuple(max(1, round(side / scale)) if scale > 0 else side
                     for side, scale in zip(frame_hw, self.upsampled))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model logits ``[n, 1, h, w]`` in float32; frames that came out non-finite in reduced
        precision are redone in fp32 (reported once per call)."""
        precision = self.plan.precision
        with precision.autocast():
            out = _final_logits(self.model(x.to(self.plan.input_dtype))).float()
        if not precision.reduced:
            return out
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bool(bad.any()):
            if not self.fell_back:
                self.fell_back = True
                self.notify(f"non-finite values in {precision.name}: redoing the affected frames "
                            "in fp32 (choose precision fp32 to avoid the extra pass)")
            out[bad] = _final_logits(self.model(x[bad].float())).float()
        return out

    def chunk(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Masks ``[n, H, W]`` (float32, on the device) for a chunk of frames ``[n, H, W, C]``
        with their boxes ``[n, 4]``."""
        n, height, width = images.shape[:3]
        plan = self.plan
        frames = images.to(plan.device, non_blocking=True)
        full = torch.tensor([0, 0, width, height])
        whole = bool((boxes == full).all())
        if whole:
            size = plan.working_size
            self._saw((height, width), size)
            return postprocess(self.logits(preprocess(frames, size.wh)), (height, width))
        masks = torch.zeros(n, height, width, device=plan.device)
        crops = [_expand_box(b.tolist(), plan.options.region_margin, width, height)
                 for b in boxes]
        sizes = [plan.working_size_for((c[3] - c[1], c[2] - c[0])) for c in crops]
        for c, size in zip(crops, sizes):
            self._saw((c[3] - c[1], c[2] - c[0]), size)
        for size in dict.fromkeys(s.wh for s in sizes):  # frames sharing a size share a batch
            idx = [i for i, s in enumerate(sizes) if s.wh == size]
            x = torch.cat([preprocess(frames[i:i + 1, crops[i][1]:crops[i][3],
                                             crops[i][0]:crops[i][2]], size) for i in idx])
            logits = self.logits(x)
            for j, i in enumerate(idx):
                cx0, cy0, cx1, cy1 = crops[i]
                x0, y0, x1, y1 = boxes[i].tolist()
                crop_mask = postprocess(logits[j:j + 1], (cy1 - cy0, cx1 - cx0))[0]
                masks[i, y0:y1, x0:x1] = crop_mask[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
        return masks


def predict_masks(
    model: nn.Module,
    images: torch.Tensor,
    *,
    family: Optional[Family] = None,
    resolution=None,
    precision: Union[Precision, str] = Precision.AUTO,
    device: Optional[DeviceLike] = None,
    batch_size: int = 0,
    regions=None,
    region_margin: float = DEFAULT_REGION_MARGIN,
    max_megapixels: float = DYNAMIC_MAX_MEGAPIXELS,
    min_side: int = DYNAMIC_MIN_SIDE,
    on_progress: Optional[ProgressFn] = None,
    is_cancelled: Optional[CancelFn] = None,
    on_note: Optional[NoteFn] = None,
    output_device: Optional[DeviceLike] = "cpu",
    plan: Optional[InferencePlan] = None,
) -> torch.Tensor:
    """Segment a batch of images: ``images [B, H, W, C]`` (0..1) -> masks float32 ``[B, H, W]``
    in 0..1, **1 = foreground**, on ``output_device`` (``None``: the compute device).

    Args:
        model: any module with the BiRefNet forward contract (normalised ``[n, 3, h, w]`` with
            h, w multiples of 32 -> logits ``[n, 1, h, w]``, or a list whose last item is them).
        family: decides the working size (its trained resolution, or dynamic); ``None`` = 1024².
        resolution: override, ``(W, H)``, ``"WxH"``, ``"auto"`` or ``"dynamic"`` (see
            :func:`~birefnet_core.plan.resolve_working_size`; a rounded override is reported through ``on_note``).
        precision: :class:`Precision` or its value (see :func:`~birefnet_core.plan.resolve_precision`).
        device: where to compute; ``None`` = the model's device. The model is not moved: it must
            already be there (or be moved there by its host as it runs).
        batch_size: frames per chunk ``k``; ``0`` = automatic from free memory
            (:func:`~birefnet_core.plan.auto_batch_size`). Halved on out-of-memory, down to 1.
        regions: ``None``, boxes ``[B, 4]`` ``(x0, y0, x1, y1)`` in pixels, or region masks
            ``[B, h, w]`` (see :func:`regions_to_boxes`). Each region is cropped with
            ``region_margin`` x its size of context on each side, segmented at the working size
            and pasted back; the mask is zero outside the region's box. Passing the masks of a
            first, coarse pass as ``regions`` gives the coarse-to-fine path for large images.
        max_megapixels, min_side: limits of the dynamic working size.
        on_progress: called as ``on_progress(done, total)`` after each chunk.
        is_cancelled: polled before each chunk; ``True`` raises :class:`CancelledError`.
        on_note: receives one-line reports (rounded resolution, precision fallback, chunk size
            reduced after out-of-memory); ``None`` logs them as warnings.
        output_device: where the masks are allocated.
        plan: an :class:`InferencePlan` made by :func:`plan_inference` for these images (as a
            host does, to free the plan's memory first); it then replaces ``family``,
            ``resolution``, ``precision``, ``device``, ``batch_size``, ``region_margin``,
            ``max_megapixels`` and ``min_side``, which must be left at their defaults.

    The masks carry the working size they were predicted at, as seen from the whole frame
    (:func:`~birefnet_core.refine.working_size_of`; with regions, the crop of the most upsampled
    frame decides it): edge refinement reads it to know how blurred the masks are.

    Output does not depend on ``batch_size`` (to float rounding). Raises :class:`InputError` on
    bad inputs and :class:`OutOfMemoryError` when a single frame does not fit.
    """
    check_images(images)
    notify = on_note or (lambda message: logger.warning("BiRefNet: %s", message))
    if plan is None:
        options = InferenceOptions(resolution=resolution, precision=precision,
                                   batch_size=batch_size, max_megapixels=max_megapixels,
                                   min_side=min_side, region_margin=region_margin)
        plan = plan_inference(model, images, options, device, family=family)
    else:
        given = dict(family=family, resolution=resolution, device=device, batch_size=batch_size,
                     region_margin=region_margin, max_megapixels=max_megapixels,
                     min_side=min_side, precision=Precision(str(getattr(precision, "value",
                                                                         precision))))
        defaults = dict(family=None, resolution=None, device=None, batch_size=0,
                        region_margin=DEFAULT_REGION_MARGIN,
                        max_megapixels=DYNAMIC_MAX_MEGAPIXELS, min_side=DYNAMIC_MIN_SIDE,
                        precision=Precision.AUTO)
        clash = [k for k, v in given.items() if v != defaults[k]]
        if clash:
            raise InputError(f"predict_masks: {', '.join(clash)} given together with a plan; "
                             "put them in the plan's InferenceOptions instead")
    for note in plan.notes:
        notify(note)

    total, height, width = images.shape[:3]
    device = plan.device
    out_device = device if output_device is None else torch.device(output_device)
    out = torch.empty(total, height, width, dtype=torch.float32, device=out_device)
    if total == 0:
        return out

    boxes = regions_to_boxes(regions, total, (height, width))
    size, precision_name = plan.working_size, plan.precision.name
    run = _Run(model, plan, notify)
    k = min(plan.chunk, total)

    done = 0
    while done < total:
        if is_cancelled is not None and is_cancelled():
            raise CancelledError(f"cancelled after {done} of {total} frames")
        n = min(k, total - done)
        try:
            masks = run.chunk(images[done:done + n], boxes[done:done + n])
            out[done:done + n].copy_(masks, non_blocking=False)
            del masks
            failed = False
        except Exception as error:  # noqa: BLE001 - filtered just below
            if not _is_oom(error):
                raise
            failed = True
        if failed:  # outside the except block: the failed chunk's tensors are released now
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if n == 1:
                raise OutOfMemoryError(
                    f"out of memory on {device} with a single {width}x{height} frame at working "
                    f"size {size} (WxH) in {precision_name}: lower the resolution (resolution "
                    f"override), use precision fp16/bf16 on a GPU, or free device memory "
                    f"(unload other models, close other programs); batch_size is already 1")
            k = max(1, n // 2)
            notify(f"out of memory with {n} frames per chunk at {size} (WxH) in {precision_name} on "
                   f"{device}; retrying with {k} (lower batch_size to skip this search)")
            continue
        done += n
        if on_progress is not None:
            on_progress(done, total)
    # Refine Mask's working size "auto" reads this: the size flows with the masks instead of
    # being retyped (a 512 model refined as if it were 1024 would get no edge refinement).
    return tag_working_size(out, run.frame_working_size((height, width)))
