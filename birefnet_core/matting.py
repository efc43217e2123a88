"""Closed-form matting on the edge band: the matrix-free matting Laplacian, a batched
conjugate-gradient solver, and the band-tiled solve that :func:`~.edges.refine_edges` runs in its
``"matting"`` mode.

Kept apart from :mod:`.edges`: a different algorithm (closed-form matting, an iterative linear
solve, rather than a local colour model) with its own cost, used only in the ``"matting"`` mode
and only on the band's tiles, within a pixel budget (:func:`_tile_budget`, which the colour
model's tiles share).
Tensors are ``[N, C, H, W]`` (guide ``C = 3``, alpha ``C = 1``), 0..1, on the input's device.
"""

from __future__ import annotations

import torch

from .filters import (_colour_moments, _guided_ab, band_tiles, box_filter, gather_tiles,
                      scatter_tiles, solve_dtype)

__all__: list[str] = []  # internals of refine_edges: see birefnet_core.edges


def _tile_budget(x: torch.Tensor, max_pixels: int) -> int:
    """Pixels of tile crops allowed for frames ``x`` ``[B, C, H, W]``: ``max_pixels``, but at
    most 16x the frames' own area (and at least 64 Kpx). Halos grow with the scale; on a small
    image at a tiny working size they would be far wider than the image itself."""
    return min(max_pixels, max(2 ** 16, 16 * x.shape[0] * x.shape[-2] * x.shape[-1]))


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
