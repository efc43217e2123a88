"""The matting-quality protocol of issue 7, shared by the benchmark and the small CI test.

Exact-ground-truth composites ``I = a F + (1 - a) B_new`` from ``../shared/data/matting``; the
alpha is degraded the way a segmenter with a fixed working size degrades it (squash-resize to
the working size with antialiasing, a slight blur, bilinear back to the image size); refined
alphas and composites are scored against the exact ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from birefnet_core.filters import dilate, gaussian_like_blur


def _load(path: Path, mode: str) -> torch.Tensor:
    a = np.asarray(Image.open(path).convert(mode), dtype=np.float32) / 255.0
    t = torch.from_numpy(a.copy())
    return t.unsqueeze(-1) if t.ndim == 2 else t  # [H, W, C]


def load_cases(matting_dir: Path, lemur_size: int | None = None) -> dict:
    """Return ``{name: (alpha [1,1,H,W], fg [1,3,H,W], image_old [1,3,H,W], backgrounds)}``.

    ``backgrounds`` maps a name to ``[1,3,H,W]``: ``beach`` (a photo) and ``magenta`` (a flat
    saturated colour, which exposes bleeding). ``lemur_size`` optionally downsizes the lemur
    (long side) for fast tests.
    """
    cases = {}
    d = Path(matting_dir)
    pm = d / "pymatting_test"
    a = _load(pm / "test_alpha.png", "L").permute(2, 0, 1)[None]
    f = _load(pm / "test_foreground.png", "RGB").permute(2, 0, 1)[None]
    b = _load(pm / "test_background.png", "RGB").permute(2, 0, 1)[None]
    img = a * f + (1 - a) * b
    cases["pymatting32"] = (a, f, img, _backgrounds(d, a.shape[-2:]))
    lm = d / "lemur"
    a = _load(lm / "lemur_alpha_fba.png", "L").permute(2, 0, 1)[None]
    f = _load(lm / "lemur_foreground.png", "RGB").permute(2, 0, 1)[None]
    img = _load(lm / "lemur.png", "RGB").permute(2, 0, 1)[None]
    if lemur_size is not None:
        h, w = a.shape[-2:]
        s = lemur_size / max(h, w)
        size = (round(h * s), round(w * s))
        rs = lambda t: F.interpolate(t, size=size, mode="bilinear", antialias=True,  # noqa: E731
                                     align_corners=False).clamp(0, 1)
        a, f, img = rs(a), rs(f), rs(img)
    cases["lemur"] = (a, f, img, _backgrounds(d, a.shape[-2:]))
    return cases


def _backgrounds(d: Path, size) -> dict:
    beach = _load(d / "lemur" / "beach.png", "RGB").permute(2, 0, 1)[None]
    beach = F.interpolate(beach, size=tuple(size), mode="bilinear", antialias=True,
                          align_corners=False).clamp(0, 1)
    magenta = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, *size).clone()
    return {"beach": beach, "magenta": magenta}


def degrade(alpha: torch.Tensor, working_size: int, blur_sigma: float = 1.0) -> torch.Tensor:
    """A segmenter's loss of detail: squash to ``working_size``\u00b2 (antialiased), blur, bilinear back."""
    h, w = alpha.shape[-2:]
    small = F.interpolate(alpha, size=(working_size, working_size), mode="bilinear",
                          antialias=True, align_corners=False)
    small = gaussian_like_blur(small, blur_sigma)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def band_of(alpha: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Where ``0 < a < 1`` (8-bit levels 1..254), dilated by ``radius`` px; bool ``[1,1,H,W]``."""
    unknown = ((alpha > 0.5 / 255) & (alpha < 254.5 / 255)).float()
    return dilate(unknown, radius) > 0.5


def _grad_mag(a: torch.Tensor) -> torch.Tensor:
    a = gaussian_like_blur(a, 1.0)
    gx = torch.zeros_like(a)
    gy = torch.zeros_like(a)
    gx[..., :, 1:-1] = (a[..., :, 2:] - a[..., :, :-2]) / 2
    gy[..., 1:-1, :] = (a[..., 2:, :] - a[..., :-2, :]) / 2
    return torch.sqrt(gx * gx + gy * gy)


def alpha_metrics(pred: torch.Tensor, gt: torch.Tensor, band: torch.Tensor) -> dict:
    """SAD (sum, /1000 like the matting papers), MSE and gradient error, whole image and band."""
    diff = (pred - gt).abs()
    ge = (_grad_mag(pred) - _grad_mag(gt)) ** 2
    return {
        "sad": diff.sum().item() / 1000, "sad_band": diff[band].sum().item() / 1000,
        "mse": (diff ** 2).mean().item(), "mse_band": (diff[band] ** 2).mean().item(),
        "grad": ge.sum().item() / 1000, "grad_band": ge[band].sum().item() / 1000,
    }


def composite_error(fg_est: torch.Tensor, fg: torch.Tensor, alpha: torch.Tensor,
                    background: torch.Tensor, band: torch.Tensor) -> float:
    """MSE over the band of ``a F_est + (1-a) B`` against the exact ``a F + (1-a) B``."""
    est = alpha * fg_est + (1 - alpha) * background
    ref = alpha * fg + (1 - alpha) * background
    err = ((est - ref) ** 2).mean(1, keepdim=True)
    return err[band].mean().item()
