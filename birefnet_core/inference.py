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

import contextlib
import enum
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CancelledError, InputError, OutOfMemoryError
from .variants import BACKBONES, Architecture, Family

__all__ = [
    "STRIDE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_RESOLUTION",
    "DYNAMIC_MAX_MEGAPIXELS",
    "DYNAMIC_MIN_SIDE",
    "DEFAULT_REGION_MARGIN",
    "WorkingSize",
    "parse_resolution",
    "resolve_working_size",
    "preprocess",
    "resize_masks",
    "postprocess",
    "Precision",
    "PrecisionPlan",
    "resolve_precision",
    "estimate_memory",
    "auto_batch_size",
    "regions_to_boxes",
    "predict_masks",
]

logger = logging.getLogger(__name__)

STRIDE = 32  # == birefnet_core.model.STRIDE; repeated here so importing this module stays light
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = (1024, 1024)  # (W, H) when neither a family nor an override says otherwise
# The dynamic models were trained on sides of 256..2304 px; cap the area at 2048² worth.
DYNAMIC_MAX_MEGAPIXELS = 2048 * 2048 / 1e6
DYNAMIC_MIN_SIDE = 256
DEFAULT_REGION_MARGIN = 0.1  # fraction of the region's width / height added on each side

NoteFn = Callable[[str], None]
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
DeviceLike = Union[str, torch.device]


