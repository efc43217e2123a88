"""Edge refinement on real segmenter masks (issue 7), not on the protocol's synthetic blur.

    PYTHONPATH=. python benchmarks/bench_real_masks.py [--checkpoint lite_fp16.safetensors]

The model segments the 680 px lemur photo and its composites over the protocol's backgrounds at
a working size well below the image size; the refined masks are scored against the FBA alpha
(band SAD, ratio to the plain upsampled prediction). Results: RESULTS_refine.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from matting_protocol import alpha_metrics, band_of, load_cases  # noqa: E402

from birefnet_core.inference import predict_masks  # noqa: E402
from birefnet_core.edges import refine_edges  # noqa: E402
from birefnet_core.weights import load_model  # noqa: E402


def main() -> None:
    shared = REPO.parent / "shared"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path,
                   default=shared / "fixtures" / "birefnet" / "lite_fp16.safetensors")
    p.add_argument("--matting", type=Path, default=shared / "data" / "matting")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    args = p.parse_args()
    model = load_model(args.checkpoint, optimize=True).model
    a, f, photo, bgs = load_cases(args.matting)["lemur"]
    band = band_of(a)
    print("| image | ws | plain band SAD | `guided` | `matting` |")
    print("|---|---|---|---|---|")
    for name in ("photo", *bgs):
        img = photo if name == "photo" else a * f + (1 - a) * bgs[name]
        hwc = img.permute(0, 2, 3, 1)
        for ws in args.sizes:
            mask = predict_masks(model, hwc, resolution=(ws, ws))
            base = alpha_metrics(mask[:, None], a, band)["sad_band"]
            ratios = [alpha_metrics(refine_edges(mask, hwc, ws, mode)[:, None], a,
                                    band)["sad_band"] / base for mode in ("guided", "matting")]
            print(f"| {name} | {ws} | {base:.2f} | {ratios[0]:.3f} | {ratios[1]:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
