"""``birefnet_core.composite`` / ``foreground``: shapes, conventions, errors, references and the
quality target."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from birefnet_core import composite as C, foreground as FG, refine as R
from birefnet_core.errors import InputError
from memory_probe import peak_growth


def test_transparent_rgba_is_straight_alpha():
    img = torch.rand(2, 8, 10, 3)
    a = torch.rand(2, 8, 10)
    out = C.composite(img, a, "transparent", output_alpha=True, foreground="none")
    assert out.shape == (2, 8, 10, 4)
    assert torch.allclose(out[..., :3], img, atol=1e-6)  # straight: colours not multiplied
    assert torch.allclose(out[..., 3], a)


def test_solid_colour_matches_float64_reference():
    img = torch.rand(1, 6, 6, 3, dtype=torch.float64)
    a = torch.rand(1, 6, 6, dtype=torch.float64)
    out = C.composite(img, a, "#FF8000", foreground="none")
    bg = torch.tensor([1.0, 128 / 255, 0.0], dtype=torch.float64)
    ref = a[..., None] * img + (1 - a[..., None]) * bg
    assert torch.allclose(out, ref, atol=1e-12)


def test_semi_transparent_colour_over():
    img = torch.ones(1, 2, 2, 3)
    a = torch.zeros(1, 2, 2)
    out = C.composite(img, a, "#0000FF80", output_alpha=True, foreground="none")
    assert torch.allclose(out[..., 3], torch.full((1, 2, 2), 128 / 255))
    assert torch.allclose(out[0, 0, 0, :3], torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("fit", C.FIT_MODES)
def test_background_batches_and_fits(fit):
    img = torch.rand(3, 8, 12, 3)
    a = torch.rand(3, 8, 12)
    for n in (1, 3):
        bg = torch.rand(n, 5, 7, 3)  # a third size
        out = C.composite(img, a, bg, fit=fit, output_alpha=True, foreground="none")
        assert out.shape == (3, 8, 12, 4)
    with pytest.raises(InputError, match="one background for every frame"):
        C.composite(img, a, torch.rand(2, 5, 7, 3), fit=fit)


def test_mask_shapes_and_sizes():
    img = torch.rand(2, 16, 16, 3)
    for m in (torch.rand(16, 16), torch.rand(2, 1, 16, 16), torch.rand(1, 8, 8)):
        assert C.composite(img, m, "#000000").shape == (2, 16, 16, 3)


@pytest.mark.parametrize("text", ["#12345", "red", "#GG0000", "#1234567"])
def test_bad_hex_is_a_clear_error(text):
    with pytest.raises(InputError, match="#RRGGBB"):
        C.composite(torch.rand(1, 4, 4, 3), torch.rand(1, 4, 4), text)


def test_fit_contain_pads_transparent():
    out = C.fit_background(torch.ones(1, 3, 2, 8), (8, 8), "contain")
    assert out[0, 3, 0].eq(0).all() and out[0, 3, 4].eq(1).all()


def _numbered(h, w):
    """A ``[1, 3, h, w]`` background whose pixels are all different (red = index)."""
    return torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).expand(1, 3, h, w) / 100


def test_fit_center_places_the_background_unscaled():
    bg = _numbered(2, 3)
    out = C.fit_background(bg, (4, 6), "center")  # pad: rows 1-2, columns 1-3
    assert torch.equal(out[0, 0, 1:3, 1:4], bg[0, 0]) and torch.equal(out[0, 3, 1:3, 1:4],
                                                                      torch.ones(2, 3))
    assert out[0, :, 0].eq(0).all() and out[0, :, :, 0].eq(0).all() and out[0, :, 3].eq(0).all()
    big = _numbered(5, 7)
    out = C.fit_background(big, (2, 3), "center")  # crop: rows 1-2, columns 2-4
    assert torch.equal(out[0, 0], big[0, 0, 1:3, 2:5]) and out[0, 3].eq(1).all()


def test_fit_cover_scales_to_fill_and_crops_the_centre():
    bg = _numbered(4, 8)
    out = C.fit_background(bg, (4, 4), "cover")  # heights match: scale 1, columns 2-5
    assert torch.equal(out[0, 0], bg[0, 0, :, 2:6]) and out[0, 3].eq(1).all()
    # x2 enlargement of [a, b] is [a, .75a + .25b, .25a + .75b, b]; the middle two are kept.
    a, b = 0.2, 0.6
    two = torch.tensor([a, b]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = C.fit_background(two, (2, 2), "cover")
    assert torch.allclose(out[0, 0], torch.tensor([[.75 * a + .25 * b, .25 * a + .75 * b]] * 2))
    # A thin strip [0, 1] over 6x6: scaled 6x12, columns 3-8, each at (j + 0.5) / 6 - 0.5.
    strip = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = C.fit_background(strip, (6, 6), "cover")
    expected = ((torch.arange(3, 9) + 0.5) / 6 - 0.5).expand(6, 6)
    assert torch.allclose(out[0, 0], expected, atol=1e-6) and out[0, 3].eq(1).all()


def test_fit_cover_enlargement_matches_interpolate_then_crop():
    torch.manual_seed(0)
    bg = torch.rand(2, 4, 5, 9)
    for size in ((13, 11), (7, 40), (30, 30)):
        s = max(size[0] / 5, size[1] / 9)
        nh, nw = round(5 * s), round(9 * s)
        full = F.interpolate(bg, size=(nh, nw), mode="bilinear", align_corners=False)
        y, x = (nh - size[0]) // 2, (nw - size[1]) // 2
        expected = full[..., y:y + size[0], x:x + size[1]]
        assert torch.allclose(C.fit_background(bg, size, "cover"), expected, atol=1e-6), size


def test_fit_cover_of_a_thin_strip_needs_memory_for_the_output_only():
    """Covering 1000x1000 with a 1x64 strip used to scale it to 1000x64000 (1 GB) first."""
    report = peak_growth(
        "C.fit_background(torch.rand(1, 3, 1, 64), (1000, 1000), 'cover')",
        warmup="C.fit_background(torch.rand(1, 3, 1, 64), (10, 10), 'cover')",
        setup="from birefnet_core import composite as C")
    output_mb = 1000 * 1000 * 4 * 4 / 2 ** 20  # RGBA float32
    assert report["growth_mb"] < 6 * output_mb, report


# -- NaN / inf: a clear error naming the frame, never a silent NaN frame ------------------------

def test_non_finite_mask_image_or_background_is_refused_naming_the_frame():
    img, mask = torch.rand(3, 8, 8, 3), torch.rand(3, 8, 8)
    bad_mask = mask.clone()
    bad_mask[2, 4, 4] = float("nan")
    for method in ("multilevel", "blur_fusion", "none"):
        with pytest.raises(InputError, match=r"mask: frame 2 has 1 NaN"):
            C.composite(img, bad_mask, "#00FF00", foreground=method)
    bad_img = img.clone()
    bad_img[1, 0, 0, 1] = float("inf")
    with pytest.raises(InputError, match=r"image: frame 1 has 0 NaN and 1 infinite"):
        C.composite(bad_img, mask, "transparent")
    bg = torch.rand(3, 5, 5, 3)
    bg[0, 2, 2, 2] = float("nan")
    with pytest.raises(InputError, match=r"background: frame 0 has 1 NaN"):
        C.composite(img, mask, bg)
    a = mask[:, None].clone()
    a[1, 0, 3, 3] = float("-inf")
    with pytest.raises(InputError, match=r"alpha: frame 1 has 0 NaN and 1 infinite"):
        FG.estimate_foreground(img.permute(0, 3, 1, 2), a)


def test_estimate_foreground_consistent_and_despill():
    torch.manual_seed(0)
    fg_true = torch.rand(1, 3, 1, 1).expand(1, 3, 32, 32)
    bg_true = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    a = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    img = a * fg_true + (1 - a) * bg_true
    mid = a[0, 0, 0] > 0.2
    for method, tol in (("multilevel", 0.05), ("blur_fusion", 0.25)):  # the reference is rougher
        fg, bg = FG.estimate_foreground(img, a, method=method)
        assert (fg - fg_true)[..., mid].abs().max() < tol, method
    # Multilevel ends with least-squares updates that explain the image: each leaves
    # e * noise / (a^2 vF + (1-a)^2 vB + noise) of the residual e (noise 1e-5; here the local
    # variances make that < 1 %), so the composite is reproduced far below 8-bit precision
    # (measured 3e-5).
    fg, bg = FG.estimate_foreground(img, a, method="multilevel")
    assert (a * fg + (1 - a) * bg - img).abs().max() < 1e-3
    # Blur fusion does not reproduce the image (its B is a blur); it is checked against an
    # independent float64 implementation of the published two-pass formula instead.
    fg, bg = FG.estimate_foreground(img, a, method="blur_fusion")
    ref_fg, ref_bg = _blur_fusion_reference(img.double(), a.double())
    assert torch.allclose(fg.double(), ref_fg, atol=1e-5)
    assert torch.allclose(bg.double(), ref_bg, atol=1e-5)
    spilled = img.clone()
    out = FG.despill(spilled, a, bg_true, 1.0)
    assert (out[:, 1] - out[:, [0, 2]].mean(1)).max() <= \
        (spilled[:, 1] - spilled[:, [0, 2]].mean(1)).max()
    with pytest.raises(InputError, match="method"):
        FG.estimate_foreground(img, a, method="magic")


def _blur_fusion_reference(image, alpha, windows=(90, 6)):
    """Forte & Pitie's approximate fast foreground estimation as published (two passes of
    ``cv2.blur`` with 90 then 6 px windows, OpenCV's reflect-101 border), written out in
    float64 NumPy with SciPy's ``uniform_filter`` (``mode="mirror"`` is reflect-101, and an
    even window sits where OpenCV's default anchor puts it)."""
    from scipy.ndimage import uniform_filter

    img = image[0].permute(1, 2, 0).numpy()
    a = alpha[0, 0].numpy()[..., None]

    def box(x, w):
        return uniform_filter(x, size=(w, w, 1), mode="mirror")

    fg = bg = img
    for w in windows:
        blurred_a = box(a, w)
        fb = box(fg * a, w) / (blurred_a + 1e-5)
        bb = box(bg * (1 - a), w) / (1 - blurred_a + 1e-5)
        fg = (fb + a * (img - a * fb - (1 - a) * bb)).clip(0, 1)
        bg = bb
    back = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # noqa: E731
    return back(fg), back(bg)


