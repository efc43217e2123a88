"""Edge refinement: recover the edge detail a mask lost when it was upsampled from the model's
working size, from the full-resolution image.

:func:`refine_edges` changes only the uncertain band: there a local colour model (a
Fisher-discriminant projection between the nearest confident foreground and background colour
distributions, at several radii) is fused with the mask sharpened against its resampling blur,
smoothed by a fast guided filter and, in ``"matting"`` mode, refined by closed-form matting
(:mod:`.matting`).

Conventions: masks ``[H, W]``, ``[B, H, W]`` (ComfyUI MASK) or ``[B, 1, H, W]``, 0..1,
**1 = foreground**, returned in the shape passed in; guide images are IMAGE ``[B, H, W, C]``,
0..1 or uint8, straight alpha (a 4th channel is ignored); batched on the mask's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import InputError
from .filters import (Tiles, _inv3_sym, _sym6, band_tiles, box_filter, dilate, gather_tiles,
                      gaussian_blur, gaussian_reach, guided_filter, inner_box_means,
                      scatter_tiles, solve_dtype)
from .layout import _resize, all_finite, images_to_bchw, masks_to_b1hw, upsampling_factor
from .matting import _band_matting, _tile_budget

__all__ = [
    "refine_edges",
    "EDGE_MODES",
]

EDGE_MODES = ("none", "guided", "matting")


# Radii (in working-size pixels) of the local colour statistics, finest first.
_FB_FACTORS = (2, 6)
# Confident-sample thresholds, covariance ridge, prior variance and prior sharpening of the
# colour model (sweeps in benchmarks/RESULTS_refine.md). The sharpened prior's error variance
# is _PRIOR_VAR where the fit takes the amount _PRIOR_AMOUNT, in proportion to the square of
# the amount otherwise (:func:`_prior_var`).
_FB_LO, _FB_HI = 0.1, 0.9
_FB_EPS = 1e-5
_PRIOR_VAR, _PRIOR_AMOUNT = 0.003, 4.0
# The prior's unsharp mask: Gaussian sigma (working px) and the amounts it is fitted among (one
# per frame, by :func:`_fit_sharpening`); the default where no colour evidence decides.
_SHARPEN_SIGMA = 1.0
_SHARPEN_AMOUNTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
_SHARPEN = 2.0
# The final guided filter copies the guide's texture into alpha: where the local background's
# colour variance (trace) reaches this fraction of the squared foreground-background contrast it
# is applied at half strength, less above (fur over a photo; benchmarks/RESULTS_refine.md).
_FILTER_TEXTURE = 0.2
# Its radius in working px; on frames the sharpening fit finds crisp (amount <= _CRISP_AMOUNT)
# a narrower one: a crisp mask needs little correction, and a wider window takes in more of a
# photo's texture behind fur (benchmarks/RESULTS_refine.md). On those frames it is also
# weakened where the background's texture is unknown (:func:`_fill_texture`).
_FILTER_RADIUS, _FILTER_RADIUS_CRISP = 2.0, 1.0
_CRISP_AMOUNT = 1.0
# A mask that was not upsampled is refined only if the fitted sharpening brings it this much
# closer to the colour model (residual ratio): hard edges under a soft mask measure 0.04-0.40,
# the lemur's fur 0.29-1.00; refined at 0.49, one fur mask came out 1.31x worse
# (benchmarks/RESULTS_refine.md, item 6 and 2026-11-29).
_ACT_BELOW = 0.45


def _sym_matvec(m, v):
    """``M v`` for symmetric 3x3 ``M`` given as its 6 entries (a tuple of ``[N,1,H,W]``)."""
    m11, m12, m13, m22, m23, m33 = m
    x, y, z = v[:, 0:1], v[:, 1:2], v[:, 2:3]
    return torch.cat([m11 * x + m12 * y + m13 * z, m12 * x + m22 * y + m23 * z,
                      m13 * x + m23 * y + m33 * z], 1)


def _fb_channels(guide, soft, lo, hi):
    """The 20 channels whose local means give the F / B colour means and covariances.

    The confident samples are where ``soft``, the mask blurred as for its unsharp mask, is
    above ``hi`` / below ``lo``: a pixel next to the edge of a crisp mask is often mixed
    (its true alpha 0.8 where the mask says 0.95), and counted as foreground it pulls the
    foreground mean toward the background, so the colour model's F - B shrinks and its alpha
    comes out too hard, which the sharpening fit then follows (benchmarks/RESULTS_refine.md).
    Blurring moves the thresholds about one working px into a crisp mask and barely moves
    them in a blurred one, whose 0.1 / 0.9 levels already lie that far from the edge.
    """
    wf = (soft > hi).to(guide.dtype)
    wb = (soft < lo).to(guide.dtype)
    g6 = _sym6(guide)
    return torch.cat([wf * guide, wf * g6, wf, wb * guide, wb * g6, wb], 1)


def _fb_model(means, min_count):
    """``(B mean, F - B, F and B covariance sum (6 entries), ok, texture)`` from channel means
    at several radii.

    Foreground and background statistics are each taken from the first (finest) radius where
    that side covers at least ``min_count`` of the window; ``ok`` is 0 where a side has no
    samples at any radius. ``texture``: the background's colour variance (trace) over the
    squared F - B contrast (0 where ``ok`` is 0).
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
    d, ok = fm - bm, (okf & okb).to(fm.dtype)
    texture = (cb[:, 0:1] + cb[:, 3:4] + cb[:, 5:6]).clamp(min=0) / (d * d).sum(
        1, keepdim=True).clamp(min=1e-6)
    return bm, d, cf + cb, ok, texture * ok


