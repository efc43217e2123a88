"""Command line: ``python -m birefnet_core`` (or the ``birefnet`` console script).

    birefnet remove MODEL INPUT... -o OUT [--output rgba|mask|composite] [--background #RRGGBB|FILE]
    birefnet info MODEL
    birefnet list
    birefnet download NAME --models-dir DIR

INPUT may be image files, folders (their images, sorted by name) or image-sequence patterns
(``frames/*.png``, ``frame_%04d.png``). Frames are read, segmented and written in chunks of
frames of one size, so a long sequence never sits in memory at once. Masks use 1 = foreground.

Where outputs go: under ``-o``, as ``STEM[--suffix].png``, each input keeps its path relative
to the deepest folder that holds all the inputs named on the command line (a named folder counts
from itself, a file or pattern from the folder it is in). One folder therefore gives flat names;
two folders ``a/`` and ``b/`` give ``OUT/a/...`` and ``OUT/b/...``. Nothing is written over an
input, two inputs that would share an output are refused before anything runs, and an existing
output is kept (counted as skipped) unless ``--overwrite``. Every output is written to a temporary
file and renamed when complete, so an interrupted run never leaves a half-written output.

Exit codes: 0 all done (or skipped), 1 some inputs failed (each named on one line; the others
are written), 2 a usage error (one ``error:`` line saying what to do), 130 interrupted (Ctrl-C;
finished outputs are kept, a re-run continues where it stopped).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .atomic import atomic_write, check_writable
from .errors import BiRefNetError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OUTPUTS = ("rgba", "mask", "composite")
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# Frames read ahead are held as float32: a chunk takes at most this many bytes (one 8K frame
# alone is 400 MB, so it goes alone; 1080p goes 20 at a time), and at most CHUNK_FRAMES frames
# so that small frames still show progress (and a Ctrl-C loses little work).
CHUNK_BYTES = 512 << 20
CHUNK_FRAMES = 64


# -- inputs ----------------------------------------------------------------------------------

_PRINTF = re.compile(r"%0?(\d*)d")  # frame_%04d.png
_WILDCARD = re.compile(r"[*?\[]")


def _sequence_regex(pattern: str) -> re.Pattern:
    """``frame_%04d.png`` -> a regex matching ``frame_0001.png`` (``%d``: any digit count)."""
    parts = _PRINTF.split(pattern)  # text, width, text, width, ..., text
    rx = "".join(re.escape(part) if i % 2 == 0 else (rf"\d{{{part}}}" if part else r"\d+")
                 for i, part in enumerate(parts))
    return re.compile(rx + "$")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _absolute(path: str | os.PathLike) -> Path:
    """Absolute and normalised, symlinks kept (they name where the user sees the file)."""
    return Path(os.path.abspath(path))


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, folders and sequence patterns -> the image files (absolute paths), in order,
    without duplicates (one file reached twice, e.g. through a symlink, counts once)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        elif _PRINTF.search(item):
            rx = _sequence_regex(item)
            found += sorted((Path(p) for p in glob.glob(_PRINTF.sub("*", item)) if rx.search(p)),
                            key=_natural_key)
        elif _WILDCARD.search(item):
            found += sorted(Path(p) for p in glob.glob(item))
        else:
            raise InputError(f"input not found: {item}")
    seen: set[Path] = set()
    ordered: list[Path] = []
    for path in found:
        if (key := path.resolve()) not in seen:
            seen.add(key)
            ordered.append(_absolute(path))
    if not ordered:
        raise InputError(f"no images found in {', '.join(inputs)} "
                         f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    return ordered


def _input_root(item: str) -> Path:
    """The folder an input's output path is taken relative to: a folder itself, a file's
    folder, a pattern's folders before its first wildcard or ``%d``."""
    path = Path(item)
    if path.is_dir():
        return _absolute(path)
    if path.is_file():
        return _absolute(path.parent)
    static = []
    for part in path.parts[:-1]:
        if _WILDCARD.search(part) or _PRINTF.search(part):
            break
        static.append(part)
    return _absolute(Path(*static) if static else Path("."))


@dataclass(frozen=True)
class Job:
    """One input image and the file its result goes to."""

    source: Path
    target: Path