# --------------------------------------------------------------------------------------------
# Resolution policy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkingSize:
    """The size frames are resized to before the model, ``width`` x ``height`` (multiples of 32).

    ``note`` is non-empty when the size differs from what was asked (a rounded override, a
    capped or enlarged dynamic size), so that a UI can report it.
    """

    width: int
    height: int
    note: str = ""

    @property
    def wh(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def _round_to_stride(n: float) -> int:
    """Nearest multiple of :data:`STRIDE`, at least one stride."""
    return max(STRIDE, int(round(n / STRIDE)) * STRIDE)


_SIZE_RE = re.compile(r"^\s*(\d+)\s*[x*×,]\s*(\d+)\s*$", re.IGNORECASE)


def parse_resolution(value) -> Union[str, tuple[int, int]]:
    """Normalise a resolution option to ``"auto"``, ``"dynamic"`` or a ``(W, H)`` tuple.

    Accepts ``None``/``""``/``"auto"``, ``"dynamic"``, ``"1024x768"`` (W x H), an int (square) or a
    ``(W, H)`` pair. Sizes are returned as given (not yet rounded).

    >>> parse_resolution("1024x768"), parse_resolution(None), parse_resolution(512)
    ((1024, 768), 'auto', (512, 512))
    """
    if value is None:
        return "auto"
    if isinstance(value, str):
        key = value.strip().lower()
        if key in ("", "auto", "default"):
            return "auto"
        if key == "dynamic":
            return "dynamic"
        match = _SIZE_RE.match(key)
        if match is None:
            raise InputError(
                f"resolution {value!r} is not understood; expected 'auto', 'dynamic' or "
                "'WIDTHxHEIGHT' such as '1024x1024'")
        value = (int(match.group(1)), int(match.group(2)))
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise InputError(f"resolution {value!r} must be a (width, height) pair of ints, "
                         "'WIDTHxHEIGHT', 'auto' or 'dynamic'")
    width, height = value
    if width <= 0 or height <= 0:
        raise InputError(f"resolution {width}x{height} (WxH) must be positive")
    return (width, height)


def _dynamic_size(image_hw: Sequence[int], max_megapixels: float, min_side: int) -> WorkingSize:
    """The image size, scaled down to at most ``max_megapixels`` or up to a shorter side of
    ``min_side`` (the cap wins), keeping the aspect ratio, then rounded to multiples of 32."""
    h, w = (int(v) for v in image_hw)
    scale, why = 1.0, ""
    if min(h, w) < min_side:
        scale, why = min_side / min(h, w), f"enlarged to a shorter side of {min_side}"
    max_pixels = max_megapixels * 1e6
    if h * w * scale * scale > max_pixels:
        scale, why = math.sqrt(max_pixels / (h * w)), f"capped at {max_megapixels:.2f} MP"
    size = WorkingSize(_round_to_stride(w * scale), _round_to_stride(h * scale))
    if why:
        size = WorkingSize(size.width, size.height,
                           f"dynamic working size {size} (WxH) for a {w}x{h} image: {why}")
    return size


def resolve_working_size(
    family: Optional[Family],
    image_hw: Sequence[int],
    *,
    override=None,
    max_megapixels: float = DYNAMIC_MAX_MEGAPIXELS,
    min_side: int = DYNAMIC_MIN_SIDE,
) -> WorkingSize:
    """Working size for an image of size ``image_hw = (H, W)``.

    * ``override`` (``(W, H)``, ``"WxH"`` or an int) wins; sides that are not multiples of 32 are
      rounded to the nearest one, and the rounding is described in ``note``;
    * ``override="dynamic"``, or a dynamic family, takes the image size rounded to multiples of 32,
      with at most ``max_megapixels`` and a shorter side of at least ``min_side``;
    * otherwise the family's trained size (1024² when ``family`` is ``None``).

    >>> from birefnet_core.variants import FAMILIES
    >>> resolve_working_size(FAMILIES["lite_2k"], (1080, 1920)).wh
    (2560, 1440)
    >>> resolve_working_size(FAMILIES["dynamic"], (1080, 1920)).wh
    (1920, 1088)
    >>> resolve_working_size(None, (1080, 1920), override="1000x500").note
    'resolution 1000x500 (WxH) rounded to 992x512: sides must be multiples of 32'
    """
    if len(image_hw) != 2 or min(int(v) for v in image_hw) <= 0:
        raise InputError(f"image size {tuple(image_hw)} must be a positive (H, W) pair")
    if max_megapixels <= 0 or min_side < 0:
        raise InputError(f"max_megapixels ({max_megapixels}) must be > 0 and min_side "
                         f"({min_side}) >= 0")
    choice = parse_resolution(override)
    if isinstance(choice, tuple):
        width, height = choice
        size = WorkingSize(_round_to_stride(width), _round_to_stride(height))
        if size.wh != (width, height):
            size = WorkingSize(size.width, size.height,
                               f"resolution {width}x{height} (WxH) rounded to {size}: "
                               f"sides must be multiples of {STRIDE}")
        return size
    if choice == "dynamic" or (family is not None and family.dynamic):
        return _dynamic_size(image_hw, max_megapixels, min_side)
    width, height = family.resolution if family is not None else DEFAULT_RESOLUTION
    return WorkingSize(_round_to_stride(width), _round_to_stride(height))


# --------------------------------------------------------------------------------------------
# Pre- and post-processing
# --------------------------------------------------------------------------------------------


def _to_rgb_bchw(images: torch.Tensor) -> torch.Tensor:
    """``[k, H, W, C]`` (C = 1, 3 or 4; float 0..1 or uint8) -> float32 ``[k, 3, H, W]``."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    elif not images.is_floating_point():
        raise InputError(f"images must be float 0..1 or uint8, got {images.dtype}")
    channels = images.shape[-1]
    if channels == 1:
        images = images.expand(*images.shape[:-1], 3)
    elif channels == 4:
        images = images[..., :3]
    # One contiguous NCHW copy of the chunk: resize kernels and the model get the usual layout.
    return images.permute(0, 3, 1, 2).float().contiguous()


def preprocess(images: torch.Tensor, size_wh: Sequence[int]) -> torch.Tensor:
    """Images ``[k, H, W, C]`` in 0..1 -> model input ``[k, 3, h, w]`` with ``(w, h) = size_wh``.

    Antialiased bilinear resize (``align_corners=False``, the tensor equivalent of torchvision's
    ``Resize`` on a PIL image in the official pipeline), then ImageNet mean/std normalisation.
    Runs on the images' device, in float32.

    >>> preprocess(torch.ones(2, 40, 60, 4), (64, 32)).shape
    torch.Size([2, 3, 32, 64])
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise InputError(f"expected images [k, H, W, C] with C in (1, 3, 4), "
                         f"got {tuple(images.shape)}")
    width, height = (int(v) for v in size_wh)
    x = _to_rgb_bchw(images)
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                          antialias=True)
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
        masks = F.interpolate(masks, size=out_hw, mode="bilinear", align_corners=False,
                              antialias=True)
    return masks[:, 0].clamp_(0.0, 1.0)