def test_blur_fusion_uses_the_published_window_widths():
    """90 and 6 px windows, not radii 90 and 6 (181 and 13 px): checked against SciPy on a
    frame larger than the first window, with an asymmetric matte so the border counts."""
    torch.manual_seed(1)
    img = torch.rand(1, 3, 130, 150, dtype=torch.float64)
    a = torch.rand(1, 1, 130, 150, dtype=torch.float64) ** 3
    fg, bg = FG.blur_fusion_foreground(img.float(), a.float())
    ref_fg, ref_bg = _blur_fusion_reference(img, a)
    assert torch.allclose(fg.double(), ref_fg, atol=2e-5)
    assert torch.allclose(bg.double(), ref_bg, atol=2e-5)
    wide_fg, _ = FG.blur_fusion_foreground(img.float(), a.float(), windows=(181, 13))
    assert not torch.allclose(wide_fg.double(), ref_fg, atol=1e-2)


def test_foreground_quality_small(matting_dir):
    """Small-size version of the quality target: <= 0.5x blur-fusion's composite error."""
    from benchmarks.matting_protocol import band_of, composite_error, load_cases

    cases = load_cases(matting_dir, lemur_size=340)
    for name, (a, f, _, bgs) in cases.items():
        band = band_of(a)
        for src, bg in bgs.items():
            img = a * f + (1 - a) * bg
            new_bg = bgs["magenta" if src == "beach" else "beach"]
            ref = FG.blur_fusion_foreground(img, a)[0]
            est = FG.estimate_foreground(img, a)[0]
            e_ref = composite_error(ref, f, a, new_bg, band)
            e_est = composite_error(est, f, a, new_bg, band)
            assert e_est <= 0.5 * e_ref, (name, src, e_est / e_ref)


