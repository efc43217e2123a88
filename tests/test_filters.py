"""``filters.gaussian_blur`` against SciPy's Gaussian filter in float64 (the same truncated
kernel; borders normalised by the kernel's share inside the image), its box path for large
sigma against the variance it must have, and the tile crops' box means against torch's
``avg_pool2d``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birefnet_core import filters


@pytest.mark.parametrize("shape", [(2, 3, 41, 57), (1, 2, 4, 5), (1, 1, 7, 2), (1, 1, 1, 9)])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5, 6.0])
def test_gaussian_blur_matches_scipy(sigma, shape):
    """Images smaller than the kernel included (both ends of a line cut the kernel)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = filters.gaussian_blur(x, sigma)
    ones = np.ones(x.shape[-2:])
    inside = ndimage.gaussian_filter(ones, sigma, truncate=3.0, mode="constant")
    for b in range(shape[0]):
        for c in range(shape[1]):
            ref = ndimage.gaussian_filter(x[b, c].numpy(), sigma, truncate=3.0,
                                          mode="constant") / inside
            np.testing.assert_allclose(out[b, c].numpy(), ref, rtol=0, atol=1e-12)
    assert filters.gaussian_blur(x.float(), sigma).dtype == torch.float32


def test_gaussian_blur_edge_cases():
    x = torch.rand(1, 1, 3, 1)
    assert filters.gaussian_blur(x, 0) is x
    assert torch.allclose(filters.gaussian_blur(x, 5.0), x.mean().expand_as(x), atol=0.2)
    assert filters.gaussian_blur(torch.ones(1, 2, 5, 7), 4.0).allclose(torch.ones(1, 2, 5, 7))


def test_large_sigma_takes_the_box_path_with_the_right_variance():
    """Above GAUSSIAN_MAX_RADIUS the three box passes keep the cost flat; their impulse
    response must still have (nearly) the Gaussian's variance."""
    sigma = 3 * filters.GAUSSIAN_MAX_RADIUS / 3.0 + 4
    n = 8 * int(sigma) + 1
    impulse = torch.zeros(1, 1, 1, n, dtype=torch.float64)
    impulse[..., n // 2] = 1
    response = filters.gaussian_blur(impulse, sigma)[0, 0, 0]
    t = torch.arange(n, dtype=torch.float64) - n // 2
    assert response.sum().item() == pytest.approx(1.0)
    assert (response * t * t).sum().item() == pytest.approx(sigma ** 2, rel=0.1)


@pytest.mark.parametrize("width", [40, 300])  # banded products / partial sums
def test_inner_box_means_match_avg_pool(width):
    """Box means at several radii of a crop's inner part against torch's ``avg_pool2d`` (every
    window inside the input: no border rule involved), in float64."""
    torch.manual_seed(0)
    halo = 6
    x = torch.rand(3, 4, 30, width, dtype=torch.float64) - 0.5
    got = filters.inner_box_means(x.float(), (1, 3, 6), halo)
    for r, mean in zip((1, 3, 6), got):
        part = x[..., halo - r:x.shape[-2] - halo + r, halo - r:width - halo + r]
        ref = F.avg_pool2d(part, 2 * r + 1, stride=1)
        assert mean.shape == ref.shape == (3, 4, 30 - 2 * halo, width - 2 * halo)
        torch.testing.assert_close(mean.double(), ref, atol=1e-6, rtol=0)
