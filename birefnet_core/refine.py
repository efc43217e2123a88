"""Mask operations: levels, threshold, morphology, holes/islands, edge refinement, video smoothing.

Conventions (every public function):

* masks are float tensors ``[H, W]``, ``[B, H, W]`` (ComfyUI MASK) or ``[B, 1, H, W]``, values
  0..1 with **1 = foreground**; the result has the shape that was passed in;
* guide images are ``[B, H, W, 3|4]`` (ComfyUI IMAGE) or ``[B, 3, H, W]``, 0..1, straight alpha
  (a 4th channel is ignored);
* everything runs batched on the input's device; radii are in pixels of the mask.

>>> m = torch.zeros(1, 8, 8); m[:, 2:6, 2:6] = 1
>>> grow_shrink(m, 1).sum().item() > m.sum().item()
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import InputError
from .layout import check_finite, images_to_bchw, masks_to_b1hw
from .filters import (_colour_moments, _guided_ab, _inv3_sym, _sym6, band_tiles, box_filter,
                      box_sum_valid, component_areas, connected_components, dilate, erode,
                      gather_tiles, gaussian_like_blur, guided_filter, scatter_tiles,
                      solve_dtype)

__all__ = [
    "levels",
    "threshold",
    "grow_shrink",
    "feather",
    "fill_holes",
    "remove_islands",
    "edge_band",
    "refine_edges",
    "tag_working_size",
    "working_size_of",
    "temporal_smooth",
    "EDGE_MODES",
    "TEMPORAL_MODES",
]

EDGE_MODES = ("none", "guided", "matting")
TEMPORAL_MODES = ("none", "ema", "median")


# --------------------------------------------------------------------------------------------
# Validation (shapes and layouts: birefnet_core.layout)
# --------------------------------------------------------------------------------------------
def _radius(value, name: str) -> int:
    try:
        r = int(round(float(value)))
    except (TypeError, ValueError, OverflowError):  # OverflowError: inf
        raise InputError(f"{name}: expected a finite number of pixels, got {value!r}.") from None
    return r


# --------------------------------------------------------------------------------------------
# Point operations and morphology
# --------------------------------------------------------------------------------------------
def levels(mask: torch.Tensor, black: float = 0.0, white: float = 1.0,
           gamma: float = 1.0) -> torch.Tensor:
    """Map ``[black, white]`` to ``[0, 1]`` (clamped), then apply ``gamma`` (>1 brightens).

    >>> levels(torch.tensor([0.1, 0.5, 0.9]), 0.1, 0.9).round(decimals=4).tolist()
    [0.0, 0.5, 1.0]
    """
    if not white > black:
        raise InputError(f"levels: white point ({white}) must be above the black point ({black}).")
    if not gamma > 0:
        raise InputError(f"levels: gamma must be > 0, got {gamma}.")
    check_finite(mask)
    out = ((mask - black) / (white - black)).clamp(0, 1)
    return out if gamma == 1.0 else out.pow(1.0 / gamma)


def threshold(mask: torch.Tensor, value: float = 0.5) -> torch.Tensor:
    """Binary mask: 1 where ``mask >= value``, else 0 (same dtype).

    >>> threshold(torch.tensor([0.2, 0.5, 0.8])).tolist()
    [0.0, 1.0, 1.0]
    """
    return (check_finite(mask) >= value).to(mask.dtype)


def grow_shrink(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate (``radius > 0``) or erode (``radius < 0``) by a near-disk of ``|radius|`` px.

    Works on soft masks (grey-scale morphology), O(log r) passes.

    >>> m = torch.zeros(1, 9, 9); m[:, 4, 4] = 1
    >>> int(grow_shrink(m, 1).sum()), int(grow_shrink(grow_shrink(m, 1), -1).sum())
    (9, 1)
    """
    r = _radius(radius, "grow_shrink radius")
    m4, back = masks_to_b1hw(mask)
    if r == 0:
        return mask
    return back(dilate(m4, r) if r > 0 else erode(m4, -r))


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Soften edges with a Gaussian-like blur whose visible reach is about ``radius`` px.

    O(1) per pixel (three box filters, sigma = radius / 2).

    >>> feather(torch.ones(1, 6, 6), 3).allclose(torch.ones(1, 6, 6))
    True
    """
    if not 0 <= radius < math.inf:
        raise InputError(f"feather radius must be a finite number >= 0 px, got {radius}.")
    m4, back = masks_to_b1hw(mask)
    # (gaussian_like_blur's box filters clamp their radius to the image: bounded memory.)
    return back(gaussian_like_blur(m4, radius / 2.0).clamp(0, 1))


def fill_holes(mask: torch.Tensor, max_area: int = 0, level: float = 0.5) -> torch.Tensor:
    """Fill background regions (``mask < level``) that do not touch the image border.

    Args:
        max_area: fill only holes of at most this many pixels; 0 fills every enclosed hole
            (beware: the gap between an arm and a body is a hole too).

    >>> m = torch.ones(1, 5, 5); m[:, 2, 2] = 0
    >>> fill_holes(m).min().item()
    1.0
    """
    m4, back = masks_to_b1hw(mask)
    bg = m4[:, 0] < level
    labels = connected_components(bg)
    border = torch.zeros_like(bg)
    border[:, 0, :] = border[:, -1, :] = True
    border[:, :, 0] = border[:, :, -1] = True
    touching = torch.zeros(labels.numel() + 1, dtype=torch.bool, device=labels.device)
    touching[labels[border & bg] ] = True
    lab = labels.clamp(min=0)
    hole = bg & ~touching[lab]
    if max_area > 0:
        hole &= component_areas(labels) <= max_area
    return back(torch.where(hole[:, None], torch.ones_like(m4), m4))


def remove_islands(mask: torch.Tensor, min_area: int, level: float = 0.5) -> torch.Tensor:
    """Zero foreground components (``mask >= level``, 4-connected) smaller than ``min_area`` px.

    >>> m = torch.zeros(1, 6, 6); m[:, 0, 0] = 1; m[:, 2:6, 2:6] = 1
    >>> remove_islands(m, 2).sum().item()
    16.0
    """
    if min_area < 0:
        raise InputError(f"remove_islands: min_area must be >= 0 px, got {min_area}.")
    m4, back = masks_to_b1hw(mask)
    if min_area <= 1:
        return mask
    fg = m4[:, 0] >= level
    small = fg & (component_areas(connected_components(fg)) < min_area)
    # Also drop the soft fringe around a removed island.
    small = dilate(small[:, None].to(m4.dtype), 1) > 0.5
    small &= ~(dilate((fg & ~small[:, 0])[:, None].to(m4.dtype), 1) > 0.5)
    return back(torch.where(small, torch.zeros_like(m4), m4))


def edge_band(mask: torch.Tensor, width: int, level: float | None = None) -> torch.Tensor:
    """The band around edges: ``dilate(mask) - erode(mask)`` with a total width of ``width`` px.

    With ``level`` set, the mask is binarised at that level first (a crisp band).

    >>> m = torch.zeros(1, 9, 9); m[:, :, 4:] = 1
    >>> edge_band(m, 2)[0, 0].tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    if width < 0:
        raise InputError(f"edge_band width must be >= 0 px, got {width}.")
    m4, back = masks_to_b1hw(mask)
    if level is not None:
        m4 = threshold(m4, level)
    r = max(1, int(math.ceil(width / 2))) if width > 0 else 0
    if r == 0:
        return back(torch.zeros_like(m4))
    return back((dilate(m4, r) - erode(m4, r)).clamp(0, 1))


