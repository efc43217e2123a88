"""The IMAGE / MASK contract (``birefnet_core.layout``), which every op converts through."""

from __future__ import annotations

import pytest
import torch

from birefnet_core.errors import InputError
from birefnet_core.layout import (
    all_finite,
    broadcast_batch,
    check_images,
    fit_masks,
    images_to_bchw,
    join_alpha,
    masks_to_b1hw,
)


def test_every_image_form_means_the_same_rgb():
    rgb = torch.randint(0, 256, (2, 3, 5, 3), generator=torch.Generator().manual_seed(0))
    reference = (rgb.double() / 255).permute(0, 3, 1, 2)
    forms = {
        "uint8": rgb.to(torch.uint8),
        "float": rgb.float() / 255,
        "float16": (rgb.float() / 255).half(),
        "rgba": torch.cat([rgb.float() / 255, torch.rand(2, 3, 5, 1)], dim=-1),
    }
    for name, images in forms.items():
        out = images_to_bchw(images, dtype=torch.float32)
        assert out.shape == (2, 3, 3, 5) and out.dtype == torch.float32, name
        tol = 1e-3 if name == "float16" else 1e-6
        torch.testing.assert_close(out.double(), reference, atol=tol, rtol=0, msg=name)
    grey = torch.rand(2, 3, 5, 1)
    assert torch.equal(images_to_bchw(grey), grey.permute(0, 3, 1, 2).expand(-1, 3, -1, -1))
    assert images_to_bchw(grey.double()).dtype == torch.float64  # a float image keeps its dtype
    assert images_to_bchw(rgb[0].to(torch.uint8)).shape == (1, 3, 3, 5)  # one frame [H, W, C]


def test_a_three_pixel_high_image_is_not_taken_for_channels_first():
    """[B, H=3, W, C]: the channel axis is the last one, whatever the height."""
    images = torch.rand(2, 3, 7, 3)
    out = images_to_bchw(images)
    assert out.shape == (2, 3, 3, 7)
    assert torch.equal(out[:, :, 1, 4], images[:, 1, 4, :])


@pytest.mark.parametrize("images, message", [
    (torch.rand(3, 5, 3), r"\[B, H, W, C\].*got \(3, 5, 3\)"),
    (torch.rand(1, 3, 5, 2), r"C in \(1, 3, 4\)"),
    (torch.rand(1, 3, 5, 3) * 255, r"images: frame 0 has values up to .*divide them by 255"),
    (torch.full((2, 3, 5, 3), float("nan")), r"images: frame 0 has 45 NaN"),
    (torch.ones(1, 3, 5, 3, dtype=torch.int16), r"float 0\.\.1 or uint8, got torch\.int16"),
    ("a picture", r"got str"),
])
def test_bad_images_are_named(images, message):
    with pytest.raises(InputError, match=message):
        check_images(images)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_finite_agrees_with_isfinite_where_the_sum_misleads(dtype):
    big = torch.finfo(dtype).max
    cases = {
        "finite": torch.rand(3, 7, 5),
        "nan": torch.tensor([0.0, float("nan"), 1.0]),
        "+inf": torch.tensor([float("inf"), 0.5]),
        "+inf and -inf (sum NaN)": torch.tensor([float("inf"), 0.0, float("-inf")]),
        "finite, the sum overflows": torch.tensor([big, big, big], dtype=dtype),
        "finite, the sum overflows, then a NaN": torch.tensor([big, big, float("nan")],
                                                              dtype=dtype),
        "empty": torch.zeros(0),
    }
    for name, t in cases.items():
        t = t.to(dtype)
        assert all_finite(t) == bool(torch.isfinite(t).all()), name
    assert all_finite(cases["finite, the sum overflows"])
    assert not bool(torch.isfinite(cases["finite, the sum overflows"].sum()))  # the case is real
    assert all_finite(torch.tensor([1, 2, 3]))  # integers are finite


def test_masks_in_every_layout_and_back():
    for shape in [(5, 7), (2, 5, 7), (2, 1, 5, 7)]:
        mask = torch.rand(shape)
        m4, back = masks_to_b1hw(mask)
        assert m4.shape[1:] == (1, 5, 7)
        assert torch.equal(back(m4 * 2), mask * 2)
    m4, _ = masks_to_b1hw(torch.ones(2, 5, 7, dtype=torch.uint8))
    assert m4.dtype == torch.float32
    with pytest.raises(InputError, match=r"mask: expected shape .*got \[2, 5, 7, 3\]"):
        masks_to_b1hw(torch.rand(2, 5, 7, 3))
    with pytest.raises(InputError, match=r"mask: frame 1 has 1 NaN"):
        masks_to_b1hw(torch.tensor([[[0.0]], [[float("nan")]]]))


def test_batches_broadcast_from_one_only():
    assert broadcast_batch(torch.zeros(1, 4), 3, "masks").shape == (3, 4)
    assert broadcast_batch(torch.zeros(3, 4), 3, "masks").shape == (3, 4)
    with pytest.raises(InputError, match="masks batch has 2 frames but the image batch has 3"):
        broadcast_batch(torch.zeros(2, 4), 3, "masks")
    fitted = fit_masks(torch.ones(1, 1, 4, 4), (8, 6), 3)
    assert fitted.shape == (3, 1, 8, 6) and bool((fitted == 1).all())


def test_join_alpha_keeps_rgb_and_puts_the_mask_in_alpha():
    images = torch.rand(2, 4, 6, 4)
    masks = torch.rand(2, 4, 6)
    rgba = join_alpha(images, masks)
    assert torch.equal(rgba[..., :3], images[..., :3]) and torch.equal(rgba[..., 3], masks)
    grey = join_alpha(images[..., :1], masks)
    assert torch.equal(grey[..., 1], images[..., 0])
    as_uint8 = join_alpha((images * 255).round().to(torch.uint8), masks)
    torch.testing.assert_close(as_uint8[..., :3], (images[..., :3] * 255).round() / 255)


def test_composite_takes_the_grey_images_segment_takes():
    """Was: Composite refused [B,H,W,1], which Segment accepts."""
    from birefnet_core.composite import composite

    grey = torch.rand(2, 6, 8, 1)
    mask = torch.rand(2, 6, 8)
    out = composite(grey, mask, "#000000", foreground="none")
    same = composite(grey.expand(-1, -1, -1, 3), mask, "#000000", foreground="none")
    assert out.shape == (2, 6, 8, 3) and torch.equal(out, same)


def test_refine_edges_takes_a_three_pixel_high_image():
    """Was: a [B, 3, W, 3] guide was taken for channels-first and refused."""
    from birefnet_core.edges import refine_edges

    mask = torch.rand(1, 3, 40)
    guide = torch.rand(1, 3, 40, 3)
    out = refine_edges(mask, guide, working_size=(1, 10))
    assert out.shape == (1, 3, 40) and bool(torch.isfinite(out).all())