def _fit_sharpening(prior, blur, est, weight, groups=None, n_groups=None):
    """Undo the mask's own blur by as much as the image shows it has: ``(sharpened, gain,
    amount)``.

    The sharpened prior is the unsharp mask ``prior + a (prior - blur)`` (clamped), with the
    amount ``a`` (one of :data:`_SHARPEN_AMOUNTS`) that brings it closest, in ``weight``-ed
    squared difference, to ``est``, the colour model's alpha. The colour estimate is noisy
    but its noise does not depend on ``a``, so the fit follows the edge blur: a crisp mask over
    soft fur gets a little sharpening, a blurred one over a hard edge a lot (items 4 and 6 of
    issue 17). One amount per group of rows (``groups[i]`` the group of row ``i``: the frame
    of a tile), or per row; ``gain`` (``[n_groups]``) is the fitted residual over that of the
    unsharpened mask (1 where no pixel has colour evidence; then ``a`` is :data:`_SHARPEN`);
    ``amount`` (like ``gain``) is each group's ``a``.
    """
    detail = prior - blur
    acc = solve_dtype(prior.device)
    res = torch.stack([(prior + a * detail).clamp_(0, 1).sub_(est).square_().mul_(weight)
                       .sum((1, 2, 3), dtype=acc) for a in _SHARPEN_AMOUNTS], 1)
    if groups is not None:
        res = res.new_zeros(n_groups, res.shape[1]).index_add_(0, groups, res)
    best = res.argmin(1)
    plain = res[:, 0]
    evidence = plain > 0
    best = torch.where(evidence, best, _SHARPEN_AMOUNTS.index(_SHARPEN))
    gain = torch.where(evidence, res.gather(1, best[:, None])[:, 0] / plain.clamp(min=1e-30),
                       torch.ones_like(plain))
    amount = torch.tensor(_SHARPEN_AMOUNTS, dtype=prior.dtype, device=prior.device)[best]
    rows = (amount if groups is None else amount[groups]).view(-1, 1, 1, 1)
    return (prior + rows * detail).clamp_(0, 1), gain.to(prior.dtype), amount


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


def _colour_estimate(guide, u, c):
    """The colour model's alpha ``u.I + c``, clamped."""
    return ((u * guide).sum(1, keepdim=True) + c).clamp(0, 1)


def _share(prec, prior_var):
    """The colour estimate's share (0..1) when it is fused with a prior of variance
    ``prior_var`` by inverse variances (``prec``: the estimate's precision)."""
    return prec * prior_var / (prec * prior_var + 1.0)


