"""The one place where a run is decided: precision, working size, chunk size and memory.

:func:`plan_inference` turns a model, a batch of images, the user's :class:`InferenceOptions`
and a device into an :class:`InferencePlan`; :func:`~birefnet_core.inference.predict_masks`
runs a plan, the ComfyUI node hands the plan's ``memory_required`` to the host before it runs
it, and the command line and batch engines go through ``predict_masks``. Nothing downstream
decides these again or infers them from tensor dtypes. The policies themselves are the
functions below (:func:`resolve_working_size`, :func:`resolve_precision`,
:func:`estimate_memory`, :func:`auto_batch_size`), usable on their own.

Sizes named ``*_wh`` are ``(width, height)`` (like the variant table and PIL); sizes named
``*_hw`` are ``(height, width)`` (like tensor shapes).
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .errors import InputError
from .variants import BACKBONES, Architecture, Family

__all__ = [
    "STRIDE",
    "DEFAULT_RESOLUTION",
    "DYNAMIC_MAX_MEGAPIXELS",
    "DYNAMIC_MIN_SIDE",
    "DEFAULT_REGION_MARGIN",
    "WorkingSize",
    "parse_resolution",
    "resolve_working_size",
    "Precision",
    "PrecisionPlan",
    "resolve_precision",
    "estimate_memory",
    "auto_batch_size",
    "InferenceOptions",
    "InferencePlan",
    "plan_inference",
]

DeviceLike = Union[str, torch.device]

STRIDE = 32  # == birefnet_core.model.STRIDE; repeated here so importing this module stays light
DEFAULT_RESOLUTION = (1024, 1024)  # (W, H) when neither a family nor an override says otherwise
# The dynamic models were trained on sides of 256..2304 px; cap the area at 2048² worth.
DYNAMIC_MAX_MEGAPIXELS = 2048 * 2048 / 1e6
DYNAMIC_MIN_SIDE = 256
DEFAULT_REGION_MARGIN = 0.1  # fraction of the region's width / height added on each side


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

_REDUCED_PRECISION_FACTOR = 0.75
_UNKNOWN_BYTES_PER_PIXEL = max(s.activation_bytes_per_pixel for s in BACKBONES.values())
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
    with the backbone table's ``activation_bytes_per_pixel`` (PVT-v2 b0 ~1.7 kB ... Swin-L
    ~3.6 kB per pixel in fp32),
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
    per_pixel = (BACKBONES[backbone].activation_bytes_per_pixel if backbone in BACKBONES
                 else _UNKNOWN_BYTES_PER_PIXEL)
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
    *,
    reserved: int = 0,
) -> int:
    """Chunk size ``k`` for ``total`` frames: as many frames as fit in the free device memory
    less ``reserved`` bytes (e.g. weights still to be loaded) by :func:`estimate_memory` (at most
    32 on a GPU, 4 on the CPU or MPS), at least 1."""
    device = torch.device(device)
    cap = _DEVICE_MAX_CHUNK if device.type == "cuda" else _CPU_MAX_CHUNK
    per_frame = estimate_memory(model, size_wh, plan.dtype, 1, include_weights=False)
    free = _free_memory(device)
    if free is not None and per_frame > 0:
        cap = min(cap, int((free - reserved) * _FREE_MEMORY_SHARE) // per_frame)
    return max(1, min(cap, total))




# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceOptions:
    """What a user may choose for a run (each field as :func:`~birefnet_core.inference.
    predict_masks` documents it); everything else is decided by :func:`plan_inference`."""

    resolution: object = None
    precision: Union[Precision, str] = Precision.AUTO
    batch_size: int = 0
    max_megapixels: float = DYNAMIC_MAX_MEGAPIXELS
    min_side: int = DYNAMIC_MIN_SIDE
    region_margin: float = DEFAULT_REGION_MARGIN

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 0:
            raise InputError(f"batch_size must be >= 0 (0 = automatic), got {self.batch_size}")
        if self.region_margin < 0:
            raise InputError(f"region_margin must be >= 0, got {self.region_margin}")
        if self.max_megapixels <= 0 or self.min_side < 0:
            raise InputError(f"max_megapixels ({self.max_megapixels}) must be > 0 and "
                             f"min_side ({self.min_side}) >= 0")
        parse_resolution(self.resolution)  # refuse a bad resolution before anything runs


@dataclass(frozen=True)
class InferencePlan:
    """How one batch runs. ``working_size`` is the size whole frames are resized to (a region's
    crop gets :meth:`working_size_for` its own size); ``chunk`` frames go to the device at a
    time (halved on out-of-memory at run time); ``memory_required`` is the device memory one
    chunk needs besides the weights (activations, input frames and masks), the figure a host
    frees before the run; ``kernels`` lists the kernel choices already made on the device
    (:mod:`birefnet_core.kernels` chooses per op, dtype and size at first use)."""

    device: torch.device
    precision: PrecisionPlan
    working_size: WorkingSize
    chunk: int
    memory_required: int
    input_dtype: torch.dtype
    family: Optional[Family]
    options: InferenceOptions
    kernels: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def working_size_for(self, crop_hw: Sequence[int]) -> WorkingSize:
        """The working size of a crop (or frame) of size ``(H, W)``."""
        o = self.options
        return resolve_working_size(self.family, crop_hw, override=o.resolution,
                                    max_megapixels=o.max_megapixels, min_side=o.min_side)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _io_bytes(frames: int, height: int, width: int, channels: int) -> int:
    """Device bytes of ``frames`` input frames (float32 on the device) and their masks."""
    return frames * height * width * (channels + 1) * 4


def plan_inference(model: nn.Module, images: torch.Tensor,
                   options: Optional[InferenceOptions] = None,
                   device: Optional[DeviceLike] = None, *,
                   family: Optional[Family] = None) -> InferencePlan:
    """Decide how ``images [B, H, W, C]`` run through ``model`` on ``device``.

    ``device=None`` means the model's device; an explicit device is trusted (a host may move
    the weights there as it runs, see ``predict_masks``). ``family`` decides the working size
    (its trained resolution, or dynamic). With ``batch_size=0`` the chunk fills the free device
    memory (at most 32 frames on a GPU, 4 on the CPU); the weights count against it when the
    model is not on ``device`` yet, as when a host plans before loading.

    >>> import torch
    >>> plan = plan_inference(torch.nn.Conv2d(3, 1, 1), torch.rand(6, 48, 80, 3),
    ...                       InferenceOptions(resolution="64x32", batch_size=4))
    >>> plan.working_size.wh, plan.chunk, plan.precision.name
    ((64, 32), 4, 'fp32')
    """
    options = options or InferenceOptions()
    model_device, model_dtype = _model_device_dtype(model)
    device = model_device if device is None else torch.device(device)
    precision = resolve_precision(options.precision, device)
    total, height, width, channels = (int(v) for v in images.shape)
    notes = [precision.note] if precision.note else []
    size = (resolve_working_size(family, (height, width), override=options.resolution,
                                 max_megapixels=options.max_megapixels,
                                 min_side=options.min_side)
            if total else WorkingSize(STRIDE, STRIDE))
    if size.note:
        notes.append(size.note)
    if options.batch_size:
        chunk = max(1, min(int(options.batch_size), total))
    else:
        weights = 0 if model_device == device else _weight_bytes(model)
        chunk = auto_batch_size(model, size.wh, precision, device, max(total, 1),
                                reserved=weights)
    memory = (estimate_memory(model, size.wh, precision.dtype, chunk, include_weights=False)
              + _io_bytes(chunk, height, width, channels))
    return InferencePlan(
        device=device, precision=precision, working_size=size, chunk=chunk,
        memory_required=memory,
        input_dtype=model_dtype if not precision.reduced else torch.float32,
        family=family, options=options, kernels=_kernels_on(device), notes=tuple(notes))


def _kernels_on(device: torch.device) -> tuple[str, ...]:
    """``op|device|dtype|shape=name`` for each kernel already chosen on ``device`` (see
    :mod:`birefnet_core.kernels`; sizes met for the first time choose theirs as they run)."""
    from . import kernels

    where = f"|{device.type}" if device.index is None else f"|{device.type}:{device.index}"
    return tuple(f"{c['key']}={c['chosen']}" for c in kernels.choices()
                 if where + "|" in c["key"])