def _clipped_local_passes(image, alpha, fg, bg, radii, noise):
    """Plain reference for ``_local_fb_passes``: clipped box means over the whole crop."""
    from birefnet_core.filters import box_filter

    for r in radii:
        f2, b2 = (fg * fg).sum(1, keepdim=True), (bg * bg).sum(1, keepdim=True)
        m = box_filter(torch.cat([alpha, alpha * fg, (1 - alpha) * bg, alpha * f2,
                                  (1 - alpha) * b2], 1), r)
        mean_a = m[:, 0:1].clamp(0, 1)
        nf, nb = mean_a + 1e-6, 1 - mean_a + 1e-6
        fm, bm = m[:, 1:4] / nf, m[:, 4:7] / nb
        vf = (m[:, 7:8] / nf - (fm * fm).sum(1, keepdim=True)).clamp(min=0) / 3 + 1e-4
        vb = (m[:, 8:9] / nb - (bm * bm).sum(1, keepdim=True)).clamp(min=0) / 3 + 1e-4
        e = image - alpha * fm - (1 - alpha) * bm
        inv_s = 1 / (alpha * alpha * vf + (1 - alpha) ** 2 * vb + noise)
        fg = (fm + alpha * vf * inv_s * e).clamp(0, 1)
        bg = (bm + (1 - alpha) * vb * inv_s * e).clamp(0, 1)
    return fg, bg


