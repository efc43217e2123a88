"""Inputs and outputs on a real S3 API: moto's S3 server on 127.0.0.1, started by the test, in
place of AWS (no network beyond this machine). pyarrow reaches it as a user reaches MinIO or any
S3-compatible store: through ``AWS_ENDPOINT_URL`` (pyarrow reads it, and the Ray workers of a
local cluster inherit it from the driver).

The tree: six images in the top folder and two sub-folders, ``a/x.png`` and ``b/x.png`` among
them (one name in two folders, kept apart by their relative paths), two sizes, a JPEG, a PNG
cut short; a text file and a hidden folder that are no inputs. The end-to-end run is the Ray
engine's (the local engine takes local paths only and refuses URIs, also tested here): the
outputs, read back from S3, are the local engine's for the same files on a local disk, byte
for byte; the corrupt input is ``failed`` in the manifest; a re-run does no work.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from media import need, output_of, write_checkpoint, write_image

from birefnet_core.batch import MANIFEST_NAME, JobSpec, plan_job, run_local
from birefnet_core.cli import main

BUCKET = "birefnet-test"
GOOD = ["a/x.png", "a/y.png", "b/x.png", "b/deep/z.jpg", "top.png"]
CORRUPT = ["b/bad.png"]
FAST = ["--output", "mask", "--exact", "--resolution", "64x64", "--batch-size", "1", "-q"]


def _tree(root: Path) -> None:
    for i, rel in enumerate(GOOD):
        write_image(root / rel, size=(24, 16) if i % 2 else (16, 16), seed=i)
    data = (root / "a" / "x.png").read_bytes()
    (root / "b" / "bad.png").write_bytes(data[: len(data) // 2])
    (root / "b" / "notes.txt").write_text("not an input")
    write_image(root / ".cache" / "old.png")  # a hidden folder: no input


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with ``s3://BUCKET/in/`` holding the tree; yields ``(boto3 client,
    the same tree on a local disk)``. The process's AWS settings point at the server while the
    module runs (and no others leak in: a profile, a session token, an S3-only endpoint)."""
    need("moto.server")
    need("pyarrow.fs")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # (a line per request otherwise)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                     "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(name, raising=False)
        home = tmp_path_factory.mktemp("aws-home")  # no ~/.aws/config or credentials read
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata look-ups
        for name in ("NO_PROXY", "no_proxy"):  # a CI proxy must not take local requests
            mp.setenv(name, ",".join(filter(None, [os.environ.get(name), host, "localhost"])))
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        local = tmp_path_factory.mktemp("s3-tree") / "in"
        _tree(local)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            client.upload_file(str(path), BUCKET, f"in/{path.relative_to(local).as_posix()}")
        try:
            yield client, local
        finally:
            server.stop()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("models"))


