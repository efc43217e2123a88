"""Issue 17: Segment -> Refine Mask -> Composite scored as a user's graph runs them.

    PYTHONPATH=. python benchmarks/bench_pipeline.py [--matting ../shared/data/matting]
        [--skip-timing] [--cases lemur] [--working-sizes 1024 512]

For every exact-ground-truth case (matting_protocol.pipeline_cases), source background (a
photo, a flat green), working size (1024, 512) and segmenter blur (Gaussian sigma 0.5, 1, 2
working px), the true alpha is degraded as a segmenter degrades it (squash to the working size,
blur, bilinear back) and:

* alpha: band SAD (band = 0 < a < 1 dilated 4 px) of the upsampled mask, and of the project's
  ``guided`` and ``matting`` (closed-form matting on the band) refinements as ratios to it;
* colour: :func:`matting_protocol.colour_error` of the project's ``estimate_foreground``
  (now, told the working size for the degraded mask as Composite reads it from Segment's
  mask; and the previous version: ``alpha_error=0, alpha_outlier=0``, radii (4, 2)) as
  ratios to the official
  blur-fusion (windows 90 and 6 px), with the degraded mask, the ``guided`` mask, and (one row
  per case) the true alpha;
* timings at 2048^2 (best of N) on the threads torch has (set OMP_NUM_THREADS / --threads).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.matting_protocol import (alpha_metrics, band_of, colour_error, degrade,
                                         pipeline_backgrounds, pipeline_cases)
from birefnet_core import edges as E
from birefnet_core import foreground as FG

REPO = Path(__file__).resolve().parents[1]
# estimate_foreground before issue 17
OLD = dict(alpha_error=0.0, alpha_outlier=0.0, local_radii=(4, 2))


def _fg(img, a, **kw):
    return FG.estimate_foreground(img, a, **kw)[0]


def _bf(img, a):
    return FG.blur_fusion_foreground(img, a)[0]


def colour_ratios(img, f, au, a, working_size=None):
    """Now / before / blur-fusion error; ``working_size``: the segmenter's, which Composite
    reads from Segment's mask (now only: the windows widen where it was upsampled > 2x)."""
    e_bf = colour_error(_bf(img, au), f, au, a)
    return (colour_error(_fg(img, au, working_size=working_size), f, au, a) / e_bf,
            colour_error(_fg(img, au, **OLD), f, au, a) / e_bf, e_bf)


def quality(matting: Path, names=None, working_sizes=(1024, 512)):
    cases = pipeline_cases(matting)
    print("\n## Pipeline quality (ratios; lower is better)\n")
    print("alpha: band SAD ratio to the upsampled mask; colour: colour error ratio to official "
          "blur-fusion (90/6 px windows)\n")
    print("| case | bg | ws | sigma | scale | bilinear band SAD | `guided` | `matting` | colour, "
          "degraded mask: now / before | colour, `guided` mask: now | BF error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worst = {"true": 0.0, "degraded": 0.0, "refined": 0.0, "sad_down": 0.0, "sad_up": 0.0}
    for name, (a, f) in cases.items():
        if names and not any(n in name for n in names):
            continue
        band = band_of(a)
        h, w = a.shape[-2:]
        for bn, bg in pipeline_backgrounds(matting, a.shape[-2:]).items():
            img = a * f + (1 - a) * bg
            now, before, e_bf = colour_ratios(img, f, a, a)
            worst["true"] = max(worst["true"], now)
            print(f"| {name} | {bn} | true alpha | | | | | | {now:.2f} / {before:.2f} | | "
                  f"{e_bf:.2e} |", flush=True)
            for ws in working_sizes:
                scale = max(h, w) / ws
                for sigma in (0.5, 1.0, 2.0):
                    ad = degrade(a, ws, sigma, blur="gaussian")
                    base = alpha_metrics(ad, a, band)["sad_band"]
                    ref = {}
                    for mode in ("guided", "matting"):
                        ref[mode] = E.refine_edges(ad, img.permute(0, 2, 3, 1), ws, mode)
                    sad = {m: alpha_metrics(ref[m], a, band)["sad_band"] / base for m in ref}
                    key = "sad_down" if scale > 1 else "sad_up"
                    worst[key] = max(worst[key], sad["guided"])
                    now, before, e_bf = colour_ratios(img, f, ad, a, ws)
                    worst["degraded"] = max(worst["degraded"], now)
                    rg = ref["guided"]
                    now_r = colour_error(_fg(img, rg), f, rg, a) / colour_error(_bf(img, rg), f,
                                                                                 rg, a)
                    worst["refined"] = max(worst["refined"], now_r)
                    print(f"| {name} | {bn} | {ws} | {sigma} | {scale:.2f} | {base:.2f} | "
                          f"{sad['guided']:.2f} | {sad['matting']:.2f} | {now:.2f} / "
                          f"{before:.2f} | {now_r:.2f} | {e_bf:.2e} |", flush=True)
    print("\nworst ratios:", {k: round(v, 3) for k, v in worst.items()})


def _best(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timings(matting: Path, repeats: int):
    print(f"\n## Timings at 2048^2, best of {repeats}, {torch.get_num_threads()} threads\n")
    a, f = pipeline_cases(matting)["lemur 2048"]
    a = torch.nn.functional.interpolate(a, size=(2048, 2048), mode="bilinear").clamp(0, 1)
    f = torch.nn.functional.interpolate(f, size=(2048, 2048), mode="bilinear").clamp(0, 1)
    img = a * f + (1 - a) * pipeline_backgrounds(matting, (2048, 2048))["beach"]
    ad = degrade(a, 1024, 1.0, blur="gaussian")
    print("| op | s |")
    print("|---|---|")
    for label, fn in (("refine `guided` (ws 1024), lemur matte",
                       lambda: E.refine_edges(ad, img.permute(0, 2, 3, 1), 1024)),
                      ("refine `matting` (ws 1024), lemur matte",
                       lambda: E.refine_edges(ad, img.permute(0, 2, 3, 1), 1024, "matting")),
                      ("estimate_foreground (now)", lambda: _fg(img, ad)),
                      ("estimate_foreground (before: alpha_error 0, outlier 0, radii 4, 2)",
                       lambda: _fg(img, ad, **OLD)),
                      ("blur-fusion, official windows", lambda: _bf(img, ad))):
        print(f"| {label} | {_best(fn, repeats):.3f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--matting", type=Path, default=REPO.parent / "shared" / "data" / "matting")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--cases", nargs="*", help="substrings of the case names to run")
    p.add_argument("--working-sizes", type=int, nargs="+", default=[1024, 512],
                   help="segmenter working sizes (above the image side: a mask not upsampled)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_quality:
        quality(args.matting, args.cases, args.working_sizes)
    if not args.skip_timing:
        timings(args.matting, args.repeats)


if __name__ == "__main__":
    main()
