"""The batch layer on the local engine: recursive folders, the manifest, resumed runs."""

from __future__ import annotations

import numpy as np
import pytest
from media import make_tree, output_of, write_checkpoint, write_image
from PIL import Image

from birefnet_core.batch import (MANIFEST_NAME, JobSpec, plan_job, read_manifest, run_local)
from birefnet_core.batch import local as local_engine
from birefnet_core.batch import sinks
from birefnet_core.cli import main

FAST = ["--output", "mask", "--exact", "--resolution", "64x64", "-q"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("models"))


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "in"
    return root, make_tree(root)


def _outputs(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file() and p.name != MANIFEST_NAME)


def _snapshot(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME}


def test_recursive_run_keeps_relative_paths_and_records_every_input(checkpoint, tree,
                                                                   tmp_path, capsys):
    root, files = tree
    out = tmp_path / "out"
    assert main(["remove", str(checkpoint), str(root), "-o", str(out), "-r", *FAST]) == 1
    err = capsys.readouterr().err
    assert _outputs(out) == sorted(output_of(rel) for rel in files["good"])
    assert f"done {len(files['good'])}, skipped 0, failed 2" in err, err
    records = read_manifest(out / MANIFEST_NAME)
    by_input = {r["input"]: r for r in records}
    assert len(records) == len(by_input) == len(files["good"]) + 2
    for rel in files["good"]:
        r = by_input[str(root / rel)]
        assert r["status"] == "done" and r["error"] is None and r["frames"] == 1, r
        assert r["output"] == output_of(rel) and r["seconds"] > 0
    for rel in files["corrupt"]:
        r = by_input[str(root / rel)]
        assert r["status"] == "failed" and r["error"], r
        assert not (out / output_of(rel)).exists()
    # Each mask has its input's size (the pairing of inputs and outputs is right).
    for rel in files["good"]:
        assert Image.open(out / output_of(rel)).size == Image.open(root / rel).size


def test_without_recursive_only_the_top_folder(checkpoint, tree, tmp_path):
    root, files = tree
    out = tmp_path / "out"
    assert main(["remove", str(checkpoint), str(root), "-o", str(out), *FAST]) == 0
    assert _outputs(out) == [f"img_{i}.png" for i in range(4)]


def test_a_resumed_run_does_no_work(checkpoint, tree, tmp_path, monkeypatch, capsys):
    root, files = tree
    for rel in files["corrupt"]:
        (root / rel).unlink()
    out = tmp_path / "out"
    assert main(["remove", str(checkpoint), str(root), "-o", str(out), "-r", *FAST]) == 0
    before = _snapshot(out)
    capsys.readouterr()

    def no_model(*args, **kwargs):
        raise AssertionError("a resumed run with nothing left loaded the model")

    monkeypatch.setattr(local_engine, "Segmenter", no_model)
    assert main(["remove", str(checkpoint), str(root), "-o", str(out), "-r", *FAST]) == 0
    assert f"done 0, skipped {len(files['good'])}, failed 0" in capsys.readouterr().err
    assert _snapshot(out) == before
    records = read_manifest(out / MANIFEST_NAME)
    second = records[len(files["good"]):]
    assert [r["status"] for r in second] == ["skipped"] * len(files["good"])


def test_interrupted_then_resumed_equals_one_clean_run(checkpoint, tree, tmp_path, monkeypatch,
                                                       capsys):
    root, files = tree
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    assert main(["remove", str(checkpoint), str(root), "-o", str(clean), "-r", *FAST]) == 1
    real_save = sinks.save_png
    saved = []

    def save_then_interrupt(frame, path):
        if len(saved) == 7:
            raise KeyboardInterrupt
        real_save(frame, path)
        saved.append(path)

    monkeypatch.setattr(local_engine, "save_png", save_then_interrupt)
    assert main(["remove", str(checkpoint), str(root), "-o", str(resumed), "-r", *FAST]) == 130
    assert len(_outputs(resumed)) == 7
    monkeypatch.setattr(local_engine, "save_png", real_save)
    assert main(["remove", str(checkpoint), str(root), "-o", str(resumed), "-r", *FAST]) == 1
    err = capsys.readouterr().err
    assert f"done {len(files['good']) - 7}, skipped 7, failed 2" in err, err
    assert _snapshot(resumed) == _snapshot(clean)
    latest = {r["input"]: r["status"] for r in read_manifest(resumed / MANIFEST_NAME)}
    assert sorted(latest.values()).count("failed") == 2


