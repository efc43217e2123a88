"""Alpha compositing: a masked foreground over a transparent, solid-colour or image background.

Conventions: images are ComfyUI IMAGE tensors ``[B, H, W, C]`` (C = 3 or 4), 0..1; masks are
``[B, H, W]`` (or ``[H, W]`` / ``[B, 1, H, W]``), **1 = foreground**; RGBA results are
**straight** (not premultiplied) alpha. Internals work on ``[B, C, H, W]``. All ops are batched
and run on the input's device. The clean edge colours come from :mod:`.foreground`.

>>> img = torch.rand(2, 8, 8, 3); a = torch.ones(2, 8, 8)
>>> composite(img, a, background="#000000").shape
torch.Size([2, 8, 8, 3])
"""

from __future__ import annotations

import re

import torch

from .errors import InputError
from .foreground import FOREGROUND_METHODS, despill, estimate_foreground
from .layout import _resize, bilinear_taps, fit_masks, images_to_bchw, masks_to_b1hw
from .refine import working_size_of

__all__ = [
    "parse_hex_color",
    "fit_background",
    "composite",
    "FIT_MODES",
]

FIT_MODES = ("stretch", "cover", "contain", "center")
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")


def parse_hex_color(text: str) -> tuple[float, float, float, float]:
    """``"#RRGGBB"`` or ``"#RRGGBBAA"`` (the ``#`` optional) -> ``(r, g, b, a)`` in 0..1.

    >>> parse_hex_color("#FF000080")
    (1.0, 0.0, 0.0, 0.5019607843137255)
    """
    m = _HEX.match(str(text).strip())
    if not m:
        raise InputError(f"background colour {text!r} is not a hex colour: expected '#RRGGBB' or "
                         "'#RRGGBBAA', e.g. '#00FF00' for green or '#00000000' for transparent.")
    h = m.group(1)
    vals = [int(h[i:i + 2], 16) / 255.0 for i in range(0, len(h), 2)]
    return tuple(vals + [1.0] * (4 - len(vals)))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Backgrounds and compositing