# --------------------------------------------------------------------------------------------
# Edge refinement from the full-resolution image
# --------------------------------------------------------------------------------------------
def _scale_factor(size: tuple[int, int], working_size) -> float:
    """How much the mask was upsampled: image side / working side (the larger axis ratio)."""
    if working_size is None:
        return 1.0
    if isinstance(working_size, (int, float)):
        wh = ww = float(working_size)
    else:
        wh, ww = (float(v) for v in working_size)
    if not (0 < wh < math.inf and 0 < ww < math.inf):
        raise InputError(f"working_size must be positive and finite, got {working_size!r}.")
    return max(size[0] / wh, size[1] / ww)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=down)


_WORKING_SIZE_ATTR = "birefnet_working_size"


def tag_working_size(mask: torch.Tensor, size) -> torch.Tensor:
    """Record on ``mask`` (in place, returned) the ``(H, W)`` working size it was predicted at.

    The tag is a plain attribute of the tensor object: it travels with the mask from a
    segmentation to :func:`working_size_of` as long as the same tensor is passed on (a new
    tensor made from it, e.g. by an inversion or a resize, does not carry it).

    >>> m = tag_working_size(torch.zeros(1, 4, 4), (512, 512)); working_size_of(m)
    (512, 512)
    """
    h, w = (size, size) if isinstance(size, (int, float)) else size
    setattr(mask, _WORKING_SIZE_ATTR, (int(h), int(w)))
    return mask


