"""Command line: ``python -m birefnet_core`` (or the ``birefnet`` console script).

    birefnet remove MODEL INPUT... -o OUT [--output cutout|rgba|mask|composite] [--background #RRGGBB|FILE]
    birefnet info MODEL
    birefnet list
    birefnet download NAME --models-dir DIR

INPUT may be image files, video files, folders (their images and videos, sorted by name; with
``-r`` their sub-folders too) or image-sequence patterns (``frames/*.png``, ``frame_%04d.png``).
The work is done by the batch layer (:mod:`birefnet_core.batch`), here (``--engine local``) or
on a Ray cluster (``--engine ray``); this module only parses the arguments. Masks use
1 = foreground.

Where outputs go: under ``-o``, as ``STEM[--suffix].png`` (a video: ``STEM[--suffix].mov``,
``.webm``, ``.mp4`` or a folder of PNG frames), each input keeping its path relative to the
deepest folder that holds all the inputs named on the command line. Nothing is written over an
input, two inputs that would share an output are refused before anything runs, an existing
output is kept (counted as skipped) unless ``--overwrite``, every output appears under its name
only when complete, and ``OUT/birefnet-manifest.jsonl`` records each input's outcome.

Exit codes: 0 all done (or skipped), 1 some inputs failed (each named on one line; the others
are written), 2 a usage error (one ``error:`` line saying what to do), 130 interrupted (Ctrl-C;
finished outputs are kept, a re-run continues where it stopped).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Iterable

from .batch import Events, Tally, check_job, parse_background, plan_job, prepare_output_dir, \
    run_local
from .batch.job import SMOOTH_MODES, JobSpec, check_model
from .batch.sinks import OUTPUTS
from .batch.video import VIDEO_FORMATS
from .errors import BiRefNetError

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
ENGINES = ("local", "ray")


class _Progress(Events):
    """A one-line text progress bar on stderr (no dependency), counting ``unit`` (``per`` of
    what ``progress`` is given make one); message lines are printed without mangling the bar.
    An unknown total (0) shows the count alone."""

    def __init__(self, enabled: bool, unit: str = "frames", per: int = 1):
        self.enabled, self.start = enabled, time.perf_counter()
        self.unit, self.per = unit, per
        self.drawn = False

    def progress(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        rate = done / self.per / max(time.perf_counter() - self.start, 1e-9)
        count = f"{done / self.per:.0f}"
        if total:
            filled = int(width * done / total)
            count = f"[{'#' * filled}{'.' * (width - filled)}] {count}/{total / self.per:.0f}"
        sys.stderr.write(f"\r{count} {self.unit} {rate:.2f} {self.unit}/s")
        self.drawn = not total or done < total
        if not self.drawn:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            self.drawn = False

    def say(self, line: str) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            self.drawn = False
        print(line, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self.say(f"note: {text}")

    def failed(self, source: str, detail: str) -> None:
        self.say(f"failed: {source}: {detail}")

    def loaded(self, summary: str) -> None:
        if self.enabled:
            self.say(summary)


def _spec(args: argparse.Namespace) -> JobSpec:
    return JobSpec(
        # "rgba" keeps the image's colours, as the Segment node's rgba output; "cutout" is
        # rgba with estimated foreground colours at the edges, as the Composite node gives.
        output="rgba" if args.output == "cutout" else args.output,
        background=parse_background(args.background),
        estimate_foreground=args.output != "rgba" and not args.no_foreground,
        video_format=args.video_format,
        suffix=args.suffix, overwrite=args.overwrite, recursive=args.recursive,
        family=args.family, patch_order=args.patch_order, resolution=args.resolution,
        precision=args.precision, device=args.device, batch_size=args.batch_size,
        exact=args.exact, compile=args.compile, smooth=args.smooth,
        smooth_strength=args.smooth_strength, smooth_window=args.smooth_window,
        cut_threshold=args.cut_threshold)


# -- commands --------------------------------------------------------------------------------

def cmd_remove(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if args.engine == "ray":
        from .batch.ray_engine import main_ray

        return main_ray(args, spec)
    plan = plan_job(args.inputs, args.output_dir, spec)
    check_job(spec)
    if plan.todo:
        check_model(args.model, spec)
    prepare_output_dir(plan.out_dir)
    if plan.ignored and not args.quiet:
        print(f"note: {len(plan.ignored)} input(s) named like this run's outputs (e.g. "
              f"{plan.ignored[0].name}) are taken for earlier outputs and not read",
              file=sys.stderr)
    tally = Tally()
    events = _Progress(enabled=not args.quiet and bool(plan.todo))
    try:
        run_local(plan, spec, args.model, tally, events)
    except KeyboardInterrupt:
        events.say(f"interrupted: {tally}; finished outputs are kept, run again to do the rest")
        return EXIT_INTERRUPTED
    events.say(str(tally))
    return EXIT_FAILED if tally.failed else 0


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

    bar = _Progress(not args.quiet, unit="MiB", per=2 ** 20)
    try:
        path = download_checkpoint(args.name, args.models_dir, overwrite=args.overwrite,
                                   on_progress=bar.progress)
    finally:
        bar.end()
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
    remove.add_argument("inputs", nargs="+",
                        help="image files, video files, folders or image-sequence patterns")
    remove.add_argument("-o", "--output-dir", required=True,
                        help="folder for the results; each keeps its input's path relative to "
                             "the inputs' common folder (one folder: flat names); a URI "
                             "(s3://...) with --engine ray")
    remove.add_argument("-r", "--recursive", action="store_true",
                        help="also take the images and videos in the folders' sub-folders")
    remove.add_argument("--overwrite", action="store_true",
                        help="redo inputs whose output exists (default: keep it, count it as "
                             "skipped)")
    remove.add_argument("--output", default="cutout", choices=(*OUTPUTS, "cutout"),
                        help="cutout: PNG with straight alpha and estimated foreground colours "
                             "at the edges; rgba: the same with the image's own colours (as "
                             "the Segment node's rgba); mask: grey PNG, white = foreground; "
                             "composite: over --background")
    remove.add_argument("--background", help="#RRGGBB[AA] or an image file (for composite)")
    remove.add_argument("--no-foreground", action="store_true",
                        help="keep the original colours at edges (no foreground estimation)")
    remove.add_argument("--video-format", default="auto", choices=("auto", *VIDEO_FORMATS),
                        help="what a video input becomes: mov (ProRes 4444, with alpha for "
                             "rgba), webm (VP9, yuva420p alpha for rgba), mp4 (H.264, mask or "
                             "composite only), png (a folder of PNG frames); auto: mov for "
                             "rgba, mp4 otherwise. Needs PyAV (the 'video' extra)")
    remove.add_argument("--smooth", default="none", choices=SMOOTH_MODES,
                        help="temporal smoothing of video masks, restarting at scene cuts")
    remove.add_argument("--smooth-strength", type=float, default=0.5,
                        help="ema: weight of the history, 0..1 (default 0.5)")
    remove.add_argument("--smooth-window", type=int, default=3,
                        help="median: frames in the window, odd (default 3)")
    remove.add_argument("--cut-threshold", type=float, default=0.1,
                        help="mean frame difference (0..1) taken for a scene cut (default 0.1)")
    remove.add_argument("--resolution", default="auto", help="auto, dynamic or WxH")
    remove.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    remove.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:1, mps ... (--engine ray: each worker's GPU "
                             "when --gpus-per-worker > 0, else cpu)")
    remove.add_argument("--batch-size", type=int, default=0, help="frames per chunk, 0 = auto")
    mode = remove.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true",
                      help="run the unmodified network (no BatchNorm folding / fast "
                           "deformable convolution; same output to ~1e-6, slower)")
    mode.add_argument("--compile", action="store_true",
                      help="torch.compile the fast network (the first batch of each size "
                           "compiles for minutes; worth it for long runs on a GPU)")
    remove.add_argument("--suffix", default="", help="appended to each output file's stem")
    remove.add_argument("--engine", default="local", choices=ENGINES,
                        help="local: this process; ray: a Ray cluster (the 'ray' extra)")
    remove.add_argument("--address", default=None,
                        help="ray: the cluster to join (e.g. auto, ray://head:10001); default: "
                             "RAY_ADDRESS, else a local cluster started for this run")
    remove.add_argument("--workers", type=int, default=0,
                        help="ray: model actors (default: one per GPU, or 2 on CPUs)")
    remove.add_argument("--gpus-per-worker", type=float, default=0,
                        help="ray: GPUs per model actor (1 = one GPU each; 0 = run on CPUs)")
    remove.add_argument("--cpus-per-worker", type=float, default=1,
                        help="ray: CPUs reserved per model actor (default 1)")
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
