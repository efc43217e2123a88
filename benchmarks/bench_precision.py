"""Reduced precision against fp32: how far the masks move, deformable convolutions included.

For real photos (``../shared/data/matting`` by default), runs ``predict_masks`` with the same
weights in fp32 (the reference) and in a reduced precision, three ways:

- ``fast``: the fast mode as shipped, its deformable convolutions sampling and multiplying in
  the reduced dtype (positions in fp32);
- ``fast, dcn fp32``: the fast mode with the deformable convolutions forced to fp32
  (``optimize_for_inference(..., deform_fp32_under_autocast=True)``);
- ``exact``: the exact mode under the same autocast.

and prints max and mean |Δ mask| against fp32 and the time of one call::

    PYTHONPATH=. python benchmarks/bench_precision.py                     # lite fixture, CPU bf16
    PYTHONPATH=. python benchmarks/bench_precision.py model.safetensors --device cuda \\
        --precision fp16 --resolution 1024x1024

CPU bf16 is slow (it measures accuracy, not speed); on a GPU the same script gives both.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from birefnet_core.inference import predict_masks  # noqa: E402
from birefnet_core.optimize import optimize_for_inference  # noqa: E402
from birefnet_core.weights import load_model  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = SHARED / "fixtures" / "birefnet" / "lite_fp16.safetensors"
DEFAULT_IMAGES = [SHARED / "data" / "matting" / "lemur" / "lemur.png",
                  SHARED / "data" / "matting" / "pymatting_test" / "test.png",
                  SHARED / "data" / "matting" / "lemur" / "beach.png"]


def read_image(path: Path) -> torch.Tensor:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)[None]  # [1, H, W, 3]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    parser.add_argument("--images", nargs="+", default=[str(p) for p in DEFAULT_IMAGES])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--resolution", default="1024x1024")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in (args.model, *args.images):
        if not Path(path).is_file():
            raise SystemExit(f"{path} not found (the defaults live in ../shared beside the repo)")

    exact = load_model(args.model, device=args.device).model
    fast = optimize_for_inference(copy.deepcopy(exact))
    fast_dcn32 = optimize_for_inference(copy.deepcopy(exact), deform_fp32_under_autocast=True)
    runs = (("fast", fast), ("fast, dcn fp32", fast_dcn32), ("exact", exact))
    device = torch.device(args.device)
    print(f"{Path(args.model).name} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads), {args.precision} vs fp32 at {args.resolution}")

    def timed(model, images, precision):
        predict_masks(model, images, resolution=args.resolution, precision=precision,
                      device=device)  # warm-up: caches, allocator, kernels
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        masks = predict_masks(model, images, resolution=args.resolution, precision=precision,
                              device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return masks, time.perf_counter() - start

    for path in args.images:
        images = read_image(Path(path))
        reference, seconds = timed(fast, images, "fp32")
        print(f"{Path(path).name} ({images.shape[2]}x{images.shape[1]}): fp32 fast "
              f"{seconds * 1e3:.0f} ms")
        for name, model in runs:
            masks, seconds = timed(model, images, args.precision)
            delta = (masks - reference).abs()
            print(f"  {args.precision} {name:15s} max|Δ| {delta.max().item():.2e}  "
                  f"mean|Δ| {delta.mean().item():.2e}  {seconds * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
