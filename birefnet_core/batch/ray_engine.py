"""The Ray engine: the same job as :mod:`.local`, spread over a Ray cluster with Ray Data.

Imported only when ``--engine ray`` (or :func:`run_ray`) is used; needs the ``ray`` extra.

The pipeline, one Ray Dataset of work units:

1. the driver plans the job (the same rules as the local engine: relative paths kept, no input
   overwritten, collisions refused, complete outputs skipped) and cuts every video into
   keyframe-aligned pieces, so that one long video keeps several workers busy;
2. **decode** (CPU tasks): an image, or a piece of a video decoded in chunks of at most
   ``chunk_bytes`` (with the frames around it that temporal smoothing needs); an unreadable
   input becomes a row with its error, never a failed task;
3. **predict** (an actor pool, ``map_batches`` with a callable class and
   ``compute=ActorPoolStrategy``): each actor loads the model once, on its GPU
   (``--gpus-per-worker``) or CPUs, and turns frames into masks;
4. **write** (CPU tasks): render (RGBA / mask / composite, smoothing) and write each output
   under its input's relative name, atomically. A video's chunks are written as numbered
   parts in a hidden ``.NAME.parts`` folder;
5. the driver joins each video's parts in order (no re-encoding; audio copied in), writes the
   manifest and the tally.

Ray Data restarts a failed actor and retries its batches (its defaults for an actor pool);
since every output and every part has one deterministic name and is written atomically, a
retried batch rewrites the same files: nothing is lost or duplicated.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import PurePosixPath
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import BiRefNetError, InputError
from .extras import require
from .job import (JobSpec, Segmenter, Tally, check_job, check_model, plan_job,
                  prepare_output_dir, smoothing_context)
from .local import Events
from .manifest import MANIFEST_NAME, Manifest, Record
from .sinks import frame_name, png_bytes, render, to_uint8
from .sources import MEDIA_SUFFIXES, is_video, target_name
from .storage import Store, is_uri

# Test hook: an actor that finds this file removes it and dies (os._exit), once per file:
# the tests use it to check that a killed actor loses and duplicates nothing.
CRASH_ENV = "BIREFNET_RAY_CRASH_ONCE"
PREDICT_BATCH_ROWS = 8


def ray():
    return require("ray", "ray", "--engine ray")


@dataclass(frozen=True)
class RayJob:
    """One input of a Ray run: ``source`` (a local path or URI), ``target`` relative to the
    output folder, ``kind`` image or video."""

    source: str
    target: str
    kind: str


# -- planning ------------------------------------------------------------------------------------

def plan_ray_job(inputs: Sequence[str], out: str, spec: JobSpec
                 ) -> tuple[list[RayJob], list[RayJob], Store]:
    """``(todo, complete, out_store)``. Local inputs and outputs get the local engine's plan
    (:func:`.job.plan_job`); URIs are listed through ``pyarrow.fs``."""
    if not any(is_uri(i) for i in inputs) and not is_uri(out):
        plan = plan_job(inputs, out, spec)
        prepare_output_dir(plan.out_dir)

        def rel(job):
            return RayJob(str(job.source), job.target.relative_to(plan.out_dir).as_posix(),
                          job.kind)

        return [rel(j) for j in plan.todo], [rel(j) for j in plan.complete], Store(plan.out_dir)
    store = Store(out)
    fmt = spec.resolved_video_format
    found: list[tuple[str, str]] = []  # (source uri, path relative to the common folder)
    roots = []
    for item in inputs:
        root = Store(item)
        files = root.list_files(recursive=spec.recursive) if _is_dir(root) else None
        if files is None:
            parent = posixpath.dirname(item.rstrip("/"))
            roots.append(parent)
            found.append((item, posixpath.basename(item)))
        else:
            roots.append(item.rstrip("/"))
            found += [(root.uri(f), f) for f in files
                      if posixpath.splitext(f)[1].lower() in MEDIA_SUFFIXES]
    if len(set(roots)) > 1:
        raise InputError("URI inputs must share one folder: give one folder URI (with -r for "
                         "its sub-folders) or files of one folder")
    if not found:
        raise InputError(f"no images or videos found in {', '.join(inputs)}")
    jobs, seen = [], {}
    sources = {_norm(source) for source, _ in found}
    for source, rel in found:
        kind = "video" if is_video(rel) else "image"
        target = target_name(PurePosixPath(rel), spec.suffix, kind, fmt).as_posix()
        if target in seen:
            raise InputError(f"{seen[target]} and {source} would both be written to "
                             f"{store.uri(target)}: rename one of them, or process them in "
                             "separate runs")
        seen[target] = source
        if _norm(store.uri(target)) in sources:
            raise InputError(f"the output for {source} would replace that input: give another "
                             "-o folder, or a --suffix (e.g. --suffix _cut)")
        jobs.append(RayJob(source, target, kind))
    if any(j.kind == "video" for j in jobs):
        from .video import av, check_format

        av()
        check_format(fmt, spec.output)
    if spec.overwrite:
        return jobs, [], store
    complete = [j for j in jobs if store.exists(j.target)]
    done = set(complete)
    return [j for j in jobs if j not in done], complete, store


def _norm(uri: str) -> str:
    """``file:///a//b/`` and ``/a/b`` name one file: compare them in one form."""
    text = str(uri)
    if text.startswith("file://"):
        text = text[len("file://"):]
    scheme, sep, rest = text.rpartition("://")
    return scheme + sep + posixpath.normpath(rest if sep else os.path.abspath(text))


