"""Mask ops of ``birefnet_core.refine`` / ``edges`` / ``matting`` / ``temporal`` / ``filters``:
smoke, shape, errors, references, quality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from birefnet_core import edges as E, matting as M, refine as R, temporal as T
from birefnet_core.errors import InputError
from birefnet_core.layout import fit_masks
from birefnet_core.filters import (_octagon, band_tiles, box_filter, connected_components,
                                   dilate, erode, gaussian_blur, guided_filter)
from memory_probe import peak_growth


@pytest.mark.parametrize("shape", [(16, 20), (2, 16, 20), (2, 1, 16, 20)])
def test_shapes_round_trip(shape):
    m = torch.rand(shape)
    for out in (R.grow_shrink(m, 2), R.grow_shrink(m, -2), R.feather(m, 3), R.levels(m, .2, .8),
                R.threshold(m), R.fill_holes(m), R.remove_islands(m, 3), R.edge_band(m, 4)):
        assert out.shape == m.shape and out.dtype == m.dtype


def test_box_filter_matches_float64_reference():
    x = torch.rand(2, 3, 23, 31, dtype=torch.float64)
    ry, rx = 3, 5
    pad = F.pad(x, (rx, rx, ry, ry))
    ones = F.pad(torch.ones_like(x), (rx, rx, ry, ry))
    ref = F.avg_pool2d(pad, (2 * ry + 1, 2 * rx + 1), 1) / \
        F.avg_pool2d(ones, (2 * ry + 1, 2 * rx + 1), 1)
    assert torch.allclose(box_filter(x, (ry, rx)), ref, atol=1e-12)
    # float32 at a large radius stays close to the float64 answer
    assert torch.allclose(box_filter(x.float(), 40).double(), box_filter(x, 40), atol=1e-5)


def test_dilate_matches_brute_force_octagon():
    x = (torch.rand(1, 1, 30, 30) > 0.97).float()
    for r in (1, 3, 6):
        got = dilate(x, r)
        ys, xs = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        # brute force over the same structuring element, read off the dilation of a point
        pt = torch.zeros(1, 1, 2 * r + 1, 2 * r + 1); pt[..., r, r] = 1
        se = dilate(pt, r)[0, 0] > 0
        assert (xs[se] ** 2 + ys[se] ** 2).max() <= 2 * r * r  # inside the square, near disk
        assert se[r, 0] and se[0, r]  # reaches r along the axes
        k = 2 * r + 1
        patches = F.pad(x, (r, r, r, r)).unfold(2, k, 1).unfold(3, k, 1).flatten(-2)
        ref = patches[..., se.flatten()].amax(-1)
        assert torch.equal(got, ref)


def test_connected_components_and_islands():
    m = torch.zeros(1, 10, 10)
    m[0, 1:4, 1:4] = 1  # 9 px
    m[0, 6, 6] = 1  # 1 px
    m[0, 5:9, 8] = 1  # 4 px, touches nothing else (4-connectivity)
    lab = connected_components(m > 0.5)
    assert len(set(lab[lab >= 0].tolist())) == 3
    out = R.remove_islands(m, 5)
    assert out[0, 1:4, 1:4].eq(1).all() and out[0, 6, 6] == 0 and out[0, 5:9, 8].eq(0).all()


def test_fill_holes_respects_max_area():
    m = torch.ones(1, 12, 12)
    m[0, 2, 2] = 0  # 1-px hole
    m[0, 5:9, 5:9] = 0  # 16-px hole
    m[0, 0, 6] = 0  # touches the border: not a hole
    assert R.fill_holes(m, max_area=4)[0, 2, 2] == 1
    assert R.fill_holes(m, max_area=4)[0, 6, 6] == 0
    full = R.fill_holes(m)
    assert full[0, 6, 6] == 1 and full[0, 0, 6] == 0


def test_edge_band_width():
    m = torch.zeros(1, 1, 20, 20); m[..., 5:15, 5:15] = 1
    band = R.edge_band(m, 4)
    assert band[0, 0, 10, 3:7].eq(1).all() and band[0, 0, 10, 10] == 0 and band[0, 0, 10, 0] == 0


def test_temporal_smoothing_resets_at_cuts():
    m = torch.zeros(6, 4, 4)
    m[3:] = 1  # a cut between frames 2 and 3
    m[1] = 0.2  # flicker inside the first shot
    out = T.temporal_smooth(m, "ema", strength=0.5, cut_threshold=0.5)
    assert out[3:].eq(1).all() and out[:3].max() < 0.2  # no bleed across the cut
    med = T.temporal_smooth(m, "median", window=3, cut_threshold=0.5)
    assert med[1].eq(0).all() and med[3:].eq(1).all()


def test_refine_edges_identity_when_not_downscaled():
    m = torch.rand(2, 24, 24)
    g = torch.rand(2, 24, 24, 3)
    assert torch.equal(E.refine_edges(m, g, working_size=24), m)
    assert torch.equal(E.refine_edges(m, g, working_size=1024, mode="guided"), m)


def test_guided_filter_keeps_constants():
    g = torch.rand(1, 3, 20, 20)
    p = torch.full((1, 1, 20, 20), 0.3)
    assert torch.allclose(guided_filter(g, p, 3), p, atol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (lambda: R.grow_shrink(torch.rand(2, 3, 8, 8), 1), r"\[H,W\], \[B,H,W\] or \[B,1,H,W\]"),
    (lambda: R.levels(torch.rand(4, 4), 0.8, 0.2), "white point"),
    (lambda: E.refine_edges(torch.rand(1, 8, 8), torch.rand(1, 9, 9, 3), 4), "resize the mask"),
    (lambda: E.refine_edges(torch.rand(1, 8, 8), torch.rand(1, 8, 8, 3), 4, "magic"), "mode"),
    (lambda: T.temporal_smooth(torch.rand(3, 4, 4), "median", window=2), "odd"),
    (lambda: fit_masks(torch.rand(2, 1, 4, 4), (4, 4), 3), "one per frame"),
])
def test_errors_are_clear(bad, match):
    with pytest.raises(InputError, match=match):
        bad()


# The target (the spec): band SAD <= 0.6x bilinear's on every background.
SPEC_TARGET = 0.6
# QUALITY_LIMITS is a ratchet, tighter than the spec: the band-SAD ratio to bilinear measured
# on the 340 px lemur (RESULTS_refine.md) plus ~3 % slack (at least 0.005), so that any loss
# of quality fails here even while the spec still holds. To update it: when a change improves
# a ratio, lower that limit to the new measurement + 3 % in the same change; raise one only for
# a trade-off that is measured and explained in RESULTS_refine.md, never above SPEC_TARGET.
# Working size 128 / 192 is the benchmark's 680 px @ 256 / 384 at half size (same scale
# factor). Measured with the sharpening amount fitted per frame (edges._fit_sharpening; it was
# a fixed 2: 0.068 / 0.464, 0.101 / 0.453, 0.065 / 0.476, 0.093 / 0.475) and the final guided
# filter weakened over textured backgrounds (the beach was 0.356, 0.366, 0.375, 0.389): guided
# 0.060 / 0.329 (128), 0.102 / 0.322 (192); matting 0.057 / 0.346 (128), 0.095 / 0.350 (192)
# (magenta / beach). Raised for a measured trade-off (RESULTS_refine.md, 2026-11-29): the colour
# model's confident samples taken from the blurred mask cost this protocol's blurred masks
# 0.004-0.019 (guided 0.066 / 0.348, 0.099 / 0.333; matting 0.062 / 0.362, 0.093 / 0.360) and
# take the pipeline table's worst row from 0.91 to 0.58; the sharpening amounts 5 (beyond 4)
# cost its magenta 0.002-0.010 (guided 0.068, 0.109; matting 0.065, 0.104) and bring every
# sigma-2 row of the pipeline table down by 0.01-0.04. The sharpening fit with every pixel of
# colour evidence weighing the same brought the beach down again (guided 0.325, 0.327; matting
# 0.339, 0.353).
QUALITY_LIMITS = {
    ("guided", 128, "magenta"): 0.073, ("guided", 128, "beach"): 0.335,
    ("guided", 192, "magenta"): 0.114, ("guided", 192, "beach"): 0.337,
    ("matting", 128, "magenta"): 0.070, ("matting", 128, "beach"): 0.350,
    ("matting", 192, "magenta"): 0.109, ("matting", 192, "beach"): 0.364,
}


def test_quality_small(matting_dir):
    """Small-size version of benchmarks/bench_matting_quality.py (see RESULTS_refine.md)."""
    from benchmarks.matting_protocol import alpha_metrics, band_of, degrade, load_cases

    cases = load_cases(matting_dir, lemur_size=340)
    a, f, _, bgs = cases["lemur"]
    band = band_of(a)
    # Large-image case: the target is <= 0.6x bilinear on every background.
    ratios = {}
    for mode, ws, name in QUALITY_LIMITS:
        ad = degrade(a, ws)
        img = a * f + (1 - a) * bgs[name]
        out = E.refine_edges(ad, img.permute(0, 2, 3, 1), working_size=ws, mode=mode)
        ratios[mode, ws, name] = (alpha_metrics(out, a, band)["sad_band"] /
                                  alpha_metrics(ad, a, band)["sad_band"])
    assert all(ratios[k] <= v for k, v in QUALITY_LIMITS.items()), ratios
    assert max(ratios.values()) <= SPEC_TARGET, ratios
    for name, (a, f, _, bgs) in cases.items():
        side = max(a.shape[-2:])
        band = band_of(a)
        for bg_name, bg in bgs.items():
            img = a * f + (1 - a) * bg
            image = img.permute(0, 2, 3, 1)
            # Not downscaled (working size >= the image): refined only where the mask is
            # measurably softer than the image, and then never worse than the mask (measured:
            # unchanged at sigma 0.5 and 1 except the lemur over magenta, 0.92 / 0.54).
            for sigma in (0.5, 1.0, 2.0):
                ad = degrade(a, 512, sigma, blur="gaussian")
                for ws in (512, side):
                    out = E.refine_edges(ad, image, working_size=ws)
                    ratio = (alpha_metrics(out, a, band)["sad_band"] /
                             alpha_metrics(ad, a, band)["sad_band"])
                    assert ratio <= 1.0 + 1e-6, (name, bg_name, sigma, ws, ratio)
                assert torch.equal(E.refine_edges(ad, image, working_size=None), ad)
            # Barely downscaled (1.25x): it acts, and never does worse than bilinear by more
            # than 5 % (measured: 0.41 / 0.15 lemur, 0.69 / 0.59 pymatting32; beach / magenta).
            ws = round(side / 1.25)
            ad = degrade(a, ws)
            out = E.refine_edges(ad, img.permute(0, 2, 3, 1), working_size=ws)
            ratio = (alpha_metrics(out, a, band)["sad_band"] /
                     alpha_metrics(ad, a, band)["sad_band"])
            assert not torch.equal(out, ad) and ratio <= 1.05, (name, bg_name, ratio)


def test_not_downscaled_soft_mask_is_refined_only_over_hard_edges(matting_dir):
    """Issue 17, item 6: a mask predicted at a working size above the image's is still soft
    where the segmenter blurred it. Over hard edges (the synthetic portrait) that blur is
    measured against the image and removed; over the lemur's soft fur on a photo, where the
    same forcing does harm, the mask comes back unchanged."""
    from benchmarks.matting_protocol import (alpha_metrics, band_of, degrade, load_cases,
                                             synthetic_portrait)

    a, f = synthetic_portrait(256)
    green = torch.tensor([0.1, 0.75, 0.2]).view(1, 3, 1, 1)
    image = (a * f + (1 - a) * green).permute(0, 2, 3, 1)
    band = band_of(a)
    for sigma in (0.5, 1.0, 2.0):
        ad = degrade(a, 341, sigma, blur="gaussian")  # predicted at 341 px, shown at 256
        out = E.refine_edges(ad, image, working_size=341)
        ratio = alpha_metrics(out, a, band)["sad_band"] / alpha_metrics(ad, a, band)["sad_band"]
        assert ratio <= 0.62, (sigma, ratio)  # measured 0.57, 0.58, 0.56
    a, f, _, bgs = load_cases(matting_dir, lemur_size=340)["lemur"]
    ad = degrade(a, 512, 0.5, blur="gaussian")
    image = (a * f + (1 - a) * bgs["beach"]).permute(0, 2, 3, 1)
    assert torch.equal(E.refine_edges(ad, image, working_size=512), ad)


def _disc_over(background_noise: float, sigma: float, n: int = 256, ws: int = 128):
    """A soft, wavy-rimmed disc over a background with uniform colour noise of that amplitude;
    its mask as a segmenter at ``ws`` gives it. ``(image, mask, alpha, band)``."""
    from benchmarks.matting_protocol import band_of, degrade, wavy_disc

    g = torch.Generator().manual_seed(0)
    alpha = wavy_disc(n, 6)
    fg = torch.tensor([0.7, 0.5, 0.4]).view(1, 3, 1, 1) + 0.03 * torch.rand(1, 3, n, n,
                                                                         generator=g)
    bg = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1) + background_noise * (
        torch.rand(1, 3, n, n, generator=g) - 0.5)
    image = (alpha * fg + (1 - alpha) * bg).clamp(0, 1).permute(0, 2, 3, 1)
    return image, degrade(alpha, ws, sigma, blur="gaussian"), alpha, band_of(alpha)


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_guided_filter_does_not_copy_background_texture(monkeypatch, sigma):
    """The final guided filter is weakened where the background is textured next to the
    contrast (it copied the texture into the alpha) and left whole over a flat one."""
    from benchmarks.matting_protocol import alpha_metrics

    def both(noise):
        image, mask, alpha, band = _disc_over(noise, sigma)
        now = E.refine_edges(mask, image, working_size=128)
        with monkeypatch.context() as m:
            m.setattr(E, "_FILTER_TEXTURE", float("inf"))  # the filter at full strength
            full = E.refine_edges(mask, image, working_size=128)
        sad = lambda x: alpha_metrics(x, alpha, band)["sad_band"]  # noqa: E731
        return now, full, sad(now) / sad(full)

    now, full, _ = both(0.0)
    assert (now - full).abs().max() < 1e-3  # measured 2e-4
    _, _, ratio = both(0.3)
    assert ratio < 0.9, ratio  # measured 0.80 (sigma 0.5), 0.84 (1)


def test_band_tiles_match_whole_image_colour_model():
    """The tiled colour model equals the whole-image one inside the band (away from borders)."""
    torch.manual_seed(0)
    m = F.interpolate((torch.rand(1, 1, 6, 6) > 0.5).float(), size=(96, 96), mode="bilinear")
    fg, bg = torch.tensor([0.9, 0.3, 0.2]).view(1, 3, 1, 1), torch.tensor([0.1, 0.2, 0.8])
    g = m * fg + (1 - m) * bg.view(1, 3, 1, 1) + 0.05 * torch.rand(1, 3, 96, 96)
    band = ((m > 0.01) & (m < 0.99)).float()
    tiled, tiled_gain, tiled_amount, tiled_texture = E._band_colour_alpha(g, m, band, 2.0)
    whole, whole_gain, whole_amount, whole_texture = E._multiscale_colour_alpha(g, m, 2.0, band)
    inner = band.bool().clone()
    inner[..., :12, :] = inner[..., -12:, :] = inner[..., :, :12] = inner[..., :, -12:] = False
    assert torch.equal(tiled_amount, whole_amount)
    assert torch.allclose(tiled[inner], whole[inner], atol=1e-4)
    assert torch.allclose(tiled_texture[inner], whole_texture[inner], atol=1e-4, rtol=1e-3)
    assert (tiled - m)[inner].abs().max() > 0.05  # it does act in the band


def test_matting_leaves_a_feathered_mask_to_the_guided_result():
    """A band over most of the image has no thin edge to solve for: beyond the pixel budget the
    matting step returns its input (bounded time), below it the solve changes the band."""
    torch.manual_seed(0)
    guide = torch.rand(1, 3, 96, 96)
    alpha = F.interpolate(torch.rand(1, 1, 6, 6), size=(96, 96), mode="bilinear")
    band = torch.ones_like(alpha)
    skipped = M._band_matting(guide, alpha, band, 2.0, 10, max_pixels=1000)
    assert torch.equal(skipped, alpha)
    solved = M._band_matting(guide, alpha, band, 2.0, 10)
    assert (solved - alpha).abs().max() > 1e-3


# -- NaN / inf: a clear error naming the frame, never a silent NaN frame ------------------------

def _with_nan(shape, frame, value=float("nan")):
    """``torch.rand(shape)`` with one ``value`` in frame ``frame`` (dim 0)."""
    m = torch.rand(shape)
    m[frame].view(-1)[37] = value
    return m


@pytest.mark.parametrize("op", [
    lambda m: R.feather(m, 3), lambda m: R.grow_shrink(m, 2), lambda m: R.grow_shrink(m, -2),
    lambda m: R.fill_holes(m), lambda m: R.remove_islands(m, 4), lambda m: R.edge_band(m, 4),
    lambda m: R.levels(m, 0.1, 0.9), lambda m: R.threshold(m),
    lambda m: T.temporal_smooth(m, "ema"), lambda m: T.temporal_smooth(m, "median"),
    lambda m: E.refine_edges(m, torch.rand(3, 16, 16, 3), working_size=8),
], ids=["feather", "grow", "shrink", "fill_holes", "remove_islands", "edge_band", "levels",
        "threshold", "ema", "median", "refine_edges"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_mask_is_refused_naming_the_frame(op, value):
    with pytest.raises(InputError, match=r"mask: frame 1 has .*(NaN|infinite)"):
        op(_with_nan((3, 16, 16), 1, value))


def test_non_finite_guide_is_refused_naming_the_frame():
    guide = _with_nan((2, 16, 16, 3), 1)
    with pytest.raises(InputError, match=r"guide: frame 1 has 1 NaN"):
        E.refine_edges(torch.rand(2, 16, 16), guide, working_size=8)
    with pytest.raises(InputError, match=r"frames: frame 1 has 1 NaN"):
        T.temporal_smooth(torch.rand(2, 16, 16), frames=guide)


@pytest.mark.parametrize("bad", [
    lambda: R.feather(torch.rand(1, 8, 8), float("inf")),
    lambda: R.feather(torch.rand(1, 8, 8), float("nan")),
    lambda: R.grow_shrink(torch.rand(1, 8, 8), float("inf")),
    lambda: E.refine_edges(torch.rand(1, 8, 8), torch.rand(1, 8, 8, 3), float("nan")),
])
def test_non_finite_parameters_are_refused(bad):
    with pytest.raises(InputError, match="finite"):
        bad()


# -- memory follows the image, not a radius, area or window ----------------------------------

def test_radii_beyond_the_image_give_the_clamped_result():
    """Past the image's extent a larger radius cannot change the result; it is clamped (so
    the memory does not grow with it), and the result is what the geometry says."""
    torch.manual_seed(0)
    m = torch.rand(2, 48, 64)
    h, w = m.shape[-2:]
    everything = m.amax(dim=(-2, -1), keepdim=True).expand_as(m)
    for r in (h + w - 2, 10_000, 10 ** 9):  # the octagon covers the frame from every pixel
        assert torch.equal(R.grow_shrink(m, r), everything), r
        assert torch.equal(R.grow_shrink(m, -r), m.amin(dim=(-2, -1), keepdim=True).expand_as(m))
    thin = torch.rand(1, 1, 1, 300)  # one row: the element's row |dx| <= r is all that matters
    assert torch.equal(dilate(thin, 10 ** 6), thin.amax().expand_as(thin))
    assert torch.equal(dilate(thin, 7), F.max_pool1d(F.pad(thin[0], (7, 7), value=-1.0), 15,
                                                      1)[None])
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    assert torch.equal(box_filter(x, 10 ** 9), box_filter(x, (h - 1, w - 1)))
    assert torch.allclose(box_filter(x, 10 ** 9), x.mean(dim=(-2, -1), keepdim=True).expand_as(x),
                          atol=1e-12)
    # Three passes of whole-frame means leave the frame's mean.
    assert torch.allclose(R.feather(m, 1e7), m.mean(dim=(-2, -1), keepdim=True).expand_as(m),
                          atol=1e-6)


@pytest.mark.parametrize("h, w", [(1, 30), (17, 1), (9, 13), (13, 40)])
def test_dilate_clipped_to_the_image_matches_the_octagon_by_brute_force(h, w):
    """The clipped decomposition (bounded padding) is the same octagon for radii around and far
    beyond the image's sides: ``{|dx| <= r, |dy| <= r, |dx| + |dy| <= r + s}``."""
    torch.manual_seed(h * w)
    x = torch.rand(2, 1, h, w)
    big = torch.finfo(x.dtype).max
    dy, dx = torch.meshgrid(torch.arange(-h, h + 1), torch.arange(-w, w + 1), indexing="ij")

    def windows(fill):  # [2, 1, h, w, 2h+1, 2w+1]: every offset, outside the image = fill
        return F.pad(x, (w, w, h, h), value=fill).unfold(2, 2 * h + 1, 1).unfold(3, 2 * w + 1, 1)

    for r in (1, 2, 5, 9, 14, 33, 80):
        s, _ = _octagon(r)
        se = (dx.abs() <= r) & (dy.abs() <= r) & (dx.abs() + dy.abs() <= r + s)
        assert torch.equal(dilate(x, r), windows(-big)[..., se].amax(-1)), r
        assert torch.equal(erode(x, r), windows(big)[..., se].amin(-1)), r


