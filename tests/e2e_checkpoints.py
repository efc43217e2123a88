"""Checkpoints, inputs and the shared server of the end-to-end tests on a real ComfyUI.

The models are real architectures in the formats users download: the lite fixture of
``../shared`` (Swin-T, trained-layout keys, fp16 safetensors) and the published Swin-L BiRefNet
with seeded random weights, written as fp32 safetensors and as a ``.pth`` whose keys carry the
``module._orig_mod.`` prefix that DDP + ``torch.compile`` training leaves. Inputs are small (a
96x64 image segmented at ``dynamic`` = 384x256) so the CPU spends seconds, not minutes.

A pytest plugin module: the end-to-end test modules name it in ``pytest_plugins`` so that they
share one ComfyUI server (session scope) instead of starting one each.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from comfy_host import ComfyServer, host_python, start_server

LITE_FIXTURE = "lite_fp16.safetensors"  # in ../shared/fixtures/birefnet: Swin-T, fp16
IMAGE_WH = (96, 64)
PREFIX = "module._orig_mod."  # DDP's ``module.`` around torch.compile's ``_orig_mod.``


# -- checkpoints ----------------------------------------------------------------------------------

def swin_l_state_dict(seed: int = 0) -> dict:
    """The state dict of the published Swin-L BiRefNet architecture with seeded random weights
    (float32, the official key names)."""
    import torch

    from birefnet_core.model import BiRefNet
    from birefnet_core.variants import Architecture

    torch.manual_seed(seed)
    return BiRefNet(Architecture("swin_v1_l")).state_dict()


def save_safetensors(state_dict: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def save_prefixed_pth(state_dict: dict, path: Path, prefix: str = PREFIX) -> Path:
    """``torch.save`` of a plain dict of tensors whose keys all start with ``prefix``: what a
    training script that wraps the model in DDP and ``torch.compile`` writes."""
    import torch

    torch.save({prefix + k: v for k, v in state_dict.items()}, str(path))
    return path


def install_model(server: ComfyServer, source: Path, name: str,
                  folder: str = "birefnet") -> Path:
    """Make ``source`` appear as ``models/<folder>/<name>`` of the server (a symbolic link, as
    many users keep one copy of their weights; ComfyUI follows it)."""
    target = server.base / "models" / folder / name
    if target.is_symlink() or target.exists():
        target.unlink()
    os.symlink(source, target)
    return target


# -- reference masks ------------------------------------------------------------------------------

def reference_mask(path: Path, rgb: np.ndarray, resolution: str,
                   max_megapixels: float) -> np.ndarray:
    """The mask the core computes for ``rgb`` (uint8 ``[H, W, 3]``) with the weights at ``path``,
    as ``BiRefNetSegment`` on a CPU host computes it (optimised model, precision auto = fp32,
    family from the file name, under inference mode), quantised like ``SaveImage`` writes alpha
    (``uint8(clip(255 * mask))``, truncated)."""
    import torch

    from birefnet_core.inference import predict_masks
    from birefnet_core.weights import load_model

    loaded = load_model(path, optimize=True)
    images = torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]  # as LoadImage makes them
    with torch.inference_mode():
        masks = predict_masks(loaded.model, images, family=loaded.info.family,
                              resolution=None if resolution == "auto" else resolution,
                              precision="auto", device="cpu", max_megapixels=max_megapixels)
    return np.clip(255.0 * masks[0].numpy(), 0, 255).astype(np.uint8)


# -- inputs ---------------------------------------------------------------------------------------

def synthetic_image(size_wh: tuple[int, int] = IMAGE_WH, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with something to segment: an ellipse over a colour gradient, plus
    noise (so that a transposed or shifted mask cannot match)."""
    w, h = size_wh
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([xx / w, yy / h, np.full_like(xx, 0.5)], axis=-1)
    inside = ((xx - 0.45 * w) / (0.22 * w)) ** 2 + ((yy - 0.55 * h) / (0.3 * h)) ** 2 < 1
    rgb[inside] = (0.9, 0.25, 0.1)
    rgb += np.random.RandomState(seed).normal(0, 0.04, rgb.shape).astype(np.float32)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def save_input(server: ComfyServer, name: str, rgb: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(rgb).save(server.base / "input" / name)
    return name


_MAKE_VIDEO = """
import sys, av, numpy as np
path, w, h, n, fps = sys.argv[1], *map(int, sys.argv[2:6])
with av.open(path, "w") as c:
    s = c.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    rng = np.random.RandomState(0)
    for i in range(n):
        a = (rng.rand(h, w, 3) * 255).astype(np.uint8)
        a[h // 4: 3 * h // 4, w // 4 + 2 * i: w // 2 + 2 * i] = 255
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
"""

_PROBE_VIDEO = """
import json, sys, av
with av.open(sys.argv[1]) as c:
    v = c.streams.video[0]
    frames = sum(1 for _ in c.decode(v))
    print(json.dumps({"width": v.width, "height": v.height, "frames": frames}))
"""


def make_video(path: Path, size_wh: tuple[int, int], frames: int, fps: int) -> Path:
    """An H.264 mp4 of ``frames`` noise frames with a white bar moving across, written with PyAV
    by the host's interpreter (PyAV is one of ComfyUI's requirements)."""
    subprocess.run([host_python(), "-c", _MAKE_VIDEO, str(path), *map(str, size_wh),
                    str(frames), str(fps)], check=True, capture_output=True, text=True)
    return path


def probe_video(path: Path) -> dict:
    """``{"width", "height", "frames"}`` of a video file, decoded with PyAV."""
    done = subprocess.run([host_python(), "-c", _PROBE_VIDEO, str(path)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout)


# -- prompt helpers -------------------------------------------------------------------------------

def status_messages(entry: dict) -> dict[str, list[dict]]:
    """A finished prompt's status messages by event name (``execution_error`` ...)."""
    out: dict[str, list[dict]] = {}
    for event, data in entry.get("status", {}).get("messages", []):
        out.setdefault(event, []).append(data)
    return out


def load_count(server: ComfyServer, name: str) -> int:
    """How often the server's log says our loader loaded ``name`` (it logs each load)."""
    return sum(1 for line in server.log().splitlines()
               if "BiRefNet: loaded" in line and f"file: {name}" in line)


# -- the shared server ----------------------------------------------------------------------------

def host_kernels() -> str:
    """``BIREFNET_KERNELS`` for the shared host: every op's default, as in this process, but the
    7x7 predictors through the FFT (which the host would choose by measurement for a photo on
    a CPU). So the host runs that form through every end-to-end test, and the checkpoint
    matrix holds it to this process's direct-form references (<= 1/255)."""
    from birefnet_core import kernels

    chosen = dict(kernels._DEFAULT, conv2d="fft")
    return ",".join(f"{op}={name}" for op, name in chosen.items())


@pytest.fixture(scope="session")
def e2e_server(tmp_path_factory):
    """One ComfyUI (``--cpu``, pinned frontend) for every end-to-end test module."""
    server = start_server(tmp_path_factory, "e2e", env={"BIREFNET_KERNELS": host_kernels()})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def lite_fixture(fixtures_dir) -> Path:
    """The real-architecture lite checkpoint (Swin-T, fp16 safetensors) of ``../shared``."""
    path = fixtures_dir / LITE_FIXTURE
    assert path.is_file(), f"{path} is missing from the shared fixtures"
    return path
