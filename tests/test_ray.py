"""The Ray engine on a local cluster started by the test: the same outputs as the local engine
(byte for byte), the manifest, resumed runs, a killed actor, URIs, a video split over workers.

Two CPU cores, four logical CPUs declared (with two actors on two CPUs Ray Data has no slot
left for its decode and write tasks and waits for ever).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from media import make_tree, need, output_of, write_checkpoint, write_video

from birefnet_core.batch import MANIFEST_NAME, JobSpec, plan_job, read_manifest, run_local
from birefnet_core.cli import main

pytestmark = pytest.mark.slow

ray = need("ray")
need("av")

from birefnet_core.batch import ray_engine  # noqa: E402
from birefnet_core.batch.video import decode_rgba  # noqa: E402

# Small chunks (4 frames of 64x48) and a keyframe every 6 frames: the 30-frame video becomes
# five pieces spread over the actors, each written as parts and joined.
CHUNK = 4 * 64 * 48 * 3 * 4
BASE = dict(exact=True, resolution="64x64", batch_size=1, chunk_bytes=CHUNK, recursive=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    marker_dir = tmp_path_factory.mktemp("crash")
    marker = marker_dir / "crash-once"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {ray_engine.CRASH_ENV: str(marker),
                                       "OMP_NUM_THREADS": "1"}})
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs") / "in"
    files = make_tree(root)
    # A keyframe every 6 frames (x264's default GOP has one for all 30): several pieces.
    write_video(root / "v" / "clip.mp4", count=30, audio=True,
                options={"g": "6", "keyint_min": "6", "sc_threshold": "0", "crf": "18"})
    return root, files


def _snapshot(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME}


def _statuses(out: Path) -> dict:
    return {r["input"]: (r["status"], r["output"], r["frames"])
            for r in read_manifest(out / MANIFEST_NAME)}


def _local(checkpoint, inputs, out, spec):
    """The local engine with one thread, as the cluster's workers run (OMP_NUM_THREADS=1):
    the thread count changes how a CPU convolution sums, so the last bits of a mask, which
    can round an 8-bit value the other way."""
    import torch

    plan = plan_job([str(inputs)], out, spec)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_local(plan, spec, checkpoint)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_rgba(checkpoint, inputs, tmp_path_factory):
    """The local engine's outputs for the whole tree: what every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("local") / "rgba"
    tally = _local(checkpoint, inputs[0], out, JobSpec(video_format="mov", **BASE))
    assert (tally.done, tally.failed) == (len(inputs[1]["good"]) + 1, 2)
    return out


def _assert_same_outputs(ray_out: Path, local_out: Path, video: str = "v/clip.mov"):
    ray_files, local_files = _snapshot(ray_out), _snapshot(local_out)
    assert sorted(ray_files) == sorted(local_files)
    for name, data in local_files.items():
        if name != video:
            assert ray_files[name] == data, f"{name} differs from the local engine's"
    # The video: joined from parts, decoded back, frame for frame the local one's (ProRes is
    # intra-only and deterministic, so even the packets agree).
    got = np.stack([f.numpy() for f in decode_rgba(ray_out / video)])
    want = np.stack([f.numpy() for f in decode_rgba(local_out / video)])
    assert got.shape == want.shape == (30, 48, 64, 4)
    assert np.array_equal(got, want)
    import av

    with av.open(str(ray_out / video)) as c:
        assert c.streams.video[0].average_rate == 25
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]