def _prior_var(amount):
    """The sharpened prior's error variance: :data:`_PRIOR_VAR` at :data:`_PRIOR_AMOUNT`, in
    proportion to the square of the amount. The amount the fit takes measures how
    blurred the mask is against the image (its edge width), and the prior's error grows with
    that width: a crisp mask (amount 0-1) is worth more than the colour model, which over a
    textured background or fur is the noisier of the two (benchmarks/RESULTS_refine.md)."""
    return _PRIOR_VAR * (amount / _PRIOR_AMOUNT) ** 2


def _fit_weight(prec, band):
    """The sharpening fit's weight: 1 on the band's pixels where the colour model has samples.

    Weighted by the colour estimate's precision instead, the fit leaned on the pixels where the
    model claims to be surest; over a photo those are few and not the surest: on each sigma-0.5
    and sigma-1 mask of the lemur over the beach it took one step more than the amount closest
    to the true alpha (benchmarks/RESULTS_refine.md)."""
    return (prec > 0).to(band.dtype) * band


def _sharpen_and_fuse(prior, blur, est, prec, band, groups=None, n_groups=None):
    """The prior sharpened by the amount fitted over ``band`` (:func:`_fit_sharpening`,
    weighted by :func:`_fit_weight`), then fused with ``est`` by inverse variances at that
    amount's prior variance: ``(alpha, gain, amount)``."""
    sharp, gain, amount = _fit_sharpening(prior, blur, est, _fit_weight(prec, band), groups,
                                          n_groups)
    rows = (amount if groups is None else amount[groups]).view(-1, 1, 1, 1)
    return torch.lerp(sharp, est, _share(prec, _prior_var(rows))), gain, amount


def _fill_texture(texture, ok, band, amount, groups=None, n_groups=None):
    """The texture ratio where the colour model has no samples on one side (``ok`` 0, ratio 0:
    the final filter at full strength), on crisp frames (``amount`` <= :data:`_CRISP_AMOUNT`),
    set to the frame's mean over the band pixels that have one. A crisp mask has little to
    gain from the filter, and where a frame's background is a photo the filter copies it into
    fur wherever the ratio cannot see it (on the lemur over the beach, 90 % of a crisp band);
    other frames keep the full filter there (a blurred mask needs it, hair strands far from the
    confident samples too). Per frame, or per ``groups`` of rows (tiles) like
    :func:`_fit_sharpening`."""
    known = (ok > 0.5).to(texture.dtype) * band
    acc = solve_dtype(texture.device)
    total, count = (texture * known).sum((1, 2, 3), dtype=acc), known.sum((1, 2, 3), dtype=acc)
    if groups is not None:
        total = total.new_zeros(n_groups).index_add_(0, groups, total)
        count = count.new_zeros(n_groups).index_add_(0, groups, count)
    mean = torch.where(amount <= _CRISP_AMOUNT, total / count.clamp(min=1), 0.0).to(texture.dtype)
    rows = (mean if groups is None else mean[groups]).view(-1, 1, 1, 1)
    return torch.where(ok > 0.5, texture, rows)