@pytest.mark.parametrize("radii", [(4, 2), (3,), (1, 2, 5)])
def test_local_passes_valid_windows_match_clipped_reference(radii):
    """The passes compute only full windows: exact for the crop's centre (halo = sum(radii))."""
    torch.manual_seed(1)
    x = torch.rand(3, 10, 40, 40, dtype=torch.float64)
    x[:, 3:4] = 0.05 + 0.9 * x[:, 3:4]  # every window has weight on both sides
    args = (x[:, 0:3], x[:, 3:4], x[:, 4:7], x[:, 7:10], radii, 1e-5)
    fg, bg = FG._local_fb_passes(*args)
    hl = sum(radii)
    ref_f, ref_b = _clipped_local_passes(*args)
    assert fg.shape == (3, 3, 40 - 2 * hl, 40 - 2 * hl)
    assert torch.allclose(fg, ref_f[..., hl:-hl, hl:-hl], atol=1e-4)
    assert torch.allclose(bg, ref_b[..., hl:-hl, hl:-hl], atol=1e-4)


@pytest.mark.parametrize("size", [(37, 53), (64, 1), (130, 96)])
def test_chunked_upsample_and_correct_matches_full_size_formula(size):
    torch.manual_seed(2)
    H, W = size
    image, alpha = torch.rand(2, 3, H, W), torch.rand(2, 1, H, W)
    fg_s, bg_s = torch.rand(2, 3, 9, 7), torch.rand(2, 3, 9, 7)
    fg, bg = FG._upsample_and_correct(image, alpha, fg_s, bg_s, 0.05, chunk_pixels=300)
    up = lambda t: torch.nn.functional.interpolate(t, size=size, mode="bilinear",  # noqa: E731
                                                   align_corners=False)
    f, b = up(fg_s), up(bg_s)
    e = image - alpha * f - (1 - alpha) * b
    denom = 0.05 + alpha * alpha + (1 - alpha) ** 2
    assert torch.allclose(fg, (f + alpha * e / denom).clamp(0, 1), atol=1e-5)
    assert torch.allclose(bg, (b + (1 - alpha) * e / denom).clamp(0, 1), atol=1e-5)


