"""Foreground colour estimation and despill: the straight colours ``F`` (and the old background
``B``) with ``image ~ a F + (1 - a) B`` at a mask's soft edges, so that a cut-out shows no halo
of the old background.

Conventions: ``image`` / colours ``[B, 3, H, W]``, alpha ``[B, 1, H, W]``, 0..1, **1 =
foreground**; results are **straight** (not premultiplied) colours. All ops are batched and run
on the input's device. :func:`~.composite.composite` calls these at its boundary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import InputError
from .filters import Tiles, band_tiles, box_mean, gather_tiles
from .filters import box_sum_valid as _window_sum
from .layout import _resize, bilinear_taps, check_finite, upsampling_factor

__all__ = [
    "blur_fusion_foreground",
    "BLUR_FUSION_WINDOWS",
    "ALPHA_ERROR",
    "ALPHA_OUTLIER",
    "estimate_foreground",
    "despill",
    "FOREGROUND_METHODS",
]

FOREGROUND_METHODS = ("none", "multilevel", "blur_fusion")


def _blur_fusion_pass(image, alpha, fg, bg, size, border):
    ba = box_mean(alpha, size, border)
    m = box_mean(torch.cat([fg * alpha, bg * (1 - alpha)], 1), size, border)
    fb = m[:, :3] / (ba + 1e-5)
    bb = m[:, 3:] / (1 - ba + 1e-5)
    fg = (fb + alpha * (image - alpha * fb - (1 - alpha) * bb)).clamp(0, 1)
    return fg, bb


BLUR_FUSION_WINDOWS = (90, 6)


def blur_fusion_foreground(image: torch.Tensor, alpha: torch.Tensor,
                           windows: tuple[int, ...] = BLUR_FUSION_WINDOWS,
                           border: str = "reflect") -> tuple[torch.Tensor, torch.Tensor]:
    """Two-pass blur-fusion foreground estimation (Forte & Pitie, "approximate fast FG").

    ``image`` ``[B,3,H,W]``, ``alpha`` ``[B,1,H,W]`` (1 = foreground). Returns straight
    foreground colours and the smooth background estimate, both ``[B,3,H,W]``. ``windows`` are
    the box-blur window *widths* in px of the passes (the published method: 90 then 6, as
    ``cv2.blur(x, (w, w))``; an even width reaches one pixel further back than forward) and
    ``border`` the border mode of :func:`~.filters.box_mean` (``"reflect"``: OpenCV's default,
    mirrored without repeating the edge pixel). Box blurs are cumulative sums, so the cost does
    not depend on the windows. Kept as the reference method and the benchmark baseline.

    >>> fg, bg = blur_fusion_foreground(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8))
    >>> fg.shape
    torch.Size([1, 3, 8, 8])
    """
    fg, bg = image, image
    for size in windows:
        fg, bg = _blur_fusion_pass(image, alpha, fg, bg, int(size), border)
    return fg, bg


# Variance of the alpha error the band passes allow for everywhere (0.03 rms), on top of the
# per-pixel robust estimate below (issue 17's sweeps in benchmarks/RESULTS_refine.md).
ALPHA_ERROR = 0.001
# Squared implied-alpha deviation, in units of what the local colour variances explain, beyond
# which the excess is taken as alpha error (a robust, per-pixel estimate; 0 = off).
ALPHA_OUTLIER = 9.0

_SHIFTS = ((0, 1), (2, 1), (1, 0), (1, 2))  # up, down, left, right in a 1-px padded frame


def _multilevel_level(image, alpha, fg, bg, iterations, regularization, gradient_weight):
    """Jacobi iterations of the per-pixel 2x2 (F, B) solve with neighbour smoothness."""
    h, w = alpha.shape[-2:]
    ap = F.pad(alpha, (1, 1, 1, 1), mode="replicate")
    weights = []
    for dy, dx in _SHIFTS:
        wv = regularization + gradient_weight * (alpha - ap[..., dy:dy + h, dx:dx + w]).abs()
        valid = torch.ones_like(alpha)
        if dy == 0:
            valid[..., 0, :] = 0
        if dy == 2:
            valid[..., -1, :] = 0
        if dx == 0:
            valid[..., :, 0] = 0
        if dx == 2:
            valid[..., :, -1] = 0
        weights.append(wv * valid)
    wsum = sum(weights)
    a11 = alpha * alpha + wsum + 1e-6
    a12 = alpha * (1 - alpha)
    a22 = (1 - alpha) ** 2 + wsum + 1e-6
    det = a11 * a22 - a12 * a12
    for _ in range(iterations):
        fb = F.pad(torch.cat([fg, bg], 1), (1, 1, 1, 1), mode="replicate")
        acc = sum(wv * fb[..., dy:dy + h, dx:dx + w] for wv, (dy, dx) in zip(weights, _SHIFTS))
        r1 = alpha * image + acc[:, :3]
        r2 = (1 - alpha) * image + acc[:, 3:]
        fg = ((a22 * r1 - a12 * r2) / det).clamp(0, 1)
        bg = ((a11 * r2 - a12 * r1) / det).clamp(0, 1)
    return fg, bg


def _local_fb_passes(image, alpha, fg, bg, radii, noise, alpha_error=0.0, alpha_outlier=0.0):
    """Refine F and B with local colour statistics and the compositing constraint, per pixel.

    Each pass models F and B near a pixel as the alpha-weighted (resp. (1-alpha)-weighted)
    local mean of the current estimates within ``r`` px, with that window's colour variance
    ``vF`` (``vB``) as its uncertainty, and takes the least-squares update that explains the
    observed colour ``I = a F + (1 - a) B`` when alpha itself may be off by a zero-mean error
    of variance ``alpha_error`` (plus, with ``alpha_outlier > 0``, the excess of the alpha
    error the pixel itself implies, ``(d.e / |d|^2)^2``, over ``alpha_outlier`` times what the
    colour variances explain along ``d``, ``s / |d|^2``: a robust per-pixel estimate, large
    where a segmenter's mask is off, ~0 for a true matte). With ``e = I - a Fm - (1-a) Bm``,
    ``d = Fm - Bm``, the
    residual's covariance is ``S = s Id + alpha_error d d^T`` with ``s = a^2 vF + (1-a)^2 vB
    + noise``, and ``F = Fm + a vF S^-1 e``, ``B = Bm + (1-a) vB S^-1 e`` (``S^-1`` by
    Sherman-Morrison: ``(e - alpha_error d (d.e) / (s + alpha_error |d|^2)) / s``). The
    ``d d^T`` term is what keeps a segmenter's alpha error out of the colours: where a pixel
    of pure background is given a = 0.3, ``e = -0.3 d`` lies along ``d`` and is left
    unexplained, instead of painting the old background into F (over a flat background
    ``vB`` is at its floor and the whole residual would go to F). Radii go coarse to fine.

    Inputs are ``[N, C, k, k]`` crops; each pass computes only the windows that lie fully
    inside its input ("valid" box means), so the outputs are ``k - 2 sum(radii)`` px wide: the
    exact results for a crop's centre when its halo is ``sum(radii)`` px.
    """
    for r in radii:
        n, c = fg.shape[0], 2 * r + 1
        h, w = fg.shape[-2:]
        stats = fg.new_empty(n, 9, h, w)
        wb = 1 - alpha
        stats[:, 0:1] = alpha
        torch.mul(fg, alpha, out=stats[:, 1:4])
        torch.mul(bg, wb, out=stats[:, 4:7])
        torch.mul((fg * fg).sum(1, keepdim=True), alpha, out=stats[:, 7:8])
        torch.mul((bg * bg).sum(1, keepdim=True), wb, out=stats[:, 8:9])
        m = _window_sum(_window_sum(stats, c, -1), c, -2).mul_(1.0 / (c * c))
        crop = (Ellipsis, slice(r, h - r), slice(r, w - r))
        image, alpha = image[crop], alpha[crop]
        mean_a = m[:, 0:1].clamp_(0, 1)
        inv_nf, inv_nb = (mean_a + 1e-6).reciprocal(), (1 + 1e-6 - mean_a).reciprocal()
        # Weighted means, with the pixel's current estimate as a 1e-6-weight prior (it stands
        # where the window has no weight at all); the box mean of 1 - a is 1 - mean(a).
        fm = m[:, 1:4].add_(fg[crop], alpha=1e-6).mul_(inv_nf)
        bm = m[:, 4:7].add_(bg[crop], alpha=1e-6).mul_(inv_nb)
        vf = m[:, 7:8].mul_(inv_nf).sub_((fm * fm).sum(1, keepdim=True)).clamp_(min=0)
        vb = m[:, 8:9].mul_(inv_nb).sub_((bm * bm).sum(1, keepdim=True)).clamp_(min=0)
        vf.mul_(1 / 3).add_(1e-4)
        vb.mul_(1 / 3).add_(1e-4)
        wb = 1 - alpha
        e = image - bm
        e.addcmul_(alpha, fm - bm, value=-1)  # I - a Fm - (1 - a) Bm
        s = (alpha * alpha * vf).addcmul_(wb * wb, vb).add_(noise)
        if alpha_error > 0 or alpha_outlier > 0:
            d = fm - bm
            de = (d * e).sum(1, keepdim=True)
            dd = (d * d).sum(1, keepdim=True)
            va = alpha_error
            if alpha_outlier > 0:
                # The alpha error this pixel implies, (d.e / |d|^2)^2, beyond alpha_outlier x
                # the variance the colour models explain along d (s / |d|^2).
                va = (de * de / (dd * dd + 1e-12) - alpha_outlier * s / (dd + 1e-12)
                      ).clamp_(min=0).add_(alpha_error)
            e.addcmul_(d, de.mul_(va).div_(dd.mul_(va).add_(s)), value=-1)
        inv_s = s.reciprocal_()
        fg = torch.addcmul(fm, (alpha * vf).mul_(inv_s), e).clamp_(0, 1)
        bg = torch.addcmul(bm, (wb * vb).mul_(inv_s), e).clamp_(0, 1)
    return fg, bg


def _level_size(h, w, s):
    return (max(1, round(h * s)), max(1, round(w * s)))


def _upsample_and_correct(image, alpha, fg_s, bg_s, final_weight, chunk_pixels=1 << 16):
    """Bilinearly upsample the coarse ``(F, B)`` to full size and apply the closed-form update.

    ``dF = a e / (w + a^2 + (1-a)^2)``, ``dB = (1-a) e / (...)`` with ``e = I - a F - (1-a) B``,
    then clamped to 0..1. Works on row chunks (the vertical half of the bilinear upsampling is
    done per chunk) so every temporary stays small and in cache; only the two outputs are
    full-size allocations.
    """
    B, _, H, W = image.shape
    h = fg_s.shape[-2]
    # Horizontal half at the coarse height (the vertical scale 1 leaves rows untouched), both
    # estimates at once; then per output row: lerp between two source rows, as F.interpolate
    # with align_corners=False computes them.
    hs = F.interpolate(torch.cat([fg_s, bg_s], 1), size=(h, W), mode="bilinear",
                       align_corners=False)
    i0, i1, lam = bilinear_taps(0, H, h, H, image.device, image.dtype)
    lam = lam.view(H, 1)
    fg = image.new_empty(B, 3, H, W)
    bg = image.new_empty(B, 3, H, W)
    rows = max(1, chunk_pixels // W)
    for y0 in range(0, H, rows):
        y1 = min(H, y0 + rows)
        top = hs.index_select(2, i0[y0:y1])
        fb = top.lerp_(hs.index_select(2, i1[y0:y1]), lam[y0:y1])
        f, b = fb[:, :3], fb[:, 3:]
        a = alpha[:, :, y0:y1]
        e = image[:, :, y0:y1] - b
        e.addcmul_(a, f - b, value=-1)  # I - a F - (1 - a) B
        wa = 1 - a
        inv = (a * a).addcmul_(wa, wa).add_(final_weight).reciprocal_()
        e.mul_(inv)
        torch.addcmul(f, a, e, out=fg[:, :, y0:y1]).clamp_(0, 1)
        torch.addcmul(b, wa, e, out=bg[:, :, y0:y1]).clamp_(0, 1)
    return fg, bg


def _band_passes_inplace(image, alpha, fg, bg, tiles, radii, noise, alpha_error=0.0,
                         alpha_outlier=0.0, batch_pixels=1 << 16):
    """Run :func:`_local_fb_passes` on the band's tiles and write their centres into ``fg``/``bg``.

    Tiles are gathered and solved a few at a time (small, cache-resident temporaries); all
    results are written back at the end, so every tile sees the same (pre-pass) halo.
    """
    t, hl = tiles.tile, tiles.halo
    k = t + 2 * hl
    per = max(1, batch_pixels // (k * k))
    n = len(tiles)
    res = fg.new_empty(n, 6, t, t)
    for s0 in range(0, n, per):
        sl = slice(s0, min(n, s0 + per))
        sub = Tiles(tiles.frame[sl], tiles.y[sl], tiles.x[sl], t, hl, tiles.size)
        st = gather_tiles([image, alpha, fg, bg], sub)
        f_t, b_t = _local_fb_passes(st[:, 0:3], st[:, 3:4], st[:, 4:7], st[:, 7:10], radii,
                                    noise, alpha_error, alpha_outlier)
        res[sl, 0:3] = f_t
        res[sl, 3:6] = b_t
    h, w = tiles.size
    for i, (f, y, c) in enumerate(zip(tiles.frame.tolist(), tiles.y.tolist(), tiles.x.tolist())):
        th, tw = min(t, h - y), min(t, w - c)
        fg[f, :, y:y + th, c:c + tw] = res[i, 0:3, :th, :tw]
        bg[f, :, y:y + th, c:c + tw] = res[i, 3:6, :th, :tw]


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor, method: str = "multilevel",
                        max_side: int = 128, regularization: float = 1e-5,
                        gradient_weight: float = 0.3, final_weight: float = 0.05,
                        local_radii: tuple[int, ...] = (8, 4, 2), local_noise: float = 1e-5,
                        alpha_error: float = ALPHA_ERROR,
                        alpha_outlier: float = ALPHA_OUTLIER,
                        tile: int = 64, max_band_fraction: float = 0.4,
                        working_size=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight foreground colours F (and background B) with ``image ~ a F + (1 - a) B``.

    ``"multilevel"``: coarse-to-fine estimation (F and B smooth where alpha is smooth, solved per
    pixel as a 2x2 system with Jacobi iterations, 10 per level up to 32 px, 3 above) on a
    pyramid up to ``max_side`` px, then one closed-form per-pixel correction at full size
    ``dF = a e / (w + a^2 + (1-a)^2)`` with ``e = I - a F - (1-a) B`` and ``w = final_weight``,
    then, in the band only (``0 < a < 1``, gathered as tiles), ``len(local_radii)`` passes of a
    local-statistics least-squares update (:func:`_local_fb_passes`: F and B as local weighted
    means with their variances as uncertainty, corrected to explain ``I``), coarse to fine.
    ``alpha_error`` is the variance of the error the passes allow in ``alpha`` itself: the
    part of the residual along ``F - B`` that an alpha error of that size explains is not
    painted into the colours. A segmenter's mask is off at its edges; without this term a
    pixel of pure background that the mask calls partly foreground gets the old background's
    colour as its foreground (a green rim over a green screen). ``alpha_outlier`` adds, per
    pixel, the alpha error the pixel's own colour implies beyond ``alpha_outlier`` x what the
    local colour variances explain. ``alpha_error=0, alpha_outlier=0`` trusts ``alpha``
    fully (the pre-issue-17 behaviour with ``local_radii=(4, 2)``). ``working_size`` (int
    side or ``(H, W)``, None = unknown): the size the mask was predicted at; where it was
    upsampled more than 2x, the local radii grow by ``upsampling / 2`` (its blur spans that
    many more pixels, and windows narrower than it see neither side of the edge).
    The passes are skipped when the band's tiles cover more than ``max_band_fraction`` of the
    image (a heavily feathered mask), to bound the cost. Outside the band the full-size
    work is a handful of elementwise operations, done in row chunks together with the
    upsampling (:func:`_upsample_and_correct`: no full-size temporaries besides the two
    outputs, which the band passes then update in place). ``"blur_fusion"``: the
    two-pass reference (:func:`blur_fusion_foreground`).

    Args:
        image: ``[B,3,H,W]`` composite colours, 0..1.
        alpha: ``[B,1,H,W]``, 1 = foreground, same size.

    Returns:
        ``(fg, bg)``, each ``[B,3,H,W]`` in 0..1, straight (not premultiplied).

    >>> I = torch.full((1, 3, 16, 16), 0.5); a = torch.full((1, 1, 16, 16), 0.5)
    >>> fg, bg = estimate_foreground(I, a); bool(((0.5 * fg + 0.5 * bg) - I).abs().max() < 1e-2)
    True
    """
    if method not in FOREGROUND_METHODS[1:]:
        raise InputError(f"estimate_foreground: method {method!r} is not one of "
                         f"{FOREGROUND_METHODS[1:]}.")
    if image.ndim != 4 or image.shape[1] != 3 or alpha.ndim != 4 or alpha.shape[1] != 1 or \
            image.shape[-2:] != alpha.shape[-2:]:
        raise InputError(f"estimate_foreground: expected image [B,3,H,W] and alpha [B,1,H,W] of "
                         f"one size, got {list(image.shape)} and {list(alpha.shape)}.")
    check_finite(image, "image")
    alpha = check_finite(alpha, "alpha").clamp(0, 1)
    if method == "blur_fusion":
        return blur_fusion_foreground(image, alpha)
    H, W = image.shape[-2:]
    top = min(1.0, max_side / max(H, W))
    levels = max(1, math.ceil(math.log2(max(1.0, max(H, W) * top)))) + 1
    img_top, a_top = _resize(image, _level_size(H, W, top)), _resize(alpha, _level_size(H, W, top))
    fg = bg = None
    for level in range(levels):
        s = top * 2.0 ** (level - (levels - 1))
        size = _level_size(H, W, s)
        img_l, a_l = _resize(img_top, size), _resize(a_top, size)
        if fg is None:
            fg = img_l.mean((-2, -1), keepdim=True).expand(-1, -1, *size).contiguous()
            bg = fg.clone()
        else:
            fg, bg = _resize(fg, size), _resize(bg, size)
        iters = 10 if max(size) <= 32 else 3
        fg, bg = _multilevel_level(img_l, a_l, fg, bg, iters, regularization, gradient_weight)
    if tuple(fg.shape[-2:]) != (H, W):
        fg, bg = _upsample_and_correct(image, alpha, fg, bg, final_weight)
    grow = max(1.0, upsampling_factor((H, W), working_size) / 2)
    # (grow >= 1: a radius is never shrunk, and 0 stays 0 as before)
    local_radii = tuple(round(int(r) * grow) for r in local_radii)
    if local_radii:
        # Full-resolution passes in the band only (where 0 < a < 1): gather the tiles that
        # touch it with a halo wide enough for every pass, so the result is exact there.
        band = (alpha > 0.5 / 255) & (alpha < 254.5 / 255)
        tiles = band_tiles(band, tile, halo=sum(local_radii))
        # A very wide band (a heavily feathered mask) would cost several times the rest: the
        # passes are for mattes whose soft part is a thin band; keep the coarse result there.
        # (small images are always cheap enough.)
        covered = len(tiles) * tile * tile
        if len(tiles) and covered <= max(max_band_fraction * alpha.shape[0] * H * W, 2 ** 18):
            _band_passes_inplace(image, alpha, fg, bg, tiles, local_radii,
                                 local_noise, float(alpha_error), float(alpha_outlier))
    return fg, bg


def despill(fg: torch.Tensor, alpha: torch.Tensor, old_background: torch.Tensor,
            strength: float = 1.0) -> torch.Tensor:
    """Remove the old background's colour cast from semi-transparent foreground pixels.

    The chroma direction ``d`` of the (local) old background ``B`` (its colour minus its grey
    level) is estimated per pixel; the positive component of the foreground's chroma along
    ``d`` is subtracted, scaled by ``strength * clamp(4 (1 - a), 0, 1)`` so opaque interiors keep
    their colours. Luminance (channel mean) is preserved. Shapes ``[B,3,H,W]`` / ``[B,1,H,W]``.

    >>> fg = torch.tensor([0.4, 0.8, 0.4]).view(1, 3, 1, 1); a = torch.full((1, 1, 1, 1), 0.5)
    >>> green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    >>> [round(v, 3) for v in despill(fg, a, green).flatten().tolist()]
    [0.533, 0.533, 0.533]
    """
    if strength <= 0:
        return fg
    cb = old_background - old_background.mean(1, keepdim=True)
    d = cb / (cb.norm(dim=1, keepdim=True) + 1e-6)
    cf = fg - fg.mean(1, keepdim=True)
    k = (cf * d).sum(1, keepdim=True).clamp(min=0)
    w = strength * (4 * (1 - alpha)).clamp(0, 1)
    return (fg - w * k * d).clamp(0, 1)
