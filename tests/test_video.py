"""Video files in and out (PyAV): alpha decoded back equals the mask within codec precision,
frame rate and audio kept, chunks bound the memory, smoothing is exact across chunk borders."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from media import decode, need, synthetic_frames, write_checkpoint, write_image, write_video
from PIL import Image

from birefnet_core.batch import MANIFEST_NAME, JobSpec, read_manifest
from birefnet_core.cli import main

av = need("av")

from birefnet_core.batch.job import video_chunks  # noqa: E402
from birefnet_core.batch.video import (VideoInfo, VideoWriter, decode_rgba,  # noqa: E402
                                       frame_index, probe, read_frames)

FAST = ["--exact", "--resolution", "64x64", "-q"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """24 frames, 64x48, 25 fps, H.264 with an AAC track."""
    return write_video(tmp_path_factory.mktemp("videos") / "clip.mp4")


@pytest.fixture(scope="module")
def reference(checkpoint, clip, tmp_path_factory):
    """The clip's RGBA frames as a PNG sequence (8-bit, lossless): what every video output is
    compared with."""
    out = tmp_path_factory.mktemp("ref")
    assert main(["remove", str(checkpoint), str(clip), "-o", str(out), "--video-format", "png",
                 *FAST]) == 0
    frames = sorted((out / "clip").iterdir())
    assert [p.name for p in frames] == [f"frame_{i:06d}.png" for i in range(24)]
    return np.stack([np.asarray(Image.open(p)) for p in frames]).astype(int)


def _rgba(path):
    return np.stack([f.numpy() for f in decode_rgba(path)]).astype(int)


def test_reading_keeps_every_frame_in_order(clip):
    frames = [f.numpy() for f in read_frames(clip)]
    expected = np.stack(list(synthetic_frames(24, 64, 48))).astype(int)
    got = np.stack(frames).astype(int)
    assert got.shape == expected.shape
    # H.264 4:2:0 at crf 18: small differences, and the square is where it should be.
    assert np.abs(got - expected).mean() < 3, np.abs(got - expected).mean()
    info = probe(clip)
    assert (info.width, info.height, info.rate, info.frames, info.audio_codec) == (
        64, 48, Fraction(25), 24, "aac")


@pytest.mark.parametrize("fmt, alpha_max, alpha_mean", [("mov", 0, 0.0), ("webm", 8, 2.0)])
def test_rgba_video_alpha_equals_the_mask_when_decoded_back(checkpoint, clip, reference,
                                                           tmp_path, fmt, alpha_max, alpha_mean):
    """ProRes 4444 stores alpha losslessly; VP9's yuva420p alpha is lossy (crf 12)."""
    out = tmp_path / "out"
    assert main(["remove", str(checkpoint), str(clip), "-o", str(out), "--video-format", fmt,
                 *FAST]) == 0
    got = _rgba(out / f"clip.{fmt}")
    assert got.shape == reference.shape
    diff = np.abs(got[..., 3] - reference[..., 3])
    assert diff.max() <= alpha_max and diff.mean() <= alpha_mean, (diff.max(), diff.mean())
    # Colours: ProRes 4444 is near-lossless; VP9 subsamples chroma (random texture here).
    rgb = np.abs(got[..., :3] - reference[..., :3]).mean()
    assert rgb < (0.5 if fmt == "mov" else 4), rgb
    with av.open(str(out / f"clip.{fmt}")) as c:
        vs = c.streams.video[0]
        assert vs.average_rate == 25
        assert [s.codec_context.name for s in c.streams.audio] == (["aac"] if fmt == "mov"
                                                                   else [])


def test_writer_alpha_ramp_round_trips(tmp_path):
    """Independent of the model: every alpha level 0..255 through each codec and back."""
    ramp = torch.arange(256, dtype=torch.uint8).repeat(32, 1)  # [32, 256]
    frames = torch.zeros(3, 32, 256, 4, dtype=torch.uint8)
    frames[..., 0] = 200
    frames[..., 1] = 30
    frames[..., 2] = 90
    frames[..., 3] = ramp
    info = VideoInfo(256, 32, Fraction(30000, 1001), 3)
    for fmt, tolerance in (("mov", 0), ("webm", 4)):
        path = tmp_path / f"ramp.{fmt}"
        with open(path, "wb") as f:
            writer = VideoWriter(f, fmt, "rgba", info)
            writer.write(frames)
            writer.close()
        got = _rgba(path)
        assert got.shape == (3, 32, 256, 4)
        err = np.abs(got[..., 3] - ramp.numpy()).max()
        assert err <= tolerance, (fmt, err)
        with av.open(str(path)) as c:
            assert c.streams.video[0].average_rate == Fraction(30000, 1001)