def test_estimate_foreground_batch_and_memory_layout():
    """Frames are independent (thin bands) and a channels-last image gives the same result."""
    torch.manual_seed(3)
    H, W = 300, 420
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    dist = ((yy - H / 2) ** 2 + (xx - W / 2) ** 2).sqrt()
    a = torch.stack([((r - dist) / 3).clamp(0, 1) for r in (90, 120)])[:, None]
    img = torch.rand(2, 3, H, W)
    fg, bg = FG.estimate_foreground(img, a)
    for i in range(2):
        f1, b1 = FG.estimate_foreground(img[i:i + 1], a[i:i + 1])
        assert torch.allclose(fg[i:i + 1], f1, atol=1e-6) and torch.allclose(bg[i:i + 1], b1,
                                                                             atol=1e-6)
    f_cl, b_cl = FG.estimate_foreground(img.contiguous(memory_format=torch.channels_last), a)
    assert torch.allclose(fg, f_cl, atol=1e-6) and torch.allclose(bg, b_cl, atol=1e-6)


def test_uint8_image_is_taken_as_0_255_and_float_0_255_is_refused():
    """uint8 frames (as PIL/numpy give them) mean 0..255; a float IMAGE must be 0..1."""
    img = torch.rand(2, 6, 5, 3)
    as_uint8 = img.mul(255).round().to(torch.uint8)
    a = torch.rand(2, 6, 5)
    out = C.composite(as_uint8, a, "transparent", output_alpha=True, foreground="none")
    assert torch.allclose(out[..., :3], as_uint8.float() / 255, atol=1e-6), \
        "uint8 colours were not scaled to 0..1"
    over = C.composite(img, a, as_uint8[:1], foreground="none")
    expected = a[..., None] * img + (1 - a[..., None]) * as_uint8[:1].float() / 255
    assert torch.allclose(over, expected, atol=1e-5), "uint8 background not scaled to 0..1"
    scaled = img.clone()
    scaled[1] *= 255
    with pytest.raises(InputError, match=r"frame 1 .*divide.* by 255"):
        C.composite(scaled, a, "transparent", output_alpha=True)


def _hard_edge_over_green(n=96, working=24, sigma=1.0):
    """Flat blue cloth against flat green, a 1-px antialiased edge; the mask a segmenter at
    ``working`` px gives (squash, Gaussian blur, bilinear back): exact F, true and used alpha."""
    from benchmarks.matting_protocol import degrade

    yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    a = ((xx - 0.3 * yy - n / 3).clamp(-0.5, 0.5) + 0.5)[None, None].float()
    f = torch.tensor([0.15, 0.2, 0.45]).view(1, 3, 1, 1).expand(1, 3, n, n)
    green = torch.tensor([0.1, 0.75, 0.2]).view(1, 3, 1, 1)
    img = a * f + (1 - a) * green
    return img, f, a, degrade(a, working, sigma, blur="gaussian")


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_foreground_over_green_with_a_segmenter_mask(sigma):
    """Issue 17 item 1: a flat subject over flat green with the mask a segmenter gives (not
    the true alpha). Scored against the exact F (by construction) and the official
    blur-fusion: the previous settings (alpha trusted fully) were 1.5-2x blur-fusion here."""
    from benchmarks.matting_protocol import colour_error

    img, f, a, ad = _hard_edge_over_green(256, 64, sigma)
    est = FG.estimate_foreground(img, ad, working_size=64)[0]
    unknown = FG.estimate_foreground(img, ad)[0]  # windows not widened for the 4x upsampling
    old = FG.estimate_foreground(img, ad, alpha_error=0.0, alpha_outlier=0.0,
                                local_radii=(4, 2))[0]
    bf = FG.blur_fusion_foreground(img, ad)[0]
    e_est, e_unknown, e_old, e_bf = (colour_error(x, f, ad, a) for x in (est, unknown, old, bf))
    assert e_old > 1.4 * e_bf  # the finding, reproduced
    assert e_est < 0.8 * e_old, (e_est, e_old)
    # The 0.8x target at every sigma (measured 0.14 / 0.31 / 0.72); without the working size
    # the windows are the 1x ones and sigma 2 is worse than blur-fusion (1.14x, RESULTS_refine).
    assert e_est <= 0.8 * e_bf, (e_est / e_bf)
    assert e_est < e_unknown, (e_est, e_unknown)


