"""Issue 17 item 7: one name, one meaning for ``rgba`` in the CLI and the nodes.

``--output rgba`` is the Segment node's rgba (the image's own colours, alpha = the mask);
``--output cutout`` (the default) adds estimated foreground colours at the edges, like the
Composite node's transparent output.
"""

from __future__ import annotations

import numpy as np
import pytest
from media import need, write_checkpoint, write_video
from PIL import Image

from birefnet_core.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("models"))


def _png(path):
    return np.asarray(Image.open(path), dtype=np.float32) / 255


def test_rgba_keeps_the_image_colours_and_cutout_estimates_them(checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src / "f.png")
    image = _png(src / "f.png")
    outs = {}
    for kind in ("rgba", "cutout", None):
        out = tmp_path / str(kind)
        extra = ["--output", kind] if kind else []
        assert main(["remove", str(checkpoint), str(src), "-o", str(out), "--resolution",
                     "64x64", "-q", *extra]) == 0
        (png,) = sorted(out.glob("*.png"))
        outs[kind] = _png(png)
    rgba, cutout = outs["rgba"], outs["cutout"]
    assert rgba.shape == cutout.shape == (40, 48, 4)
    assert np.abs(rgba[..., :3] - image).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(rgba[..., 3], cutout[..., 3])
    # The random model's mask is soft: estimated colours differ from the image's somewhere.
    assert np.abs(cutout[..., :3] - image).max() > 2 / 255
    np.testing.assert_array_equal(outs[None], cutout)  # the default is the cut-out


def test_cutouts_widen_the_foreground_windows_by_the_working_size(checkpoint, tmp_path,
                                                                  monkeypatch):
    """The engine hands the size the masks were predicted at to the foreground estimate, as
    Composite reads it from Segment's mask: images and video frames (through the smoothing,
    which makes new mask tensors)."""
    from birefnet_core.batch import local

    seen = []
    render = local.render

    def recording(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("working_size"))
        return render(*args, **kwargs)

    monkeypatch.setattr(local, "render", recording)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 160, 3), dtype=np.uint8)).save(src / "f.png")
    assert main(["remove", str(checkpoint), str(src), "-o", str(tmp_path / "out"),
                 "--resolution", "64x64", "-q"]) == 0
    assert seen == [(64, 64)]
    need("av")
    seen.clear()
    video = write_video(tmp_path / "clip" / "v.mp4", count=6, size=(160, 128), audio=False)
    assert main(["remove", str(checkpoint), str(video.parent), "-o", str(tmp_path / "vout"),
                 "--resolution", "96x64", "--smooth", "ema", "-q"]) == 0
    assert seen and set(seen) == {(64, 96)}, seen
