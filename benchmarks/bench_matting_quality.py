"""Issue 7 quality + speed protocol: edge refinement vs bilinear, foreground vs blur-fusion.

    PYTHONPATH=. python benchmarks/bench_matting_quality.py [--matting ../shared/data/matting]

Prints (1) refined-alpha band SAD / MSE / gradient error as ratios to the bilinear-upsampled
mask, for large-image cases (lemur at working sizes 256 and 384, pymatting 32 px at 16) and
not-downscaled cases (working size >= image); (2) composite colour error (band MSE) of the
foreground estimators over a new background as ratios to blur-fusion; (3) timings at 2048^2.
Results measured on the 2-core dev CPU are recorded in RESULTS_refine.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.matting_protocol import (alpha_metrics, band_of, composite_error, degrade,
                                         load_cases)
from birefnet_core import edges as E
from birefnet_core import foreground as FG
from birefnet_core.filters import guided_filter

REPO = Path(__file__).resolve().parents[1]


def plain_guided(mask, image, working_size):
    """Baseline: a plain colour guided filter over the whole mask (radius = 2x the scale)."""
    scale = max(mask.shape[-2:]) / working_size
    if scale <= 1:
        return mask
    return guided_filter(image, mask, max(1, round(2 * scale)), 1e-4).clamp(0, 1)


def refine_table(cases):
    print("\n## Edge refinement: ratio to bilinear (lower is better)")
    print("| case | working | bg | method | band SAD | band MSE | band grad | whole SAD | time s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (a, f, _, bgs) in cases.items():
        sizes = (16, 32, 64) if name == "pymatting32" else (256, 384, 1024)
        band = band_of(a)
        for ws in sizes:
            ad = degrade(a, ws)
            base = alpha_metrics(ad, a, band)
            for bn, bg in bgs.items():
                img = a * f + (1 - a) * bg
                for label, fn in (("plain GF", lambda: plain_guided(ad, img, ws)),
                                  ("guided", lambda: E.refine_edges(ad, img.permute(0, 2, 3, 1), ws, "guided")),
                                  ("matting", lambda: E.refine_edges(ad, img.permute(0, 2, 3, 1), ws, "matting"))):
                    t = time.perf_counter()
                    out = fn()
                    dt = time.perf_counter() - t
                    m = alpha_metrics(out, a, band)
                    print(f"| {name} | {ws} | {bn} | {label} | {m['sad_band'] / base['sad_band']:.3f}"
                          f" | {m['mse_band'] / base['mse_band']:.3f}"
                          f" | {m['grad_band'] / max(base['grad_band'], 1e-12):.3f}"
                          f" | {m['sad'] / base['sad']:.3f} | {dt:.2f} |")


def foreground_table(cases):
    print("\n## Foreground estimation: composite colour error (band MSE), ratio to blur-fusion")
    print("| case | source bg -> new bg | naive image*a | multilevel | blur-fusion MSE |")
    print("|---|---|---|---|---|")
    for name, (a, f, _, bgs) in cases.items():
        band = band_of(a)
        for src, bg in bgs.items():
            img = a * f + (1 - a) * bg
            new = "magenta" if src == "beach" else "beach"
            e_bf = composite_error(FG.blur_fusion_foreground(img, a)[0], f, a, bgs[new], band)
            e_naive = composite_error(img, f, a, bgs[new], band)
            e_ml = composite_error(FG.estimate_foreground(img, a)[0], f, a, bgs[new], band)
            print(f"| {name} | {src} -> {new} | {e_naive / e_bf:.2f} | {e_ml / e_bf:.3f} "
                  f"| {e_bf:.2e} |")


def timing_table(repeats=5):
    print("\n## Timings (best of %d), seconds" % repeats)
    torch.manual_seed(0)
    rows = []
    for side, ws in ((1024, 512), (2048, 1024)):
        img = torch.rand(1, 3, side, side)
        a_small = (torch.rand(1, 1, ws // 16, ws // 16) > 0.5).float()
        a = torch.nn.functional.interpolate(a_small, size=(side, side), mode="bilinear")
        for label, fn in (
                ("blur-fusion (integral image)", lambda: FG.blur_fusion_foreground(img, a)),
                ("multilevel foreground", lambda: FG.estimate_foreground(img, a)),
                (f"refine guided (ws {ws})", lambda: E.refine_edges(a, img.permute(0, 2, 3, 1), ws, "guided")),
                (f"refine matting (ws {ws})", lambda: E.refine_edges(a, img.permute(0, 2, 3, 1), ws, "matting"))):
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            rows.append((side, label, best))
    # A realistic matte (thin band): the lemur composite squashed to 2048^2.
    cases = load_cases(REPO.parent / "shared" / "data" / "matting")
    a, f, _, bgs = cases["lemur"]
    up = lambda t: torch.nn.functional.interpolate(  # noqa: E731
        t, size=(2048, 2048), mode="bilinear", align_corners=False).clamp(0, 1)
    img2, a2 = up(a * f + (1 - a) * bgs["beach"]), up(a)
    for label, fn in (("refine guided (ws 1024), lemur matte",
                       lambda: E.refine_edges(a2, img2.permute(0, 2, 3, 1), 1024, "guided")),
                      ("refine matting (ws 1024), lemur matte",
                       lambda: E.refine_edges(a2, img2.permute(0, 2, 3, 1), 1024, "matting")),
                      ("multilevel foreground, lemur matte",
                       lambda: FG.estimate_foreground(img2, a2)),
                      ("blur-fusion, lemur matte", lambda: FG.blur_fusion_foreground(img2, a2))):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        rows.append((2048, label, best))
    print("| size | op | s |")
    print("|---|---|---|")
    for side, label, best in rows:
        print(f"| {side}^2 | {label} | {best:.3f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--matting", type=Path, default=REPO.parent / "shared" / "data" / "matting")
    p.add_argument("--skip-timing", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    cases = load_cases(args.matting)
    refine_table(cases)
    foreground_table(cases)
    if not args.skip_timing:
        timing_table()


if __name__ == "__main__":
    main()