def test_mask_and_composite_videos(checkpoint, clip, reference, tmp_path):
    out = tmp_path / "mask"
    assert main(["remove", str(checkpoint), str(clip), "-o", str(out), "--output", "mask",
                 *FAST]) == 0
    grey = decode(out / "clip.mp4", "gray").astype(int)  # default for a mask: H.264 .mp4
    assert grey.shape == reference.shape[:3]
    diff = np.abs(grey - reference[..., 3])
    assert diff.max() <= 8 and diff.mean() <= 1.5, (diff.max(), diff.mean())
    comp = tmp_path / "comp"
    assert main(["remove", str(checkpoint), str(clip), "-o", str(comp), "--output", "composite",
                 "--background", "#00ff00", "--video-format", "mov", *FAST]) == 0
    got = decode(comp / "clip.mov").astype(np.float64) / 255
    a = reference[..., 3:] / 255
    expected = a * reference[..., :3] / 255 + (1 - a) * np.array([0.0, 1.0, 0.0])
    assert np.abs(got - expected).mean() < 2 / 255, np.abs(got - expected).mean()


def test_video_is_decoded_in_chunks_bounded_in_bytes(clip):
    """The frames reach the model in chunks of at most ``chunk_bytes``: a long video never
    sits in memory at once."""
    frame_bytes = 64 * 48 * 3 * 4
    seen = []

    def segmenter(images):
        seen.append(images.shape[0])
        return images.mean(-1)

    spec = JobSpec(chunk_bytes=5 * frame_bytes)
    total = sum(images.shape[0] for images, _ in video_chunks(read_frames(clip), segmenter, spec))
    assert total == 24 and max(seen) == 5 and sum(seen) == 24, seen
    assert not isinstance(read_frames(clip), (list, tuple))  # a generator: frame by frame


@pytest.mark.parametrize("mode", ["median", "ema"])
def test_smoothing_across_chunk_borders_matches_smoothing_the_whole_video(clip, mode):
    from birefnet_core.temporal import temporal_smooth

    def segmenter(images):  # a deterministic stand-in for the model: a flickering mask
        flicker = torch.tensor([0.3 * ((i * 7) % 3) for i in range(images.shape[0])])
        return (images.mean(-1) + flicker[:, None, None] * 0.1).clamp(0, 1)

    spec = JobSpec(smooth=mode, smooth_window=5, smooth_strength=0.5, cut_threshold=0.5,
                   chunk_bytes=4 * 64 * 48 * 3 * 4)
    chunked = torch.cat([m for _, m in video_chunks(read_frames(clip), segmenter, spec)])
    frames = torch.stack(list(read_frames(clip))).float() / 255
    raw = torch.cat([segmenter(frames[i:i + 4]) for i in range(0, 24, 4)])
    whole = temporal_smooth(raw, mode, strength=0.5, window=5, cut_threshold=0.5, frames=frames)
    assert chunked.shape == whole.shape
    tol = 1e-6 if mode == "median" else 2e-3  # EMA: context until the history weighs < 1e-3
    assert (chunked - whole).abs().max() <= tol, (chunked - whole).abs().max()
    assert (whole - raw).abs().max() > 1e-2  # the smoothing did something


def test_keyframe_segments_cover_every_frame_once(tmp_path):
    path = write_video(tmp_path / "gop.mp4", count=30, audio=False)
    index = frame_index(path)
    assert len(index) == 30 and index.keyframes[0] == 0
    for size in (1, 7, 100):
        segments = index.segments(size)
        assert segments[0][0] == 0 and segments[-1][1] == 30
        assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
        assert all(s[0] in index.keyframes for s in segments)
    frames = [f.numpy() for f in read_frames(path)]
    for a, b in index.segments(1):
        part = [f.numpy() for f in read_frames(path, index.pts_of(a), index.pts_of(b))]
        assert len(part) == b - a
        assert all(np.array_equal(x, y) for x, y in zip(part, frames[a:b]))


