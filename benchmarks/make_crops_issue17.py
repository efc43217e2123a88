"""Before/after crops for issue 17 (written next to this file, looked at in RESULTS_refine.md).

    PYTHONPATH=. python benchmarks/make_crops_issue17.py

* ``issue17_green_rim.png``: the synthetic portrait over flat green, its mask degraded as a
  512^2 segmenter with a sigma-1 blur would give it, foreground estimated and composited over
  grey. Tiles (4x nearest-neighbour): exact composite | before (estimate_foreground with the
  previous settings: alpha_error 0, alpha_outlier 0, radii 4, 2) | now | official blur-fusion.
* ``issue17_square_blocks.png``: dark hair strands against a smooth 8-bit sky, mask predicted at
  1/4 size; refined alpha: true | upsampled mask | before (guided filter solved in float32) |
  now (float64 solve) | 5 x |before - now|.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.matting_protocol import degrade, synthetic_portrait
from birefnet_core import edges as E
from birefnet_core import filters
from birefnet_core import foreground as FG

OUT = Path(__file__).resolve().parent


def _tiles(path: Path, tiles, zoom: int) -> None:
    rows = []
    for t in tiles:
        x = t[0].permute(1, 2, 0).expand(-1, -1, 3).clamp(0, 1).numpy()
        x = (x * 255).round().astype(np.uint8)
        rows.append(np.kron(x, np.ones((zoom, zoom, 1), dtype=np.uint8)))
    sep = np.full((rows[0].shape[0], 6, 3), 255, np.uint8)
    out = np.concatenate([p for r in rows for p in (r, sep)][:-1], 1)
    Image.fromarray(out).save(path)
    print("wrote", path)


def green_rim() -> None:
    n = 1024
    a, f = synthetic_portrait(n)
    green = torch.tensor([0.1, 0.75, 0.2]).view(1, 3, 1, 1)
    grey = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    img = a * f + (1 - a) * green
    ad = degrade(a, 512, 1.0, blur="gaussian")
    before = FG.estimate_foreground(img, ad, alpha_error=0.0, alpha_outlier=0.0,
                                   local_radii=(4, 2))[0]
    now = FG.estimate_foreground(img, ad)[0]
    bf = FG.blur_fusion_foreground(img, ad)[0]
    comp = lambda fg, al: al * fg + (1 - al) * grey  # noqa: E731
    # The shoulder: flat blue cloth against the flat green (a hard, smooth edge).
    y, x = int(0.80 * n), int(0.849 * n)
    sl = (Ellipsis, slice(y - 20, y + 20), slice(x - 20, x + 20))
    _tiles(OUT / "issue17_green_rim.png",
           [comp(f, a)[sl], comp(before, ad)[sl], comp(now, ad)[sl], comp(bf, ad)[sl]], 6)


def square_blocks() -> None:
    h = w = 256
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    sky = torch.stack([0.55 + 0.1 * yy, 0.70 + 0.08 * yy, 0.95 - 0.02 * xx])[None]
    hair = torch.tensor([0.08, 0.06, 0.05]).view(1, 3, 1, 1)
    a = ((torch.sin(xx * 90 + yy * 20) > 0.7) & (yy > 0.3)).float()[None, None]
    a = F.avg_pool2d(a, 3, 1, 1)
    g = ((a * hair + (1 - a) * sky) * 255).round() / 255
    small = F.interpolate(a, size=(64, 64), mode="bilinear", antialias=True)
    mask = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    now = E.refine_edges(mask, g, working_size=64)
    keep = filters.solve_dtype
    filters.solve_dtype = lambda device: torch.float32  # the previous float32 solve
    try:
        before = E.refine_edges(mask, g, working_size=64)
    finally:
        filters.solve_dtype = keep
    diff = (before - now).abs()
    print("max |before - now| =", float(diff.max()))
    # Centre the crop on the worst window of the float32 solve.
    iy, ix = divmod(int(diff.flatten().argmax()), w)
    y0, x0 = min(max(0, iy - 48), h - 96), min(max(0, ix - 48), w - 96)
    sl = (Ellipsis, slice(y0, y0 + 96), slice(x0, x0 + 96))
    _tiles(OUT / "issue17_square_blocks.png",
           [a[sl], mask[sl], before[sl], now[sl], (5 * diff)[sl]], 3)


if __name__ == "__main__":
    torch.set_num_threads(2)
    green_rim()
    square_blocks()