def _multiscale_colour_alpha(guide, prior, scale, band=None, factors=_FB_FACTORS,
                             min_count=0.05, lo=_FB_LO, hi=_FB_HI, subsample=1.0, halo=0,
                             groups=None, n_groups=None, soft=None):
    """Alpha from the nearest confident foreground / background colour distributions, the
    sharpening fit's gain and amount (:func:`_fit_sharpening`, per frame or per ``groups``) and
    the background texture ratio of :func:`_fb_model`.

    For each radius ``k * scale`` px (``k`` in ``factors``) the colour means and covariances
    of the confident-foreground (> ``hi``) and confident-background (< ``lo``) pixels of the
    prior blurred by :data:`_SHARPEN_SIGMA` working px (:func:`_fb_channels`) are
    box-filtered; foreground and background statistics are each taken from the finest radius
    where that side covers at least ``min_count`` of the window (so each side is as local as
    its population allows). Alpha is the Fisher-discriminant projection of the
    colour (:func:`_lda_coeffs`), fused by inverse variances with the prior sharpened by the
    amount fitted to it over ``band`` (default: everywhere; :func:`_sharpen_and_fuse`); the
    prior alone where a side has no samples at any radius.

    ``subsample > 1`` gathers the statistics at ``1/subsample`` size and upsamples them (cheap,
    less local); the projection is always at full size. ``halo > 0``: the inputs are
    ``[N, C, K, K]`` tile crops with that halo (``band`` the inner part's), only the inner part
    is returned, the sharpening is fitted per frame (``groups``: each tile's frame), and
    ``soft`` is the blurred prior's crops (blurred on the whole image: a crop's own blur is
    wrong near its border).
    """
    if band is None:
        band = torch.ones_like(prior)
    if halo > 0:
        # Colours centred per crop keep the float32 second moments accurate (the projection
        # is affine in the colour, so the centring cancels out).
        guide = guide - guide.mean(dim=(-2, -1), keepdim=True)
        radii = [min(halo, max(1, round(k * scale))) for k in factors]
        means = inner_box_means(_fb_channels(guide, soft, lo, hi), radii, halo)
        t = guide.shape[-1] - 2 * halo
        inner = lambda v: v[..., halo:halo + t, halo:halo + t]  # noqa: E731
        blur = inner(soft)
        bm, d, cov, ok, texture = _fb_model(means, min_count)
        u, c, prec = _lda_coeffs(bm, d, cov, ok)
        alpha, gain, amount = _sharpen_and_fuse(inner(prior), blur,
                                                _colour_estimate(inner(guide), u, c), prec, band,
                                                groups, n_groups)
        return alpha, gain, amount, _fill_texture(texture, ok, band, amount, groups, n_groups)
    h, w = guide.shape[-2:]
    if subsample > 1.0:
        # Everything but the final projection at 1/subsample size (separable float32 box
        # filters, a larger ridge against their rounding); upsample the linear coefficients
        # and the blurred prior.
        small = (max(1, round(h / subsample)), max(1, round(w / subsample)))
        g, p = _resize(guide, small), _resize(prior, small)
        chans = _fb_channels(g, gaussian_blur(p, _SHARPEN_SIGMA * scale / subsample), lo, hi)
        means = [box_filter(chans, max(1, round(k * scale / subsample))) for k in factors]
        bm, d, cov, ok, texture = _fb_model(means, min_count)
        u, c, prec = _lda_coeffs(bm, d, cov, ok, eps=1e-5)
        up = _resize(torch.cat([u, c, prec, texture, ok], 1), (h, w))
        texture, ok = up[:, 5:6], up[:, 6:7]
        # The prior's blur at one working-size pixel, computed at the working size.
        ws = (max(1, round(h / scale)), max(1, round(w / scale)))
        blur = _resize(gaussian_blur(_resize(prior, ws), _SHARPEN_SIGMA), (h, w))
        est, prec = _colour_estimate(guide, up[:, 0:3], up[:, 3:4]), up[:, 4:5]
    else:
        radii = [max(1, round(k * scale)) for k in factors]
        blur = gaussian_blur(prior, _SHARPEN_SIGMA * scale)
        chans = _fb_channels(guide, blur, lo, hi)
        pad = max(radii)
        # Valid box sums for all radii (float64 where the device has it: exact enough for a
        # whole image).
        wide = F.pad(chans.to(solve_dtype(chans.device)), (pad,) * 4, mode="replicate")
        means = [m.to(chans.dtype) for m in inner_box_means(wide, radii, pad)]
        bm, d, cov, ok, texture = _fb_model(means, min_count)
        u, c, prec = _lda_coeffs(bm, d, cov, ok)
        est = _colour_estimate(guide, u, c)
    alpha, gain, amount = _sharpen_and_fuse(prior, blur, est, prec, band)
    return alpha, gain, amount, _fill_texture(texture, ok, band, amount)


