"""Small test media: a random-weight checkpoint, image trees, synthetic videos (PyAV)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_checkpoint(folder: Path) -> Path:
    """A random-weight PVT-v2-b0 BiRefNet (the smallest) saved as an fp16 safetensors file."""
    import torch
    from safetensors.torch import save_file

    from birefnet_core.model import BiRefNet
    from birefnet_core.variants import Architecture

    torch.manual_seed(0)
    sd = BiRefNet(Architecture("pvt_v2_b0")).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "BiRefNet_lite-test.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(path))
    return path


def write_image(path: Path, size=(16, 16), seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def synthetic_frames(count: int, width: int, height: int):
    """A textured background with a bright square moving across it (uint8 ``[H, W, 3]``)."""
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        frame = np.empty((height, width, 3), np.uint8)
        frame[..., 0] = (xx * 255 // max(width - 1, 1))
        frame[..., 1] = (yy * 255 // max(height - 1, 1))
        frame[..., 2] = (40 + 5 * i) % 256
        s = max(4, min(width, height) // 3)
        x0 = (i * 3) % max(width - s, 1)
        y0 = (height - s) // 2
        frame[y0:y0 + s, x0:x0 + s] = (250, 240, 30)
        yield frame


def write_video(path: Path, count=24, size=(64, 48), rate=25, audio=True,
                codec="libx264", options=None) -> Path:
    """An H.264 ``.mp4`` (or ``codec``) of :func:`synthetic_frames`, with a sine AAC track;
    ``options``: the encoder's (default for x264: ``crf`` 18), e.g. a short GOP or a preset.
    Frames are generated one at a time: any length fits in memory."""
    import av

    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    if options is None:
        options = {"crf": "18"} if codec == "libx264" else {}
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=Fraction(rate), options=dict(options))
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        astream = None
        if audio:
            astream = out.add_stream("aac", rate=44100)
            astream.layout = "mono"
        for i, frame in enumerate(synthetic_frames(count, width, height)):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in vs.encode(vf):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        if astream is not None:
            samples = int(44100 * count / rate)
            t = np.arange(samples) / 44100
            pcm = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for start in range(0, samples, 1024):
                af = av.AudioFrame.from_ndarray(pcm[:, start:start + 1024], format="fltp",
                                                layout="mono")
                af.sample_rate = 44100
                af.pts = start
                for packet in astream.encode(af):
                    out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)
    return path


def decode(path: Path, fmt="rgb24"):
    """All frames of a video as one uint8 array ``[n, H, W, C]`` (PyAV's default decoder)."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format=fmt) for f in c.decode(c.streams.video[0])])


def need(module: str):
    """Import an optional package, or skip the calling test with the reason (under ``CI=true``
    fail: CI installs every extra and must never pass by skipping)."""
    import importlib

    import pytest
    from comfy_host import in_ci

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if in_ci():
            pytest.fail(f"{module} is not installed ({exc}), and CI must run every test",
                        pytrace=False)
        pytest.skip(f"{module} is not installed (pip install -e '.[test]' brings it)")


def make_tree(root: Path) -> dict:
    """~20 inputs in nested folders: same names in different sub-folders (kept apart by their
    relative paths), two sizes, two corrupt files, a text file that is no input. Returns
    ``{"good": [relative paths], "corrupt": [relative paths]}``."""
    good, corrupt = [], []
    for folder in ("", "a", "b", "a/deep"):
        for i in range(4):
            rel = Path(folder) / f"img_{i}.png"
            write_image(root / rel, size=(16, 16) if i % 2 else (24, 16), seed=len(good))
            good.append(rel.as_posix())
    write_image(root / "b" / "photo.jpg", size=(20, 12), seed=99)
    good.append("b/photo.jpg")
    data = (root / "a" / "img_1.png").read_bytes()
    (root / "a" / "cut_short.png").write_bytes(data[: len(data) // 2])
    (root / "b" / "deep_bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    corrupt += ["a/cut_short.png", "b/deep_bad.jpg"]
    (root / "a" / "readme.txt").write_text("not an input")
    return {"good": sorted(good), "corrupt": sorted(corrupt)}


def output_of(rel: str) -> str:
    """The output path (relative to -o) of an image input at ``rel``."""
    return rel.rsplit(".", 1)[0] + ".png"