def test_huge_median_window_equals_the_clamped_window():
    """A window past 2n - 1 frames gives the median of the ``2n - 1`` window (see
    ``_windowed_median``): checked against the plain replicate-padded median of a wide window."""
    torch.manual_seed(0)
    m = torch.rand(5, 6, 7)
    n, k = m.shape[0], 20  # window 41 >> 2n - 1 = 9
    padded = torch.cat([m[:1].expand(k, -1, -1), m, m[-1:].expand(k, -1, -1)])
    wide = padded.unfold(0, 2 * k + 1, 1).median(dim=-1).values
    cut = 2.0  # no scene cut
    assert torch.equal(T.temporal_smooth(m, "median", window=2 * k + 1, cut_threshold=cut), wide)
    assert torch.equal(T.temporal_smooth(m, "median", window=2 * n - 1, cut_threshold=cut), wide)
    assert torch.equal(T.temporal_smooth(m, "median", window=10 ** 6 + 1, cut_threshold=cut),
                       wide)


def test_band_tiles_larger_than_the_image():
    band = torch.zeros(2, 1, 30, 50, dtype=torch.bool)
    band[1, 0, 29, 49] = True
    tiles = band_tiles(band, 10 ** 9, 10 ** 9)  # no grid of tiles x tiles is allocated
    assert (tiles.frame.tolist(), tiles.y.tolist(), tiles.x.tolist()) == ([1], [0], [0])