def plan_outputs(inputs: Sequence[str], out_dir: str | os.PathLike, suffix: str = ""
                 ) -> tuple[list[Job], list[Path]]:
    """Map every input image to its output file; returns ``(jobs, ignored)``.

    Outputs keep the inputs' paths relative to their common parent (see the module docstring).
    Raises :class:`InputError` when an output would replace its own input or two inputs would
    share an output. An input that is the output of another input (an earlier run's result,
    when ``-o`` is the input folder and ``--suffix`` is set) is not an input: it is returned in
    ``ignored``.
    """
    paths = expand_inputs(inputs)
    try:
        base = Path(os.path.commonpath([_input_root(item) for item in inputs]))
    except ValueError as exc:  # Windows: inputs on different drives
        raise InputError(f"the inputs have no common folder ({exc}); run once per drive") from exc
    out = _absolute(out_dir)
    jobs = []
    for path in paths:
        rel = path.relative_to(base)
        jobs.append(Job(path, out / rel.parent / f"{rel.stem}{suffix}.png"))

    # Outputs that exist are compared with the inputs by identity (device, inode): that also
    # catches symlinks, hard links and case-insensitive file systems.
    inode_of_input = {_inode(job.source): job for job in jobs}
    clash = {job: inode_of_input.get(_inode(job.target)) for job in jobs if job.target.exists()}
    for job, other in clash.items():
        if other is job:
            raise InputError(
                f"the output for {job.source} would replace that input: give another -o "
                "folder, or a --suffix (e.g. --suffix _cut)")
    ignored = {other for other in clash.values() if other is not None}
    jobs = [job for job in jobs if job not in ignored]

    first_for: dict[str, Job] = {}
    for job in jobs:
        key = os.path.normcase(job.target)
        if key in first_for:
            raise InputError(
                f"{first_for[key].source} and {job.source} would both be written to "
                f"{job.target}: rename one of them, or process them in separate runs")
        first_for[key] = job
    return jobs, sorted(job.source for job in ignored)


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read_rgb8(path: Path):
    """``[H, W, 3]`` uint8."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.array(im if im.mode == "RGB" else im.convert("RGB")))


def _read_rgb(path: Path):
    """``[H, W, 3]`` float32 in 0..1."""
    return _read_rgb8(path).float().div_(255.0)


def _unreadable_image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # PIL reports damaged files as OSError (UnidentifiedImageError), SyntaxError or ValueError.
    return OSError, SyntaxError, ValueError, Image.DecompressionBombError


def chunks_of_same_size(jobs: Sequence[Job], max_bytes: int,
                        on_error: Callable[[Job, BaseException], None],
                        max_frames: int | None = None,
                        ) -> Iterator[tuple[list[Job], "object"]]:
    """Yield ``(jobs, images [k,H,W,3] float32)`` of consecutive frames that share a size and
    together take at most ``max_bytes`` (always at least one frame), at most ``max_frames``.
    A frame that cannot be read is passed to ``on_error`` and left out.

    Frames are decoded to 8 bits and converted straight into the chunk's float buffer (no
    float copy per frame, none to stack them); the buffer is allocated for the most frames
    that may follow, and the pages of the slots never filled are never touched.
    """
    import torch

    unreadable = _unreadable_image_errors()
    group: list[Job] = []
    buffer = None
    for job in jobs:
        try:
            frame = _read_rgb8(job.source)
        except unreadable as exc:
            on_error(job, exc)
            continue
        if group and (frame.shape != buffer.shape[1:] or len(group) == len(buffer)):
            yield group, buffer[:len(group)]
            group, buffer = [], None
        if buffer is None:
            fits = max(1, max_bytes // (frame.numel() * 4))
            buffer = torch.empty((min(fits, max_frames or fits), *frame.shape))
        buffer[len(group)].copy_(frame).div_(255.0)
        group.append(job)
        del frame
    if group:
        yield group, buffer[:len(group)]


# -- outputs ---------------------------------------------------------------------------------

def _save(array, path: Path) -> None:
    """Write a PNG; it appears under ``path`` only once complete (see :mod:`.atomic`)."""
    import numpy as np
    import torch
    from PIL import Image

    data = array.clamp(0, 1).mul_(255).round_().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        Image.fromarray(np.ascontiguousarray(data)).save(f, format="PNG")


def render(kind: str, images, masks, background=None, estimate_foreground: bool = True):
    """The output frames for ``kind``: rgba ``[k,H,W,4]`` (straight alpha), mask ``[k,H,W]``
    (1 = foreground) or composite ``[k,H,W,3]`` over ``background``."""
    if kind == "mask":
        return masks
    from .composite import composite

    method = "multilevel" if estimate_foreground else "none"
    if kind == "rgba":
        return composite(images, masks, "transparent", output_alpha=True, foreground=method)
    return composite(images, masks, background, foreground=method)


class _Progress:
    """A one-line text progress bar on stderr (no dependency); :meth:`say` prints a message
    line without mangling the bar."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.start = total, enabled, time.perf_counter()
        self.drawn = False

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(self.total, 1))
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                         f"{rate:.2f} frames/s")
        self.drawn = done < self.total
        if not self.drawn:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def say(self, line: str) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            self.drawn = False
        print(line, file=sys.stderr, flush=True)