def working_size_of(mask: torch.Tensor):
    """The ``(H, W)`` working size recorded by :func:`tag_working_size`, or ``None``.

    >>> working_size_of(torch.zeros(2, 2)) is None
    True
    """
    return getattr(mask, _WORKING_SIZE_ATTR, None)


# Radii (in working-size pixels) of the local colour statistics, finest first.
_FB_FACTORS = (2, 6)
# Confident-sample thresholds, covariance ridge, prior variance and prior sharpening of the
# colour model (sweeps in benchmarks/RESULTS_refine.md).
_FB_LO, _FB_HI = 0.1, 0.9
_FB_EPS = 1e-5
_PRIOR_VAR = 0.003
_SHARPEN = 2.0
_SHARPEN_SIGMA = 1.0


def _sym_matvec(m, v):
    """``M v`` for symmetric 3x3 ``M`` given as its 6 entries (a tuple of ``[N,1,H,W]``)."""
    m11, m12, m13, m22, m23, m33 = m
    x, y, z = v[:, 0:1], v[:, 1:2], v[:, 2:3]
    return torch.cat([m11 * x + m12 * y + m13 * z, m12 * x + m22 * y + m23 * z,
                      m13 * x + m23 * y + m33 * z], 1)


def _fb_channels(guide, prior, lo, hi):
    """The 20 channels whose local means give the F / B colour means and covariances."""
    wf = (prior > hi).to(guide.dtype)
    wb = (prior < lo).to(guide.dtype)
    g6 = _sym6(guide)
    return torch.cat([wf * guide, wf * g6, wf, wb * guide, wb * g6, wb], 1)


def _fb_model(means, min_count):
    """``(B mean, F - B, F and B covariance sum (6 entries), ok)`` from channel means at
    several radii.

    Foreground and background statistics are each taken from the first (finest) radius where
    that side covers at least ``min_count`` of the window; ``ok`` is 0 where a side has no
    samples at any radius.
    """
    fm = bm = cf = cb = okf = okb = None
    for s in means:
        nf, nb = s[:, 9:10].clamp(min=1e-6), s[:, 19:20].clamp(min=1e-6)
        f_k, b_k = s[:, 0:3] / nf, s[:, 10:13] / nb
        cf_k = s[:, 3:9] / nf - _sym6(f_k)
        cb_k = s[:, 13:19] / nb - _sym6(b_k)
        okf_k, okb_k = nf > min_count, nb > min_count
        if fm is None:
            fm, cf, okf, bm, cb, okb = f_k, cf_k, okf_k, b_k, cb_k, okb_k
            continue
        tf, tb = okf_k & ~okf, okb_k & ~okb  # the first radius where this side has samples
        fm, cf, okf = torch.where(tf, f_k, fm), torch.where(tf, cf_k, cf), okf | okf_k
        bm, cb, okb = torch.where(tb, b_k, bm), torch.where(tb, cb_k, cb), okb | okb_k
    return bm, fm - bm, cf + cb, (okf & okb).to(fm.dtype)


