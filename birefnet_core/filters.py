"""Shared low-level filters: integral-image box filter, guided filter, morphology, components.

Everything here works on batched ``[B, C, H, W]`` float tensors (masks as ``C = 1``) on the
input's device, in the input's floating dtype, and costs O(1) per pixel for the box-type filters
whatever the radius (cumulative sums, never ``avg_pool`` with huge kernels). One implementation
per algorithm: :mod:`.refine`, :mod:`.edges`, :mod:`.matting`, :mod:`.foreground` and
:mod:`.composite` build on these.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .layout import resize_bilinear

__all__ = [
    "box_mean",
    "box_filter",
    "box_sum_valid",
    "inner_box_means",
    "gaussian_blur",
    "three_box_blur",
    "guided_filter",
    "guided_filter_coeffs",
    "solve_dtype",
    "has_float64",
    "dilate",
    "erode",
    "connected_components",
    "Tiles",
    "band_tiles",
    "gather_tiles",
    "scatter_tiles",
]


# --------------------------------------------------------------------------------------------
# Box filter (integral image, separable)
# --------------------------------------------------------------------------------------------
def _box_1d(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Windowed *sum* over ``[i - before, i + after]`` along ``dim`` (-1 or -2), clipped at the
    borders (pixels outside the image count as 0)."""
    n = x.shape[dim]
    c = torch.cumsum(x, dim=dim)
    lead = list(x.shape)
    lead[dim] = before + 1
    tail = list(x.shape)
    tail[dim] = after
    # c_ext[k] = sum of x[:k - before - 1] clipped to [0, n]: zeros before, the total after.
    c = torch.cat([c.new_zeros(lead), c, c.narrow(dim, n - 1, 1).expand(tail)], dim=dim)
    return c.narrow(dim, before + after + 1, n) - c.narrow(dim, 0, n)


def _box_count(n: int, before: int, after: int, device, dtype) -> torch.Tensor:
    i = torch.arange(n, device=device)
    return (torch.clamp(i + after + 1, max=n) - torch.clamp(i - before, min=0)).to(dtype)


