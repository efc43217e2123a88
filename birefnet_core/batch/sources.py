"""Sources: the inputs named by the user -> one :class:`Job` per input file, with its output.

Inputs are image files, video files, folders (their images and videos, sorted by name; with
``recursive`` their sub-folders too) and image-sequence patterns (``frames/*.png``,
``frame_%04d.png``). Each input keeps its path relative to the deepest folder that holds all
the inputs named (a named folder counts from itself, a file or pattern from the folder it is
in). Images are read here too, in chunks of frames of one size sized in bytes.

Nothing here imports torch, PIL or av at module level.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts",
                  ".mts", ".mxf", ".flv", ".wmv", ".ogv", ".3gp")
MEDIA_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES

_PRINTF = re.compile(r"%0?(\d*)d")  # frame_%04d.png
_WILDCARD = re.compile(r"[*?\[]")


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _sequence_regex(pattern: str) -> re.Pattern:
    """``frame_%04d.png`` -> a regex matching ``frame_0001.png`` (``%d``: any digit count)."""
    parts = _PRINTF.split(pattern)  # text, width, text, width, ..., text
    rx = "".join(re.escape(part) if i % 2 == 0 else (rf"\d{{{part}}}" if part else r"\d+")
                 for i, part in enumerate(parts))
    return re.compile(rx + "$")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def absolute(path: str | os.PathLike) -> Path:
    """Absolute and normalised, symlinks kept (they name where the user sees the file)."""
    return Path(os.path.abspath(path))


def _folder_media(folder: Path, recursive: bool, skip: Path | None) -> list[Path]:
    """A folder's images and videos sorted by name; with ``recursive``, its sub-folders' too
    (depth first, sorted; ``skip`` -- the output folder -- left out). Hidden files and folders
    are left out, as in a URI listing: macOS's ``._NAME.jpg`` companions and this pack's own
    ``.NAME.part`` files are not images."""
    def media(name: str) -> bool:
        return not name.startswith(".") and Path(name).suffix.lower() in MEDIA_SUFFIXES

    if not recursive:
        return sorted(p for p in folder.iterdir() if media(p.name) and p.is_file())
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (skip is None or absolute(root_path / d) != skip))
        found += sorted(root_path / f for f in files if media(f))
    return found


def expand_inputs(inputs: Sequence[str], recursive: bool = False,
                  skip: str | os.PathLike | None = None) -> list[Path]:
    """Files, folders and sequence patterns -> the image and video files (absolute paths), in
    order, without duplicates (one file reached twice, e.g. through a symlink, counts once).
    ``skip``: a folder a recursive walk does not enter (the output folder)."""
    skip_path = absolute(skip) if skip is not None else None
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += _folder_media(path, recursive,
                                   skip_path if skip_path != absolute(path) else None)
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
            ordered.append(absolute(path))
    if not ordered:
        raise InputError(f"no images or videos found in {', '.join(inputs)} "
                         f"(looked for {', '.join(IMAGE_SUFFIXES)} and videos "
                         f"{', '.join(VIDEO_SUFFIXES[:5])} ...)")
    return ordered


def input_root(item: str) -> Path:
    """The folder an input's output path is taken relative to: a folder itself, a file's
    folder, a pattern's folders before its first wildcard or ``%d``."""
    path = Path(item)
    if path.is_dir():
        return absolute(path)
    if path.is_file():
        return absolute(path.parent)
    static = []
    for part in path.parts[:-1]:
        if _WILDCARD.search(part) or _PRINTF.search(part):
            break
        static.append(part)
    return absolute(Path(*static) if static else Path("."))


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes: a PNG file for an image; for a video a video
    file, or a folder of PNG frames (``frame_000000.png`` ...)."""

    source: Path
    target: Path
    kind: str = "image"  # "image" or "video"

    @property
    def is_video(self) -> bool:
        return self.kind == "video"


def target_name(rel: Path, suffix: str, kind: str, video_format: str) -> Path:
    """The output's path relative to ``-o`` for an input at ``rel`` (relative to the inputs'
    common folder).

    >>> from pathlib import PurePosixPath as P
    >>> [target_name(P("a/x.jpg"), "_cut", "image", "mov").as_posix(),
    ...  target_name(P("a/clip.mp4"), "", "video", "webm").as_posix(),
    ...  target_name(P("clip.mp4"), "", "video", "png").as_posix()]
    ['a/x_cut.png', 'a/clip.webm', 'clip']
    """
    stem = f"{rel.stem}{suffix}"
    if kind == "video":
        return rel.parent / (stem if video_format == "png" else f"{stem}.{video_format}")
    return rel.parent / f"{stem}.png"


def plan_outputs(inputs: Sequence[str], out_dir: str | os.PathLike, suffix: str = "",
                 video_format: str = "mov", recursive: bool = False,
                 ) -> tuple[list[Job], list[Path]]:
    """Map every input to its output; returns ``(jobs, ignored)``.

    Outputs keep the inputs' paths relative to their common parent. Raises
    :class:`InputError` when an output would replace its own input or two inputs would share
    an output. An input that is the output of another input (an earlier run's result, when
    ``-o`` is the input folder and ``--suffix`` is set) is not an input: it is returned in
    ``ignored``.
    """
    out = absolute(out_dir)
    paths = expand_inputs(inputs, recursive=recursive, skip=out)
    try:
        base = Path(os.path.commonpath([input_root(item) for item in inputs]))
    except ValueError as exc:  # Windows: inputs on different drives
        raise InputError(f"the inputs have no common folder ({exc}); run once per drive") from exc
    jobs = []
    for path in paths:
        kind = "video" if is_video(path) else "image"
        jobs.append(Job(path, out / target_name(path.relative_to(base), suffix, kind,
                                                video_format), kind))

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
    # A PNG-sequence output folder of a video is no input either (a recursive re-run).
    frame_dirs = {job.target for job in jobs if job.is_video and video_format == "png"}
    ignored |= {job for job in jobs if job.source.parent in frame_dirs}
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


# -- reading images --------------------------------------------------------------------------

def decode_rgb8(data_or_path):
    """An image file (path, or its bytes) -> ``[H, W, 3]`` uint8 tensor."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) \
        else data_or_path
    with Image.open(src) as im:
        return torch.from_numpy(np.array(im if im.mode == "RGB" else im.convert("RGB")))


