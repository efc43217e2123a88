"""Command line: ``python -m birefnet_core`` (or the ``birefnet`` console script).

    birefnet remove MODEL INPUT... -o OUT [--output rgba|mask|composite] [--background #RRGGBB|FILE]
    birefnet info MODEL
    birefnet list
    birefnet download NAME --models-dir DIR

INPUT may be image files, folders (their images, sorted by name) or image-sequence patterns
(``frames/*.png``, ``frame_%04d.png``). Frames are read, segmented and written in chunks of
frames of one size, so a long sequence never sits in memory at once. Masks use 1 = foreground.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import BiRefNetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OUTPUTS = ("rgba", "mask", "composite")


# -- inputs ----------------------------------------------------------------------------------

_PRINTF = re.compile(r"%0?(\d*)d")  # frame_%04d.png


def _sequence_regex(pattern: str) -> re.Pattern:
    """``frame_%04d.png`` -> a regex matching ``frame_0001.png`` (``%d``: any digit count)."""
    parts = _PRINTF.split(pattern)  # text, width, text, width, ..., text
    rx = "".join(re.escape(part) if i % 2 == 0 else (rf"\d{{{part}}}" if part else r"\d+")
                 for i, part in enumerate(parts))
    return re.compile(rx + "$")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, folders and sequence patterns -> the image files, in order, without duplicates."""
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
        elif any(ch in item for ch in "*?["):
            found += sorted(Path(p) for p in glob.glob(item))
        else:
            raise BiRefNetError(f"input not found: {item}")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise BiRefNetError(f"no images found in {', '.join(inputs)} "
                            f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    return unique


def _read_rgb(path: Path):
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)


def chunks_of_same_size(paths: Sequence[Path], size: int) -> Iterator[tuple[list[Path], "object"]]:
    """Yield ``(paths, images [k,H,W,3])`` of consecutive frames that share a size, k <= size."""
    import torch

    group: list[Path] = []
    frames: list = []
    for path in paths:
        frame = _read_rgb(path)
        if frames and (frame.shape != frames[0].shape or len(frames) == size):
            yield group, torch.stack(frames)
            group, frames = [], []
        group.append(path)
        frames.append(frame)
    if frames:
        yield group, torch.stack(frames)


# -- outputs ---------------------------------------------------------------------------------

def _save(array, path: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    data = array.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(data)).save(path)


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
    """A one-line text progress bar on stderr (no dependency)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.start = total, enabled, time.perf_counter()

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(self.total, 1))
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                         f"{rate:.2f} frames/s")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# -- commands --------------------------------------------------------------------------------

def _parse_background(value: str | None):
    if value is None:
        return None
    if value.startswith("#"):
        return value
    return _read_rgb(Path(value))[None]


def cmd_remove(args: argparse.Namespace) -> int:
    from .inference import predict_masks
    from .weights import load_model

    paths = expand_inputs(args.inputs)
    loaded = load_model(args.model, family=args.family, patch_order=args.patch_order,
                        device=args.device, optimize=not args.exact)
    if args.compile:
        from .optimize import compile_for_inference

        compile_for_inference(loaded.model)
    if not args.quiet:
        print(loaded.info.summary(), file=sys.stderr)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    background = _parse_background(args.background)
    if args.output == "composite" and background is None:
        raise BiRefNetError("--output composite needs --background (#RRGGBB[AA] or an image file)")
    progress = _Progress(len(paths), enabled=not args.quiet)
    done = 0
    for group, images in chunks_of_same_size(paths, max(args.batch_size, 1) * 4):
        masks = predict_masks(loaded.model, images, family=loaded.info.family,
                              resolution=args.resolution, precision=args.precision,
                              batch_size=args.batch_size,
                              on_note=lambda note: print(f"note: {note}", file=sys.stderr))
        frames = render(args.output, images, masks, background, not args.no_foreground)
        for path, frame in zip(group, frames):
            _save(frame, out_dir / f"{path.stem}{args.suffix}.png")
        done += len(group)
        progress(done)
    return 0


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

    remove = sub.add_parser("remove", help="remove backgrounds from images / sequences")
    model_options(remove)
    remove.add_argument("inputs", nargs="+", help="image files, folders or sequence patterns")
    remove.add_argument("-o", "--output-dir", required=True, help="folder for the results")
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
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
