"""Before/after crops for issue 17 (written next to this file, looked at in RESULTS_refine.md).

    PYTHONPATH=. python benchmarks/make_crops_issue17.py [texture ...]   # all, or those named

* ``issue17_green_rim.png``: the synthetic portrait over flat green, its mask degraded as a
  512^2 segmenter with a sigma-1 blur would give it, foreground estimated and composited over
  grey. Tiles (4x nearest-neighbour): exact composite | before (estimate_foreground with the
  previous settings: alpha_error 0, alpha_outlier 0, radii 4, 2) | now | official blur-fusion.
* ``issue17_square_blocks.png``: dark hair strands against a smooth 8-bit sky, mask predicted at
  1/4 size; refined alpha: true | upsampled mask | before (guided filter solved in float32) |
  now (float64 solve) | 5 x |before - now|.
* ``issue17_sharpening.png``: the lemur's fur (2048 px composite over the beach photo) with
  the mask a 1024^2 segmenter gives at blur sigma 0.5 (top: crisp) and 2 (bottom: soft):
  true alpha | upsampled mask | before (unsharp amount fixed at 2) | now (amount fitted per
  frame) | 5 x |before - true| | 5 x |now - true|.
* ``issue17_not_downscaled.png``: the synthetic portrait at 1536 px over the beach, its mask
  predicted at 2048^2 (not upsampled) with a sigma-2 blur: true alpha | mask (before: returned
  unchanged) | now | 5 x |mask - true| | 5 x |now - true|.
* ``issue17_wide_windows.png``: the flat blue-over-green edge at 256 px with the mask of a 64^2
  segmenter at sigma 2 (upsampled 4x), composited over grey (6x): exact | foreground
  estimated with the default windows | with the windows widened by the working size (what
  Composite does with Segment's mask) | official blur-fusion.
* ``issue17_texture.png``: the lemur's fur over the beach photo (2048 px) with the crisp mask
  (sigma 0.5) of a 1024^2 (top) and a 512^2 (bottom) segmenter: true alpha | upsampled mask |
  before (the final guided filter at full strength) | now (weakened where the background is
  textured) | 5 x |before - true| | 5 x |now - true|.
* ``issue17_prior_variance.png``: the same lemur, the 128-px window where the change is
  largest (its outline), masks of a 1024^2 segmenter at sigma
  0.5 and 1 and of a 512^2 one at sigma 0.5 (rows): true alpha | upsampled mask | before (the
  sharpened mask's variance fixed, whatever the blur the fit found) | now (in proportion to
  the square of the fitted amount) | 10 x |before - true| | 10 x |now - true|.
* ``issue17_crisp_radius.png``: the same, masks of a 1024^2 and a 512^2 segmenter at sigma 0.5
  (the fit finds them crisp): before (the final guided filter at 2 working px) | now (1 px).
* ``issue17_blurred_samples.png``: the lemur over flat green, masks of a 1024^2 segmenter at
  sigma 0.5 and 1: before (the colour model's confident samples thresholded on the mask) | now
  (on the mask blurred as for its unsharp mask).
* ``issue17_amount_5.png``: the synthetic portrait over the beach, masks of a 512^2 and a
  1024^2 segmenter at sigma 2: before (sharpening amounts up to 4) | now (up to 5); errors 2 x.
* ``issue17_unknown_texture.png``: the lemur over the beach, the crisp masks (sigma 0.5) of a
  1024^2 and a 512^2 segmenter: before (the final filter at full strength where the colour
  model has no samples on one side) | now (weakened by the frame's mean texture there).
* ``issue17_fit_weight.png``: the lemur over the beach, masks of a 1024^2 segmenter at sigma
  0.5 (the window of largest change) and 1 (where it helps most, where it costs most): before
  (the sharpening fit weighted by the colour estimate's share) | now (every pixel with colour
  samples the same).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.matting_protocol import (degrade, pipeline_backgrounds, pipeline_cases,
                                         synthetic_portrait)
from birefnet_core import edges as E
from birefnet_core import filters
from birefnet_core import foreground as FG

OUT = Path(__file__).resolve().parent
MATTING = OUT.parents[1] / "shared" / "data" / "matting"


def _row(tiles, zoom: int) -> np.ndarray:
    parts = []
    for t in tiles:
        x = t[0].permute(1, 2, 0).expand(-1, -1, 3).clamp(0, 1).numpy()
        x = (x * 255).round().astype(np.uint8)
        parts.append(np.kron(x, np.ones((zoom, zoom, 1), dtype=np.uint8)))
    sep = np.full((parts[0].shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([p for r in parts for p in (r, sep)][:-1], 1)


def _tiles(path: Path, tiles, zoom: int) -> None:
    """One row of ``[1, C, h, w]`` tiles, or a list of such rows (stacked, 6-px white gaps)."""
    rows = [_row(r, zoom) for r in (tiles if isinstance(tiles[0], list) else [tiles])]
    sep = np.full((6, rows[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate([p for r in rows for p in (r, sep)][:-1], 0)).save(path)
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


def _composite(case="lemur 2048", background="beach"):
    """``(alpha, image [1,H,W,3], crop)``: the lemur 2048 composite over the beach photo (or
    another case of ``pipeline_cases`` over another source background) and the 128-px window
    with the most fractional alpha (fur)."""
    a, f = pipeline_cases(MATTING)[case]
    img = (a * f + (1 - a) * pipeline_backgrounds(MATTING, a.shape[-2:])[background])
    frac = ((a > 0.02) & (a < 0.98)).float()
    density = F.avg_pool2d(frac, 128, 32)
    iy, ix = divmod(int(density.flatten().argmax()), density.shape[-1])
    crop = (Ellipsis, slice(iy * 32, iy * 32 + 128), slice(ix * 32, ix * 32 + 128))
    return a, img.permute(0, 2, 3, 1), crop


def _fixed_amount(mask, image, working_size):
    """refine_edges with the unsharp amount fixed at 2 (before it was fitted)."""
    keep = E._SHARPEN_AMOUNTS
    E._SHARPEN_AMOUNTS = (E._SHARPEN,)
    try:
        return E.refine_edges(mask, image, working_size)
    finally:
        E._SHARPEN_AMOUNTS = keep


def sharpening() -> None:
    a, image, sl = _composite()
    rows = []
    for sigma in (0.5, 2.0):
        ad = degrade(a, 1024, sigma, blur="gaussian")
        before, now = _fixed_amount(ad, image, 1024), E.refine_edges(ad, image, 1024)
        rows.append([a[sl], ad[sl], before[sl], now[sl], (5 * (before - a).abs())[sl],
                     (5 * (now - a).abs())[sl]])
    _tiles(OUT / "issue17_sharpening.png", rows, 2)
    a, f = synthetic_portrait(1536)
    image = (a * f + (1 - a) * pipeline_backgrounds(MATTING, a.shape[-2:])["beach"])
    ad = degrade(a, 2048, 2.0, blur="gaussian")
    now = E.refine_edges(ad, image.permute(0, 2, 3, 1), 2048)
    # The top of the head: hair strands and the skin's hard edge.
    y, x = int(0.17 * 1536), int(0.42 * 1536)
    sl = (Ellipsis, slice(y - 64, y + 64), slice(x - 64, x + 64))
    _tiles(OUT / "issue17_not_downscaled.png",
           [[a[sl], ad[sl], now[sl], (5 * (ad - a).abs())[sl], (5 * (now - a).abs())[sl]]], 3)


def wide_windows() -> None:
    n, ws = 256, 64
    yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    a = ((xx - 0.3 * yy - n / 3).clamp(-0.5, 0.5) + 0.5)[None, None].float()
    f = torch.tensor([0.15, 0.2, 0.45]).view(1, 3, 1, 1).expand(1, 3, n, n)
    green = torch.tensor([0.1, 0.75, 0.2]).view(1, 3, 1, 1)
    grey = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    img = a * f + (1 - a) * green
    ad = degrade(a, ws, 2.0, blur="gaussian")
    default = FG.estimate_foreground(img, ad)[0]
    wide = FG.estimate_foreground(img, ad, working_size=ws)[0]
    bf = FG.blur_fusion_foreground(img, ad)[0]
    comp = lambda fg, al: al * fg + (1 - al) * grey  # noqa: E731
    y = n // 2
    x = int(n / 3 + 0.3 * y)
    sl = (Ellipsis, slice(y - 24, y + 24), slice(x - 24, x + 24))
    _tiles(OUT / "issue17_wide_windows.png",
           [comp(f, a)[sl], comp(default, ad)[sl], comp(wide, ad)[sl], comp(bf, ad)[sl]], 6)


def texture() -> None:
    a, image, sl = _composite()
    rows = []
    for ws in (1024, 512):
        ad = degrade(a, ws, 0.5, blur="gaussian")
        keep, E._FILTER_TEXTURE = E._FILTER_TEXTURE, float("inf")
        try:
            before = E.refine_edges(ad, image, ws)
        finally:
            E._FILTER_TEXTURE = keep
        now = E.refine_edges(ad, image, ws)
        rows.append([a[sl], ad[sl], before[sl], now[sl], (5 * (before - a).abs())[sl],
                     (5 * (now - a).abs())[sl]])
    _tiles(OUT / "issue17_texture.png", rows, 2)


def _before_now(path: Path, before, settings, case="lemur 2048", background="beach",
                gain=10) -> None:
    """Rows of true | mask | before | now | gain x |before - true| | gain x |now - true| on the
    lemur 2048 over beach (or ``case`` over ``background``), one per ``(working size, sigma)``
    of ``settings``, in the 128-px window where the first row changes most; ``before()`` is a
    context in which refine_edges runs as it did before the change."""
    a, image, _ = _composite(case, background)
    results = []
    for ws, sigma in settings:
        ad = degrade(a, ws, sigma, blur="gaussian")
        with before():
            old = E.refine_edges(ad, image, ws)
        results.append((ad, old, E.refine_edges(ad, image, ws)))
    change = F.avg_pool2d((results[0][1] - results[0][2]).abs(), 128, 32)
    iy, ix = divmod(int(change.flatten().argmax()), change.shape[-1])
    sl = (Ellipsis, slice(iy * 32, iy * 32 + 128), slice(ix * 32, ix * 32 + 128))
    rows = [[a[sl], ad[sl], old[sl], now[sl], (gain * (old - a).abs())[sl],
             (gain * (now - a).abs())[sl]] for ad, old, now in results]
    for (ad, old, now), (ws, sigma) in zip(results, settings):
        err = [(x - a)[sl].abs().mean().item() for x in (ad, old, now)]
        print(f"{path.name} {ws} / {sigma}: mean |error| in the crop: mask {err[0]:.4f}, "
              f"before {err[1]:.4f}, now {err[2]:.4f}")
    _tiles(path, rows, 2)


@contextlib.contextmanager
def _patched(name, value):
    keep = getattr(E, name)
    setattr(E, name, value)
    try:
        yield
    finally:
        setattr(E, name, keep)


def prior_variance() -> None:
    # (the filter's crisp radius as it was then, so that the crop shows this change alone)
    with _patched("_FILTER_RADIUS_CRISP", E._FILTER_RADIUS):
        _before_now(OUT / "issue17_prior_variance.png",
                    lambda: _patched("_prior_var", lambda amount: E._PRIOR_VAR),
                    ((1024, 0.5), (1024, 1.0), (512, 0.5)))


def crisp_radius() -> None:
    _before_now(OUT / "issue17_crisp_radius.png",
                lambda: _patched("_FILTER_RADIUS_CRISP", E._FILTER_RADIUS),
                ((1024, 0.5), (512, 0.5)))


@contextlib.contextmanager
def _samples_from_the_mask():
    """refine_edges with the colour model's confident samples thresholded on the mask itself
    (before they came from its blur)."""
    colour_alpha, channels = E._multiscale_colour_alpha, E._fb_channels
    seen = {}

    def keep_prior(guide, prior, *args, **kwargs):
        seen["prior"] = prior
        return colour_alpha(guide, prior, *args, **kwargs)

    with _patched("_multiscale_colour_alpha", keep_prior), _patched(
            "_fb_channels", lambda guide, soft, lo, hi: channels(guide, seen["prior"], lo, hi)):
        yield


def blurred_samples() -> None:
    _before_now(OUT / "issue17_blurred_samples.png", _samples_from_the_mask,
                ((1024, 0.5), (1024, 1.0)), background="green")


def amount_5() -> None:
    _before_now(OUT / "issue17_amount_5.png",
                lambda: _patched("_SHARPEN_AMOUNTS", E._SHARPEN_AMOUNTS[:-1]),
                ((512, 2.0), (1024, 2.0)), case="portrait (synthetic) 1536", gain=2)


def unknown_texture() -> None:
    _before_now(OUT / "issue17_unknown_texture.png",
                lambda: _patched("_fill_texture", lambda texture, *args: texture),
                ((1024, 0.5), (512, 0.5)))


def fit_weight() -> None:
    """Rows: sigma 0.5 in the window of its largest change; sigma 1 in the window where the
    change helps most and where it costs most (it does both)."""
    a, image, _ = _composite()
    before = lambda: _patched("_fit_weight",  # noqa: E731
                              lambda prec, band: E._share(prec, E._PRIOR_VAR) * band)
    rows = []
    for sigma, picks in ((0.5, ("change",)), (1.0, ("better", "worse"))):
        ad = degrade(a, 1024, sigma, blur="gaussian")
        with before():
            old = E.refine_edges(ad, image, 1024)
        now = E.refine_edges(ad, image, 1024)
        gain = F.avg_pool2d((now - a).abs() - (old - a).abs(), 128, 32)
        for pick in picks:
            score = {"change": F.avg_pool2d((now - old).abs(), 128, 32), "better": -gain,
                     "worse": gain}[pick]
            iy, ix = divmod(int(score.flatten().argmax()), score.shape[-1])
            sl = (Ellipsis, slice(iy * 32, iy * 32 + 128), slice(ix * 32, ix * 32 + 128))
            err = [(x - a)[sl].abs().mean().item() for x in (ad, old, now)]
            print(f"issue17_fit_weight.png 1024 / {sigma} ({pick}): mean |error| in the crop: "
                  f"mask {err[0]:.4f}, before {err[1]:.4f}, now {err[2]:.4f}")
            rows.append([a[sl], ad[sl], old[sl], now[sl], (10 * (old - a).abs())[sl],
                         (10 * (now - a).abs())[sl]])
    _tiles(OUT / "issue17_fit_weight.png", rows, 2)


CROPS = {"green_rim": green_rim, "square_blocks": square_blocks, "sharpening": sharpening,
         "wide_windows": wide_windows, "texture": texture, "prior_variance": prior_variance,
         "crisp_radius": crisp_radius, "blurred_samples": blurred_samples,
         "amount_5": amount_5, "unknown_texture": unknown_texture, "fit_weight": fit_weight}

if __name__ == "__main__":
    torch.set_num_threads(2)
    for name in sys.argv[1:] or CROPS:
        CROPS[name]()