def _objects(client, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix``, by its key relative to it (the empty ``folder/`` objects
    that pyarrow's ``create_dir`` leaves on S3 left out)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            out[item["Key"][len(prefix):]] = body
    return out


def _stamps(client, prefix: str) -> dict:
    """``{output: (ETag, LastModified)}``: what shows an object was written again."""
    items = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: (o["ETag"], o["LastModified"]) for o in items
            if not o["Key"].endswith(("/", MANIFEST_NAME))}


def _manifest(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def _empty(client, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])


def test_s3_uris_are_listed_planned_and_written_through_the_s3_api(s3):
    """The storage layer against a real S3 API: the listing (recursive, hidden and non-media
    objects left out), relative paths kept, an atomic write that leaves no temporary object,
    a written output counted complete on the next plan, an output over its input and two
    inputs with one output refused."""
    from birefnet_core.batch.ray_engine import plan_ray_job
    from birefnet_core.errors import InputError

    client, _ = s3
    _empty(client, "plan/")
    spec = JobSpec(output="mask", recursive=True)
    base = f"s3://{BUCKET}"
    todo, complete, store = plan_ray_job([f"{base}/in/"], f"{base}/plan/", spec)
    assert not complete
    assert sorted(j.target for j in todo) == sorted(output_of(r) for r in GOOD + CORRUPT)
    assert {j.target: j.source for j in todo}["b/x.png"] == f"{base}/in/b/x.png"
    store.write_bytes("b/x.png", b"an output")
    objects = _objects(client, "plan/")
    assert objects == {"b/x.png": b"an output"}, "a temporary object was left"
    todo2, complete2, _ = plan_ray_job([f"{base}/in/"], f"{base}/plan/", spec)
    assert [j.target for j in complete2] == ["b/x.png"] and len(todo2) == len(todo) - 1
    flat = plan_ray_job([f"{base}/in/"], f"{base}/plan/", JobSpec(output="mask"))[0]
    assert [j.target for j in flat] == ["top.png"]  # (without -r, the top folder only)
    with pytest.raises(InputError, match="would replace that input"):
        plan_ray_job([f"{base}/in/"], f"{base}/in/", spec)
    # a/x.jpg beside a/x.png: both would be a/x.png, refused before any work.
    client.put_object(Bucket=BUCKET, Key="in/a/x.jpg", Body=b"jpeg")
    try:
        with pytest.raises(InputError, match="both be written"):
            plan_ray_job([f"{base}/in/"], f"{base}/plan/", spec)
    finally:
        client.delete_object(Bucket=BUCKET, Key="in/a/x.jpg")


def test_the_local_engine_refuses_uris_instead_of_writing_a_local_s3_folder(
        s3, checkpoint, tmp_path, monkeypatch, capsys):
    """The local engine reads and writes local paths: a URI in or out is a usage error naming
    --engine ray (``-o s3://...`` once became a local folder named ``s3:``)."""
    from birefnet_core.errors import InputError

    client, local = s3
    monkeypatch.chdir(tmp_path)
    for args in ([f"s3://{BUCKET}/in/", "-o", "out"],
                 [str(local), "-o", f"s3://{BUCKET}/local-out/"]):
        rc = main(["remove", str(checkpoint), *args, "-r", *FAST])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert err.startswith("error:") and "--engine ray" in err and "s3://" in err, err
    assert not any(tmp_path.iterdir()), "something was written here"
    assert not _objects(client, "local-out/")
    with pytest.raises(InputError, match="--engine ray"):
        plan_job([str(local)], f"file://{tmp_path}/out", JobSpec())


# -- end to end: the Ray engine ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(s3):
    """A local Ray cluster started after the AWS settings are in place (its workers inherit
    the driver's environment: checked here, not assumed)."""
    ray = need("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        @ray.remote(num_cpus=0)
        def aws_env():
            return {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")}

        assert ray.get(aws_env.remote()) == {k: os.environ[k] for k in
                                             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")}
        yield ray
    finally:
        ray.shutdown()


def _local_reference(checkpoint, local: Path, out: Path):
    """The local engine on the same files on disk, with one thread as the Ray workers run
    (the thread count changes how a CPU convolution sums: the last bits of a mask)."""
    import torch

    spec = JobSpec(output="mask", exact=True, resolution="64x64", batch_size=1, recursive=True)
    plan = plan_job([str(local)], out, spec)
    out.mkdir(parents=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tally = run_local(plan, spec, checkpoint)
    finally:
        torch.set_num_threads(threads)
    assert (tally.done, tally.failed) == (len(GOOD), len(CORRUPT))
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME}


@pytest.mark.slow
def test_ray_engine_from_s3_to_s3_writes_what_the_local_engine_writes(
        s3, cluster, checkpoint, tmp_path, monkeypatch, capsys):
    """``birefnet remove s3://.../model s3://BUCKET/in/ -r -o s3://BUCKET/out/ --engine ray``:
    the model copied from S3 by each actor, the inputs read and the outputs written through
    the S3 API, the manifest beside them; then a re-run that does no work."""
    client, local = s3
    want = _local_reference(checkpoint, local, tmp_path / "local")
    client.upload_file(str(checkpoint), BUCKET, f"models/{checkpoint.name}")
    model = f"s3://{BUCKET}/models/{checkpoint.name}"
    _empty(client, "out/")
    args = ["remove", model, f"s3://{BUCKET}/in/", "-o", f"s3://{BUCKET}/out/", "-r",
            "--engine", "ray", "--workers", "2", *FAST]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert f"done {len(GOOD)}, skipped 0, failed {len(CORRUPT)}" in err, err
    assert "Traceback" not in err, err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].startswith(f"failed: s3://{BUCKET}/in/b/bad.png: "), \
        failed

    objects = _objects(client, "out/")
    manifest = _manifest(objects.pop(MANIFEST_NAME))
    assert not [k for k in objects if "/." in f"/{k}"], "a temporary or parts object was left"
    # Every good input's output at its relative path (a/x.png and b/x.png apart), the
    # local engine's bytes.
    assert sorted(objects) == sorted(want) == sorted(output_of(r) for r in GOOD)
    for name, data in want.items():
        assert objects[name] == data, f"{name} differs from the local engine's"
    by_input = {r["input"]: r for r in manifest}
    assert len(manifest) == len(by_input) == len(GOOD) + len(CORRUPT)
    for rel in GOOD:
        r = by_input[f"s3://{BUCKET}/in/{rel}"]
        assert (r["status"], r["output"], r["error"], r["frames"], r["engine"]) == \
            ("done", output_of(rel), None, 1, "ray"), r
    r = by_input[f"s3://{BUCKET}/in/b/bad.png"]
    assert r["status"] == "failed" and r["output"] == "b/bad.png" and r["error"], r

    # A re-run does no work: no dataset is built, nothing is rewritten (the corrupt input,
    # which has no output, is taken away first: it would be tried again), the manifest gains
    # one "skipped" line per input.
    client.delete_object(Bucket=BUCKET, Key="in/b/bad.png")
    stamps = _stamps(client, "out/")
    assert sorted(stamps) == sorted(output_of(r) for r in GOOD)

    def no_dataset(*args, **kwargs):
        raise AssertionError("a resumed run with nothing left started Ray Data work")

    monkeypatch.setattr(cluster.data, "from_items", no_dataset)
    try:
        assert main(args) == 0
        err = capsys.readouterr().err
        assert f"done 0, skipped {len(GOOD)}, failed 0" in err, err
        assert _stamps(client, "out/") == stamps
        records = _manifest(_objects(client, "out/")[MANIFEST_NAME])
        assert records[:len(manifest)] == manifest
        assert sorted((r["input"], r["status"]) for r in records[len(manifest):]) == sorted(
            (f"s3://{BUCKET}/in/{rel}", "skipped") for rel in GOOD)
    finally:
        local_bad = (local / "b" / "bad.png")
        client.upload_file(str(local_bad), BUCKET, "in/b/bad.png")