def test_composite_widens_the_foreground_windows_by_the_masks_working_size():
    """The working size Segment records on its mask reaches the foreground estimate through
    composite(); a mask upsampled at most 2x (or untagged) keeps the default windows."""
    img, f, a, ad = _hard_edge_over_green(96, 24, 2.0)
    image = img.permute(0, 2, 3, 1)
    plain = C.composite(image, ad[:, 0], "#808080")
    tagged = C.composite(image, R.tag_working_size(ad[:, 0].clone(), 24), "#808080")
    explicit = C.composite(image, ad[:, 0], "#808080", working_size=24)
    assert torch.equal(tagged, explicit) and not torch.equal(tagged, plain)
    for ws in (48, 96, None):  # 2x, 1x, unknown: the default radii
        torch.testing.assert_close(FG.estimate_foreground(img, ad, working_size=ws)[0],
                                   FG.estimate_foreground(img, ad)[0], rtol=0, atol=0)


def test_alpha_error_term_matches_a_float64_least_squares_reference():
    """One pass of the local update with the alpha-error term equals the generalised least-
    squares solution computed with an explicit 3x3 inverse in float64."""
    torch.manual_seed(3)
    k, r = 9, 1
    image = torch.rand(1, 3, k, k, dtype=torch.float64)
    alpha = torch.rand(1, 1, k, k, dtype=torch.float64)
    fg = torch.rand(1, 3, k, k, dtype=torch.float64)
    bg = torch.rand(1, 3, k, k, dtype=torch.float64)
    va, noise = 0.01, 1e-5
    got_f, got_b = FG._local_fb_passes(image, alpha, fg, bg, (r,), noise, va)
    # Reference: window means by explicit loops, S = s I + va d d^T inverted with linalg.
    c = 2 * r + 1
    for y in range(r, k - r):
        for x in range(r, k - r):
            win = (0, slice(None), slice(y - r, y + r + 1), slice(x - r, x + r + 1))
            aw, fw, bw = alpha[win], fg[win], bg[win]
            ma = aw.mean()
            fm = ((aw * fw).sum((1, 2)) / (c * c) + 1e-6 * fg[0, :, y, x]) / (ma + 1e-6)
            bm = (((1 - aw) * bw).sum((1, 2)) / (c * c) + 1e-6 * bg[0, :, y, x]) / (1 + 1e-6 - ma)
            vf = ((aw * (fw * fw).sum(0, keepdim=True)).sum() / (c * c) / (ma + 1e-6)
                  - (fm * fm).sum()).clamp(min=0) / 3 + 1e-4
            vb = (((1 - aw) * (bw * bw).sum(0, keepdim=True)).sum() / (c * c) / (1 + 1e-6 - ma)
                  - (bm * bm).sum()).clamp(min=0) / 3 + 1e-4
            a0 = alpha[0, 0, y, x]
            e = image[0, :, y, x] - a0 * fm - (1 - a0) * bm
            d = fm - bm
            S = (a0 ** 2 * vf + (1 - a0) ** 2 * vb + noise) * torch.eye(3, dtype=torch.float64) \
                + va * torch.outer(d, d)
            q = torch.linalg.solve(S, e)
            ref_f = (fm + a0 * vf * q).clamp(0, 1)
            ref_b = (bm + (1 - a0) * vb * q).clamp(0, 1)
            assert torch.allclose(got_f[0, :, y - r, x - r], ref_f, atol=1e-9)
            assert torch.allclose(got_b[0, :, y - r, x - r], ref_b, atol=1e-9)
