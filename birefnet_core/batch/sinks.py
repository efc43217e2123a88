"""Sinks: rendered frames -> files, each complete under its final name or absent.

``render`` turns images and masks into what the user asked for (RGBA with straight alpha, a
mask with 1 = foreground, or a composite over a colour or an image); ``save_png`` writes one
frame atomically; :class:`FrameFolder` writes a PNG sequence into a hidden folder that takes
its final name only when the last frame is written (so an existing folder means a complete
sequence, and a re-run may skip it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from ..atomic import TEMPORARY_SUFFIX, atomic_write

OUTPUTS = ("rgba", "mask", "composite")


def render(kind: str, images, masks, background=None, estimate_foreground: bool = True,
           working_size=None):
    """The output frames for ``kind``: rgba ``[k,H,W,4]`` (straight alpha), mask ``[k,H,W]``
    (1 = foreground) or composite ``[k,H,W,3]`` over ``background``. ``working_size``: the
    size the masks were predicted at (the foreground estimate's windows, as Composite reads
    it from Segment's mask)."""
    if kind == "mask":
        return masks
    from ..composite import composite

    method = "multilevel" if estimate_foreground else "none"
    if kind == "rgba":
        return composite(images, masks, "transparent", output_alpha=True, foreground=method,
                         working_size=working_size)
    return composite(images, masks, background, foreground=method, working_size=working_size)


def to_uint8(frames):
    """Float 0..1 frames -> uint8 (rounded), a new tensor."""
    import torch

    return frames.clamp(0, 1).mul(255).round_().to(torch.uint8)


def png_bytes(frame) -> bytes:
    """One rendered frame (``[H,W]``, ``[H,W,3]`` or ``[H,W,4]`` float 0..1, or uint8) as PNG."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    data = frame if frame.dtype == torch.uint8 else to_uint8(frame)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(data.numpy())).save(buf, format="PNG")
    return buf.getvalue()


def save_png(frame, path: Path) -> None:
    """Write a PNG; it appears under ``path`` only once complete (see :mod:`..atomic`)."""
    import numpy as np
    import torch
    from PIL import Image

    data = frame if frame.dtype == torch.uint8 else to_uint8(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        Image.fromarray(np.ascontiguousarray(data.numpy())).save(f, format="PNG")


def frame_name(index: int) -> str:
    return f"frame_{index:06d}.png"


@contextlib.contextmanager
def atomic_folder(path: Path):
    """A hidden folder beside ``path`` (``.NAME.<random>.part``) that replaces ``path`` when
    the ``with`` block completes; removed if it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():  # --overwrite: the old folder goes once the new one is in place
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old{TEMPORARY_SUFFIX}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