@dataclass
class _Tally:
    done: int = 0
    skipped: int = 0
    failed: int = 0

    def __str__(self) -> str:
        text = f"done {self.done}, skipped {self.skipped}, failed {self.failed}"
        if self.skipped:
            text += " (skipped: the output exists; --overwrite redoes it)"
        return text


# -- checks before any work ------------------------------------------------------------------

def _parse_background(value: str | None):
    """``None``, a hex colour string, or an image ``[1,H,W,3]`` from an existing file."""
    if value is None:
        return None
    from .composite import parse_hex_color

    path = Path(value)
    if path.is_file():
        try:
            return _read_rgb(path)[None]
        except _unreadable_image_errors() as exc:
            raise InputError(f"--background {value}: cannot read the image ({exc})") from exc
    try:
        parse_hex_color(value)
    except InputError:
        raise InputError(
            f"--background {value!r} is neither a colour (#RRGGBB or #RRGGBBAA, e.g. '#00ff00') "
            "nor an existing image file") from None
    return value if value.startswith("#") else f"#{value}"


def _check_device(name: str) -> None:
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


def _prepare_output_dir(out_dir: Path) -> None:
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


# -- commands --------------------------------------------------------------------------------

def cmd_remove(args: argparse.Namespace) -> int:
    out_dir = _absolute(args.output_dir)
    jobs, ignored = plan_outputs(args.inputs, out_dir, args.suffix)
    background = _parse_background(args.background)
    if args.output == "composite" and background is None:
        raise InputError("--output composite needs --background (#RRGGBB[AA] or an image file)")
    _check_device(args.device)
    from .inference import parse_resolution

    parse_resolution(args.resolution)  # a typo is a usage error, not a failure of every frame
    _prepare_output_dir(out_dir)

    tally = _Tally()
    if not args.overwrite:
        todo = [job for job in jobs if not job.target.exists()]
        tally.skipped = len(jobs) - len(todo)
    else:
        todo = jobs
    if ignored and not args.quiet:
        print(f"note: {len(ignored)} input(s) named like this run's outputs (e.g. "
              f"{ignored[0].name}) are taken for earlier outputs and not read", file=sys.stderr)
    progress = _Progress(len(todo), enabled=not args.quiet and bool(todo))
    try:
        if todo:
            _remove(args, todo, background, tally, progress)
    except KeyboardInterrupt:
        progress.say(f"interrupted: {tally}; finished outputs are kept, run again to do the rest")
        return EXIT_INTERRUPTED
    progress.say(str(tally))
    return EXIT_FAILED if tally.failed else 0


def _remove(args, jobs: Sequence[Job], background, tally: _Tally, progress: _Progress) -> None:
    from .inference import predict_masks
    from .weights import load_model

    loaded = load_model(args.model, family=args.family, patch_order=args.patch_order,
                        device=args.device, optimize=not args.exact)
    if args.compile:
        from .optimize import compile_for_inference

        compile_for_inference(loaded.model)
    if not args.quiet:
        print(loaded.info.summary(), file=sys.stderr)

    def fail(job: Job, detail: str) -> None:
        tally.failed += 1
        progress.say(f"failed: {job.source}: {detail}")
        progress(tally.done + tally.failed)

    def unreadable(job: Job, exc: BaseException) -> None:
        from PIL import UnidentifiedImageError

        fail(job, "not an image, or a damaged one" if isinstance(exc, UnidentifiedImageError)
             else f"cannot read it ({exc})")  # (UnidentifiedImageError repeats the path)

    # Memory follows the frame size, not the frame count: chunks are sized in bytes, outputs
    # are rendered one frame at a time (foreground estimation needs several frame-sized
    # buffers), and a chunk is let go before the next is read.
    chunks = chunks_of_same_size(jobs, CHUNK_BYTES, unreadable,
                                 max_frames=max(CHUNK_FRAMES, args.batch_size))
    for group, images in chunks:
        try:
            masks = predict_masks(loaded.model, images, family=loaded.info.family,
                                  resolution=args.resolution, precision=args.precision,
                                  batch_size=args.batch_size,
                                  on_note=lambda note: progress.say(f"note: {note}"))
        except BiRefNetError as exc:  # e.g. out of memory with one frame: the next may fit
            for job in group:
                fail(job, str(exc))
            continue
        for i, job in enumerate(group):
            try:
                frame = render(args.output, images[i:i + 1], masks[i:i + 1], background,
                               not args.no_foreground)[0]
            except BiRefNetError as exc:
                fail(job, str(exc))
                continue
            try:
                _save(frame, job.target)
            except OSError as exc:
                fail(job, f"cannot write {job.target} ({exc.strerror or exc})")
                continue
            finally:
                del frame
            tally.done += 1
            progress(tally.done + tally.failed)
        del images, masks


