"""The matting-quality protocol of issue 7, shared by the benchmark and the small CI test.

Exact-ground-truth composites ``I = a F + (1 - a) B_new`` from ``../shared/data/matting``; the
alpha is degraded the way a segmenter with a fixed working size degrades it (squash-resize to
the working size with antialiasing, a slight blur, bilinear back to the image size); refined
alphas and composites are scored against the exact ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from birefnet_core.filters import dilate, three_box_blur


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


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A true (sampled, separable, +-4 sigma, replicate border) Gaussian blur of ``[B,C,H,W]``."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(4 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    kx, ky = k.view(1, 1, 1, -1).expand(c, 1, 1, -1), k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), ky, groups=c)


def degrade(alpha: torch.Tensor, working_size: int, blur_sigma: float = 1.0,
            blur: str = "box3") -> torch.Tensor:
    """A segmenter's loss of detail: squash to ``working_size``\u00b2 (antialiased), blur, bilinear back.

    ``blur="box3"`` (issue 7's protocol, kept for its recorded figures) is three box filters
    whose radius is rounded to whole pixels (sigma 0.5 and 1 give the same sigma-1.4 blur);
    ``"gaussian"`` (issue 17) is a true Gaussian of ``blur_sigma`` working-size pixels.
    """
    h, w = alpha.shape[-2:]
    small = F.interpolate(alpha, size=(working_size, working_size), mode="bilinear",
                          antialias=True, align_corners=False)
    small = (gaussian_blur(small, blur_sigma) if blur == "gaussian"
             else three_box_blur(small, blur_sigma))
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def band_of(alpha: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Where ``0 < a < 1`` (8-bit levels 1..254), dilated by ``radius`` px; bool ``[1,1,H,W]``."""
    unknown = ((alpha > 0.5 / 255) & (alpha < 254.5 / 255)).float()
    return dilate(unknown, radius) > 0.5


def _grad_mag(a: torch.Tensor) -> torch.Tensor:
    a = three_box_blur(a, 1.0)
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


# --------------------------------------------------------------------------------------------
# Issue 17: the pipeline as a user's graph runs it (Segment -> Refine Mask -> Composite)
# --------------------------------------------------------------------------------------------
def _resize_to(t: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(t, size=tuple(size), mode="bicubic", align_corners=False).clamp(0, 1)


def wavy_disc(n: int, softness: float) -> torch.Tensor:
    """Alpha ``[1, 1, n, n]`` of a disc with a wavy rim, a sigmoid ramp ``n / softness`` px
    wide per unit of radius (a synthetic soft edge in every direction)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    radius = (xx ** 2 + yy ** 2).sqrt() + 0.03 * torch.sin(40 * torch.atan2(yy, xx))
    return ((0.6 - radius) * n / softness).sigmoid()[None, None]


def synthetic_portrait(n: int = 1536, seed: int = 1):
    """``(alpha, fg)`` ``[1,1,n,n]`` / ``[1,3,n,n]``: head and shoulders with smooth skin and
    clothes (2-px antialiased hard edges) and a fringe of thin hair strands (exact by
    construction; a stand-in for a portrait matte, none being in the shared data)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    head = (((xx - 0.5) / 0.18) ** 2 + ((yy - 0.4) / 0.24) ** 2) < 1
    body = (yy > 0.62) & ((((xx - 0.5) / 0.42) ** 2 + ((yy - 1.05) / 0.45) ** 2) < 1)
    a = F.avg_pool2d((head | body).float()[None, None], 3, 1, 1)[0, 0]
    for _ in range(120):
        ang = math.pi * (0.1 + 0.8 * torch.rand(1, generator=g).item())
        cx, cy = 0.5 - 0.2 * math.cos(ang), 0.4 - 0.27 * math.sin(ang)
        length = 0.04 + 0.05 * torch.rand(1, generator=g).item()
        width = 0.0006 + 0.001 * torch.rand(1, generator=g).item()
        dx, dy = -math.cos(ang), -math.sin(ang)
        px, py = xx - cx, yy - cy
        t = (px * dx + py * dy).clamp(0, length)
        dist = ((px - t * dx) ** 2 + (py - t * dy) ** 2).sqrt()
        a = torch.maximum(a, torch.exp(-(dist / width) ** 2) * 0.85)
    skin = torch.tensor([0.85, 0.62, 0.52]).view(1, 3, 1, 1)
    cloth = torch.tensor([0.15, 0.2, 0.45]).view(1, 3, 1, 1)
    hair = torch.tensor([0.25, 0.15, 0.08]).view(1, 3, 1, 1)
    shade = (0.85 + 0.15 * torch.cos((xx - 0.5) * 6))[None, None]
    lower = (yy > 0.62)[None, None]
    f = torch.where(lower, cloth, skin) * shade
    rim = ((yy < 0.3) | ((((xx - 0.5) / 0.18) ** 2 + ((yy - 0.4) / 0.24) ** 2) > 0.8))[None, None]
    f = torch.where(rim & ~lower, hair * shade, f)
    return a[None, None], f.clamp(0, 1)


def pipeline_cases(matting_dir: Path, portrait_size: int = 1536) -> dict:
    """``{name: (alpha [1,1,H,W], fg [1,3,H,W])}`` with exact ground truth: the lemur at its
    680 px and bicubically enlarged to 2048 px (still exact: a and F are enlarged together and
    the composite is built from them), the pymatting 32 px case, and :func:`synthetic_portrait`."""
    cases = load_cases(matting_dir)
    a, f, _, _ = cases["lemur"]
    out = {"lemur 680": (a, f)}
    h, w = a.shape[-2:]
    s = 2048 / max(h, w)
    size = (round(h * s), round(w * s))
    out["lemur 2048"] = (_resize_to(a, size), _resize_to(f, size))
    out["portrait (synthetic) %d" % portrait_size] = synthetic_portrait(portrait_size)
    return out


def pipeline_backgrounds(matting_dir: Path, size) -> dict:
    """Source backgrounds: ``beach`` (a photo), ``green`` (a flat green screen-like colour)."""
    return {"beach": _backgrounds(Path(matting_dir), size)["beach"],
            "green": torch.tensor([0.1, 0.75, 0.2]).view(1, 3, 1, 1).expand(1, 3, *size)}


def fractional(alpha: torch.Tensor) -> torch.Tensor:
    """Where ``0 < a < 1`` (8-bit levels 1..254)."""
    return (alpha > 0.5 / 255) & (alpha < 254.5 / 255)


def colour_error(fg_est: torch.Tensor, fg: torch.Tensor, alpha_used: torch.Tensor,
                 alpha: torch.Tensor) -> float:
    """The colour part of a composite's error with the alpha the user has: the mean over the
    fractional pixels (of the true or the used alpha) of ``|a_used (F_est - F)|^2`` (channel
    mean) = the composite over any new background minus the same composite with the true F.
    With the true alpha this is :func:`composite_error` restricted to ``0 < a < 1``."""
    sel = fractional(alpha) | fractional(alpha_used)
    err = ((alpha_used * (fg_est - fg)) ** 2).mean(1, keepdim=True)
    return err[sel].mean().item()