def _reflect_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of ``x`` padded by ``before`` / ``after`` entries, mirrored about the first and
    the last entry without repeating them (``d c b | a b c d | c b a``), for any pad width."""
    i = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def box_mean(x: torch.Tensor, size: int | tuple[int, int], border: str = "clip") -> torch.Tensor:
    """Mean over a ``size``-px window (int or ``(sy, sx)``): the one box filter of the package.

    The window of pixel ``i`` is ``[i - size // 2, i + size - 1 - size // 2]`` (centred for an
    odd size; an even size reaches one pixel further back than forward, as OpenCV's
    ``cv2.blur`` and SciPy's ``uniform_filter`` place it). ``border="clip"`` averages only the
    pixels inside the image; ``"reflect"`` mirrors the image about its edge pixels
    (``cv2.BORDER_REFLECT_101``, SciPy's ``mode="mirror"``). ``x`` is ``[..., H, W]`` floating;
    the cost is O(1) per pixel whatever the size (cumulative sums of the input centred on its
    mean, so float32 stays accurate at 4K).

    >>> box_mean(torch.tensor([[0., 0., 3., 0.]]), (1, 2), border="reflect").tolist()
    [[0.0, 0.0, 1.5, 1.5]]
    """
    sy, sx = (size, size) if isinstance(size, int) else size
    sy, sx = int(sy), int(sx)
    if sy < 1 or sx < 1:
        raise ValueError(f"box_mean: window size must be >= 1 px, got {size!r}.")
    if border not in ("clip", "reflect"):
        raise ValueError(f"box_mean: border must be 'clip' or 'reflect', got {border!r}.")
    shift = x.mean(dim=(-2, -1), keepdim=True)
    y = x - shift
    norm = None
    for dim, k in ((-1, sx), (-2, sy)):
        if k == 1:
            continue
        n = x.shape[dim]
        before, after = k // 2, k - 1 - k // 2
        if border == "reflect":
            y = y.index_select(dim, _reflect_index(n, before, after, x.device))
            c = torch.cumsum(y, dim=dim)
            c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
            y = c.narrow(dim, k, n) - c.narrow(dim, 0, n)
            cnt = torch.full((n,), float(k), device=x.device, dtype=x.dtype)
        else:
            # A window reaching n - 1 px either way already spans the whole axis from every
            # pixel: clamp, so the padded cumulative sum grows with the image, not the window.
            before, after = min(before, n - 1), min(after, n - 1)
            y = _box_1d(y, before, after, dim)
            cnt = _box_count(n, before, after, x.device, x.dtype)
        cnt = cnt.view(n, 1) if dim == -2 else cnt
        norm = cnt if norm is None else cnt * norm
    return y if norm is None else y / norm + shift


def box_filter(x: torch.Tensor, radius: int | tuple[int, int]) -> torch.Tensor:
    """Mean over a ``(2r+1)`` square window, normalised by the number of pixels inside the image.

    Args:
        x: ``[B, C, H, W]`` floating tensor.
        radius: window radius in pixels, an int or ``(ry, rx)``; 0 returns ``x``.

    Returns:
        ``[B, C, H, W]`` local means (borders average only the pixels that exist).

    :func:`box_mean` with ``size = 2 r + 1`` and clipped borders (O(1) per pixel).

    >>> box_filter(torch.ones(1, 1, 5, 5), 2).allclose(torch.ones(1, 1, 5, 5))
    True
    """
    ry, rx = (radius, radius) if isinstance(radius, int) else radius
    h, w = x.shape[-2:]
    ry, rx = max(0, min(int(ry), h - 1)), max(0, min(int(rx), w - 1))
    if ry <= 0 and rx <= 0:
        return x
    return box_mean(x, (2 * ry + 1, 2 * rx + 1), border="clip")


def box_sum_valid(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Sums of ``n`` consecutive entries along ``dim`` over the windows fully inside ``x``
    (``x.shape[dim] - n + 1`` of them): the "valid" member of the box family, for tile crops
    whose halo covers the window.

    Built from power-of-two partial sums (``log2 n`` adds plus one per set bit of ``n``):
    no cumulative sum, so no cancellation and no centring needed in float32.

    >>> box_sum_valid(torch.arange(5.0), 3, -1).tolist()
    [3.0, 6.0, 9.0]
    """
    m = x.shape[dim] - n + 1
    out, off, s, length = None, 0, x, 1
    while True:
        if n & length:
            part = s.narrow(dim, off, m)
            out = part.clone() if out is None else out.add_(part)
            off += length
        if 2 * length > n:
            return out
        k = s.shape[dim] - length
        s = s.narrow(dim, 0, k) + s.narrow(dim, length, k)
        length *= 2


# Crops up to this width take their box sums as products with banded 0/1 matrices (one GEMM per
# axis: 3.7x the partial sums' speed on 20-channel 88-px tile crops, 2 CPU threads); wider
# inputs (a whole image) the partial sums, whose cost does not grow with the width.
_BANDED_MAX_WIDTH = 256


def _band_matrix(n_in: int, n_out: int, radius: int, offset: int, like: torch.Tensor):
    """``[n_in, n_out]``: 1 where ``|i - (offset + j)| <= radius`` (window ``j`` reads ``i``)."""
    i = torch.arange(n_in, device=like.device)[:, None]
    j = torch.arange(n_out, device=like.device)[None, :]
    return ((i - j - offset).abs() <= radius).to(like.dtype)


def inner_box_means(x: torch.Tensor, radii, halo: int) -> list[torch.Tensor]:
    """Box means at several radii of the inner part (``halo`` px trimmed per side) of ``x``.

    ``x`` is ``[N, C, H, W]`` (tile crops, or a padded image); each radius is at most ``halo``,
    so no window leaves ``x`` and every mean is over ``(2 r + 1)^2`` pixels of it. Narrow
    crops: banded matrix products (the rows' sums for all radii in one product); wide inputs:
    :func:`box_sum_valid`. Either way plain sums, no cumulative sum to lose precision.
    """
    h, w = x.shape[-2] - 2 * halo, x.shape[-1] - 2 * halo
    out = []
    if x.shape[-1] > _BANDED_MAX_WIDTH:
        for r in radii:
            k = 2 * r + 1
            part = x[..., halo - r:halo + r + h, halo - r:halo + r + w]
            out.append(box_sum_valid(box_sum_valid(part, k, -1), k, -2).mul_(1.0 / (k * k)))
        return out
    across = torch.matmul(x, torch.cat([_band_matrix(x.shape[-1], w, r, halo, x)
                                        for r in radii], 1))
    for i, r in enumerate(radii):
        down = _band_matrix(x.shape[-2], h, r, halo, x).t()
        out.append(torch.matmul(down, across[..., i * w:(i + 1) * w]).mul_(1.0 / (2 * r + 1) ** 2))
    return out


# A true Gaussian (2 r + 1 taps per axis) up to this radius; above it three box passes, whose
# cost does not grow with sigma. Side by side on 2 CPU threads (benchmarks/bench_libraries.py
# --gaussian, RESULTS.md) the taps are the faster up to radius ~70 (sigma 24) at 1024-2048².
GAUSSIAN_MAX_RADIUS = 64


def _gaussian_taps(sigma: float, radius: int) -> list[float]:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (t / sigma) ** 2)
    return (taps / taps.sum()).tolist()


def _blur_axis(x: torch.Tensor, taps: list[float], dim: int) -> torch.Tensor:
    """``x`` convolved with ``taps`` (odd length) along ``dim``, zero beyond the image, then
    divided by the share of the taps inside it (only the first and last ``r`` lines differ)."""
    n, r = x.shape[dim], len(taps) // 2
    if x.device.type == "cpu":
        # Weighted shifted slices (as kornia does on the CPU): one multiply-add per tap over
        # the tensor, ~10x faster than oneDNN's single-channel convolution here.
        pad = (0, 0, r, r) if dim == -2 else (r, r)
        padded = F.pad(x, pad)
        out = padded.narrow(dim, 0, n) * taps[0]
        for i in range(1, len(taps)):
            out.add_(padded.narrow(dim, i, n), alpha=taps[i])
    else:
        b, c, h, w = x.shape
        kernel = torch.tensor(taps, device=x.device, dtype=x.dtype)
        kernel = kernel.view(1, 1, -1, 1) if dim == -2 else kernel.view(1, 1, 1, -1)
        out = F.conv2d(x.reshape(b * c, 1, h, w), kernel,
                       padding=(r, 0) if dim == -2 else (0, r)).view(b, c, h, w)
    # inside[q]: the taps' share inside the image at q px from one end, far from the other.
    inside = torch.tensor(taps, dtype=torch.float64).cumsum(0)[r:].tolist()
    for k in range(min(r, (n + 1) // 2)):  # line k and line n-1-k share it
        share = inside[k] + inside[n - 1 - k] - 1.0 if n - 1 - k < r else inside[k]
        out.narrow(dim, k, 1).div_(share)
        if n - 1 - k != k:
            out.narrow(dim, n - 1 - k, 1).div_(share)
    return out


def three_box_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Three box filters whose combined variance is nearest ``sigma²``: a Gaussian-like blur at
    O(1) per pixel for any ``sigma`` (the box radius is an integer, so small sigmas come out
    wider: radius 1, variance 2, for any ``sigma`` up to ~1.2).

    >>> three_box_blur(torch.ones(1, 1, 8, 8), 3.0).allclose(torch.ones(1, 1, 8, 8))
    True
    """
    if sigma <= 0:
        return x
    # Three passes of width w = 2r+1 give variance 3 (w^2 - 1) / 12 = r (r + 1).
    r = max(1, int(round((math.sqrt(1 + 4 * sigma * sigma) - 1) / 2)))
    for _ in range(3):
        x = box_filter(x, r)
    return x


def gaussian_reach(sigma: float) -> int:
    """How far (px) :func:`gaussian_blur` reads from a pixel: 3 sigma, at least 1."""
    return max(1, int(3.0 * sigma + 0.5))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``x [B, C, H, W]`` with standard deviation ``sigma`` pixels (truncated at
    3 sigma, as ``scipy.ndimage.gaussian_filter(truncate=3)``), borders normalised by the part
    of the kernel inside the image like :func:`box_filter`; ``sigma <= 0`` returns ``x``.

    Separable taps up to ``GAUSSIAN_MAX_RADIUS`` a side; beyond, :func:`three_box_blur` (O(1)
    per pixel for any ``sigma``).

    >>> gaussian_blur(torch.ones(1, 1, 8, 8), 1.5).allclose(torch.ones(1, 1, 8, 8))
    True
    """
    if sigma <= 0:
        return x
    radius = gaussian_reach(sigma)
    if radius > GAUSSIAN_MAX_RADIUS:
        return three_box_blur(x, sigma)
    for dim in (-2, -1):
        r = min(radius, x.shape[dim] - 1)
        if r > 0:
            x = _blur_axis(x, _gaussian_taps(sigma, r), dim)
    return x


# --------------------------------------------------------------------------------------------
# Guided filter (He et al., colour guide), optionally "fast" (coefficients at reduced size)
# --------------------------------------------------------------------------------------------
def _inv3_sym(a11, a12, a13, a22, a23, a33):
    """Elementwise inverse of symmetric 3x3 matrices given by their 6 unique entries."""
    c11 = a22 * a33 - a23 * a23
    c12 = a13 * a23 - a12 * a33
    c13 = a12 * a23 - a13 * a22
    c22 = a11 * a33 - a13 * a13
    c23 = a12 * a13 - a11 * a23
    c33 = a11 * a22 - a12 * a12
    det = a11 * c11 + a12 * c12 + a13 * c13
    inv_det = 1.0 / det
    return (c11 * inv_det, c12 * inv_det, c13 * inv_det,
            c22 * inv_det, c23 * inv_det, c33 * inv_det)


def has_float64(device) -> bool:
    """Whether tensors on ``device`` can be float64 (MPS: no)."""
    return torch.device(device).type != "mps"


def solve_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the small per-pixel linear solves: float64 where the device has it.

    The 3x3 covariance systems of a colour guided filter are near-singular on a near
    two-colour guide (dark hair against a smooth sky): in float32 a few coefficients blow up
    while staying finite, and the box mean of the coefficients spreads each over a whole
    ``(2r+1)^2`` square (blocks of inverted alpha). MPS has no float64.
    """
    return torch.float64 if has_float64(device) else torch.float32


def _colour_moments(guide: torch.Tensor, radius: int, eps: float, box=None):
    """Box means of a ``[B, 3, H, W]`` guide and the inverse of its regularised local
    covariance ``(Sigma + eps I)^-1`` (6 unique entries) at ``radius``: the part of the
    guided-filter solve that does not depend on the filtered signal. ``box(x, r)``: the box
    mean to use (:func:`box_filter` by default)."""
    box = box or box_filter
    mi = box(guide, radius)
    m = box(_sym6(guide), radius)
    mr, mg, mb = mi[:, 0:1], mi[:, 1:2], mi[:, 2:3]
    inv = _inv3_sym(m[:, 0:1] - mr * mr + eps, m[:, 1:2] - mr * mg, m[:, 2:3] - mr * mb,
                    m[:, 3:4] - mg * mg + eps, m[:, 4:5] - mg * mb, m[:, 5:6] - mb * mb + eps)
    return mi, inv


def _sym6(x: torch.Tensor) -> torch.Tensor:
    """The 6 distinct entries of ``x x^T`` for a ``[N, 3, H, W]`` colour tensor."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.cat([r * r, r * g, r * b, g * g, g * b, b * b], 1)


def _guided_ab(guide, src, radius, mi, inv, box=None):
    """Per-window ``(a, b)`` (not yet box-averaged) of ``src ~ a . guide + b``, given the
    guide's moments from :func:`_colour_moments`; ``src`` is ``[B, 1, H, W]``."""
    box = box or box_filter
    mp = box(src, radius)
    cov = box(guide * src, radius) - mi * mp
    i11, i12, i13, i22, i23, i33 = inv
    cr, cg, cb = cov[:, 0:1], cov[:, 1:2], cov[:, 2:3]
    a = torch.cat([i11 * cr + i12 * cg + i13 * cb,
                   i12 * cr + i22 * cg + i23 * cb,
                   i13 * cr + i23 * cg + i33 * cb], dim=1)
    b = mp - (a * mi).sum(1, keepdim=True)
    return a, b


def guided_filter_coeffs(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float,
                         box=None):
    """Per-window linear coefficients ``(A, b)`` with ``src ~ A . guide + b`` (box-averaged).

    ``guide`` is ``[B, 1 or 3, H, W]``, ``src`` ``[B, 1, H, W]``. Returns ``A`` ``[B, Cg, H, W]``
    and ``b`` ``[B, 1, H, W]``, both mean-filtered, so that ``q = (A * guide).sum(1) + b``.
    Computed in the input's dtype (see :func:`solve_dtype` for why callers promote).
    ``box(x, r)`` is the box mean (:func:`box_filter`; a "valid" one for tile crops, whose
    results are ``2 r`` px smaller after each of the two stages).
    """
    box = box or box_filter
    if guide.shape[1] == 1:
        mi, mp = box(guide, radius), box(src, radius)
        var = box(guide * guide, radius) - mi * mi
        cov = box(guide * src, radius) - mi * mp
        a = cov / (var + eps)
        b = mp - a * mi
        ab = box(torch.cat([a, b], dim=1), radius)
        return ab[:, :1], ab[:, 1:]
    mi, inv = _colour_moments(guide, radius, eps, box)
    a, b = _guided_ab(guide, src, radius, mi, inv, box)
    ab = box(torch.cat([a, b], dim=1), radius)
    return ab[:, :3], ab[:, 3:]


def _valid_box_mean(x: torch.Tensor, radius: int, inside: torch.Tensor) -> torch.Tensor:
    """:func:`box_filter` of tile crops over their windows that lie inside the crop: the mean
    over the in-image pixels (``inside``, ``[N, 1, K, K]`` for the full crop; centred on
    ``x``'s smaller crops), so a crop reproduces the whole image's clipped borders. The result
    is ``radius`` px smaller per side than ``x``."""
    k = x.shape[-1]
    off = (inside.shape[-1] - k) // 2
    v = inside[..., off:off + k, off:off + k]
    n = 2 * radius + 1
    total = box_sum_valid(box_sum_valid(x * v, n, -1), n, -2)
    count = box_sum_valid(box_sum_valid(v, n, -1), n, -2)
    return total / count.clamp(min=1)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float = 1e-4,
                  subsample: float = 1.0, where: torch.Tensor | None = None) -> torch.Tensor:
    """Edge-preserving smoothing of ``src`` steered by ``guide`` (He, Sun, Tang; colour guide).

    Args:
        guide: ``[B, 1 or 3, H, W]`` image in 0..1.
        src: ``[B, 1, H, W]`` signal to filter (e.g. a mask, 1 = foreground).
        radius: window radius at full resolution, in pixels.
        eps: regularisation (larger = smoother, less edge-following).
        subsample: "fast guided filter" factor: the coefficients are computed at
            ``1/subsample`` size and bilinearly upsampled, then applied to the full-size guide.
        where: optional ``[B, 1, H, W]`` mask: the result is needed only where it is nonzero
            (an edge band). The coefficients are then solved on the tiles that cover it (the
            same values as for the whole image there) and ``src`` is returned elsewhere.

    Returns:
        ``[B, 1, H, W]`` filtered ``src`` (not clamped), in ``guide``'s dtype. The
        coefficients are solved in float64 (at the reduced size when ``subsample > 1``).

    >>> g = torch.rand(1, 3, 16, 16); p = torch.rand(1, 1, 16, 16)
    >>> guided_filter(g, p, 2).shape
    torch.Size([1, 1, 16, 16])
    """
    h, w = guide.shape[-2:]
    # The coefficients (box means and 3x3 solves) in float64: in float32 a near two-colour
    # guide gives a few huge finite coefficients that the final box mean spreads into squares.
    work = torch.promote_types(guide.dtype, solve_dtype(guide.device))
    g_s, p_s, r = guide, src, radius
    if subsample > 1.0:
        hs, ws = max(1, round(h / subsample)), max(1, round(w / subsample))
        g_s = resize_bilinear(guide, (hs, ws), antialias=True)
        p_s = resize_bilinear(src, (hs, ws), antialias=True)
        r = max(1, round(radius / subsample))
    if where is None:
        a, b = guided_filter_coeffs(g_s.to(work), p_s.to(work), r, eps)
        a, b = a.to(guide.dtype), b.to(guide.dtype)
    else:
        a, b = _band_coeffs(g_s, p_s, r, eps, where, work)
    if a.shape[-2:] != (h, w):
        a = F.interpolate(a, size=(h, w), mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=(h, w), mode="bilinear", align_corners=False)
    q = (a * guide).sum(1, keepdim=True) + b
    return q if where is None else torch.where(where > 0, q, src.to(q.dtype))


def _band_coeffs(guide, src, radius, eps, where, work, tile=64):
    """:func:`guided_filter_coeffs` (``guide``, ``src`` at the coefficients' size) on the
    ``tile``-px cells around ``where`` (resized to that size and widened by the one pixel that
    bilinear upsampling reads), zero elsewhere, in ``guide``'s dtype."""
    size = guide.shape[-2:]
    near = where.to(guide.dtype)
    if near.shape[-2:] != size:
        near = resize_bilinear(near, size, antialias=True)
    tiles = band_tiles(dilate((near > 0).to(guide.dtype), 1) > 0, tile, 2 * radius)
    coeffs = guide.new_zeros(guide.shape[0], guide.shape[1] + 1, *size)
    if len(tiles) == 0:
        return coeffs[:, :-1], coeffs[:, -1:]
    crops = gather_tiles([guide, src], tiles).to(work)
    box = functools.partial(_valid_box_mean, inside=tiles.inside(halo=True).to(work))
    a, b = guided_filter_coeffs(crops[:, :-1], crops[:, -1:], radius, eps, box)
    ab = F.pad(torch.cat([a, b], 1).to(guide.dtype), (2 * radius,) * 4)
    coeffs = scatter_tiles(coeffs, tiles, ab)
    return coeffs[:, :-1], coeffs[:, -1:]


# --------------------------------------------------------------------------------------------
# Morphology with a near-disk (octagon) structuring element, O(log r) passes
# --------------------------------------------------------------------------------------------
def _line_max(x: torch.Tensor, m: int, dy: int, dx: int) -> torch.Tensor:
    """Max over ``x[i + k*dy, j + k*dx]`` for ``k`` in ``[-m, m]`` (outside the image ignored)."""
    if m <= 0:
        return x
    length = 2 * m + 1
    low = torch.finfo(x.dtype).min
    pad_y, pad_x = m * abs(dy), m * abs(dx)
    # Pad by m on both sides so the run for offset -m exists; reads beyond are `low`.
    y = F.pad(x, (pad_x, pad_x, pad_y, pad_y), value=low)
    h, w = x.shape[-2:]

    def shifted(t, k):  # t[i + k*dy, j + k*dx] in padded coordinates, same size as t
        oy, ox = k * dy, k * dx
        out = torch.full_like(t, low)
        hh, ww = t.shape[-2:]
        ys, ye = max(0, -oy), min(hh, hh - oy)
        xs, xe = max(0, -ox), min(ww, ww - ox)
        out[..., ys:ye, xs:xe] = t[..., ys + oy:ye + oy, xs + ox:xe + ox]
        return out

    # run[p] = max of x over offsets 0..p-1 (doubling), then combine two overlapping runs.
    run, p = y, 1
    while 2 * p <= length:
        run = torch.maximum(run, shifted(run, p))
        p *= 2
    if p < length:
        run = torch.maximum(run, shifted(run, length - p))
    # Offset 0 of `run` at padded (i, j) covers k = 0..length-1 from there; we want k = -m..m.
    oy0 = pad_y - m * dy if dy >= 0 else pad_y + m * abs(dy)
    ox0 = pad_x - m * dx if dx >= 0 else pad_x + m * abs(dx)
    return run[..., oy0:oy0 + h, ox0:ox0 + w]


def _octagon(radius: int) -> tuple[int, int]:
    """``(s, q)``: the half-width of the square and the diagonal reach of :func:`dilate`'s disk."""
    q = int(math.floor(0.2929 * radius))
    s = radius - 2 * q
    if q > 0 and s < 1:
        q -= 1
        s = radius - 2 * q
    return s, q


def dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-scale dilation of ``[B, C, H, W]`` by an octagon approximating a disk of ``radius`` px.

    The octagon ``{|dx| <= r, |dy| <= r, |dx| + |dy| <= r + s}`` (``s ~ 0.414 r``) is a
    square of half-width ``s`` plus a diamond of half-width ``2q`` (``q ~ 0.293 r``), each built
    from 1-D running maxima in O(log r) passes. Memory is bounded by the image, whatever the
    radius (offsets that cannot reach another pixel are dropped, see below).

    >>> x = torch.zeros(1, 1, 9, 9); x[..., 4, 4] = 1
    >>> y = dilate(x, 4)[0, 0]  # reaches 4 px along the axes, cuts the corners
    >>> y[4, 0].item(), y[0, 0].item()
    (1.0, 0.0)
    """
    radius = int(radius)
    if radius <= 0:
        return x
    h, w = x.shape[-2:]
    s, q = _octagon(radius)
    # The element: the square's Minkowski sum with the diagonal lines' diamond {(a+b, a-b)}
    # (which has holes where dx + dy is odd; the square, s >= 1, fills them) is exactly
    # O(rx, ry, t) = {|dx| <= rx, |dy| <= ry, |dx| + |dy| <= t} with rx = ry = r, t = r + s.
    # Only offsets with |dy| <= H - 1 and |dx| <= W - 1 can reach a pixel of the image, so the
    # same dilation is O(min(r, W - 1), min(r, H - 1), t): the result for any larger radius is
    # the same (once r >= H + W - 2 the element contains the diamond |dx| + |dy| <= H + W - 2,
    # which covers the whole image from every pixel, and every frame becomes its maximum).
    rx, ry, t = min(radius, w - 1), min(radius, h - 1), radius + s
    n = rx + ry - t  # how far the diagonal edges cut into the clipped rectangle
    if n <= 0:  # the clipped element is a rectangle: two separable passes, no padding
        if rx == w - 1 and ry == h - 1:
            return x.amax(dim=(-2, -1), keepdim=True).expand_as(x).clone()
        return _line_max(_line_max(x, rx, 0, 1), ry, 1, 0)
    # O(rx, ry, t) = rectangle (rx - n, ry - n) + full diamond |dx| + |dy| <= n; the diamond is
    # the diagonal lines' one of half-width 2 (n // 2) (its holes filled by the rectangle,
    # whose half-widths are >= s >= 1) plus, for an odd n, the 1-px cross. The diagonal
    # passes read the rectangle's result up to n px outside the image: pad by n (< min(H, W),
    # so the padded frame is under 9x the image).
    q = n // 2
    pad = n
    low = torch.finfo(x.dtype).min
    y = F.pad(x, (pad, pad, pad, pad), value=low)
    y = _line_max(_line_max(y, rx - n, 0, 1), ry - n, 1, 0)
    y = _line_max(_line_max(y, q, 1, 1), q, 1, -1)
    if n % 2:
        y = torch.maximum(_line_max(y, 1, 0, 1), _line_max(y, 1, 1, 0))
    return y[..., pad:pad + h, pad:pad + w]


def erode(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-scale erosion (the dual of :func:`dilate`); pixels outside the image are ignored.

    >>> erode(torch.ones(1, 1, 5, 5), 2).min().item()
    1.0
    """
    return -dilate(-x, radius)


# --------------------------------------------------------------------------------------------
# Connected components (4-connectivity) by run-length label propagation
# --------------------------------------------------------------------------------------------
def _run_min_lastdim(labels: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Give every horizontal run of ``fg`` the minimum label found in it (last dim)."""
    prev = torch.zeros_like(fg)
    prev[..., 1:] = fg[..., :-1]
    start = (fg & ~prev).reshape(-1)
    seg = torch.cumsum(start.to(torch.int64), 0) - 1
    fgf = fg.reshape(-1)
    seg_f = seg[fgf]
    lab = labels.reshape(-1).clone()
    vals = lab[fgf]
    nseg = int(start.sum())
    mins = torch.full((max(nseg, 1),), torch.iinfo(torch.int64).max, dtype=torch.int64,
                      device=labels.device)
    mins.scatter_reduce_(0, seg_f, vals, reduce="amin")
    lab[fgf] = mins[seg_f]
    return lab.view_as(labels)


def connected_components(fg: torch.Tensor, max_iterations: int = 1000) -> torch.Tensor:
    """Label the 4-connected components of a boolean ``[B, H, W]`` tensor.

    Returns an int64 ``[B, H, W]`` tensor: each foreground pixel holds the flat index (over the
    whole batch) of one pixel of its component, background pixels hold -1. Components never
    span frames. Runs of pixels along rows and columns are merged alternately, with pointer
    jumping, so the number of passes grows with how winding a component is, not with its size.

    >>> m = torch.tensor([[[1, 1, 0, 1], [0, 0, 0, 1]]], dtype=torch.bool)
    >>> connected_components(m).tolist()
    [[[0, 0, -1, 3], [-1, -1, -1, 3]]]
    """
    fg = fg.bool()
    n = fg.numel()
    idx = torch.arange(n, device=fg.device, dtype=torch.int64).view_as(fg)
    big = torch.iinfo(torch.int64).max
    labels = torch.where(fg, idx, torch.full_like(idx, big))
    fg_t = fg.transpose(-1, -2).contiguous()
    flat_fg = fg.reshape(-1)
    for _ in range(max_iterations):
        old = labels
        labels = _run_min_lastdim(labels, fg)
        labels = _run_min_lastdim(labels.transpose(-1, -2).contiguous(), fg_t)
        labels = labels.transpose(-1, -2).contiguous()
        # Pointer jumping: a label is a pixel index whose own label is at most as large.
        flat = labels.reshape(-1)
        jumped = flat.clone()
        jumped[flat_fg] = flat[flat[flat_fg]]
        labels = jumped.view_as(labels)
        if torch.equal(labels, old):
            break
    return torch.where(fg, labels, torch.full_like(labels, -1))


def component_areas(labels: torch.Tensor) -> torch.Tensor:
    """Area (pixel count) of each pixel's component for labels from :func:`connected_components`.

    Background pixels (label -1) get 0.

    >>> component_areas(torch.tensor([[[0, 0, -1, 3]]])).tolist()
    [[[2, 2, 0, 1]]]
    """
    flat = labels.reshape(-1)
    valid = flat >= 0
    counts = torch.bincount(flat[valid], minlength=flat.numel())
    out = torch.zeros_like(flat)
    out[valid] = counts[flat[valid]]
    return out.view_as(labels)


# --------------------------------------------------------------------------------------------
# Work on a thin band only: gather the tiles that touch it (with a halo), scatter results back
# --------------------------------------------------------------------------------------------
class Tiles:
    """Selected ``tile x tile`` cells of a ``[B, C, H, W]`` grid, each read with a ``halo``.

    ``frame``, ``y``, ``x`` are int64 ``[N]``: the frame and the top-left corner (in the
    unpadded image) of every selected cell. Built by :func:`band_tiles`.
    """

    def __init__(self, frame, y, x, tile, halo, size):
        self.frame, self.y, self.x = frame, y, x
        self.tile, self.halo, self.size = tile, halo, tuple(size)

    def __len__(self):
        return int(self.frame.numel())

    def inside(self, halo: bool = False) -> torch.Tensor:
        """``[N, 1, K, K]`` float: 1 where a cell's pixel (``K = tile``, or with its halo on
        each side) lies in the image; border cells reach past it."""
        k = self.tile + (2 * self.halo if halo else 0)
        t = torch.arange(k, device=self.y.device) - (self.halo if halo else 0)
        h, w = self.size
        rows = (t[None, :] + self.y[:, None] >= 0) & (t[None, :] < (h - self.y)[:, None])
        cols = (t[None, :] + self.x[:, None] >= 0) & (t[None, :] < (w - self.x)[:, None])
        return (rows[:, :, None] & cols[:, None, :])[:, None].float()


def band_tiles(band: torch.Tensor, tile: int = 64, halo: int = 0) -> Tiles:
    """The ``tile``-px cells of a bool ``[B, 1, H, W]`` mask that contain any True pixel.

    >>> m = torch.zeros(1, 1, 100, 100, dtype=torch.bool); m[..., 5, 70] = True
    >>> t = band_tiles(m, 32, 4); len(t), t.y.tolist(), t.x.tolist()
    (1, [0], [64])
    """
    b, _, h, w = band.shape
    # Reduced block by block (no grid padded to whole tiles: a tile far larger than the image
    # must not allocate a tile-sized grid).
    cells = _block_any(_block_any(band[:, 0].bool(), tile, 1), tile, 2)
    f, iy, ix = cells.nonzero(as_tuple=True)
    return Tiles(f, iy * tile, ix * tile, tile, halo, (h, w))


def _block_any(x: torch.Tensor, tile: int, dim: int) -> torch.Tensor:
    """``any`` over consecutive blocks of ``tile`` entries along ``dim`` (>= 0; the last block
    may be shorter)."""
    n = x.shape[dim]
    full = n // tile
    parts = []
    if full:
        parts.append(x.narrow(dim, 0, full * tile).unflatten(dim, (full, tile)).any(dim + 1))
    if n > full * tile:
        parts.append(x.narrow(dim, full * tile, n - full * tile).any(dim, keepdim=True))
    return torch.cat(parts, dim)


def gather_tiles(x, tiles: Tiles) -> torch.Tensor:
    """``[N, C, tile + 2 halo, tile + 2 halo]`` crops of ``x`` (borders replicated).

    ``x`` is a ``[B, C, H, W]`` tensor or a sequence of them (concatenated along C per crop,
    which avoids concatenating the full-size tensors).
    """
    if isinstance(x, (list, tuple)):
        return torch.cat([gather_tiles(t, tiles) for t in x], 1)
    k = tiles.tile + 2 * tiles.halo
    hl = tiles.halo
    h, w = tiles.size
    out = x.new_empty(len(tiles), x.shape[1], k, k)
    # One slice per cell: far cheaper than advanced indexing or padding the whole image.
    for i, (f, y, c) in enumerate(zip(tiles.frame.tolist(), tiles.y.tolist(), tiles.x.tolist())):
        y0, y1, x0, x1 = y - hl, y - hl + k, c - hl, c - hl + k
        crop = x[f:f + 1, :, max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
        pads = (max(0, -x0), max(0, x1 - w), max(0, -y0), max(0, y1 - h))
        if any(pads):
            crop = F.pad(crop, pads, mode="replicate")
        out[i] = crop[0]
    return out


def scatter_tiles(x: torch.Tensor, tiles: Tiles, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with the cells' inner ``tile x tile`` parts taken from ``values``."""
    out = x.clone()
    t, hl = tiles.tile, tiles.halo
    h, w = tiles.size
    for i, (f, y, c) in enumerate(zip(tiles.frame.tolist(), tiles.y.tolist(), tiles.x.tolist())):
        th, tw = min(t, h - y), min(t, w - c)
        out[f, :, y:y + th, c:c + tw] = values[i, :, hl:hl + th, hl:hl + tw]
    return out