def test_collision_in_a_sub_folder_is_refused_before_any_work(checkpoint, tree, tmp_path,
                                                             capsys):
    root, _ = tree
    write_image(root / "a" / "deep" / "img_0.jpg")  # beside img_0.png: both -> img_0.png
    out = tmp_path / "out"
    assert main(["remove", str(checkpoint), str(root), "-o", str(out), "-r", *FAST]) == 2
    err = capsys.readouterr().err
    assert "img_0.jpg" in err and "img_0.png" in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())


def test_output_folder_inside_the_input_tree_is_not_read_back(checkpoint, tree, capsys):
    root, files = tree
    out = root / "results"
    assert main(["remove", str(checkpoint), str(root), "-o", str(out), "-r", *FAST]) == 1
    capsys.readouterr()
    assert main(["remove", str(checkpoint), str(root), "-o", str(out), "-r", *FAST]) == 1
    err = capsys.readouterr().err
    assert f"done 0, skipped {len(files['good'])}, failed 2" in err, err
    assert not (out / "results").exists()


def test_python_entry_point(checkpoint, tree, tmp_path):
    """The same job from Python: plan, run, tally."""
    root, files = tree
    spec = JobSpec(output="mask", exact=True, resolution="64x64", recursive=True)
    plan = plan_job([str(root)], tmp_path / "py", spec)
    assert len(plan.todo) == len(files["good"]) + 2 and not plan.complete
    (tmp_path / "py").mkdir()
    tally = run_local(plan, spec, checkpoint)
    assert (tally.done, tally.skipped, tally.failed) == (len(files["good"]), 0, 2)
    mask = np.asarray(Image.open(tmp_path / "py" / "a" / "img_1.png"))
    assert mask.dtype == np.uint8 and mask.shape == (16, 16)