_REFINE_CALLS = """
from birefnet_core import edges as E, refine as R, temporal as T
from birefnet_core.filters import box_filter, band_tiles
torch.manual_seed(0)
m = torch.nn.functional.interpolate(torch.rand(1, 1, 6, 8), size=(48, 64), mode="bilinear")[:, 0]
g = torch.rand(1, 48, 64, 3)
v = torch.rand(5, 48, 64)
def calls(r, area, window, ws):
    R.grow_shrink(m, r); R.grow_shrink(m, -r); R.edge_band(m, r); R.feather(m, r)
    box_filter(m[None], r)
    R.fill_holes(m, area); R.remove_islands(m, area)
    T.temporal_smooth(v, "median", window=window)
    E.refine_edges(m, g, working_size=ws, mode="guided")
    E.refine_edges(m, g, working_size=ws, mode="matting")
    band_tiles(m[None] > 0.5, r)
"""


def test_peak_memory_follows_the_image_not_the_parameters():
    """On a 64x48 mask, radii of 10^4 px (grow_shrink alone once took over 5 GB), huge areas, a
    huge median window and a 1 px working size stay within a few MB of the small-parameter
    run. Measured in a fresh interpreter (torch allocations are invisible to tracemalloc)."""
    report = peak_growth("calls(10_000, 10 ** 9, 100_001, 1)",
                         warmup="calls(3, 10, 3, 16)", setup=_REFINE_CALLS)
    assert report["growth_mb"] < 32, report


