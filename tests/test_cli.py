"""The ``python -m birefnet_core`` command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from birefnet_core.cli import expand_inputs, main
from birefnet_core.model import BiRefNet
from birefnet_core.variants import Architecture


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    sd = BiRefNet(Architecture("pvt_v2_b0")).state_dict()
    path = tmp_path_factory.mktemp("models") / "BiRefNet_lite-test.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(path))
    return path


def _write_frames(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"frame_{i:04d}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_expand_inputs_folders_globs_and_printf_sequences(tmp_path):
    frames = _write_frames(tmp_path / "seq", [(8, 8)] * 11)
    by_folder = expand_inputs([str(frames)])
    assert [p.name for p in by_folder] == [f"frame_{i:04d}.png" for i in range(11)]
    assert expand_inputs([str(frames / "frame_%04d.png")]) == by_folder
    assert expand_inputs([str(frames / "frame_000*.png")]) == by_folder[:10]
    # Duplicates collapse; order of first appearance is kept.
    assert expand_inputs([str(by_folder[3]), str(frames)])[0] == by_folder[3]
    with pytest.raises(Exception, match="input not found"):
        expand_inputs([str(tmp_path / "missing.png")])


def test_remove_writes_one_mask_per_frame_at_its_size(checkpoint, tmp_path):
    frames = _write_frames(tmp_path / "in", [(48, 40), (48, 40), (40, 56)])
    out = tmp_path / "out"
    rc = main(["remove", str(checkpoint), str(frames), "-o", str(out), "--output", "mask",
               "--resolution", "64x64", "--suffix", "_mask", "-q"])
    assert rc == 0
    written = sorted(out.iterdir())
    assert [p.name for p in written] == [f"frame_{i:04d}_mask.png" for i in range(3)]
    sizes = [Image.open(p).size for p in written]
    assert sizes == [(48, 40), (48, 40), (40, 56)]
    assert all(Image.open(p).mode == "L" for p in written)


def test_info_and_list(checkpoint, capsys):
    assert main(["info", str(checkpoint)]) == 0
    text = capsys.readouterr().out
    assert "pvt_v2_b0.lite" in text and "1024x1024" in text
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "hr_matting" in listing and "BiRefNet_HR-matting.safetensors" in listing


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["info", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "birefnet_core", "list"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "general" in result.stdout


def test_rgba_and_composite_outputs(checkpoint, tmp_path):
    frames = _write_frames(tmp_path / "in", [(48, 40)])
    rgba_dir, comp_dir = tmp_path / "rgba", tmp_path / "comp"
    assert main(["remove", str(checkpoint), str(frames), "-o", str(rgba_dir),
                 "--resolution", "64x64", "-q"]) == 0
    rgba = Image.open(rgba_dir / "frame_0000.png")
    assert rgba.mode == "RGBA" and rgba.size == (48, 40)
    assert main(["remove", str(checkpoint), str(frames), "-o", str(comp_dir), "--output",
                 "composite", "--background", "#00ff00", "--resolution", "64x64", "-q"]) == 0
    comp = np.asarray(Image.open(comp_dir / "frame_0000.png"), dtype=np.float32) / 255
    alpha = np.asarray(rgba, dtype=np.float32)[..., 3] / 255
    assert comp.shape == (40, 48, 3)
    # Where the mask is empty, the composite is the green background.
    empty = alpha < 0.01
    if empty.any():
        assert np.allclose(comp[empty], [0, 1, 0], atol=0.02)


def test_composite_needs_a_background(checkpoint, tmp_path, capsys):
    frames = _write_frames(tmp_path / "in", [(32, 32)])
    assert main(["remove", str(checkpoint), str(frames), "-o", str(tmp_path / "o"),
                 "--output", "composite", "-q"]) == 2
    assert "--background" in capsys.readouterr().err


def test_compile_flag_compiles_the_fast_model(checkpoint, tmp_path, monkeypatch):
    """``--compile`` hands the loaded fast model to ``compile_for_inference`` (here with the
    plain eager backend: inductor takes minutes on a CPU) and writes the same masks."""
    import torch._dynamo

    from birefnet_core import optimize

    compiled = []

    def eager_compile(model, **kwargs):
        compiled.append(model)
        return real(model, backend="eager", **kwargs)

    real = optimize.compile_for_inference
    monkeypatch.setattr(optimize, "compile_for_inference", eager_compile)
    frames = _write_frames(tmp_path / "in", [(40, 48)])
    args = [str(checkpoint), str(frames), "--output", "mask", "--resolution", "64x64", "-q"]
    try:
        assert main(["remove", *args, "-o", str(tmp_path / "c"), "--compile"]) == 0
    finally:
        torch._dynamo.reset()
    assert len(compiled) == 1 and "compile" in compiled[0].optimizations
    assert main(["remove", *args, "-o", str(tmp_path / "f")]) == 0
    masks = [np.asarray(Image.open(tmp_path / d / "frame_0000.png")) for d in ("c", "f")]
    assert np.abs(masks[0].astype(int) - masks[1]).max() <= 1
    with pytest.raises(SystemExit):
        main(["remove", *args, "-o", str(tmp_path / "x"), "--compile", "--exact"])
