"""The ``python -m birefnet_core`` command line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from media import write_checkpoint
from PIL import Image

from birefnet_core.batch import MANIFEST_NAME
from birefnet_core.batch import Job, chunks_of_same_size, expand_inputs
from birefnet_core.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("models"))


def _outputs(folder):
    """The files a run wrote in ``folder``, less its manifest."""
    return sorted(p for p in folder.iterdir() if p.name != MANIFEST_NAME)


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
    written = _outputs(out)
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


def _png(path):
    return np.asarray(Image.open(path), dtype=np.float32) / 255


@pytest.mark.parametrize("foreground", ["estimated", "original"])
def test_rgba_and_composite_outputs(checkpoint, tmp_path, foreground):
    """The composite over green is the RGBA cut-out's straight colours over green:
    ``a F + (1 - a) G``, with F the estimated foreground (or, with --no-foreground, the input).
    """
    frames = _write_frames(tmp_path / "in", [(48, 40)])
    rgba_dir, comp_dir = tmp_path / "rgba", tmp_path / "comp"
    extra = ["--no-foreground"] if foreground == "original" else []
    assert main(["remove", str(checkpoint), str(frames), "-o", str(rgba_dir),
                 "--resolution", "64x64", "-q", *extra]) == 0
    rgba = Image.open(rgba_dir / "frame_0000.png")
    assert rgba.mode == "RGBA" and rgba.size == (48, 40)
    assert main(["remove", str(checkpoint), str(frames), "-o", str(comp_dir), "--output",
                 "composite", "--background", "#00ff00", "--resolution", "64x64", "-q",
                 *extra]) == 0
    comp = _png(comp_dir / "frame_0000.png")
    cut = _png(rgba_dir / "frame_0000.png")
    alpha = cut[..., 3:]
    assert comp.shape == (40, 48, 3)
    # The random test model's mask is soft (about 0.5 here): both terms carry weight.
    assert 0.1 < alpha.mean() < 0.9, alpha.mean()
    fg = cut[..., :3]
    if foreground == "original":
        assert np.abs(fg - _png(frames / "frame_0000.png")).max() <= 0.5 / 255 + 1e-6
    expected = alpha * fg + (1 - alpha) * np.array([0.0, 1.0, 0.0], dtype=np.float32)
    # Each of the three 8-bit values (F, a, the composite) carries up to half a level of
    # rounding: 1.5 levels in all.
    assert np.abs(comp - expected).max() <= 1.5 / 255 + 1e-6, np.abs(comp - expected).max()


def test_chunks_are_sized_in_bytes(tmp_path):
    """Frames are grouped by size, as many as fit ``max_bytes`` (at least one), at most
    ``max_frames``; an unreadable frame is reported and left out."""
    frames = _write_frames(tmp_path / "in", [(16, 16)] * 7 + [(8, 16)] * 2 + [(64, 64)])
    (frames / "frame_0004.png").write_bytes(b"not a png")
    jobs = [Job(p, tmp_path / "out" / p.name) for p in sorted(frames.glob("*.png"))]
    frame_bytes = 16 * 16 * 3 * 4  # float32 RGB
    errors = []

    def sizes(max_bytes, max_frames=None):
        errors.clear()
        chunks = chunks_of_same_size(jobs, max_bytes, lambda job, exc: errors.append(job),
                                     max_frames=max_frames)
        out = []
        for group, images in chunks:
            assert images.dtype == torch.float32 and images.shape[0] == len(group)
            out.append((len(group), tuple(images.shape[1:3])))
        return out

    assert sizes(3 * frame_bytes) == [(3, (16, 16)), (3, (16, 16)), (2, (16, 8)), (1, (64, 64))]
    assert [job.source.name for job in errors] == ["frame_0004.png"]
    assert sizes(3 * frame_bytes, max_frames=2) == [(2, (16, 16))] * 3 + [(2, (16, 8)),
                                                                          (1, (64, 64))]
    assert sizes(1) == [(1, (16, 16))] * 6 + [(1, (16, 8))] * 2 + [(1, (64, 64))]
    assert sizes(1 << 30) == [(6, (16, 16)), (2, (16, 8)), (1, (64, 64))]
    group, images = next(chunks_of_same_size(jobs[:1], 1 << 30, None))
    reference = np.asarray(Image.open(jobs[0].source), dtype=np.float32) / 255
    assert np.array_equal(images[0].numpy(), reference)


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


# -- where outputs go (never over an input, never two onto one) ---------------------------------

def _remove(checkpoint, *args):
    """Run ``remove`` with fast settings (mask output, 64x64 working size, the exact network:
    no optimisation pass at load, quiet)."""
    return main(["remove", str(checkpoint), *map(str, args), "--output", "mask", "--exact",
                 "--resolution", "64x64", "-q"])


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_folder_equal_to_the_input_folder_never_overwrites_inputs(checkpoint, tmp_path,
                                                                        capsys):
    frames = _write_frames(tmp_path / "photos", [(16, 16)] * 2)
    before = _snapshot(frames)
    assert _remove(checkpoint, frames, "-o", frames) == 2
    err = capsys.readouterr().err
    assert _snapshot(frames) == before, "an input file was modified or a file was added"
    assert "error:" in err and "frame_0000.png" in err and "Traceback" not in err, err


def test_same_names_in_two_folders_keep_their_folders(checkpoint, tmp_path):
    for name in ("a", "b"):
        _write_frames(tmp_path / "in" / name, [(16, 16)])
    out = tmp_path / "out"
    assert _remove(checkpoint, tmp_path / "in" / "a", tmp_path / "in" / "b", "-o", out) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a/frame_0000.png", "b/frame_0000.png"]


def test_one_folder_keeps_flat_names_and_loose_files_keep_their_common_parent(checkpoint,
                                                                             tmp_path):
    _write_frames(tmp_path / "in" / "x", [(16, 16)] * 2)
    _write_frames(tmp_path / "in" / "y", [(16, 16)])
    assert _remove(checkpoint, tmp_path / "in" / "x", "-o", tmp_path / "flat") == 0
    assert [p.name for p in _outputs(tmp_path / "flat")] == [
        "frame_0000.png", "frame_0001.png"]
    assert _remove(checkpoint, tmp_path / "in" / "x" / "frame_0001.png",
                   tmp_path / "in" / "y" / "frame_0000.png", "-o", tmp_path / "loose") == 0
    assert sorted(p.relative_to(tmp_path / "loose").as_posix()
                  for p in (tmp_path / "loose").rglob("*.png")) == [
        "x/frame_0001.png", "y/frame_0000.png"]


def test_two_inputs_onto_one_output_are_refused(checkpoint, tmp_path, capsys):
    frames = _write_frames(tmp_path / "in", [(16, 16)])
    Image.open(frames / "frame_0000.png").save(frames / "frame_0000.jpg")
    assert _remove(checkpoint, frames, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "frame_0000.jpg" in err and "frame_0000.png" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_existing_outputs_are_kept_unless_overwrite(checkpoint, tmp_path, capsys):
    frames = _write_frames(tmp_path / "in", [(16, 16)] * 3)
    out = tmp_path / "out"
    assert _remove(checkpoint, frames, "-o", out) == 0
    capsys.readouterr()
    marker = out / "frame_0001.png"
    Image.new("L", (4, 4), 7).save(marker)  # a file the next run must not touch
    kept = marker.read_bytes()
    assert _remove(checkpoint, frames, "-o", out) == 0
    assert marker.read_bytes() == kept
    assert "done 0, skipped 3, failed 0" in capsys.readouterr().err
    assert _remove(checkpoint, frames, "-o", out, "--overwrite") == 0
    assert Image.open(marker).size == (16, 16)
    assert "done 3, skipped 0, failed 0" in capsys.readouterr().err


def test_outputs_of_an_earlier_run_into_the_input_folder_are_not_inputs(checkpoint, tmp_path,
                                                                       capsys):
    frames = _write_frames(tmp_path / "in", [(16, 16)] * 2)
    assert _remove(checkpoint, frames, "-o", frames, "--suffix", "_mask") == 0
    capsys.readouterr()
    assert _remove(checkpoint, frames, "-o", frames, "--suffix", "_mask") == 0
    assert "done 0, skipped 2, failed 0" in capsys.readouterr().err
    assert not list(frames.glob("*_mask_mask.png"))


# -- one bad file does not stop the others ------------------------------------------------------

def test_a_corrupt_image_is_reported_and_the_rest_is_written(checkpoint, tmp_path, capsys):
    frames = _write_frames(tmp_path / "in", [(16, 16)] * 3)
    data = (frames / "frame_0001.png").read_bytes()
    (frames / "frame_0001.png").write_bytes(data[: len(data) // 2])  # truncated PNG
    (frames / "frame_0003.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    assert _remove(checkpoint, frames, "-o", out) == 1
    err = capsys.readouterr().err
    assert [p.name for p in _outputs(out)] == ["frame_0000.png", "frame_0002.png"]
    failures = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failures) == 2 and "frame_0001.png" in failures[0] and \
        "frame_0003.jpg" in failures[1], err
    assert "done 2, skipped 0, failed 2" in err and "Traceback" not in err, err


# -- interrupted runs -----------------------------------------------------------------------------

def test_an_interrupted_write_leaves_nothing_under_the_final_name(checkpoint, tmp_path,
                                                                 monkeypatch, capsys):
    """Ctrl-C while the first PNG is being written: the half-written file must not exist
    under its final name (a re-run would take it as done), and the run exits 130."""
    frames = _write_frames(tmp_path / "in", [(16, 16)] * 2)
    out = tmp_path / "out"
    real_save = Image.Image.save

    def interrupted_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        if isinstance(fp, (str, os.PathLike)):
            os.truncate(fp, 33)  # the 33-byte PNG a killed run used to leave
        else:
            fp.flush()
            fp.truncate(33)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    assert _remove(checkpoint, frames, "-o", out) == 130
    err = capsys.readouterr().err
    assert list(out.iterdir()) == [], "a partial output was left behind"
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    assert "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_in_a_subprocess_exits_130_and_keeps_finished_outputs(checkpoint, tmp_path):
    import signal
    import time

    count = 200
    frames = _write_frames(tmp_path / "in", [(32, 32)] * count)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "birefnet_core", "remove", str(checkpoint), str(frames), "-o",
         str(out), "--resolution", "64x64", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A runner that starts pytest in the background may hand down SIGINT ignored; Python
        # then never turns it into KeyboardInterrupt. The user's Ctrl-C is never ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and list(out.glob("*.png"))):
            assert proc.poll() is None, f"the run ended before any output: {proc.communicate()}"
            assert time.monotonic() < deadline, "no output after 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted"), err
    assert "Traceback" not in err, err
    outputs = _outputs(out)
    assert 0 < len(outputs) < count, f"{len(outputs)} outputs: not interrupted mid-run?"
    for path in outputs:
        assert path.name.startswith("frame_") and path.suffix == ".png", f"leftover {path.name}"
        with Image.open(path) as im:
            im.load()
            assert im.mode == "RGBA" and im.size == (32, 32), path.name


# -- user errors: one `error:` line, exit code 2 ---------------------------------------------------

def _unavailable_cuda():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "cuda" if count == 0 else f"cuda:{count}"


@pytest.mark.parametrize("case, hint", [
    ("background", "#RRGGBB"),
    ("device", "--device cpu"),
    ("output_is_a_file", "is a file"),
    ("output_under_a_file", "cannot create"),
    ("resolution", "WIDTHxHEIGHT"),
])
def test_user_errors_exit_2_without_a_traceback(checkpoint, tmp_path, capsys, case, hint):
    frames = _write_frames(tmp_path / "in", [(16, 16)])
    (tmp_path / "taken.png").write_bytes(b"a file")
    extra = {
        "background": ["-o", tmp_path / "out", "--output", "composite", "--background", "red"],
        "device": ["-o", tmp_path / "out", "--device", _unavailable_cuda()],
        "output_is_a_file": ["-o", tmp_path / "taken.png"],
        "output_under_a_file": ["-o", tmp_path / "taken.png" / "sub"],
        "resolution": ["-o", tmp_path / "out", "--resolution", "64by64"],
    }[case]
    rc = main(["remove", str(checkpoint), str(frames), *map(str, extra), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error:") and hint in err and "Traceback" not in err, err


def test_unwritable_output_folder(checkpoint, tmp_path, capsys, monkeypatch):
    """The OS refusing to create a file in -o (simulated: root may write anywhere)."""
    from birefnet_core import atomic

    frames = _write_frames(tmp_path / "in", [(16, 16)])
    out = tmp_path / "locked"
    out.mkdir()

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "_open_temporary", refuse)
    assert main(["remove", str(checkpoint), str(frames), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(out) in err and "not writable" in err, err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into a read-only folder anyway")
def test_read_only_output_folder(checkpoint, tmp_path, capsys):
    frames = _write_frames(tmp_path / "in", [(16, 16)])
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(["remove", str(checkpoint), str(frames), "-o", str(out), "-q"]) == 2
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not writable" in err, err