# --------------------------------------------------------------------------------------------
def fit_background(background: torch.Tensor, size: tuple[int, int], mode: str = "cover",
                   ) -> torch.Tensor:
    """Fit a ``[N,C,h,w]`` background (C = 3 or 4) to ``size`` (H, W) -> ``[N,4,H,W]``.

    ``stretch`` resizes to the size; ``cover`` scales to fill and centre-crops; ``contain``
    scales to fit inside and pads; ``center`` places it unscaled in the middle (crop or pad).
    Padding is transparent (alpha 0); the 4th channel is straight alpha.

    >>> fit_background(torch.ones(1, 3, 2, 4), (4, 4), "contain")[0, 3, :, 0].tolist()
    [0.0, 1.0, 1.0, 0.0]
    """
    if mode not in FIT_MODES:
        raise InputError(f"fit mode {mode!r} is not one of {FIT_MODES}.")
    if background.shape[1] == 3:
        background = torch.cat([background, torch.ones_like(background[:, :1])], 1)
    H, W = size
    h, w = background.shape[-2:]
    if mode == "stretch":
        return _resize(background, (H, W))
    nh, nw = h, w
    if mode in ("cover", "contain"):
        s = max(H / h, W / w) if mode == "cover" else min(H / h, W / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
    # Centre: crop what overflows, pad what is missing.
    sy, sx = max(0, (nh - H) // 2), max(0, (nw - W) // 2)
    dy, dx = max(0, (H - nh) // 2), max(0, (W - nw) // 2)
    ch, cw = min(nh, H), min(nw, W)
    if (nh, nw) == (h, w):
        visible = background[:, :, sy:sy + ch, sx:sx + cw]
    elif nh >= h and nw >= w:
        # Enlarged (both sides scale alike): resample only the visible window. "cover" of a
        # thin strip would otherwise build a scaled copy far larger than image and background.
        visible = _upsampled_window(background, (nh, nw), (sy, sx), (ch, cw))
    else:  # reduced: the scaled copy is smaller than the background
        visible = _resize(background, (nh, nw))[:, :, sy:sy + ch, sx:sx + cw]
    out = background.new_zeros(background.shape[0], 4, H, W)
    out[:, :, dy:dy + ch, dx:dx + cw] = visible
    return out


def _upsampled_window(x: torch.Tensor, scaled: tuple[int, int], start: tuple[int, int],
                      size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, scaled, mode="bilinear")[..., y:y + h, x:x + w]`` for an enlargement
    (``scaled`` >= ``x``'s size), computed for the window only: memory follows the window.

    >>> import torch.nn.functional as F
    >>> x = torch.rand(1, 4, 3, 5)
    >>> full = F.interpolate(x, size=(7, 40), mode="bilinear", align_corners=False)
    >>> torch.allclose(_upsampled_window(x, (7, 40), (2, 9), (4, 6)), full[..., 2:6, 9:15])
    True
    """
    for dim, n_out, first, n in ((-2, scaled[0], start[0], size[0]),
                                 (-1, scaled[1], start[1], size[1])):
        i0, i1, lam = bilinear_taps(first, n, x.shape[dim], n_out, x.device, x.dtype)
        lam = lam.view(-1, 1) if dim == -2 else lam
        x = x.index_select(dim, i0).lerp_(x.index_select(dim, i1), lam)
    return x


def composite(image: torch.Tensor, mask: torch.Tensor, background="transparent",
              fit: str = "cover", output_alpha: bool = False, foreground: str = "multilevel",
              despill_strength: float = 0.0, return_foreground: bool = False,
              working_size=None):
    """Put the masked foreground of ``image`` over a new background.

    Args:
        image: IMAGE ``[B,H,W,C]`` (C = 1, 3 or 4; a 4th channel is ignored), 0..1 or uint8.
        mask: ``[B,H,W]`` / ``[H,W]`` / ``[B,1,H,W]``, **1 = foreground**. Resized bilinearly
            to the image if the sizes differ; a single mask is used for every frame.
        background: ``"transparent"``, a hex colour ``"#RRGGBB"`` / ``"#RRGGBBAA"``, or an IMAGE
            ``[N,h,w,3|4]`` with N = 1 (used for every frame) or N = B, fitted per ``fit``.
        output_alpha: True -> ``[B,H,W,4]`` straight RGBA; False -> ``[B,H,W,3]`` (transparent
            parts over black).
        foreground: ``"multilevel"`` / ``"blur_fusion"`` estimate clean foreground colours at
            the edges (no halo of the old background); ``"none"`` uses the image's colours.
        despill_strength: 0..1, remove the old background's colour cast at the edges.
        return_foreground: also return the estimated straight foreground ``[B,H,W,3]``.
        working_size: the size the mask was predicted at (for the foreground estimate's
            windows, :func:`~.foreground.estimate_foreground`); default: the size the
            segmentation recorded on ``mask`` (:func:`~.refine.working_size_of`), if any.

    >>> out = composite(torch.rand(1, 4, 4, 3), torch.ones(4, 4), "#00FF0080", output_alpha=True)
    >>> out.shape, out[..., 3].min().item()
    (torch.Size([1, 4, 4, 4]), 1.0)
    """
    if foreground not in FOREGROUND_METHODS:
        raise InputError(f"foreground method {foreground!r} is not one of {FOREGROUND_METHODS}.")
    img = images_to_bchw(image, "image")
    B, _, H, W = img.shape
    rgb = img[:, :3]
    m4, _ = masks_to_b1hw(mask)
    alpha = fit_masks(m4.to(device=rgb.device, dtype=rgb.dtype), (H, W), B).clamp(0, 1)

    if foreground == "none":
        fg, old_bg = rgb, rgb
    else:
        if working_size is None:
            working_size = working_size_of(mask)
        fg, old_bg = estimate_foreground(rgb, alpha, method=foreground,
                                         working_size=working_size)
    if despill_strength > 0:
        fg = despill(fg, alpha, old_bg, despill_strength)
    del old_bg  # (frame-sized)

    if isinstance(background, str):
        if background.strip().lower() == "transparent":
            bg = rgb.new_zeros(1, 4, 1, 1)
        else:
            bg = torch.tensor(parse_hex_color(background), dtype=rgb.dtype,
                              device=rgb.device).view(1, 4, 1, 1)
    elif isinstance(background, torch.Tensor):
        bgi = images_to_bchw(background, "background", alpha=True).to(device=rgb.device,
                                                                      dtype=rgb.dtype)
        if bgi.shape[0] not in (1, B):
            raise InputError(f"background batch has {bgi.shape[0]} frames but the image batch "
                             f"has {B}: pass one background for every frame or exactly {B}.")
        bg = fit_background(bgi, (H, W), fit)
    else:
        raise InputError(f"background: expected 'transparent', a hex colour or an IMAGE, got "
                         f"{type(background).__name__}.")

    # Straight-alpha "over": out_a = a + (1-a) ba; out_rgb = (a F + (1-a) ba B) / out_a.
    # Computed in place in the channels-last output (at 8K every full-size temporary is
    # 400 MB); without alpha, the premultiplied colour is the result (over black).
    out = rgb.new_empty(B, H, W, 4 if output_alpha else 3)
    out_rgb = out.permute(0, 3, 1, 2)[:, :3]
    behind = (1 - alpha) * bg[:, 3:4]  # the background's share of the result
    torch.mul(alpha, fg, out=out_rgb).addcmul_(behind, bg[:, :3])
    if output_alpha:
        out_a = behind.add_(alpha)
        seen = out_a > 1e-6
        out_rgb.div_(out_a.clamp(min=1e-6))
        torch.where(seen, out_rgb, fg, out=out_rgb)  # fully transparent: keep F's colour
        out[..., 3] = out_a[:, 0].clamp_(0, 1)
    out_rgb.clamp_(0, 1)
    if return_foreground:
        return out, fg.permute(0, 2, 3, 1).contiguous()
    return out