def _is_dir(store: Store) -> bool:
    if store.fs is None:
        return os.path.isdir(store.root)
    import pyarrow.fs as pafs

    return store.fs.get_file_info(store.root).type == pafs.FileType.Directory


def _open_source(source: str):
    """A local path, or a seekable file opened through ``pyarrow.fs``."""
    if not is_uri(source):
        return source
    from .storage import filesystem_for

    fs, path = filesystem_for(source)
    return fs.open_input_file(path)


def _read_source(source: str) -> bytes:
    if not is_uri(source):
        with open(source, "rb") as f:
            return f.read()
    f = _open_source(source)
    try:
        return f.read()
    finally:
        f.close()


def parts_folder(target: str) -> str:
    head, name = posixpath.split(target)
    return posixpath.join(head, f".{name}.parts")


# -- the work units ---------------------------------------------------------------------------

def _units(todo: Sequence[RayJob], spec: JobSpec, events: Events) -> tuple[list[dict], dict]:
    """One unit per image; per video, keyframe-aligned pieces of about a chunk each.
    Returns ``(units, expected frames per video job)``."""
    from .video import frame_index, probe, video_errors

    units, expected = [], {}
    ctx = smoothing_context(spec)
    for j, job in enumerate(todo):
        if job.kind == "image":
            units.append(dict(job=j, first=0, stop=1, lo_pts=-1, hi_pts=-1, lo=0))
            continue
        try:
            info = probe(_open_source(job.source))
            index = frame_index(_open_source(job.source))
        except video_errors() + (BiRefNetError,) as exc:
            units.append(dict(job=j, first=0, stop=0, lo_pts=-1, hi_pts=-1, lo=0,
                              error=f"cannot read the video ({exc})"))
            continue
        n = len(index)
        expected[j] = n
        per_chunk = _frames_per_chunk(spec, info.width, info.height)
        for a, b in index.segments(max(per_chunk, 1)):
            lo, hi = max(0, a - ctx), min(n, b + ctx)
            units.append(dict(job=j, first=a, stop=b, lo_pts=index.pts_of(lo),
                              hi_pts=index.pts_of(hi) if hi < n else -1, lo=lo))
    for u in units:
        u.setdefault("error", "")
    return units, expected


