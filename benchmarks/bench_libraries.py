"""The pack's hand-written filters against the library equivalents, side by side in one process.

    PYTHONPATH=. python benchmarks/bench_libraries.py                 # 1024² and 2048², 2 threads
    PYTHONPATH=. python benchmarks/bench_libraries.py --sizes 512 --repeats 2 --json out.json
    PYTHONPATH=. python benchmarks/bench_libraries.py --gaussian 1 2 4 8 16  # its two paths

For each op that a well-kept library also provides (kornia 0.7+, torch), the same input goes
through both, alternating, and the minimum of ``--repeats`` timings is reported with the ratio
(library / ours: above 1 means ours is faster) and the largest difference from a float64
reference. An op whose library version runs out of time or memory on the largest size is
reported as such. Used to decide which library a dependency is kept for (see RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def _time_pair(ours, lib, repeats: int, budget_s: float):
    """Minimum seconds of ``ours()`` and ``lib()`` over ``repeats`` alternating runs, so that
    load from other processes hits both alike (None: a run exceeded the budget, or no lib)."""
    best = {"ours": float("inf"), "lib": float("inf")}
    fns = {"ours": ours, "lib": lib}
    for _ in range(repeats):
        for key, fn in fns.items():
            if fn is None or best[key] is None:
                best[key] = None
                continue
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            best[key] = None if took > budget_s else min(best[key], took)
    return best["ours"], best["lib"]


def _cases(size: int, radius: int):
    import kornia

    from birefnet_core import filters

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(1, 1, size, size, generator=g)
    mask = F.avg_pool2d((mask > 0.5).float(), 9, 1, 4)  # a soft, mask-like field
    guide = torch.rand(1, 3, size, size, generator=g)
    # a mask-like binary image for labelling: 60 discs, a few of them touching
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(60, 2, generator=g) * size
    radii = (0.02 + 0.05 * torch.rand(60, generator=g)) * size
    binary = torch.zeros(1, 1, size, size, dtype=torch.bool)
    for (cy, cx), r in zip(centres.tolist(), radii.tolist()):
        binary[0, 0] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    k = 2 * radius + 1
    sigma = radius / 2

    def reference_box(x):
        return filters.box_mean(x.double(), k, border="reflect")

    return {
        # name: (ours, library, float64 reference or None)
        f"box mean {k}x{k} (reflect)": (
            lambda: filters.box_mean(mask, k, border="reflect"),
            lambda: kornia.filters.box_blur(mask, (k, k), border_type="reflect"),
            lambda: reference_box(mask)),
        f"Gaussian blur sigma {sigma:g}": (
            lambda: filters.gaussian_blur(mask, sigma),
            lambda: kornia.filters.gaussian_blur2d(mask, (2 * int(3 * sigma + 0.5) + 1,) * 2,
                                                   (sigma, sigma), border_type="replicate"),
            # the same truncated kernel in float64 (interior: the borders differ by design)
            lambda: kornia.filters.gaussian_blur2d(mask.double(),
                                                   (2 * int(3 * sigma + 0.5) + 1,) * 2,
                                                   (sigma, sigma), border_type="replicate")),
        f"guided filter r={radius} (colour guide)": (
            lambda: filters.guided_filter(guide, mask, radius, 1e-3),
            lambda: kornia.filters.guided_blur(guide, mask, k, 1e-3),
            lambda: kornia.filters.guided_blur(guide.double(), mask.double(), k, 1e-3)),
        f"dilation r={radius}": (
            lambda: filters.dilate(mask, radius),
            lambda: kornia.morphology.dilation(mask, torch.ones(k, k)),
            None),  # octagon vs square element: speed only
        "connected components (4-conn.)": (
            lambda: filters.connected_components(binary[:, 0]),
            lambda: kornia.contrib.connected_components(binary.float(), num_iterations=size * 4),
            None),  # labels differ by convention: speed only
        f"antialiased downscale 1/{max(2, radius // 2)}": (
            lambda: F.interpolate(guide, scale_factor=1 / max(2, radius // 2), mode="bilinear",
                                  antialias=True, align_corners=False),
            lambda: kornia.geometry.rescale(guide, 1 / max(2, radius // 2), antialias=True),
            None),
    }


def _interior_error(out, ref, margin: int) -> float:
    if ref is None:
        return float("nan")
    out, ref = out.double(), ref.double()
    if margin:
        out, ref = out[..., margin:-margin, margin:-margin], ref[..., margin:-margin, margin:-margin]
    return float((out - ref).abs().max())


def gaussian_paths(sizes, sigmas, channels, repeats: int) -> list[dict]:
    """``gaussian_blur``'s two paths side by side: the separable taps and the three box filters,
    per sigma: where the taps stop being the faster one sets ``filters.GAUSSIAN_MAX_RADIUS``."""
    from birefnet_core import filters

    rows = []
    limit = filters.GAUSSIAN_MAX_RADIUS
    print("| sigma | radius | size | channels | taps s | three boxes s | boxes/taps |")
    print("|---|---|---|---|---|---|---|")
    try:
        for size in sizes:
            x = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(0))
            for sigma in sigmas:
                def path(max_radius):
                    def run():
                        filters.GAUSSIAN_MAX_RADIUS = max_radius
                        filters.gaussian_blur(x, sigma)
                    return run
                with torch.inference_mode():
                    taps, boxes = _time_pair(path(10 ** 9), path(0), repeats, 60.0)
                radius = int(3 * sigma + 0.5)
                rows.append(dict(sigma=sigma, radius=radius, size=size, channels=channels,
                                 taps_s=taps, boxes_s=boxes, ratio=boxes / taps))
                print(f"| {sigma:g} | {radius} | {size}² | {channels} | {taps:.4f} | "
                      f"{boxes:.4f} | {boxes / taps:.2f} |", flush=True)
    finally:
        filters.GAUSSIAN_MAX_RADIUS = limit
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--radii", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds after which one run of an op is reported as too slow")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--gaussian", type=float, nargs="*", metavar="SIGMA",
                        help="instead: the Gaussian blur's convolution vs its box path at "
                             "these sigmas (default 1 2 4 8 12 16)")
    parser.add_argument("--channels", type=int, default=1, help="with --gaussian")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.gaussian is not None:
        rows = gaussian_paths(args.sizes, args.gaussian or [1, 2, 4, 8, 12, 16],
                              args.channels, args.repeats)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    import kornia

    rows = []
    print(f"torch {torch.__version__}, kornia {kornia.__version__}, {args.threads} threads")
    print("| op | size | ours s | library s | library/ours | max err ours | max err lib |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for radius in args.radii:
            for name, (ours, lib, ref) in _cases(size, radius).items():
                with torch.inference_mode():
                    try:
                        reference = ref() if ref is not None else None
                    except (RuntimeError, MemoryError) as exc:  # kornia's unfold at large r
                        reference = None
                        print(f"  {name}: reference failed: {str(exc)[:120]}")
                    margin = 2 * radius + 1
                    err_ours = _interior_error(ours(), reference, margin)
                    try:
                        err_lib = _interior_error(lib(), reference, margin)
                    except (RuntimeError, MemoryError) as exc:
                        err_lib, lib = float("nan"), None
                        print(f"  {name}: library failed: {str(exc)[:120]}")
                    t_ours, t_lib = _time_pair(ours, lib, args.repeats, args.budget)
                ratio = (t_lib / t_ours) if (t_lib and t_ours) else None
                row = dict(op=name, size=size, ours_s=t_ours, library_s=t_lib, ratio=ratio,
                           err_ours=err_ours, err_library=err_lib)
                rows.append(row)

                def fmt(v, spec):
                    return "over budget" if v is None else format(v, spec)

                print(f"| {name} | {size}² | {fmt(t_ours, '.4f')} | {fmt(t_lib, '.4f')} | "
                      f"{fmt(ratio, '.2f')} | {err_ours:.1e} | {err_lib:.1e} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