def postprocess(logits: torch.Tensor, out_hw: Sequence[int]) -> torch.Tensor:
    """Final logits ``[k, 1, h, w]`` -> masks float32 ``[k, H, W]`` in 0..1, 1 = foreground:
    sigmoid (in float32), bilinear resize to ``out_hw = (H, W)``, clamp.

    >>> postprocess(torch.zeros(1, 1, 32, 32), (10, 20)).shape
    torch.Size([1, 10, 20])
    """
    return resize_masks(torch.sigmoid(logits.float()), out_hw)


# --------------------------------------------------------------------------------------------
# Precision policy
# --------------------------------------------------------------------------------------------


class Precision(str, enum.Enum):
    """Compute precision. ``auto``: fp32 on the CPU and MPS, fp16 autocast on CUDA (BiRefNet's
    masks stay ~10x closer to fp32 in fp16 than in bf16; frames that overflow are redone in
    fp32). Reduced precision runs under ``torch.autocast``; the fast deformable convolution
    samples in the reduced dtype (positions in fp32), torchvision's runs in fp32 under its
    own CUDA autocast rule."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16,
           Precision.BF16: torch.bfloat16}
_NAMES = {v: k.value for k, v in _DTYPES.items()}


@dataclass(frozen=True)
class PrecisionPlan:
    """The resolved precision: ``dtype`` of the autocast region (``float32`` = no autocast) on
    ``device_type``; ``note`` says when the request could not be honoured as asked."""

    dtype: torch.dtype
    device_type: str
    note: str = ""

    @property
    def reduced(self) -> bool:
        return self.dtype != torch.float32

    @property
    def name(self) -> str:
        return _NAMES[self.dtype]

    def autocast(self):
        """The context to run the model in: autocast for reduced precision, else a no-op."""
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def _cuda_bf16_supported(device: torch.device) -> bool:
    # Native bf16 arithmetic needs compute capability 8.0 (Ampere) or newer; older GPUs emulate.
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: Union[Precision, str], device: DeviceLike) -> PrecisionPlan:
    """Decide the compute precision for ``device``.

    CPU: ``auto`` = fp32; an explicit bf16 runs under CPU autocast; fp16 falls back to fp32 with
    a note (slow or missing CPU kernels). CUDA: ``auto`` -> fp16 (bf16 on request, Ampere or
    newer). MPS: fp32 or fp16 (``auto`` = fp32).
    """
    try:
        precision = Precision(str(getattr(precision, "value", precision)).lower())
    except ValueError:
        raise InputError(f"unknown precision {precision!r}; expected one of "
                         f"{', '.join(p.value for p in Precision)}") from None
    device = torch.device(device)
    kind = device.type
    if kind == "cuda":
        if precision is Precision.AUTO:
            return PrecisionPlan(torch.float16, kind)
        if precision is Precision.BF16 and not _cuda_bf16_supported(device):
            raise InputError(f"bf16 is not supported natively by {device} (needs compute "
                             "capability 8.0, Ampere, or newer); choose fp16 or auto")
        return PrecisionPlan(_DTYPES[precision], kind)
    if kind == "mps":
        if precision is Precision.BF16:
            raise InputError("bf16 is not available on MPS; choose fp16, fp32 or auto")
        dtype = torch.float16 if precision is Precision.FP16 else torch.float32
        return PrecisionPlan(dtype, kind)
    if precision is Precision.BF16:
        return PrecisionPlan(torch.bfloat16, kind)
    if precision is Precision.FP16:
        return PrecisionPlan(torch.float32, kind,
                             f"fp16 is not available on {kind} (no fast half-precision "
                             "kernels there); running in fp32 (bf16 is supported)")
    return PrecisionPlan(torch.float32, kind)


# --------------------------------------------------------------------------------------------
# Memory estimate and chunk size
# --------------------------------------------------------------------------------------------

# Peak activation bytes per input pixel for one frame in fp32, per backbone. Rough: the CPU
# peak-RSS growth of a forward between 256² and 512² inputs (PVT-v2 b0 1.3k, b2 1.5k, Swin-T 1.9k,
# Swin-L 2.7k bytes/pixel) plus ~30 % for GPU workspaces; Swin-L at 1024² then comes to ~3.8 GB,
# in line with the few GB reported for the official model. The decoder's width follows the
# backbone's. Reduced precision saves less than half (deformable convolutions, softmax and
# normalisations stay in fp32 under autocast): factor 0.75. Unknown modules use the largest value.
_ACT_BYTES_PER_PIXEL = {
    "pvt_v2_b0": 1700,
    "pvt_v2_b1": 2000,
    "pvt_v2_b2": 2000,
    "pvt_v2_b5": 2400,
    "swin_v1_t": 2400,
    "swin_v1_s": 2400,
    "swin_v1_b": 3000,
    "swin_v1_l": 3600,
}
_REDUCED_PRECISION_FACTOR = 0.75
_UNKNOWN_BYTES_PER_PIXEL = max(_ACT_BYTES_PER_PIXEL.values())
_CPU_MAX_CHUNK = 4  # CPU memory is plentiful but large chunks are cache-unfriendly
_DEVICE_MAX_CHUNK = 32
_FREE_MEMORY_SHARE = 0.8  # leave room for the allocator's fragmentation


def _backbone_of(model_or_arch) -> Optional[str]:
    if isinstance(model_or_arch, nn.Module):
        model_or_arch = getattr(model_or_arch, "arch", None)
    if isinstance(model_or_arch, Architecture):
        return model_or_arch.backbone
    if isinstance(model_or_arch, str):
        for name in sorted(BACKBONES, key=len, reverse=True):
            if model_or_arch.startswith(name):  # "swin_v1_l_legacy", "swin_v1_l.hr" ...
                return name
        raise InputError(f"unknown architecture {model_or_arch!r}; expected a name starting "
                         f"with one of {', '.join(BACKBONES)}")
    return None


def _weight_bytes(model_or_arch) -> int:
    if isinstance(model_or_arch, nn.Module):
        return sum(t.numel() * t.element_size()
                   for t in (*model_or_arch.parameters(), *model_or_arch.buffers()))
    return 0


def estimate_memory(
    model_or_arch,
    size_wh: Sequence[int],
    precision: Union[Precision, str, torch.dtype] = "fp32",
    batch: int = 1,
    *,
    include_weights: bool = True,
) -> int:
    """Rough device bytes to run ``batch`` frames at ``size_wh = (W, H)``.

    ``activations = batch * W * H * bytes_per_pixel(backbone) * (0.75 if fp16/bf16 else 1)``,
    with a per-backbone constant (PVT-v2 b0 ~1.7 kB/pixel ... Swin-L ~3.6 kB/pixel in fp32),
    plus, when ``include_weights`` and a module is given, its parameter and buffer bytes (and
    half of that again for autocast's reduced-precision weight copies). ``model_or_arch`` is a
    model (with an ``.arch``), an :class:`Architecture` or an architecture name such as
    ``swin_v1_l``; ``precision`` is a dtype, or a :class:`Precision` (``auto`` counts as fp32:
    pass :func:`resolve_precision`'s ``dtype`` for the real one). Meant for choosing a chunk size
    and for a host's "memory required"; expect +-50 %.
    """
    if isinstance(precision, torch.dtype):
        reduced = precision != torch.float32
    else:
        reduced = str(getattr(precision, "value", precision)).lower() in ("fp16", "bf16")
    backbone = _backbone_of(model_or_arch)
    per_pixel = _ACT_BYTES_PER_PIXEL.get(backbone, _UNKNOWN_BYTES_PER_PIXEL)
    if reduced:
        per_pixel = int(per_pixel * _REDUCED_PRECISION_FACTOR)
    width, height = (int(v) for v in size_wh)
    total = int(batch) * width * height * per_pixel
    if include_weights:
        weights = _weight_bytes(model_or_arch)
        total += weights + (weights // 2 if reduced else 0)
    return total


def _free_memory(device: torch.device) -> Optional[int]:
    """Free bytes on ``device`` (CUDA: driver's free memory + the caching allocator's reserve;
    CPU: available physical memory on Linux), or ``None`` when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def auto_batch_size(
    model: nn.Module,
    size_wh: Sequence[int],
    plan: PrecisionPlan,
    device: DeviceLike,
    total: int,
) -> int:
    """Chunk size ``k`` for ``total`` frames: as many frames as fit in the free device memory by
    :func:`estimate_memory` (at most 32 on a GPU, 4 on the CPU or MPS), at least 1."""
    device = torch.device(device)
    cap = _DEVICE_MAX_CHUNK if device.type == "cuda" else _CPU_MAX_CHUNK
    per_frame = estimate_memory(model, size_wh, plan.dtype, 1, include_weights=False)
    free = _free_memory(device)
    if free is not None and per_frame > 0:
        cap = min(cap, int(free * _FREE_MEMORY_SHARE) // per_frame)
    return max(1, min(cap, total))


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


def _broadcast_batch(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise InputError(f"{what} have {t.shape[0]} entries for {batch} frames; give one per frame "
                     "or a single one for all")


def _boxes_from_coordinates(boxes: torch.Tensor, batch: int, width: int,
                            height: int) -> torch.Tensor:
    boxes = _broadcast_batch(boxes.reshape(-1, 4).double().cpu(), batch, "region boxes")
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
    masks = _broadcast_batch(masks, batch, "region masks")
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


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


@dataclass
class _Run:
    """State of one :func:`predict_masks` call (internal)."""

    model: nn.Module
    family: Optional[Family]
    resolution: object
    plan: PrecisionPlan
    device: torch.device
    input_dtype: torch.dtype
    margin: float
    max_megapixels: float
    min_side: int
    notify: NoteFn
    fell_back: bool = False

    def working_size(self, crop_hw: Sequence[int]) -> WorkingSize:
        return resolve_working_size(self.family, crop_hw, override=self.resolution,
                                    max_megapixels=self.max_megapixels, min_side=self.min_side)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model logits ``[n, 1, h, w]`` in float32; frames that came out non-finite in reduced
        precision are redone in fp32 (reported once per call)."""
        with self.plan.autocast():
            out = _final_logits(self.model(x.to(self.input_dtype))).float()
        if not self.plan.reduced:
            return out
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bool(bad.any()):
            if not self.fell_back:
                self.fell_back = True
                self.notify(f"non-finite values in {self.plan.name}: redoing the affected frames "
                            "in fp32 (choose precision fp32 to avoid the extra pass)")
            out[bad] = _final_logits(self.model(x[bad].float())).float()
        return out

    def chunk(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Masks ``[n, H, W]`` (float32, on the device) for a chunk of frames ``[n, H, W, C]``
        with their boxes ``[n, 4]``."""
        n, height, width = images.shape[:3]
        frames = images.to(self.device, non_blocking=True)
        full = torch.tensor([0, 0, width, height])
        whole = bool((boxes == full).all())
        if whole:
            size = self.working_size((height, width))
            return postprocess(self.logits(preprocess(frames, size.wh)), (height, width))
        masks = torch.zeros(n, height, width, device=self.device)
        crops = [_expand_box(b.tolist(), self.margin, width, height) for b in boxes]
        sizes = [self.working_size((c[3] - c[1], c[2] - c[0])) for c in crops]
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


def check_images(images) -> None:
    """Raise :class:`InputError` unless ``images`` is a ``[B, H, W, C]`` tensor (C = 1, 3 or 4),
    float 0..1 (finite; a frame peaking above 1.5 is taken for 0..255 data and refused) or uint8
    (the ComfyUI IMAGE layout)."""
    if (not isinstance(images, torch.Tensor) or images.ndim != 4
            or images.shape[-1] not in (1, 3, 4)):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a [B, H, W, C] tensor with C in (1, 3, 4) (ComfyUI "
                         f"IMAGE layout), got {shape}")
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise InputError(f"images must be float 0..1 or uint8, got {images.dtype}")
    if images.is_floating_point():
        for i in range(images.shape[0]):  # a frame at a time: no full-size boolean temporary
            if not bool(torch.isfinite(images[i]).all()):
                raise InputError(f"frame {i} of {images.shape[0]} contains NaN or infinite "
                                 "values; check the node that produced the images")
            peak = float(images[i].amax())
            if peak > 1.5:  # 0..255 data in a float tensor; a little overshoot is tolerated
                raise InputError(f"frame {i} of {images.shape[0]} has values up to {peak:.4g}, "
                                 "but float images must be 0..1: divide them by 255 (or pass "
                                 "uint8, which is converted)")


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
) -> torch.Tensor:
    """Segment a batch of images: ``images [B, H, W, C]`` (0..1) -> masks float32 ``[B, H, W]``
    in 0..1, **1 = foreground**, on ``output_device`` (``None``: the compute device).

    Args:
        model: any module with the BiRefNet forward contract (normalised ``[n, 3, h, w]`` with
            h, w multiples of 32 -> logits ``[n, 1, h, w]``, or a list whose last item is them).
        family: decides the working size (its trained resolution, or dynamic); ``None`` = 1024².
        resolution: override, ``(W, H)``, ``"WxH"``, ``"auto"`` or ``"dynamic"`` (see
            :func:`resolve_working_size`; a rounded override is reported through ``on_note``).
        precision: :class:`Precision` or its value (see :func:`resolve_precision`).
        device: where to compute; ``None`` = the model's device. The model is not moved: it must
            already be there (or be moved there by its host as it runs).
        batch_size: frames per chunk ``k``; ``0`` = automatic from free memory
            (:func:`auto_batch_size`). Halved on out-of-memory, down to 1.
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

    Output does not depend on ``batch_size`` (to float rounding). Raises :class:`InputError` on
    bad inputs and :class:`OutOfMemoryError` when a single frame does not fit.
    """
    check_images(images)
    if batch_size < 0:
        raise InputError(f"batch_size must be >= 0 (0 = automatic), got {batch_size}")
    if region_margin < 0:
        raise InputError(f"region_margin must be >= 0, got {region_margin}")
    notify = on_note or (lambda message: logger.warning("BiRefNet: %s", message))

    # An explicit device is trusted: a host may keep part of the weights elsewhere and move
    # them on the fly (ComfyUI's low-VRAM mode), so the first parameter's device proves nothing.
    model_device, model_dtype = _model_device_dtype(model)
    device = model_device if device is None else torch.device(device)
    plan = resolve_precision(precision, device)
    if plan.note:
        notify(plan.note)

    total, height, width = images.shape[:3]
    out_device = device if output_device is None else torch.device(output_device)
    out = torch.empty(total, height, width, dtype=torch.float32, device=out_device)
    if total == 0:
        return out

    boxes = regions_to_boxes(regions, total, (height, width))
    size = resolve_working_size(family, (height, width), override=resolution,
                                max_megapixels=max_megapixels, min_side=min_side)
    if size.note:
        notify(size.note)
    run = _Run(model, family, resolution, plan, device,
               model_dtype if not plan.reduced else torch.float32, float(region_margin),
               max_megapixels, min_side, notify)
    k = batch_size or auto_batch_size(model, size.wh, plan, device, total)
    k = min(k, total)

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
                    f"size {size} (WxH) in {plan.name}: lower the resolution (resolution "
                    f"override), use precision fp16/bf16 on a GPU, or free device memory "
                    f"(unload other models, close other programs); batch_size is already 1")
            k = max(1, n // 2)
            notify(f"out of memory with {n} frames per chunk at {size} (WxH) in {plan.name} on "
                   f"{device}; retrying with {k} (lower batch_size to skip this search)")
            continue
        done += n
        if on_progress is not None:
            on_progress(done, total)
    return out