def test_the_cli_and_the_batch_layer_import_neither_av_nor_ray():
    import subprocess
    import sys

    code = ("import sys, birefnet_core, birefnet_core.cli, birefnet_core.batch, "
            "birefnet_core.batch.video, birefnet_core.batch.ray_engine;"
            "bad = [m for m in ('av', 'ray', 'pyarrow') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module, args, extra", [
    ("av", ["clip.mp4"], "video"),
    ("ray", ["img.png", "--engine", "ray"], "ray"),
])
def test_a_missing_extra_is_a_usage_error_naming_it(checkpoint, tmp_path, monkeypatch, capsys,
                                                     module, args, extra):
    import sys

    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    write_image(tmp_path / "img.png")
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    rc = main(["remove", str(checkpoint), str(tmp_path / args[0]), *args[1:], "-o",
               str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error:") and f'pip install "birefnet-nodes[{extra}]"' in err, err
    assert "Traceback" not in err


def test_uri_plans_keep_the_guarantees(tree, tmp_path):
    """``file://`` URIs are planned through pyarrow.fs like S3 would be: relative paths kept,
    no input replaced, collisions refused, complete outputs skipped."""
    from media import need

    need("pyarrow")
    from birefnet_core.batch.ray_engine import plan_ray_job
    from birefnet_core.errors import InputError

    root, files = tree
    spec = JobSpec(output="mask", recursive=True)
    out = tmp_path / "out"
    todo, complete, store = plan_ray_job([f"file://{root}"], f"file://{out}", spec)
    assert sorted(j.target for j in todo) == sorted(
        output_of(rel) for rel in files["good"] + files["corrupt"])
    assert not complete and all(j.source.startswith("file://") for j in todo)
    store.write_bytes("a/img_1.png", b"done before")
    todo2, complete2, _ = plan_ray_job([f"file://{root}"], f"file://{out}", spec)
    assert [j.target for j in complete2] == ["a/img_1.png"] and len(todo2) == len(todo) - 1
    with pytest.raises(InputError, match="would replace that input"):
        plan_ray_job([f"file://{root}"], f"file://{root}", spec)
    write_image(root / "b" / "img_0.jpg")
    with pytest.raises(InputError, match="both be written"):
        plan_ray_job([f"file://{root}"], f"file://{out}", spec)


def test_object_store_writes_go_through_a_hidden_temporary(tmp_path):
    """The non-local write path (S3 and the like), on pyarrow's in-memory file system."""
    from media import need

    pafs = need("pyarrow.fs")
    from birefnet_core.batch.storage import Store

    store = Store(f"file://{tmp_path}")
    store.fs, store.local, store.root = pafs._MockFileSystem(), False, "bucket/out"
    store.write_bytes("a/b/x.png", b"data")
    assert store.exists("a/b/x.png") and store.read_bytes("a/b/x.png") == b"data"
    names = [i.path for i in store.fs.get_file_info(pafs.FileSelector("bucket", recursive=True))
             if i.type == pafs.FileType.File]
    assert names == ["bucket/out/a/b/x.png"], names

    class Interrupted:  # the upload is cut before its move onto the final name
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def move(self, src, dst):
            raise KeyboardInterrupt

    mock = store.fs
    store.fs = Interrupted(mock)
    with pytest.raises(KeyboardInterrupt):
        store.write_bytes("a/b/y.png", b"half")
    store.fs = mock
    assert not store.exists("a/b/y.png")
    assert store.list_files(recursive=True) == ["a/b/x.png"]


def test_fsspec_uris_are_planned_and_written_like_s3(tmp_path):
    """A protocol pyarrow lacks (fsspec's in-memory one here; ``az://`` and the like in use)
    goes through pyarrow's fsspec handler: listed, planned, written atomically."""
    from media import need

    fsspec = need("fsspec")
    need("pyarrow")
    from birefnet_core.batch.ray_engine import plan_ray_job

    mem = fsspec.filesystem("memory")
    for rel in ("shop/a/x.png", "shop/b/x.png", "shop/b/clip.mp4", "shop/notes.txt"):
        mem.pipe(f"/bench-{tmp_path.name}/{rel}", b"data")
    base = f"memory://bench-{tmp_path.name}"
    spec = JobSpec(output="mask", recursive=True, video_format="png")
    todo, complete, store = plan_ray_job([f"{base}/shop"], f"{base}/out", spec)
    assert [(j.target, j.kind) for j in todo] == [
        ("a/x.png", "image"), ("b/clip", "video"), ("b/x.png", "image")]
    assert todo[0].source == f"{base}/shop/a/x.png" and not complete
    store.write_bytes("a/x.png", b"png")
    assert mem.cat(f"/bench-{tmp_path.name}/out/a/x.png") == b"png"
    assert not [p for p in mem.find(f"/bench-{tmp_path.name}/out") if ".part" in p]
    _, complete, _ = plan_ray_job([f"{base}/shop"], f"{base}/out", spec)
    assert [j.target for j in complete] == ["a/x.png"]


def test_ray_refuses_a_device_it_does_not_assign(checkpoint, tmp_path, capsys):
    from media import need

    need("ray")
    write_image(tmp_path / "in" / "x.png")
    rc = main(["remove", str(checkpoint), str(tmp_path / "in"), "-o", str(tmp_path / "out"),
               "--engine", "ray", "--device", "cuda", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "--gpus-per-worker 1" in err, err


@pytest.mark.parametrize("recursive", [False, True])
def test_hidden_files_are_not_inputs(tmp_path, recursive):
    """macOS's ``._NAME.png`` companions (AppleDouble metadata, not images) and hidden files
    are left out of a folder's inputs, as a URI listing leaves them out."""
    from birefnet_core.batch.sources import expand_inputs

    root = tmp_path / "in"
    write_image(root / "x.png")
    write_image(root / "sub" / "y.png")
    (root / "._x.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "sub" / ".z.png").write_bytes(b"not an image")
    found = [p.relative_to(root).as_posix() for p in expand_inputs([str(root)], recursive)]
    assert found == (["x.png", "sub/y.png"] if recursive else ["x.png"])