def cmd_info(args: argparse.Namespace) -> int:
    from .weights import load_model

    print(load_model(args.model, family=args.family, patch_order=args.patch_order).info.summary())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .download import CHECKPOINTS

    for name, ckpt in CHECKPOINTS.items():
        fam = ckpt.family
        res = f"{fam.resolution[0]}x{fam.resolution[1]}" if fam.resolution else "dynamic"
        print(f"{name:16s} {res:10s} {fam.patch_order.value:7s} {ckpt.repo:36s} -> {ckpt.filename}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import download_checkpoint

    progress = None
    if not args.quiet:
        def progress(done, total):
            total_text = f"/{total / 2**20:.0f}" if total else ""
            sys.stderr.write(f"\r{done / 2**20:.0f}{total_text} MiB")
            sys.stderr.flush()
    path = download_checkpoint(args.name, args.models_dir, overwrite=args.overwrite,
                               on_progress=progress)
    if not args.quiet:
        sys.stderr.write("\n")
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birefnet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p):
        p.add_argument("model", help="checkpoint file (.safetensors or .pth)")
        p.add_argument("--family", default="auto",
                       help="model family override (default: from the file name)")
        p.add_argument("--patch-order", default="auto", choices=("auto", "split", "einops"))

    remove = sub.add_parser(
        "remove", help="remove backgrounds from images / sequences",
        description="Remove backgrounds. Exit codes: 0 all done or skipped, 1 some inputs "
                    "failed (named one per line; the rest are written), 2 usage error, "
                    "130 interrupted (finished outputs are kept; run again to continue).")
    model_options(remove)
    remove.add_argument("inputs", nargs="+", help="image files, folders or sequence patterns")
    remove.add_argument("-o", "--output-dir", required=True,
                        help="folder for the results; each keeps its input's path relative to "
                             "the inputs' common folder (one folder: flat names)")
    remove.add_argument("--overwrite", action="store_true",
                        help="redo inputs whose output exists (default: keep it, count it as "
                             "skipped)")
    remove.add_argument("--output", default="rgba", choices=OUTPUTS,
                        help="rgba: PNG with straight alpha; mask: grey PNG, white = foreground; "
                             "composite: over --background")
    remove.add_argument("--background", help="#RRGGBB[AA] or an image file (for composite)")
    remove.add_argument("--no-foreground", action="store_true",
                        help="keep the original colours at edges (no foreground estimation)")
    remove.add_argument("--resolution", default="auto", help="auto, dynamic or WxH")
    remove.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    remove.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    remove.add_argument("--batch-size", type=int, default=0, help="frames per chunk, 0 = auto")
    mode = remove.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true",
                      help="run the unmodified network (no BatchNorm folding / fast "
                           "deformable convolution; same output to ~1e-6, slower)")
    mode.add_argument("--compile", action="store_true",
                      help="torch.compile the fast network (the first batch of each size "
                           "compiles for minutes; worth it for long runs on a GPU)")
    remove.add_argument("--suffix", default="", help="appended to each output file's stem")
    remove.add_argument("-q", "--quiet", action="store_true")
    remove.set_defaults(func=cmd_remove)

    info = sub.add_parser("info", help="print what a checkpoint is")
    model_options(info)
    info.set_defaults(func=cmd_info)

    listing = sub.add_parser("list", help="list the published checkpoints")
    listing.set_defaults(func=cmd_list)

    download = sub.add_parser("download", help="download a published checkpoint")
    download.add_argument("name", help="a name from `birefnet list`")
    download.add_argument("--models-dir", required=True, help="e.g. ComfyUI/models/birefnet")
    download.add_argument("--overwrite", action="store_true")
    download.add_argument("-q", "--quiet", action="store_true")
    download.set_defaults(func=cmd_download)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        return args.func(args)
    except BiRefNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