def _sharpen_prior(prior, scale, amount=None, sigma=None):
    """Undo part of the resampling blur of a mask upsampled ``scale`` x: an unsharp mask
    (``amount``) at a Gaussian sigma of one working-size pixel, clamped to 0..1."""
    amount = _SHARPEN if amount is None else amount
    sigma = _SHARPEN_SIGMA if sigma is None else sigma
    if amount <= 0:
        return prior
    return (prior + amount * (prior - gaussian_like_blur(prior, sigma * scale))).clamp(0, 1)


def _lda_coeffs(bm, d, cov, ok, eps=_FB_EPS):
    """Fisher-discriminant alpha as a linear function of the colour: ``(u, c, precision)``.

    The colour is projected on ``w = (C_F + C_B + eps)^-1 (F - B)`` (the direction along
    which the local foreground and background distributions separate best, so that the
    fur's own light/dark variation and the background's texture are ignored):
    ``a = w.(I - B) / w.(F - B) = u.I + c``, with variance ``1 / (F - B)^T w`` (the
    precision is 0 where ``ok`` is 0).
    """
    cov = cov.clone()
    cov[:, 0:1] += eps
    cov[:, 3:4] += eps
    cov[:, 5:6] += eps
    w = _sym_matvec(_inv3_sym(*cov.split(1, 1)), d)
    prec = (w * d).sum(1, keepdim=True)  # d^T C^-1 d
    u = w / (prec + 1e-12)
    c = -(u * bm).sum(1, keepdim=True)
    prec = prec.clamp(min=0) * ok
    bad = ~(torch.isfinite(u).all(1, keepdim=True) & torch.isfinite(c) & torch.isfinite(prec))
    if bool(bad.any()):
        u, c, prec = u.masked_fill(bad, 0), c.masked_fill(bad, 0), prec.masked_fill(bad, 0)
    return u, c, prec


def _fuse(guide, prior, u, c, prec, prior_var=_PRIOR_VAR):
    """The colour estimate ``u.I + c`` (clamped) and ``prior`` fused by inverse variances."""
    est = ((u * guide).sum(1, keepdim=True) + c).clamp(0, 1)
    return (est * prec + prior / prior_var) / (prec + 1.0 / prior_var)


def _inner_box_means(x, radii, halo):
    """Box means at several radii of the inner part (``halo`` px trimmed per side) of ``x``.

    ``x`` is ``[N, C, H, W]`` (tile crops, or a padded image); each radius is at most ``halo``,
    so no window leaves ``x`` and the "valid" box sums (:func:`~.filters.box_sum_valid`) of
    the part of ``x`` each radius reads are exact.
    """
    h, w = x.shape[-2] - 2 * halo, x.shape[-1] - 2 * halo
    out = []
    for r in radii:
        k = 2 * r + 1
        part = x[..., halo - r:halo + r + h, halo - r:halo + r + w]
        out.append(box_sum_valid(box_sum_valid(part, k, -1), k, -2).mul_(1.0 / (k * k)))
    return out


