"""What a batch job is, independent of the engine that runs it.

:class:`JobSpec` holds the choices (what to output, how to run the model); :func:`plan_job`
maps the inputs to outputs and leaves out those already complete (a re-run resumes);
:func:`check_job` refuses, before any work, what would fail every input; :class:`Segmenter`
loads the model once and turns frame chunks into masks; :func:`video_chunks` runs a video's
frames through it, chunk by chunk, with the optional scene-cut-aware temporal smoothing.
The local engine (:mod:`.local`) and the Ray engine (:mod:`.ray_engine`) are both built on
these.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from ..atomic import check_writable
from ..errors import InputError
from .sinks import OUTPUTS
from .sources import Job, absolute, decode_rgb8, plan_outputs, unreadable_image_errors
from .storage import is_uri

# Frames read ahead are held as float32: a chunk takes at most this many bytes (one 8K frame
# alone is 400 MB, so it goes alone; 1080p goes 20 at a time), and at most CHUNK_FRAMES frames
# so that small frames still show progress (and a Ctrl-C loses little work).
CHUNK_BYTES = 512 << 20
CHUNK_FRAMES = 64
SMOOTH_MODES = ("none", "ema", "median")


@dataclass(frozen=True)
class JobSpec:
    """Everything about a job except its inputs and output folder. ``background``: ``None``, a
    colour string, or an image tensor ``[1,H,W,3]`` (see :func:`parse_background`)."""

    output: str = "rgba"
    background: object = None
    estimate_foreground: bool = True
    video_format: str = "auto"  # auto, mov, webm, mp4, png
    suffix: str = ""
    overwrite: bool = False
    recursive: bool = False
    family: str = "auto"
    patch_order: str = "auto"
    resolution: str = "auto"
    precision: str = "auto"
    device: str = "cpu"
    batch_size: int = 0
    exact: bool = False
    compile: bool = False
    smooth: str = "none"
    smooth_strength: float = 0.5
    smooth_window: int = 3
    cut_threshold: float = 0.1
    chunk_bytes: int = CHUNK_BYTES
    chunk_frames: int = CHUNK_FRAMES

    @property
    def resolved_video_format(self) -> str:
        from .video import default_format

        return default_format(self.output) if self.video_format == "auto" else self.video_format

    @property
    def max_frames(self) -> int:
        return max(self.chunk_frames, self.batch_size)


@dataclass
class Tally:
    done: int = 0
    skipped: int = 0
    failed: int = 0

    def __str__(self) -> str:
        text = f"done {self.done}, skipped {self.skipped}, failed {self.failed}"
        if self.skipped:
            text += " (skipped: the output exists; --overwrite redoes it)"
        return text


@dataclass
class Plan:
    """The jobs of a run: ``todo`` to do, ``complete`` whose output exists (skipped unless
    ``overwrite``), ``ignored`` inputs that are earlier outputs."""

    out_dir: Path
    jobs: list[Job]
    todo: list[Job]
    complete: list[Job]
    ignored: list[Path] = field(default_factory=list)


def plan_job(inputs: Sequence[str], out_dir: str | os.PathLike, spec: JobSpec) -> Plan:
    # (A URI taken for a path would be "not found", or -o s3://b/out a local folder "s3:".)
    uris = [str(item) for item in (*inputs, out_dir) if is_uri(str(item))]
    if uris:
        raise InputError(f"{uris[0]} is a URI: the local engine reads and writes local paths "
                         "only; give --engine ray for URIs (s3://, gs://, file:// ...)")
    out = absolute(out_dir)
    jobs, ignored = plan_outputs(inputs, out, spec.suffix, spec.resolved_video_format,
                                 spec.recursive)
    if any(job.is_video for job in jobs):
        from .video import av, check_format

        av()  # a missing PyAV is a usage error before anything runs
        check_format(spec.resolved_video_format, spec.output)
    if spec.overwrite:
        return Plan(out, jobs, list(jobs), [], ignored)
    complete = [job for job in jobs if job.target.exists()]
    done = set(complete)
    return Plan(out, jobs, [job for job in jobs if job not in done], complete, ignored)


# -- checks before any work ------------------------------------------------------------------

def parse_background(value: Optional[str]):
    """``None``, a hex colour string, or an image ``[1,H,W,3]`` from an existing file."""
    if value is None:
        return None
    from ..composite import parse_hex_color

    path = Path(value)
    if path.is_file():
        try:
            return decode_rgb8(path).float().div_(255.0)[None]
        except unreadable_image_errors() as exc:
            raise InputError(f"--background {value}: cannot read the image ({exc})") from exc
    try:
        parse_hex_color(value)
    except InputError:
        raise InputError(
            f"--background {value!r} is neither a colour (#RRGGBB or #RRGGBBAA, e.g. '#00ff00') "
            "nor an existing image file") from None
    return value if value.startswith("#") else f"#{value}"


def check_device(name: str) -> None:
    """Refuse a device torch cannot use here, with what to use instead."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"--device {name!r} is not a device ({exc}); use cpu, cuda, cuda:1, "
                         "mps ...") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available (torch {torch.__version__} "
                             "finds no CUDA build or no NVIDIA GPU and driver); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {name}: there are {count} CUDA device(s) (cuda:0 to "
                             f"cuda:{count - 1}); use one of them or --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {name}: MPS (Apple GPU) is not available here; use "
                         "--device cpu")
    try:
        torch.empty(1, device=device)
    except Exception as exc:  # noqa: BLE001 - any backend's refusal is a usage error here
        raise InputError(f"--device {name} cannot be used ({exc}); use --device cpu") from None