def read_rgb(path: Path):
    """``[H, W, 3]`` float32 in 0..1."""
    return decode_rgb8(path).float().div_(255.0)


def unreadable_image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # PIL reports damaged files as OSError (UnidentifiedImageError), SyntaxError or ValueError.
    return OSError, SyntaxError, ValueError, Image.DecompressionBombError


def describe_unreadable(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    # (UnidentifiedImageError repeats the path)
    return ("not an image, or a damaged one" if isinstance(exc, UnidentifiedImageError)
            else f"cannot read it ({exc})")


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
    group: list[Job] = []
    buffer = None
    unreadable = unreadable_image_errors()

    def frames():
        for job in jobs:
            try:
                frame = decode_rgb8(job.source)
            except unreadable as exc:
                on_error(job, exc)
                continue
            yield job, frame

    for group, buffer in chunk_frames(frames(), max_bytes, max_frames):
        yield group, buffer


def chunk_frames(frames, max_bytes: int, max_frames: int | None = None):
    """``(key, [H, W, 3] uint8)`` pairs -> ``(keys, [k, H, W, 3] float32 0..1)`` chunks of
    consecutive frames of one size, at most ``max_bytes`` (at least one frame) and at most
    ``max_frames`` each."""
    import torch

    group: list = []
    buffer = None
    for key, frame in frames:
        if group and (frame.shape != buffer.shape[1:] or len(group) == len(buffer)):
            yield group, buffer[:len(group)]
            group, buffer = [], None
        if buffer is None:
            fits = max(1, max_bytes // (frame.numel() * 4))
            buffer = torch.empty((min(fits, max_frames or fits), *frame.shape))
        buffer[len(group)].copy_(frame).div_(255.0)
        group.append(key)
        del frame
    if group:
        yield group, buffer[:len(group)]