def _multiscale_colour_alpha(guide, prior, scale, factors=_FB_FACTORS, min_count=0.05,
                             lo=_FB_LO, hi=_FB_HI, subsample=1.0, halo=0):
    """Alpha from the nearest confident foreground / background colour distributions.

    For each radius ``k * scale`` px (``k`` in ``factors``) the colour means and covariances
    of the confident-foreground (prior > ``hi``) and confident-background (prior < ``lo``)
    pixels are box-filtered; foreground and background statistics are each taken from the
    finest radius where that side covers at least ``min_count`` of the window (so each side is
    as local as its population allows). Alpha is the Fisher-discriminant projection of the
    colour (:func:`_lda_coeffs`), fused with the sharpened prior (:func:`_sharpen_prior`) by
    inverse variances (the prior alone where a side has no samples at any radius).

    ``subsample > 1`` gathers the statistics at ``1/subsample`` size and upsamples them (cheap,
    less local); the projection is always at full size. ``halo > 0``: the inputs are
    ``[N, C, K, K]`` tile crops with that halo, and only the inner part is returned.
    """
    if halo > 0:
        # Colours centred per crop keep the float32 second moments accurate (the projection
        # is affine in the colour, so the centring cancels out).
        guide = guide - guide.mean(dim=(-2, -1), keepdim=True)
        radii = [min(halo, max(1, round(k * scale))) for k in factors]
        means = _inner_box_means(_fb_channels(guide, prior, lo, hi), radii, halo)
        t = guide.shape[-1] - 2 * halo
        inner = lambda v: v[..., halo:halo + t, halo:halo + t]  # noqa: E731
        sharp = _sharpen_prior(prior, scale)
        coeffs = _lda_coeffs(*_fb_model(means, min_count))
        return _fuse(inner(guide), inner(sharp), *coeffs)
    h, w = guide.shape[-2:]
    if subsample > 1.0:
        # Everything but the final projection at 1/subsample size (separable float32 box
        # filters, a larger ridge against their rounding); upsample the linear coefficients
        # and the blurred prior.
        small = (max(1, round(h / subsample)), max(1, round(w / subsample)))
        g, p = _resize(guide, small), _resize(prior, small)
        chans = _fb_channels(g, p, lo, hi)
        means = [box_filter(chans, max(1, round(k * scale / subsample))) for k in factors]
        u, c, prec = _lda_coeffs(*_fb_model(means, min_count), eps=1e-5)
        up = _resize(torch.cat([u, c, prec], 1), (h, w))
        # The prior's blur at one working-size pixel, computed at the working size.
        ws = (max(1, round(h / scale)), max(1, round(w / scale)))
        blur = _resize(gaussian_like_blur(_resize(prior, ws), _SHARPEN_SIGMA), (h, w))
        sharp = (prior + _SHARPEN * (prior - blur)).clamp(0, 1)
        return _fuse(guide, sharp, up[:, 0:3], up[:, 3:4], up[:, 4:5])
    radii = [max(1, round(k * scale)) for k in factors]
    chans = _fb_channels(guide, prior, lo, hi)
    pad = max(radii)
    # Valid box sums for all radii (float64: exact enough for a whole image).
    means = [m.to(chans.dtype) for m in
             _inner_box_means(F.pad(chans.double(), (pad,) * 4, mode="replicate"), radii, pad)]
    coeffs = _lda_coeffs(*_fb_model(means, min_count))
    return _fuse(guide, _sharpen_prior(prior, scale), *coeffs)


def _tile_budget(x: torch.Tensor, max_pixels: int) -> int:
    """Pixels of tile crops allowed for frames ``x`` ``[B, C, H, W]``: ``max_pixels``, but at
    most 16x the frames' own area (and at least 64 Kpx). Halos grow with the scale; on a small
    image at a tiny working size they would be far wider than the image itself."""
    return min(max_pixels, max(2 ** 16, 16 * x.shape[0] * x.shape[-2] * x.shape[-1]))


def _band_colour_alpha(guide, prior, band, scale, max_pixels=3 * 2 ** 19):
    """:func:`_multiscale_colour_alpha` at full resolution on the band's tiles only.

    The tiles (with a halo of the largest radius, so the statistics are exact inside them)
    cover the thin band of a real matte: a few percent of a large image. If a feathered mask
    puts more than ``max_pixels`` px of tiles in the band (or more than :func:`_tile_budget`
    allows for a small image), the statistics are gathered at half the working size at one
    radius (4 working px) instead.
    """
    halo = max(1, round(max(_FB_FACTORS) * scale))
    tile = max(64, 32 * int(math.ceil(4 * halo / 32)))
    tiles = band_tiles(band > 0.5, tile, halo)
    if len(tiles) == 0:
        return prior
    if len(tiles) * (tile + 2 * halo) ** 2 > _tile_budget(guide, max_pixels):
        return _multiscale_colour_alpha(guide, prior, scale, factors=(4,), subsample=2 * scale)
    crops = gather_tiles([guide, prior], tiles)
    alpha = _multiscale_colour_alpha(crops[:, :3], crops[:, 3:4], scale, halo=halo)
    return scatter_tiles(prior, tiles, F.pad(alpha, (halo, halo, halo, halo)))