# --------------------------------------------------------------------------------------------
# Issue 17 item 3: the guided filter's 3x3 solves (independent references)
# --------------------------------------------------------------------------------------------
def _near_two_colour_scene(h=256, w=256):
    """Dark hair strands against a smooth, 8-bit quantised sky: a near two-colour guide whose
    local colour covariance is close to rank 1, and a mask that lost detail at 1/4 size."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    sky = torch.stack([0.55 + 0.1 * yy, 0.70 + 0.08 * yy, 0.95 - 0.02 * xx])[None]
    hair = torch.tensor([0.08, 0.06, 0.05]).view(1, 3, 1, 1)
    a = ((torch.sin(xx * 90 + yy * 20) > 0.7) & (yy > 0.3)).float()[None, None]
    a = F.avg_pool2d(a, 3, 1, 1)
    g = ((a * hair + (1 - a) * sky) * 255).round() / 255
    small = F.interpolate(a, size=(h // 4, w // 4), mode="bilinear", antialias=True)
    mask = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return g, mask, a


def test_guided_filter_matches_kornia_on_the_interior():
    """kornia's guided_blur (float64, its own 3x3 algebra) is the reference away from the
    borders (the two differ only in border handling)."""
    kornia = pytest.importorskip("kornia")
    torch.manual_seed(0)
    g = torch.rand(2, 3, 48, 40, dtype=torch.float64)
    p = (torch.rand(2, 1, 48, 40, dtype=torch.float64) > 0.5).double()
    r, eps = 3, 1e-3
    ref = kornia.filters.guided_blur(g, p, 2 * r + 1, eps)
    got = guided_filter(g.float(), p.float(), r, eps).double()
    inner = (Ellipsis, slice(2 * r, -2 * r), slice(2 * r, -2 * r))
    assert torch.allclose(got[inner], ref[inner], atol=1e-4)


@pytest.mark.parametrize("channels, subsample", [(3, 1.0), (3, 2.5), (1, 2.0)])
def test_guided_filter_on_a_band_equals_the_whole_image_filter(channels, subsample):
    """``where=``: the coefficients solved on the band's tiles only give the whole-image
    filter's values everywhere in the band (image borders, two frames, a band that reaches the
    corners included), and ``src`` elsewhere."""
    torch.manual_seed(0)
    g = torch.rand(2, channels, 150, 170)
    p = F.interpolate(torch.rand(2, 1, 5, 6), size=(150, 170), mode="bilinear")
    where = torch.zeros(2, 1, 150, 170)
    where[0, :, 40:60, :] = 1  # across the frame, both side borders
    where[1, :, :5, :7] = 1  # a corner
    where[1, :, 140:, 100:] = 1  # the opposite corner
    whole = guided_filter(g, p, 5, 1e-3, subsample=subsample)
    band = guided_filter(g, p, 5, 1e-3, subsample=subsample, where=where)
    inside = where.bool()
    torch.testing.assert_close(band[inside], whole[inside], atol=1e-6, rtol=0)
    assert torch.equal(band[~inside], p[~inside])


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_fast_guided_filter_float32_matches_float64_on_a_near_two_colour_guide(eps):
    """Before the float64 solve, float32 coefficients blew up (finite, up to 100x) on this
    guide and the box mean spread them over (2r+1)^2 squares."""
    kornia = pytest.importorskip("kornia")
    g, mask, _ = _near_two_colour_scene()
    got = guided_filter(g, mask, 8, eps, subsample=4)
    assert got.dtype == torch.float32
    # Reference: kornia's guided filter in float64 at the reduced size, applied the same way.
    gs = F.interpolate(g.double(), size=(64, 64), mode="bilinear", antialias=True)
    ps = F.interpolate(mask.double(), size=(64, 64), mode="bilinear", antialias=True)
    ref_small = kornia.filters.guided_blur(gs, ps, 5, eps)
    assert ref_small.abs().max() < 2  # the float64 problem itself is well behaved
    ref = guided_filter(g.double(), mask.double(), 8, eps, subsample=4)
    assert (got.double() - ref).abs().max() < 1e-4
    assert got.abs().max() < 2


def test_refine_edges_has_no_square_blocks_on_a_near_two_colour_guide():
    """The refined mask in float32 equals the float64 computation (no blown-up windows), and
    it is closer to the true alpha than the upsampled mask."""
    g, mask, a = _near_two_colour_scene()
    image = g.permute(0, 2, 3, 1)  # an IMAGE [B, H, W, C]
    out32 = E.refine_edges(mask, image, working_size=64)
    out64 = E.refine_edges(mask.double(), image.double(), working_size=64)
    assert (out32.double() - out64).abs().max() < 1e-3
    assert (out32 - a).abs().sum() < (mask - a).abs().sum()


def test_sharpening_fit_follows_the_mask_blur():
    """The fitted unsharp amount grows with the mask's blur against the colour estimate (here
    the exact edge), one amount per group of rows, and falls back to the default where no
    pixel has colour evidence."""
    x = torch.arange(64, dtype=torch.float32) - 31.5
    edge = (x > 0).float().expand(1, 1, 64, 64)  # a hard vertical edge
    weight = torch.ones_like(edge)
    amounts, effective, gains = [], [], []
    for sigma in (0.5, 1.0, 2.0):
        prior = torch.sigmoid(x / sigma * 1.7).expand(1, 1, 64, 64)  # a soft edge, ~sigma wide
        blur = gaussian_blur(prior, 1.0)
        sharp, gain, amount = E._fit_sharpening(prior, blur, edge, weight)
        torch.testing.assert_close(sharp, (prior + amount * (prior - blur)).clamp(0, 1))
        amounts.append(amount.item())
        effective.append(((sharp - prior).abs().sum() / (prior - blur).abs().sum()).item())
        gains.append(gain.item())
    assert amounts[0] < amounts[1] <= amounts[2], amounts
    assert effective[0] < effective[1] < effective[2], effective  # clamped to 0..1
    assert gains[0] <= gains[1] < gains[2] < 1, gains  # the softer, the less it can undo
    # Two frames, tiles grouped by frame: the crisp frame's tiles get less than the soft one's.
    prior = torch.cat([torch.sigmoid(x / s * 1.7).expand(1, 1, 64, 64) for s in (0.5, 2.0)])
    tiles = torch.cat([prior, prior])  # rows 0, 2: frame 0 (crisp); 1, 3: frame 1 (soft)
    groups = torch.tensor([0, 1, 0, 1])
    sharp, gain, amount = E._fit_sharpening(tiles, gaussian_blur(tiles, 1.0),
                                            edge.expand(4, -1, -1, -1), torch.ones_like(tiles),
                                            groups, 2)
    assert gain.shape == (2,) and amount.shape == (2,)
    assert amount[0] < amount[1]  # one amount per frame
    assert torch.equal(sharp[0], sharp[2]) and torch.equal(sharp[1], sharp[3])
    # No colour evidence: the default amount, gain 1.
    prior = torch.sigmoid(x / 2.0).expand(1, 1, 64, 64)
    blur = gaussian_blur(prior, 1.0)
    sharp, gain, amount = E._fit_sharpening(prior, blur, edge, torch.zeros_like(prior))
    torch.testing.assert_close(sharp, (prior + E._SHARPEN * (prior - blur)).clamp(0, 1))
    assert gain.item() == 1.0 and amount.item() == E._SHARPEN


def test_a_crisp_mask_outweighs_a_noisy_colour_estimate():
    """Fused by inverse variances, the sharpened mask's variance follows the blur the fit
    finds, ``_PRIOR_VAR`` at amount ``_PRIOR_AMOUNT`` and in the square of the amount: a crisp
    mask keeps its edge against a colour estimate that is right on average but noisy (fur over
    a textured photo), a blurred one gives the colour model at least the share it has at
    ``_PRIOR_VAR``. Scored against the true edge over the soft band."""
    x = torch.arange(64, dtype=torch.float32) - 31.5
    truth = torch.sigmoid(x / 0.5).expand(1, 1, 64, 64)
    noise = 0.25 * torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    est = (truth + noise).clamp(0, 1)
    prec = torch.full_like(truth, 1 / E._PRIOR_VAR)  # a share of 1/2 at _PRIOR_VAR
    band = ((x.abs() < 6).float()).expand(1, 1, 64, 64)
    errors, amounts = {}, {}
    for sigma in (0.7, 3.0):
        prior = torch.sigmoid(x / sigma).expand(1, 1, 64, 64)
        blur = gaussian_blur(prior, 1.0)
        alpha, _, _ = E._sharpen_and_fuse(prior, blur, est, prec, band)
        sharp, _, amount = E._fit_sharpening(prior, blur, est, E._share(prec, E._PRIOR_VAR) * band)
        fixed = torch.lerp(sharp, est, 0.5)  # the estimate's share at _PRIOR_VAR, any blur
        errors[sigma] = [((a - truth).abs() * band).sum().item() for a in (alpha, fixed)]
        amounts[sigma] = a = amount.item()
        var = E._PRIOR_VAR * (a / E._PRIOR_AMOUNT) ** 2
        share = var / (var + E._PRIOR_VAR)  # prec = 1 / _PRIOR_VAR
        torch.testing.assert_close(alpha, torch.lerp(sharp, est, share))
    assert amounts[0.7] <= 1.0 and amounts[3.0] > E._PRIOR_AMOUNT, amounts  # 5: beyond 4
    crisp = errors[0.7]
    assert crisp[0] < 0.6 * crisp[1], crisp  # the crisp mask: much closer to the truth


def test_sharpening_fit_is_not_led_by_a_few_overconfident_pixels():
    """Every pixel with colour evidence weighs the same in the sharpening fit: a colour
    estimate that is exact on most of the edge but, on 3 of 64 rows, a hard step claimed with
    a far higher precision (fur over a photo, where the model is surest in the wrong places)
    does not pull the amount up. Weighted by the estimate's share, the fit took the largest
    amount (5) where 3 is the one closest to the truth."""
    x = torch.arange(64, dtype=torch.float32) - 31.5
    truth = torch.sigmoid(x / 1.5).expand(1, 1, 64, 64)
    prior = gaussian_blur(truth, 1.5)
    blur = gaussian_blur(prior, 1.0)
    few = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    few[..., :3, :] = True
    est = torch.where(few, (x > 0).float().expand(1, 1, 64, 64), truth)
    var = E._PRIOR_VAR  # shares ~1 on the few rows, 0.05 elsewhere
    prec = torch.where(few, torch.tensor(1e4 / var), torch.tensor(0.05 / 0.95 / var))
    band = (x.abs() < 8).float().expand(1, 1, 64, 64)
    _, _, amount = E._sharpen_and_fuse(prior, blur, est, prec, band)
    closest = min(E._SHARPEN_AMOUNTS, key=lambda a: (
        ((prior + a * (prior - blur)).clamp(0, 1) - truth).square() * band).sum().item())
    assert closest == 3.0 and amount.item() == closest, (amount, closest)


def test_colour_model_reads_a_rim_that_a_crisp_mask_calls_foreground(monkeypatch):
    """A segmenter's crisp mask calls a 3 px (1.5 working px) semi-transparent rim (alpha 0.7)
    foreground, over 0.9 on its inner half. The colour model takes its confident samples from
    the mask blurred as for the unsharp mask, so the rim stays out of the foreground's mean:
    its alpha is read exactly and the fit does not sharpen the mask. Counted as foreground,
    the rim pulls the mean toward the background: the estimate comes out too hard (0.74-0.82)
    and the fit, following it, takes the largest amount."""
    from benchmarks.matting_protocol import degrade

    n, radius = 128, 40.0
    yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    d = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2).sqrt()[None, None]
    rim = (d >= radius - 3) & (d < radius)
    alpha = torch.where(rim, torch.tensor(0.7), (d < radius).float())
    fg, bg = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.1, 0.3, 0.8])
    image = alpha * fg.view(1, 3, 1, 1) + (1 - alpha) * bg.view(1, 3, 1, 1)
    mask = degrade((d < radius).float(), n // 2, 0.5, blur="gaussian")  # scale 2
    assert mask[rim].max() > 0.95  # the mask calls the rim's inner half foreground
    seen = {}
    fuse = E._sharpen_and_fuse

    def spy(prior, blur, est, *args):
        seen["est"] = est
        return fuse(prior, blur, est, *args)

    monkeypatch.setattr(E, "_sharpen_and_fuse", spy)
    _, _, amount, _ = E._multiscale_colour_alpha(image, mask, 2.0)
    torch.testing.assert_close(seen["est"][rim], torch.full_like(seen["est"][rim], 0.7),
                               atol=2e-3, rtol=0)
    assert amount.item() <= 1.0, amount


def test_unknown_texture_takes_the_frames_mean_on_crisp_frames_only():
    """Where the colour model has no samples on one side the texture ratio is unknown: on a
    crisp frame it becomes that frame's mean over the band pixels that have one, per frame
    when tiles of two frames come together; a frame with a blurred mask keeps 0 there."""
    torch.manual_seed(0)
    texture = torch.rand(4, 1, 8, 8)
    ok = (torch.rand(4, 1, 8, 8) > 0.3).float()
    band = (torch.rand(4, 1, 8, 8) > 0.2).float()
    texture = texture * ok  # as _fb_model gives it: 0 where not ok
    groups = torch.tensor([0, 1, 0, 1])  # tiles 0, 2: frame 0 (crisp); 1, 3: frame 1
    amount = torch.tensor([E._CRISP_AMOUNT, E._CRISP_AMOUNT + 0.5])
    out = E._fill_texture(texture, ok, band, amount, groups, 2)
    known = (ok * band).bool()
    mean0 = torch.cat([texture[i][known[i]] for i in (0, 2)]).double().mean().item()
    for i in (0, 2):
        torch.testing.assert_close(out[i][ok[i] == 0],
                                   torch.full_like(out[i][ok[i] == 0], mean0))
    for i in range(4):
        torch.testing.assert_close(out[i][ok[i] == 1], texture[i][ok[i] == 1])
    for i in (1, 3):
        assert (out[i][ok[i] == 0] == 0).all()


def test_crisp_mask_of_fur_over_a_photo_meets_the_target(matting_dir):
    """The lemur's fur over the beach photo, the crisp mask (sigma 0.5) of a 512^2 segmenter:
    band SAD at most 0.6x the mask's (the issue's target). Before the unknown texture took the
    frame's mean, the final filter ran at full strength over the 90 % of the band without
    colour samples on both sides and copied the beach into the fur: 0.65 (now 0.59)."""
    from benchmarks.matting_protocol import (alpha_metrics, band_of, degrade, load_cases,
                                             pipeline_backgrounds)

    a, f, _, _ = load_cases(matting_dir)["lemur"]
    image = a * f + (1 - a) * pipeline_backgrounds(matting_dir, a.shape[-2:])["beach"]
    mask = degrade(a, 512, 0.5, blur="gaussian")
    out = E.refine_edges(mask, image.permute(0, 2, 3, 1), 512)
    band = band_of(a)
    ratio = alpha_metrics(out, a, band)["sad_band"] / alpha_metrics(mask, a, band)["sad_band"]
    assert ratio <= SPEC_TARGET, ratio


def test_final_filter_radius_is_chosen_per_frame():
    """The final guided filter runs at 1 working px on a frame marked crisp (refine_edges: an
    upsampled mask the sharpening fit finds crisp, amount <= 1) and at 2 on the others, frame
    by frame within one batch."""
    torch.manual_seed(0)
    guide = torch.rand(2, 3, 64, 64)
    alpha = F.interpolate(torch.rand(2, 1, 8, 8), size=(64, 64), mode="bilinear")
    band = torch.ones_like(alpha)
    scale = 2.0
    out = E._final_filter(guide, alpha, band, scale, [True, False])
    for i, radius in ((0, 2), (1, 4)):  # 1 and 2 working px at scale 2
        expected = guided_filter(guide[i:i + 1], alpha[i:i + 1], radius, eps=1e-5,
                                 subsample=scale, where=band[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], expected)
    assert not torch.allclose(out[0:1], E._final_filter(guide[0:1], alpha[0:1], band[0:1], scale,
                                                        [False]))


def test_refine_edges_treats_each_frame_of_a_batch_as_alone(matting_dir):
    """Per-frame decisions (the sharpening amount, the filter radius, whether a mask that was
    not upsampled is refined) come out the same in a batch as for each frame alone."""
    from benchmarks.matting_protocol import degrade, load_cases

    a, f, _, bgs = load_cases(matting_dir, lemur_size=340)["lemur"]
    frames = []
    for name, sigma in (("beach", 0.5), ("magenta", 2.0)):
        img = (a * f + (1 - a) * bgs[name]).permute(0, 2, 3, 1)
        frames.append((degrade(a, 128, sigma, blur="gaussian"), img))
    masks = torch.cat([m for m, _ in frames])
    images = torch.cat([g for _, g in frames])
    batch = E.refine_edges(masks[:, 0], images, working_size=128)
    for i, (m, g) in enumerate(frames):
        alone = E.refine_edges(m[:, 0], g, working_size=128)
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-5, rtol=0)