def test_a_corrupt_video_is_recorded_and_the_rest_is_done(checkpoint, clip, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.mp4").write_bytes(clip.read_bytes())
    (src / "broken.mp4").write_bytes(clip.read_bytes()[:600])
    (src / "garbage.mov").write_bytes(b"\x00" * 100)
    write_image(src / "still.png")
    out = tmp_path / "out"
    assert main(["remove", str(checkpoint), str(src), "-o", str(out), "--video-format", "png",
                 *FAST]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    records = {r["input"].rsplit("/", 1)[-1]: r for r in read_manifest(out / MANIFEST_NAME)}
    assert records["good.mp4"]["status"] == "done" and records["good.mp4"]["frames"] == 24
    assert records["still.png"]["status"] == "done"
    for name in ("broken.mp4", "garbage.mov"):
        assert records[name]["status"] == "failed" and records[name]["error"], records[name]
        assert f"failed: {src / name}" in err
    assert len(list((out / "good").iterdir())) == 24
    assert not (out / "broken").exists() and not (out / "garbage").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temporary was left"
    # A re-run skips the finished video (its folder appeared only when complete).
    assert main(["remove", str(checkpoint), str(src), "-o", str(out), "--video-format", "png",
                 *FAST]) == 1
    assert "done 0, skipped 2, failed 2" in capsys.readouterr().err


def test_mp4_cannot_hold_alpha(checkpoint, clip, tmp_path, capsys):
    assert main(["remove", str(checkpoint), str(clip), "-o", str(tmp_path / "o"),
                 "--video-format", "mp4", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "mov" in err and "webm" in err, err


@pytest.mark.parametrize("fmt, kind, tolerance", [
    ("mov", "rgba", 0.05), ("webm", "rgba", 2.5), ("mp4", "composite", 4.0)])
def test_parts_join_into_one_video_with_the_rate_and_the_audio(clip, tmp_path, fmt, kind,
                                                               tolerance):
    """What the Ray engine does with a video split over workers: parts encoded separately,
    joined without re-encoding; frames in order, the source's rate and audio kept."""
    from birefnet_core.batch.video import join_parts

    frames = torch.from_numpy(np.stack(list(synthetic_frames(30, 64, 48))))
    data = torch.cat([frames, frames[..., :1]], -1) if kind == "rgba" else frames
    info = VideoInfo(64, 48, Fraction(25), 30, "aac")
    parts, counts = [], []
    for i in range(0, 30, 7):
        path = tmp_path / f"part{i}.{fmt}"
        with open(path, "wb") as f:
            writer = VideoWriter(f, fmt, kind, info)
            writer.write(data[i:i + 7])
            writer.close()
        parts.append(path)
        counts.append(min(7, 30 - i))
    joined = tmp_path / f"joined.{fmt}"
    with open(joined, "wb") as f:
        join_parts(parts, counts, f, fmt, info, audio_from=clip)
    got = _rgba(joined)
    want = data.numpy().astype(int)
    if kind != "rgba":
        got = got[..., :3]
    elif fmt == "mov":
        assert np.array_equal(got[..., 3], want[..., 3])  # ProRes 4444 alpha: lossless
    assert got.shape == want.shape
    err = np.abs(got - want).mean()
    assert err <= tolerance, err
    # In order: each frame is nearer its own source frame than its neighbours'.
    near = [int(np.argmin([np.abs(got[i] - want[j]).mean() for j in range(30)]))
            for i in range(30)]
    assert near == list(range(30))
    with av.open(str(joined)) as c:
        vs = c.streams.video[0]
        assert vs.average_rate == 25
        pts = [p.pts for p in c.demux(vs) if p.pts is not None]
        assert pts == sorted(pts) and len(pts) == 30
    with av.open(str(joined)) as c:
        audio = [s.codec_context.name for s in c.streams.audio]
    assert audio == ([] if fmt == "webm" else ["aac"])