def _band_colour_alpha(guide, prior, band, scale, max_pixels=3 * 2 ** 19):
    """:func:`_multiscale_colour_alpha` at full resolution on the band's tiles only: ``(alpha,
    gain, amount, texture)``, gain and amount per frame, the texture ratio 0 off the tiles.

    The tiles (with a halo of the largest radius, so the statistics are exact inside them)
    cover the thin band of a real matte: a few percent of a large image. If a feathered mask
    puts more than ``max_pixels`` px of tiles in the band (or more than
    :func:`~.matting._tile_budget` allows for a small image), the statistics are gathered at
    half the working size at one radius (4 working px) instead.
    """
    halo = max(1, round(max(_FB_FACTORS) * scale))
    tile = max(64, 32 * int(math.ceil(4 * halo / 32)))
    tiles = band_tiles(band > 0.5, tile, halo)
    if len(tiles) == 0:
        return (prior, prior.new_ones(prior.shape[0]), prior.new_full((prior.shape[0],), _SHARPEN),
                torch.zeros_like(prior))
    if len(tiles) * (tile + 2 * halo) ** 2 > _tile_budget(guide, max_pixels):
        return _multiscale_colour_alpha(guide, prior, scale, band, factors=(4,),
                                        subsample=2 * scale)
    crops = gather_tiles([guide, prior], tiles)
    # The prior's blur on crops read with the blur's reach beyond the halo, so that it equals
    # the whole image's inside the halo.
    reach = gaussian_reach(_SHARPEN_SIGMA * scale)
    wide = Tiles(tiles.frame, tiles.y, tiles.x, tile, halo + reach, tiles.size)
    soft = gaussian_blur(gather_tiles(prior, wide), _SHARPEN_SIGMA * scale)[
        ..., reach:-reach, reach:-reach]
    # The band inside each tile, zero where a border tile reaches past the image.
    inside = tiles.inside().to(band.dtype)
    band_crops = gather_tiles(band, tiles)[..., halo:halo + tile, halo:halo + tile] * inside
    alpha, gain, amount, texture = _multiscale_colour_alpha(
        crops[:, :3], crops[:, 3:4], scale, band_crops, halo=halo, groups=tiles.frame,
        n_groups=prior.shape[0], soft=soft)
    pad = (halo, halo, halo, halo)
    return (scatter_tiles(prior, tiles, F.pad(alpha, pad)), gain, amount,
            scatter_tiles(torch.zeros_like(prior), tiles, F.pad(texture, pad)))


def _final_filter(guide, alpha, band, scale, crisp):
    """The fast guided filter of ``alpha`` over ``band``, frame by frame at radius
    :data:`_FILTER_RADIUS` working px, :data:`_FILTER_RADIUS_CRISP` on the frames marked in
    ``crisp`` (a bool per frame; coefficients at the working size)."""
    crisp = [bool(c) for c in crisp]
    out = torch.empty_like(alpha)
    for flag, radius in ((False, _FILTER_RADIUS), (True, _FILTER_RADIUS_CRISP)):
        frames = [i for i, c in enumerate(crisp) if c == flag]
        if not frames:
            continue
        pick = (slice(None) if len(frames) == len(crisp) else
                torch.tensor(frames, device=alpha.device))
        g, a, b = guide[pick], alpha[pick], band[pick]
        r = max(1, round(radius * scale))
        smooth = guided_filter(g, a, r, eps=1e-5, subsample=scale, where=b)
        if not all_finite(smooth):
            # A near-singular window (flat colour, float32 cancellation) gives a non-finite
            # coefficient, which the summed-area tables would spread: regularise more.
            smooth = guided_filter(g, a, r, eps=1e-4, subsample=scale, where=b)
            smooth = torch.where(torch.isfinite(smooth), smooth, a)
        out[pick] = smooth
    return out