def _matting_laplacian(guide, radius, eps):
    """Matrix-free closed-form matting Laplacian: ``L p = p - GF(p)`` (He et al. 2010).

    The guide's moments and inverse covariances are computed once (float64 where the device
    has it, :func:`~.filters.solve_dtype`); each application is the guided filter's
    coefficient step (:func:`~.filters._guided_ab`) and its box mean.
    """
    work = torch.promote_types(guide.dtype, solve_dtype(guide.device))
    g = guide.to(work)
    mi, inv = _colour_moments(g, radius, eps)

    def apply(p):
        a, b = _guided_ab(g, p.to(work), radius, mi, inv)
        ab = box_filter(torch.cat([a, b], 1), radius)
        return p - ((ab[:, :3] * g).sum(1, keepdim=True) + ab[:, 3:]).to(p.dtype)

    return apply


def _conjugate_gradient(apply_a, rhs, x, iterations):
    """Batched CG (one step size per frame) for a symmetric positive operator."""
    dims = (1, 2, 3)
    r = rhs - apply_a(x)
    p = r.clone()
    rs = (r * r).sum(dims, keepdim=True)
    for _ in range(iterations):
        ap = apply_a(p)
        step = rs / ((p * ap).sum(dims, keepdim=True) + 1e-30)
        x = x + step * p
        r = r - step * ap
        rs_new = (r * r).sum(dims, keepdim=True)
        p = r + (rs_new / (rs + 1e-30)) * p
        rs = rs_new
    return x