def _frames_per_chunk(spec: JobSpec, width: int, height: int) -> int:
    return max(1, min(spec.max_frames, spec.chunk_bytes // max(width * height * 3 * 4, 1)))


def _row(unit: dict, first: int, count: int, keep_from: int, frames, error: str = "") -> dict:
    return {"job": np.array([unit["job"]]), "first": np.array([first]),
            "count": np.array([count]), "keep_from": np.array([keep_from]),
            "frames": _one(frames), "error": np.array([error], dtype=object)}


def _one(array):
    out = np.empty(1, dtype=object)
    out[0] = array
    return out


class _Decode:
    """CPU task: a unit -> rows of frames (``[m, H, W, 3]`` uint8; for a video chunk ``m``
    includes the smoothing context on either side, ``keep_from``/``count`` say which frames
    are the chunk's own)."""

    def __init__(self, jobs: list[dict], spec: dict):
        self.jobs = jobs
        self.spec = JobSpec(**spec)

    def __call__(self, batch: dict) -> Iterator[dict]:
        from .sources import decode_rgb8, describe_unreadable, unreadable_image_errors

        for i in range(len(batch["job"])):
            unit = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in batch.items()}
            job = self.jobs[unit["job"]]
            empty = np.zeros((0, 1, 1, 3), np.uint8)
            if unit["error"]:
                yield _row(unit, 0, 0, 0, empty, unit["error"])
            elif job["kind"] == "image":
                try:
                    image = decode_rgb8(_read_source(job["source"])).numpy()
                except unreadable_image_errors() as exc:
                    yield _row(unit, 0, 1, 0, empty, describe_unreadable(exc))
                    continue
                yield _row(unit, 0, 1, 0, image[None])
            else:
                yield from self._video(unit, job)

    def _video(self, unit: dict, job: dict) -> Iterator[dict]:
        from .video import read_frames, video_errors

        spec, ctx = self.spec, smoothing_context(self.spec)
        a, b, lo = unit["first"], unit["stop"], unit["lo"]
        hi_pts = None if unit["hi_pts"] < 0 else unit["hi_pts"]
        frames: list = []  # decoded frames, frames[0] is frame number `base`
        base = lo
        core = a  # first frame of the next chunk to emit
        step = None
        try:
            source = _open_source(job["source"])
            for frame in read_frames(source, None if unit["lo_pts"] < 0 and lo == 0
                                     else unit["lo_pts"], hi_pts):
                frames.append(frame.numpy())
                if step is None:
                    step = _frames_per_chunk(spec, frame.shape[1], frame.shape[0])
                got = base + len(frames)  # frames decoded so far end here
                while core < b and got >= min(core + step, b) + ctx:
                    yield self._chunk(unit, frames, base, core, min(core + step, b), ctx)
                    core = min(core + step, b)
                    drop = max(0, core - ctx - base)
                    del frames[:drop]
                    base += drop
            while core < b and frames:
                stop = min(core + step, b)
                if base + len(frames) < stop:
                    raise EOFError(f"decoded only {base + len(frames)} of {b} frames")
                yield self._chunk(unit, frames, base, core, stop, ctx)
                core = stop
            if core < b:
                raise EOFError(f"decoded only {core} of {b} frames")
        except (*video_errors(), EOFError) as exc:
            yield _row(unit, a, 0, 0, np.zeros((0, 1, 1, 3), np.uint8),
                       f"cannot read the video ({exc})")

    @staticmethod
    def _chunk(unit, frames, base, start, stop, ctx):
        lo = max(start - ctx, base)
        hi = min(stop + ctx, base + len(frames))
        return _row(unit, start, stop - start, start - lo,
                    np.stack(frames[lo - base:hi - base]))


class _Predict:
    """The actor: loads the model once; frames -> masks (float32 ``[m, H, W]``)."""

    def __init__(self, model_path: str, spec: dict):
        import torch

        spec = JobSpec(**spec)
        # Ray gives an actor with num_gpus its own GPU(s) through CUDA_VISIBLE_DEVICES.
        device = "cuda" if ray().get_gpu_ids() and torch.cuda.is_available() else spec.device
        local_model = _local_copy(model_path)
        self.segmenter = Segmenter(local_model, replace(spec, device=device))

    def __call__(self, batch: dict) -> dict:
        import torch

        marker = os.environ.get(CRASH_ENV)
        if marker:
            try:
                os.unlink(marker)
            except OSError:
                pass
            else:
                os._exit(1)  # a crash mid-job (the tests' fault injection)
        from ..refine import working_size_of

        rows = len(batch["job"])
        masks = [np.zeros((0, 1, 1), np.float32)] * rows
        working = np.zeros((rows, 2), np.int64)  # (H, W) the masks were predicted at; 0: unknown
        errors = np.array(batch["error"], dtype=object)  # (writable copies)
        seconds = np.array(batch["seconds"], dtype=np.float64)
        # Rows of one frame size are segmented together (the model batches them).
        by_size: dict = {}
        for i in range(rows):
            frames = batch["frames"][i]
            if batch["error"][i] or frames.shape[0] == 0:
                continue
            by_size.setdefault(frames.shape[1:], []).append(i)
        for members in by_size.values():
            t0 = time.perf_counter()
            images = torch.from_numpy(np.concatenate([batch["frames"][i] for i in members]))
            # (np.concatenate copies: the tensor is writable)
            try:
                out = self.segmenter(images.float().div_(255.0))
            except BiRefNetError as exc:
                for i in members:
                    errors[i] = str(exc)
                continue
            size, out = working_size_of(out), out.numpy()
            per_frame = (time.perf_counter() - t0) / max(len(out), 1)
            at = 0
            for i in members:
                n = batch["frames"][i].shape[0]
                masks[i] = out[at:at + n]
                working[i] = size or (0, 0)
                seconds[i] += per_frame * n
                at += n
        batch["masks"] = np.array(masks + [None], dtype=object)[:-1]
        batch["working"] = working
        batch["error"], batch["seconds"] = errors, seconds
        return batch


def _local_copy(model_path: str) -> str:
    """A model given as a URI is copied to a local temporary file once per actor."""
    if not is_uri(model_path):
        return model_path
    data = _read_source(model_path)
    folder = tempfile.mkdtemp(prefix="birefnet-model-")
    path = os.path.join(folder, posixpath.basename(model_path))
    with open(path, "wb") as f:
        f.write(data)
    return path


class _Write:
    """CPU task: render and write each row's outputs atomically; returns one small result row
    per input row (what the driver needs for the manifest and the joins)."""

    def __init__(self, jobs: list[dict], spec: dict, out_root: str):
        self.jobs, self.spec, self.store = jobs, JobSpec(**spec), Store(out_root)

    def __call__(self, batch: dict) -> dict:
        results = {k: [] for k in ("job", "first", "count", "error", "seconds")}
        for i in range(len(batch["job"])):
            t0 = time.perf_counter()
            j, first, count = int(batch["job"][i]), int(batch["first"][i]), int(batch["count"][i])
            error = batch["error"][i] or ""
            if not error:
                try:
                    self._write(self.jobs[j], first, count, int(batch["keep_from"][i]),
                                batch["frames"][i], batch["masks"][i], batch["working"][i])
                except BiRefNetError as exc:
                    error = str(exc)
                except OSError as exc:
                    error = f"cannot write the output ({exc.strerror or exc})"
            spent = float(batch["seconds"][i]) + time.perf_counter() - t0  # all the stages
            for key, value in (("job", j), ("first", first), ("count", count),
                               ("error", error), ("seconds", spent)):
                results[key].append(value)
        return {k: np.array(v, dtype=object if k == "error" else None)
                for k, v in results.items()}

    def _write(self, job: dict, first: int, count: int, keep_from: int, frames, masks,
               working) -> None:
        import torch

        spec = self.spec
        images = torch.from_numpy(np.array(frames)).float().div_(255.0)  # (a writable copy)
        masks = torch.from_numpy(np.array(masks, dtype=np.float32))
        if job["kind"] == "video" and spec.smooth != "none" and images.shape[0] > 1:
            from ..temporal import temporal_smooth

            masks = temporal_smooth(masks, spec.smooth, strength=spec.smooth_strength,
                                    window=spec.smooth_window, cut_threshold=spec.cut_threshold,
                                    frames=images)
        images, masks = images[keep_from:keep_from + count], masks[keep_from:keep_from + count]
        size = tuple(int(v) for v in working) if int(working[0]) > 0 else None

        def frame(k):
            return render(spec.output, images[k:k + 1], masks[k:k + 1], spec.background,
                          spec.estimate_foreground, size)[0]

        if job["kind"] == "image":
            self.store.write_bytes(job["target"], png_bytes(frame(0)))
            return
        parts = parts_folder(job["target"])
        fmt = spec.resolved_video_format
        if fmt == "png":
            for k in range(count):
                self.store.write_bytes(posixpath.join(parts, frame_name(first + k)),
                                       png_bytes(frame(k)))
            return
        from fractions import Fraction

        from .video import VideoInfo, VideoWriter

        h, w = images.shape[1:3]
        with tempfile.TemporaryDirectory(prefix="birefnet-part-") as tmp:
            local = os.path.join(tmp, f"part.{fmt}")
            with open(local, "wb") as f:
                writer = VideoWriter(f, fmt, spec.output,
                                     VideoInfo(w, h, Fraction(job["rate"]), count))
                for k in range(count):
                    writer.write(to_uint8(frame(k))[None])
                writer.close()
            self.store.write_file(posixpath.join(parts, f"{first:09d}.{fmt}"), local)


# -- the driver -----------------------------------------------------------------------------------

def _spec_dict(spec: JobSpec) -> dict:
    return asdict(spec)


def _init_ray(address: Optional[str], quiet: bool) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), or start a local cluster; True when this
    call started Ray (and so should shut it down)."""
    mod = ray()
    if mod.is_initialized():
        return False
    kwargs = dict(log_to_driver=not quiet, include_dashboard=False)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        mod.init(address=address, **kwargs)
    else:
        # Ray Data needs CPU slots for its decode/write tasks beside the actors.
        mod.init(num_cpus=max(4, os.cpu_count() or 1), **kwargs)
    return True


def run_ray(inputs: Sequence[str], out: str, spec: JobSpec, model_path: str, *,
            address: Optional[str] = None, workers: int = 0, gpus_per_worker: float = 0,
            cpus_per_worker: float = 1, tally: Optional[Tally] = None,
            events: Optional[Events] = None, quiet: bool = True) -> Tally:
    """Run the job on Ray (see the module docstring); the Python entry point of
    ``birefnet remove ... --engine ray``. Returns the tally (updated in place as it goes)."""
    tally = tally if tally is not None else Tally()
    events = events or Events()
    ray()  # a missing extra is a usage error before anything is written
    check_job(spec, check_devices=False)
    if spec.device != "cpu" and gpus_per_worker <= 0:
        raise InputError(f"--device {spec.device} with --engine ray: the actors' device comes "
                         "from Ray; give --gpus-per-worker 1 for one GPU per actor (the "
                         "driver needs no GPU)")
    todo, complete, store = plan_ray_job(inputs, out, spec)
    if todo:
        check_model(model_path, spec)
    started = _init_ray(address, quiet)
    try:
        return _run(todo, complete, store, spec, model_path, workers, gpus_per_worker,
                    cpus_per_worker, tally, events, quiet)
    finally:
        if started:
            ray().shutdown()


def _run(todo, complete, store: Store, spec, model_path, workers, gpus_per_worker,
         cpus_per_worker, tally, events, quiet) -> Tally:
    mod = ray()
    from ray.data import ActorPoolStrategy, DataContext

    gpus = mod.cluster_resources().get("GPU", 0)
    if gpus_per_worker > 0 and gpus < gpus_per_worker:
        raise InputError(f"--gpus-per-worker {gpus_per_worker}: the Ray cluster has {gpus:g} "
                         "GPU(s); start the GPU nodes (ray start --address ...) or run the "
                         "actors on CPUs with --gpus-per-worker 0")

    manifest = Manifest(store.path(MANIFEST_NAME) if store.local else None)
    remote_manifest: list[str] = []

    def record(rec: Record) -> None:
        rec.engine = "ray"
        if store.local:
            manifest.write(rec)
        else:
            remote_manifest.append(rec.line())

    try:
        tally.skipped += len(complete)
        for job in complete:
            record(Record(job.source, job.target, "skipped"))
        if not todo:
            manifest.close()
            return tally

        import logging

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller's events report progress
        ctx.verbose_progress = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        if workers <= 0:
            workers = int(gpus // gpus_per_worker) if gpus_per_worker > 0 and gpus else 2
        workers = max(1, workers)

        jobs = []
        for job in todo:
            rate = 25
            if job.kind == "video":
                from .video import probe, video_errors

                try:
                    rate = str(probe(_open_source(job.source)).rate)
                except video_errors():
                    pass
            jobs.append(dict(source=job.source, target=job.target, kind=job.kind, rate=str(rate)))
        for job in jobs:
            if job["kind"] == "video":
                store.delete_dir(parts_folder(job["target"]))  # a stopped run's parts
        units, expected = _units(todo, spec, events)
        spec_data = _spec_dict(spec)
        if not isinstance(spec.background, (str, type(None))):
            spec_data["background"] = spec.background  # a tensor travels pickled

        ds = mod.data.from_items(units, override_num_blocks=max(1, min(len(units), 10_000)))
        # Decoding reserves the memory of a worker and its output (a chunk of uint8 frames); that
        # also keeps it a CPU task of its own: Ray Data would otherwise fuse it into the model
        # actors, which would then decode instead of running the model.
        ds = ds.map_batches(_decode_fn, fn_args=(jobs, spec_data), batch_size=1,
                            batch_format="numpy", num_cpus=1,
                            memory=(512 << 20) + spec.chunk_bytes // 4)
        ds = ds.map_batches(_Predict, fn_constructor_args=(str(model_path), spec_data),
                            batch_size=PREDICT_BATCH_ROWS, batch_format="numpy",
                            compute=ActorPoolStrategy(size=workers), num_gpus=gpus_per_worker,
                            num_cpus=cpus_per_worker)
        # (Ray Data restarts a dead actor of the pool and retries its batches by default:
        # max_restarts = max_task_retries = -1.)
        ds = ds.map_batches(_write_fn, fn_args=(jobs, spec_data, store.uri()), batch_size=1,
                            batch_format="numpy", num_cpus=1)

        per_job: dict[int, dict] = {}
        frames_total = sum(1 if j["kind"] == "image" else expected.get(i, 0)
                           for i, j in enumerate(jobs))
        frames_done = 0
        finished: set[int] = set()
        for row in ds.iter_rows():
            j = int(row["job"])
            state = per_job.setdefault(j, {"frames": 0, "seconds": 0.0, "errors": [],
                                           "parts": []})
            state["seconds"] += float(row["seconds"])
            if row["error"]:
                state["errors"].append(str(row["error"]))
            else:
                state["frames"] += int(row["count"])
                state["parts"].append((int(row["first"]), int(row["count"])))
            frames_done += max(int(row["count"]), 1 if jobs[j]["kind"] == "image" else 0)
            events.progress(min(frames_done, frames_total), frames_total)
            job = jobs[j]
            if job["kind"] == "image" and j not in finished:  # (one row per image)
                finished.add(j)
                _finish(job, state, record, tally, events)

        for j, job in enumerate(jobs):
            if job["kind"] != "video":
                continue
            state = per_job.get(j, {"frames": 0, "seconds": 0.0, "errors": ["no frames"],
                                    "parts": []})
            if not state["errors"] and state["frames"] != expected.get(j, -1):
                state["errors"].append(f"{state['frames']} of {expected.get(j)} frames came back")
            if not state["errors"]:
                t0 = time.perf_counter()
                try:
                    _join(job, state, store, spec, events)
                except (OSError, BiRefNetError) as exc:
                    state["errors"].append(f"cannot join the parts ({exc})")
                state["seconds"] += time.perf_counter() - t0
            store.delete_dir(parts_folder(job["target"]))
            _finish(job, state, record, tally, events)
        return tally
    finally:
        manifest.close()
        if remote_manifest:  # an object store appends by rewriting
            old = store.read_bytes(MANIFEST_NAME).decode() if store.exists(MANIFEST_NAME) else ""
            store.write_bytes(MANIFEST_NAME, (old + "\n".join(remote_manifest) + "\n").encode())


def _decode_fn(batch, jobs, spec):
    """Decode task; each row carries the seconds spent on it so far (for the manifest)."""
    t = time.perf_counter()
    for row in _Decode(jobs, spec)(batch):
        row["seconds"] = np.array([time.perf_counter() - t])
        yield row
        t = time.perf_counter()


def _write_fn(batch, jobs, spec, out_root):
    return _Write(jobs, spec, out_root)(batch)


def _finish(job, state, record, tally, events) -> None:
    if state["errors"]:
        tally.failed += 1
        detail = state["errors"][0]
        events.failed(job["source"], detail)
        record(Record(job["source"], job["target"], "failed", detail, state["seconds"]))
    else:
        tally.done += 1
        record(Record(job["source"], job["target"], "done", None, state["seconds"],
                      state["frames"]))


def _join(job: dict, state: dict, store: Store, spec: JobSpec, events: Events) -> None:
    """Put a video's parts together under its final name."""
    from ..atomic import atomic_write
    from .sinks import atomic_folder
    from .video import join_parts, probe

    parts = parts_folder(job["target"])
    fmt = spec.resolved_video_format
    chunks = sorted(state["parts"])
    if fmt == "png":
        if store.local:
            from pathlib import Path

            src = Path(store.path(parts))
            with atomic_folder(Path(store.path(job["target"]))) as folder:
                for p in sorted(src.iterdir()):
                    os.replace(p, folder / p.name)
            return
        for name in store.list_files(parts):
            store.fs.move(store.path(name), store.path(posixpath.join(
                job["target"], posixpath.basename(name))))
        return
    info = probe(_open_source(job["source"]))
    with tempfile.TemporaryDirectory(prefix="birefnet-join-") as tmp:
        local_parts = []
        for first, _ in chunks:
            rel = posixpath.join(parts, f"{first:09d}.{fmt}")
            if store.local:
                local_parts.append(store.path(rel))
            else:
                path = os.path.join(tmp, f"{first:09d}.{fmt}")
                with open(path, "wb") as f:
                    f.write(store.read_bytes(rel))
                local_parts.append(path)
        audio = _open_source(job["source"])
        if store.local:
            from pathlib import Path

            target = Path(store.path(job["target"]))
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(target) as f:
                join_parts(local_parts, [c for _, c in chunks], f, fmt, info, audio,
                           events.note)
        else:
            joined = os.path.join(tmp, f"joined.{fmt}")
            with open(joined, "wb") as f:
                join_parts(local_parts, [c for _, c in chunks], f, fmt, info, audio,
                           events.note)
            store.write_file(job["target"], joined)


def main_ray(args, spec: JobSpec) -> int:
    """``birefnet remove ... --engine ray``: the CLI's exit codes and messages."""
    from ..cli import EXIT_FAILED, EXIT_INTERRUPTED, _Progress

    tally = Tally()
    events = _Progress(enabled=not args.quiet)
    try:
        run_ray(args.inputs, args.output_dir, spec, args.model, address=args.address,
                workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                cpus_per_worker=args.cpus_per_worker, tally=tally, events=events,
                quiet=args.quiet)
    except KeyboardInterrupt:
        events.say(f"interrupted: {tally}; finished outputs are kept, run again to do the rest")
        return EXIT_INTERRUPTED
    events.say(str(tally))
    return EXIT_FAILED if tally.failed else 0