def refine_edges(mask: torch.Tensor, guide: torch.Tensor, working_size=1024,
                 mode: str = "guided", iterations: int = 10) -> torch.Tensor:
    """Recover edge detail that upsampling from the model's working size lost.

    Only the uncertain band (0.1 < mask < 0.9 at the working size, widened by one working-size
    pixel) changes. ``"guided"``: a local colour model (a Fisher-discriminant projection
    between the colour distributions, means and covariances, of the nearest confident
    foreground / background pixels at 2 and 6 working-size pixels, computed at full resolution
    on the band's tiles), fused by inverse variances with the mask sharpened against its own
    blur (an unsharp mask whose amount is fitted per frame to the colour model; the mask's
    variance grows with that amount, so a crisp mask keeps its say), then a fast
    guided filter (coefficients at the working size; 2 working px, 1 on frames with a crisp
    mask), weakened where the local background is
    textured next to the foreground-background contrast (it would copy that texture into the
    alpha: fur over a photo; on a crisp mask also where the colour model has no samples to
    measure that texture, :func:`_fill_texture`). ``"matting"``: the same, then
    ``iterations`` conjugate-gradient steps of closed-form matting (matrix-free Laplacian
    through box filters) on the band's tiles with the guided result as a soft data term:
    cleaner edges on flat backgrounds, slower.

    A mask that was not upsampled (the image is not larger than ``working_size``) is refined,
    at the image's pixels, only on frames where the fitted sharpening explains the image much
    better than the mask as it is (a soft mask over hard edges); other frames, and every frame
    with ``working_size=None`` (the mask has full detail), come back unchanged.

    Args:
        mask: ``[B,H,W]`` / ``[H,W]`` / ``[B,1,H,W]``, 1 = foreground, already at image size
            (resize it first with :func:`~birefnet_core.layout.fit_masks`).
        guide: the full-resolution image, an IMAGE ``[B,H,W,C]`` (C = 1, 3 or 4), 0..1 or
            uint8.
        working_size: the model's input side (int) or ``(H, W)`` the mask was predicted at;
            None: the mask has full detail.
        mode: one of :data:`EDGE_MODES`.

    >>> m = torch.rand(1, 32, 32); g = torch.rand(1, 32, 32, 3)
    >>> refine_edges(m, g, working_size=8).shape
    torch.Size([1, 32, 32])
    >>> torch.equal(refine_edges(m, g, working_size=None), m)
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
    if mode == "none" or working_size is None:
        return mask
    # Not upsampled (scale <= 1): work at the image's pixels, and only on the frames whose
    # mask is measurably softer than the image's edges (the sharpening fit's gain).
    scale = upsampling_factor((h, w), working_size)
    upsampled, scale = scale > 1.0, max(1.0, scale)
    prior = m4.clamp(0, 1)
    # The uncertain band (0.1 < prior < 0.9 at the working size), widened by about one
    # working-size pixel. In the band's tails the prior is worth more than the colour model
    # on a textured subject over a similar background, so the band is narrow.
    lo = 0.1
    small = (max(1, round(h / scale)), max(1, round(w / scale)))
    p_small = _resize(prior, small)
    uncertain = ((p_small > lo) & (p_small < 1 - lo)).to(prior.dtype)
    band = (_resize(dilate(uncertain, 1), (h, w)) > 0).to(prior.dtype)
    alpha, gain, amount, texture = _band_colour_alpha(g4, prior, band, scale)
    if not upsampled:
        act = gain < _ACT_BELOW
        if not bool(act.any()):
            return mask
        band = band * act.view(-1, 1, 1, 1).to(band.dtype)
    # The narrower filter where the fit finds an upsampled mask crisp; a mask that was not
    # upsampled is refined only where it is clearly softer than the image (the gate above).
    smooth = _final_filter(g4, alpha, band, scale, (amount <= _CRISP_AMOUNT).tolist() if upsampled
                           else [False] * alpha.shape[0])
    # Full strength where the background is flat next to the contrast, less where its texture
    # would be copied into the alpha.
    alpha = torch.lerp(alpha, smooth, 1.0 / (1.0 + texture / _FILTER_TEXTURE)).clamp(0, 1)
    if mode == "matting":
        alpha = _band_matting(g4, alpha, band, scale, iterations)
    if not all_finite(alpha):
        alpha = torch.where(torch.isfinite(alpha), alpha, prior)
    return back(band * alpha + (1 - band) * prior)