def _band_matting(guide, alpha, band, scale, iterations, eps=1e-5, tile=32, halo=None,
                  max_work=10 * 2 ** 21, max_pixels=6 * 2 ** 20, data_weight=0.3):
    """Closed-form matting refinement of ``alpha`` on the band's tiles only.

    Each ``tile`` px cell touching the band is solved independently (one conjugate-gradient
    step size per tile) on a crop with a halo of ``3 r + 2`` px (``r`` the Laplacian radius):
    outside the band the current alpha is a hard-ish constraint (weight 1), inside a softer
    one (``data_weight``), so neighbouring tiles agree where they meet (measured: a 16 px halo
    or 64 px tiles change band SAD by < 1 %). Band tiles that would cost more than ``max_work``
    pixel-iterations get proportionally fewer iterations (at least 2). Beyond ``max_pixels``
    of tiles (a feathered mask: soft over most of the image, no thin edge for a matting solve
    to sharpen, and ~7 s of Laplacian set-up at 2K; or more than :func:`_tile_budget` allows
    for a small image) ``alpha`` is returned as it is.
    """
    r = max(1, round(scale))
    halo = 3 * r + 2 if halo is None else halo
    tiles = band_tiles(band > 0.5, tile, halo)
    if len(tiles) == 0:
        return alpha
    pixels = len(tiles) * (tile + 2 * halo) ** 2
    if pixels > _tile_budget(guide, max_pixels):
        return alpha
    iterations = min(iterations, max(2, max_work // pixels))
    crops = gather_tiles([guide, alpha, band], tiles)
    g, a0, b = crops[:, :3], crops[:, 3:4], crops[:, 4:5]
    weight = (1.0 - b) + data_weight * b
    lap = _matting_laplacian(g, r, eps)
    sol = _conjugate_gradient(lambda p: lap(p) + weight * p, weight * a0, a0, iterations)
    return scatter_tiles(alpha, tiles, sol.clamp(0, 1))


def refine_edges(mask: torch.Tensor, guide: torch.Tensor, working_size=1024,
                 mode: str = "guided", iterations: int = 10) -> torch.Tensor:
    """Recover edge detail that upsampling from the model's working size lost.

    Acts only where it can help: if the image is not larger than ``working_size`` (scale
    <= 1) the mask is returned unchanged; otherwise only the uncertain band (0.1 < mask < 0.9 at
    the working size, widened by one working-size pixel) changes. ``"guided"``: a local
    colour model (a Fisher-discriminant projection between the colour distributions, means
    and covariances, of the nearest confident foreground / background pixels at 2 and 6
    working-size pixels, computed at full resolution on the band's tiles), fused by inverse
    variances with the mask sharpened against its resampling blur, then a fast guided filter
    (coefficients at the working size). ``"matting"``: the same, then ``iterations``
    conjugate-gradient steps of closed-form matting (matrix-free Laplacian through box
    filters) on the band's tiles with the guided result as a soft data term: cleaner edges
    on flat backgrounds, slower.

    Args:
        mask: ``[B,H,W]`` / ``[H,W]`` / ``[B,1,H,W]``, 1 = foreground, already at image size
            (resize it first with :func:`~birefnet_core.layout.fit_masks`).
        guide: the full-resolution image, an IMAGE ``[B,H,W,C]`` (C = 1, 3 or 4), 0..1 or
            uint8.
        working_size: the model's input side (int) or ``(H, W)`` the mask was predicted at.
        mode: one of :data:`EDGE_MODES`.

    >>> m = torch.rand(1, 32, 32); g = torch.rand(1, 32, 32, 3)
    >>> refine_edges(m, g, working_size=8).shape
    torch.Size([1, 32, 32])
    >>> torch.equal(refine_edges(m, g, working_size=1024), m)
    True
    """
    if mode not in EDGE_MODES:
        raise InputError(f"refine_edges: mode {mode!r} is not one of {EDGE_MODES}.")
    m4, back = masks_to_b1hw(mask)
    g4 = images_to_bchw(guide, "guide", dtype=m4.dtype).to(m4.device)
    h, w = m4.shape[-2:]
    if tuple(g4.shape[-2:]) != (h, w):
        raise InputError(f"refine_edges: guide is {tuple(g4.shape[-2:])} (H, W) but the mask is "
                         f"{(h, w)}; resize the mask to the image first.")
    if g4.shape[0] != m4.shape[0]:
        if g4.shape[0] == 1:
            g4 = g4.expand(m4.shape[0], -1, -1, -1)
        else:
            raise InputError(f"refine_edges: {g4.shape[0]} guide frames for {m4.shape[0]} masks.")
    scale = _scale_factor((h, w), working_size)
    if mode == "none" or scale <= 1.0:
        return mask
    prior = m4.clamp(0, 1)
    # The uncertain band (0.1 < prior < 0.9 at the working size), widened by about one
    # working-size pixel. In the band's tails the prior is worth more than the colour model
    # on a textured subject over a similar background, so the band is narrow.
    lo = 0.1
    small = (max(1, round(h / scale)), max(1, round(w / scale)))
    p_small = _resize(prior, small)
    uncertain = ((p_small > lo) & (p_small < 1 - lo)).to(prior.dtype)
    band = (_resize(dilate(uncertain, 1), (h, w)) > 0).to(prior.dtype)
    alpha = _band_colour_alpha(g4, prior, band, scale)
    radius = max(1, round(2 * scale))
    smooth = guided_filter(g4, alpha, radius, eps=1e-5, subsample=scale)
    if not bool(torch.isfinite(smooth).all()):
        # A near-singular window (flat colour, float32 cancellation) gives a non-finite
        # coefficient, which the summed-area tables would spread: regularise more.
        smooth = guided_filter(g4, alpha, radius, eps=1e-4, subsample=scale)
    alpha = torch.where(torch.isfinite(smooth), smooth, alpha).clamp(0, 1)
    if mode == "matting":
        alpha = _band_matting(g4, alpha, band, scale, iterations)
    alpha = torch.where(torch.isfinite(alpha), alpha, prior)
    return back(band * alpha + (1 - band) * prior)


# --------------------------------------------------------------------------------------------
# Temporal smoothing over a frame batch
# --------------------------------------------------------------------------------------------
def scene_cuts(frames: torch.Tensor, cut_threshold: float) -> torch.Tensor:
    """Bool ``[B]``: True where frame ``t`` starts a new shot (frame 0 always does).

    A cut is a mean absolute difference to the previous frame above ``cut_threshold``.
    ``frames`` is any ``[B, ...]`` tensor (masks or images).

    >>> scene_cuts(torch.tensor([[0.], [0.], [1.], [1.]]), 0.5).tolist()
    [True, False, True, False]
    """
    cuts = torch.zeros(frames.shape[0], dtype=torch.bool, device=frames.device)
    cuts[0] = True
    if frames.shape[0] > 1:
        diff = (frames[1:] - frames[:-1]).abs().flatten(1).mean(1)
        cuts[1:] = diff > cut_threshold
    return cuts


def _windowed_median(seg: torch.Tensor, k: int) -> torch.Tensor:
    """Median over frames ``t - k .. t + k`` of ``seg`` ``[n, ...]``, the ends repeated.

    A half-width ``k >= n - 1`` gives the same result as ``k = n - 1``: every window then holds
    all ``n`` frames plus extra copies of the first and the last one, and one more ``k`` adds
    one copy of each. At most ``n - 2`` values lie outside ``[min(first, last), max(first,
    last)]`` on either side, fewer than the ``k`` on each side of the median, so the median
    lies between first and last, and adding a value on each side of it does not move it. So
    ``k`` is clamped, and the windows are taken a few frames at a time: memory stays within
    about the input's size, whatever the window.
    """
    n = seg.shape[0]
    k = min(k, n - 1)
    width = 2 * k + 1
    t = torch.arange(n, device=seg.device)
    index = (t[:, None] + torch.arange(-k, k + 1, device=seg.device)).clamp_(0, n - 1)
    out = torch.empty_like(seg)
    step = max(1, n // width)
    for t0 in range(0, n, step):
        out[t0:t0 + step] = seg[index[t0:t0 + step]].median(dim=1).values
    return out


def temporal_smooth(mask: torch.Tensor, mode: str = "ema", strength: float = 0.5,
                    window: int = 3, cut_threshold: float = 0.1,
                    frames: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce flicker across a batch of video frames, restarting at scene cuts.

    Args:
        mask: ``[B,H,W]`` or ``[B,1,H,W]`` masks of consecutive frames, 1 = foreground.
        mode: ``"ema"`` (exponential moving average, forward then backward so edges do not
            lag; ``strength`` 0..1 is the weight of the history) or ``"median"`` (windowed
            median over ``window`` frames, odd); ``"none"`` returns the mask.
        cut_threshold: mean absolute difference between consecutive frames (of ``frames``
            when given, e.g. the images, else of the masks) above which smoothing restarts.

    >>> m = torch.zeros(5, 4, 4); m[2] = 1
    >>> temporal_smooth(m, "median", window=3, cut_threshold=2.0).sum().item()
    0.0
    """
    if mode not in TEMPORAL_MODES:
        raise InputError(f"temporal_smooth: mode {mode!r} is not one of {TEMPORAL_MODES}.")
    if not 0.0 <= strength < 1.0:
        raise InputError(f"temporal_smooth: strength must be in [0, 1), got {strength}.")
    if mode == "median" and (window < 1 or window % 2 == 0):
        raise InputError(f"temporal_smooth: window must be a positive odd number, got {window}.")
    m4, back = masks_to_b1hw(mask)
    if mode == "none" or m4.shape[0] < 2:
        return mask
    ref = m4 if frames is None else check_finite(frames, "frames")
    if ref.shape[0] != m4.shape[0]:
        raise InputError(f"temporal_smooth: {ref.shape[0]} frames for {m4.shape[0]} masks.")
    cuts = scene_cuts(ref.to(m4.device, m4.dtype), cut_threshold).tolist()
    starts = [i for i, c in enumerate(cuts) if c] + [m4.shape[0]]
    out = torch.empty_like(m4)
    for s, e in zip(starts[:-1], starts[1:]):  # one loop step per shot, not per frame
        seg = m4[s:e]
        if mode == "median":
            out[s:e] = _windowed_median(seg, window // 2)
        else:
            fwd = seg.clone()
            for t in range(1, fwd.shape[0]):  # EMA is a recurrence: one step per frame
                fwd[t] = strength * fwd[t - 1] + (1 - strength) * seg[t]
            bwd = seg.clone()
            for t in range(bwd.shape[0] - 2, -1, -1):
                bwd[t] = strength * bwd[t + 1] + (1 - strength) * seg[t]
            out[s:e] = 0.5 * (fwd + bwd)
    return back(out)