def prepare_output_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir} is a file, not a folder: give a folder for the results")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir} ({exc.strerror or exc}); "
                         "give another -o") from exc
    try:
        check_writable(out_dir)
    except OSError as exc:
        raise InputError(f"the output folder {out_dir} is not writable ({exc.strerror or exc}); "
                         "give another -o or change its permissions") from exc


def check_job(spec: JobSpec, check_devices: bool = True) -> None:
    """Refuse options that would fail every input (usage errors, before the model loads)."""
    if spec.output not in OUTPUTS:
        raise InputError(f"--output {spec.output!r} is not one of {', '.join(OUTPUTS)}")
    if spec.output == "composite" and spec.background is None:
        raise InputError("--output composite needs --background (#RRGGBB[AA] or an image file)")
    if spec.smooth not in SMOOTH_MODES:
        raise InputError(f"--smooth {spec.smooth!r} is not one of {', '.join(SMOOTH_MODES)}")
    if spec.smooth == "median" and (spec.smooth_window < 1 or spec.smooth_window % 2 == 0):
        raise InputError(f"--smooth-window must be a positive odd number, got "
                         f"{spec.smooth_window}")
    if not 0.0 <= spec.smooth_strength < 1.0:
        raise InputError(f"--smooth-strength must be in [0, 1), got {spec.smooth_strength}")
    if check_devices:
        check_device(spec.device)
    from ..plan import parse_resolution

    parse_resolution(spec.resolution)  # a typo is a usage error, not a failure of every frame


# -- the model ---------------------------------------------------------------------------------

def check_model(model_path, spec: JobSpec) -> None:
    """Refuse, before any input is read, a weights file that is no BiRefNet checkpoint (missing,
    truncated, another model's, pickled code ...): one usage error instead of one failure per
    input. Reads the file's header only (:func:`~birefnet_core.weights.inspect_model`); a URI
    is left to the workers that fetch it."""
    from ..weights import inspect_model
    from .storage import is_uri

    if not is_uri(str(model_path)):
        inspect_model(model_path, family=spec.family, patch_order=spec.patch_order)


class Segmenter:
    """The model, loaded once: ``segmenter(images [k,H,W,3]) -> masks [k,H,W]`` (1 = fg)."""

    def __init__(self, model_path: str | os.PathLike, spec: JobSpec,
                 on_note: Optional[Callable[[str], None]] = None):
        from ..weights import load_model

        self.spec = spec
        self.on_note = on_note
        self.loaded = load_model(str(model_path), family=spec.family,
                                 patch_order=spec.patch_order, device=spec.device,
                                 optimize=not spec.exact)
        if spec.compile:
            from .. import optimize

            optimize.compile_for_inference(self.loaded.model)

    def __call__(self, images):
        from ..inference import predict_masks

        spec = self.spec
        return predict_masks(self.loaded.model, images, family=self.loaded.info.family,
                             resolution=spec.resolution, precision=spec.precision,
                             batch_size=spec.batch_size, on_note=self.on_note)