def test_ray_writes_what_the_local_engine_writes(cluster, checkpoint, inputs, local_rgba,
                                                 tmp_path, monkeypatch):
    root, files = inputs
    out = tmp_path / "ray"
    spec = JobSpec(video_format="mov", **BASE)
    seen_units = []
    real_units = ray_engine._units

    def units(*args):
        result = real_units(*args)
        seen_units.extend(result[0])
        return result

    monkeypatch.setattr(ray_engine, "_units", units)
    tally = ray_engine.run_ray([str(root)], str(out), spec, str(checkpoint), workers=2)
    assert (tally.done, tally.skipped, tally.failed) == (len(files["good"]) + 1, 0, 2)
    video_pieces = [u for u in seen_units if u["stop"] - u["first"] > 1]
    assert len(video_pieces) >= 3, "the video was not split over several units"
    _assert_same_outputs(out, local_rgba)
    statuses = _statuses(out)
    assert statuses == _statuses(local_rgba)
    for rel in files["corrupt"]:
        assert statuses[str(root / rel)][0] == "failed"
    assert statuses[str(root / "v" / "clip.mp4")] == ("done", "v/clip.mov", 30)
    # Seconds cover decoding, the model and writing (each stage adds its share).
    assert all(r["seconds"] > 0 and r["engine"] == "ray"
               for r in read_manifest(out / MANIFEST_NAME) if r["status"] == "done")
    assert not [p for p in out.rglob(".*")], "a temporary or parts folder was left"

    # A resumed run does no work: no dataset is even built. (The unreadable inputs have no
    # output, so a re-run would try them again: the copy of the tree leaves them out.)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    for rel in files["corrupt"]:
        (copy / rel).unlink()

    def no_dataset(*args, **kwargs):
        raise AssertionError("a resumed run with nothing left started Ray Data work")

    monkeypatch.setattr(ray.data, "from_items", no_dataset)
    tally = ray_engine.run_ray([str(copy)], str(out), spec, str(checkpoint), workers=2)
    assert (tally.done, tally.skipped, tally.failed) == (0, len(files["good"]) + 1, 0)
    records = read_manifest(out / MANIFEST_NAME)
    assert [r["status"] for r in records[-(len(files["good"]) + 1):]] == \
        ["skipped"] * (len(files["good"]) + 1)


def test_png_sequence_with_smoothing_matches_the_local_engine(cluster, checkpoint, inputs,
                                                              tmp_path):
    """Median smoothing is exact across chunk and piece borders: each piece is decoded with
    the frames around it. The mask frames are the local engine's, byte for byte."""
    root, _ = inputs
    spec = JobSpec(output="mask", video_format="png", smooth="median", smooth_window=5,
                   cut_threshold=0.5, **BASE)
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    _local(checkpoint, root / "v", local_out, spec)
    tally = ray_engine.run_ray([str(root / "v")], str(ray_out), spec, str(checkpoint),
                               workers=2)
    assert (tally.done, tally.failed) == (1, 0)
    local_files, ray_files = _snapshot(local_out), _snapshot(ray_out)
    assert sorted(local_files) == [f"clip/frame_{i:06d}.png" for i in range(30)]
    assert ray_files == local_files


def test_cli_with_uris_survives_a_killed_actor(cluster, checkpoint, inputs, local_rgba,
                                              tmp_path, capsys):
    """``--engine ray`` with ``file://`` URIs in and out; the first actor call dies (os._exit):
    Ray restarts the actor and retries, and no output is lost or duplicated."""
    root, files = inputs
    cluster.write_text("die")
    out = tmp_path / "ray-uri"
    rc = main(["remove", str(checkpoint), f"file://{root}", "-o", f"file://{out}", "-r",
               "--engine", "ray", "--workers", "2", "--video-format", "mov", "--exact",
               "--resolution", "64x64", "--batch-size", "1", "-q"])
    err = capsys.readouterr().err
    assert not cluster.exists(), "no actor crashed: the test proved nothing"
    assert rc == 1, err
    assert f"done {len(files['good']) + 1}, skipped 0, failed 2" in err, err
    assert "Traceback" not in err, err
    failed = sorted(line for line in err.splitlines() if line.startswith("failed:"))
    assert len(failed) == 2 and all("file://" in line for line in failed), failed
    # Byte-identical images; the video (default-sized chunks here) decoded back identical.
    _assert_same_outputs(out, local_rgba)
    records = read_manifest(out / MANIFEST_NAME)
    assert len(records) == len(files["good"]) + 3
    assert sorted(r["output"] for r in records if r["status"] == "done") == sorted(
        [output_of(rel) for rel in files["good"]] + ["v/clip.mov"])