# -- video frames -> chunks of (images, masks) -------------------------------------------------

def smoothing_context(spec: JobSpec) -> int:
    """Frames of context on each side of a chunk that smoothing needs: exact for the median
    (half its window); for the EMA, until the history weighs less than 1/1000."""
    if spec.smooth == "median":
        return spec.smooth_window // 2
    if spec.smooth == "ema":
        if spec.smooth_strength <= 0:
            return 0
        return min(64, math.ceil(math.log(1e-3) / math.log(spec.smooth_strength)))
    return 0


class ChunkSmoother:
    """Temporal smoothing of a stream of chunks, each smoothed with ``context`` frames of the
    previous and next chunks (so the frames near a chunk's end are held back until the next
    chunk arrives). Memory: one chunk plus ``2 * context`` frames."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.context = smoothing_context(spec)
        self.left = None  # (images, raw masks) already emitted, kept as context
        self.pending = None  # (images, raw masks) not emitted yet

    def _smooth(self, images, masks, emit_from: int, emit_to: int):
        from ..temporal import temporal_smooth

        spec = self.spec
        smoothed = temporal_smooth(masks, spec.smooth, strength=spec.smooth_strength,
                                   window=spec.smooth_window, cut_threshold=spec.cut_threshold,
                                   frames=images)
        return images[emit_from:emit_to], smoothed[emit_from:emit_to]

    def push(self, images, masks, last: bool = False):
        import torch

        if self.spec.smooth == "none":
            if images.shape[0]:
                yield images, masks
            return
        parts = [p for p in (self.left, self.pending) if p is not None]
        all_images = torch.cat([p[0] for p in parts] + [images]) if parts else images
        all_masks = torch.cat([p[1] for p in parts] + [masks]) if parts else masks
        start = 0 if self.left is None else self.left[0].shape[0]
        n = all_images.shape[0]
        stop = n if last else max(start, n - self.context)
        if stop > start:
            yield self._smooth(all_images, all_masks, start, stop)
        keep_from = max(0, stop - self.context)
        self.left = (all_images[keep_from:stop].clone(), all_masks[keep_from:stop].clone())
        self.pending = (all_images[stop:].clone(), all_masks[stop:].clone()) if stop < n else None

    def flush(self):
        import torch

        if self.pending is None:
            return
        empty = self.pending[0][:0]
        yield from self.push(empty, torch.empty((0, *self.pending[1].shape[1:])), last=True)


def video_chunks(frames: Iterable, segmenter: Callable, spec: JobSpec,
                 keep: Optional[tuple[int, int]] = None) -> Iterator[tuple[object, object]]:
    """``[H,W,3]`` uint8 frames -> ``(images [k,H,W,3], masks [k,H,W])`` chunks, smoothed
    across chunk borders when ``spec.smooth`` is set (the masks keep the segmenter's
    working-size tag). ``keep``: ``(first, stop)`` positions
    (counted in ``frames``) of the frames to yield; the others are context for smoothing."""
    from ..refine import tag_working_size, working_size_of
    from .sources import chunk_frames

    smoother = ChunkSmoother(spec)
    position = 0
    working = None  # the segmenter's working size, re-attached after smoothing and slicing

    def emit(images, masks):
        nonlocal position
        a, b = position, position + images.shape[0]
        position = b
        if keep is not None:
            lo, hi = max(a, keep[0]) - a, min(b, keep[1]) - a
            if hi <= lo:
                return
            images, masks = images[lo:hi], masks[lo:hi]
        yield images, masks if working is None else tag_working_size(masks, working)

    for _, images in chunk_frames(((None, f) for f in frames), spec.chunk_bytes,
                                  spec.max_frames):
        masks = segmenter(images)
        working = working_size_of(masks) or working
        for out in smoother.push(images, masks):
            yield from emit(*out)
        del images, masks
    for out in smoother.flush():
        yield from emit(*out)
