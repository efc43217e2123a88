"""The local engine: one process, one device, inputs in order, chunk by chunk.

Memory follows the frame size, not the frame count: image chunks and video chunks are sized
in bytes (:data:`.job.CHUNK_BYTES`), outputs are rendered one frame at a time (foreground
estimation needs several frame-sized buffers), and a chunk is let go before the next is read.
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

from ..atomic import atomic_write
from ..errors import BiRefNetError
from .job import JobSpec, Plan, Segmenter, Tally, video_chunks
from .manifest import MANIFEST_NAME, Manifest, Record
from .sinks import atomic_folder, frame_name, render, save_png
from .sources import Job, chunks_of_same_size, describe_unreadable


class Events:
    """What an engine reports as it goes; the CLI prints it, the default ignores it."""

    def note(self, text: str) -> None:
        pass

    def failed(self, source: str, detail: str) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass

    def loaded(self, summary: str) -> None:
        pass


def frames_to_do(plan_todo: Sequence[Job]) -> int:
    """Frames in the jobs (videos: from their headers; 0 for an unreadable one)."""
    total = 0
    for job in plan_todo:
        if job.is_video:
            from .video import probe, video_errors

            try:
                total += probe(job.source).frames
            except video_errors():
                pass
        else:
            total += 1
    return total


class _Run:
    def __init__(self, plan: Plan, spec: JobSpec, segmenter, tally: Tally, events: Events,
                 manifest: Manifest):
        self.plan, self.spec, self.segment, self.tally = plan, spec, segmenter, tally
        self.events, self.manifest = events, manifest
        self.frames_done, self.frames_total = 0, frames_to_do(plan.todo)

    def rel(self, job: Job) -> str:
        return job.target.relative_to(self.plan.out_dir).as_posix()

    def advance(self, frames: int) -> None:
        self.frames_done += frames
        self.frames_total = max(self.frames_total, self.frames_done)
        self.events.progress(self.frames_done, self.frames_total)

    def fail(self, job: Job, detail: str, seconds: float = 0.0, frames: int = 1) -> None:
        self.tally.failed += 1
        self.events.failed(str(job.source), detail)
        self.manifest.write(Record(str(job.source), self.rel(job), "failed", detail, seconds))
        self.advance(frames)

    def done(self, job: Job, seconds: float, frames: int) -> None:
        self.tally.done += 1
        self.manifest.write(Record(str(job.source), self.rel(job), "done", None, seconds,
                                   frames))

    # -- images ---------------------------------------------------------------------------------
    def images(self, jobs: Sequence[Job]) -> None:
        from ..refine import working_size_of

        spec = self.spec
        t_read = time.perf_counter()

        def unreadable(job: Job, exc: BaseException) -> None:
            self.fail(job, describe_unreadable(exc))

        for group, images in chunks_of_same_size(jobs, spec.chunk_bytes, unreadable,
                                                 max_frames=spec.max_frames):
            try:
                masks = self.segment(images)
            except BiRefNetError as exc:  # e.g. out of memory with one frame: the next may fit
                for job in group:
                    self.fail(job, str(exc))
                continue
            shared = (time.perf_counter() - t_read) / len(group)  # reading + the model
            working = working_size_of(masks)
            for i, job in enumerate(group):
                t1 = time.perf_counter()
                try:
                    frame = render(spec.output, images[i:i + 1], masks[i:i + 1],
                                   spec.background, spec.estimate_foreground, working)[0]
                    save_png(frame, job.target)
                    del frame
                except BiRefNetError as exc:
                    self.fail(job, str(exc), shared)
                    continue
                except OSError as exc:
                    self.fail(job, f"cannot write {job.target} ({exc.strerror or exc})", shared)
                    continue
                self.done(job, shared + time.perf_counter() - t1, 1)
                self.advance(1)
            del images, masks
            t_read = time.perf_counter()

    # -- videos ---------------------------------------------------------------------------------
    def video(self, job: Job) -> None:
        from ..refine import working_size_of
        from .video import VideoWriter, probe, read_frames, video_errors

        spec = self.spec
        t0 = time.perf_counter()
        written = 0
        fmt = spec.resolved_video_format
        try:
            info = probe(job.source)
            chunks = video_chunks(read_frames(job.source), self.segment, spec)
            if fmt == "png":
                with atomic_folder(job.target) as folder:
                    for images, masks in chunks:
                        working = working_size_of(masks)
                        for i in range(images.shape[0]):
                            frame = render(spec.output, images[i:i + 1], masks[i:i + 1],
                                           spec.background, spec.estimate_foreground,
                                           working)[0]
                            save_png(frame, folder / frame_name(written))
                            written += 1
                        self.advance(images.shape[0])
                    if not written:
                        raise EOFError("no frame could be decoded")
            else:
                job.target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(job.target) as f:
                    writer = VideoWriter(f, fmt, spec.output, info, audio_from=job.source,
                                         on_note=self.events.note)
                    try:
                        for images, masks in chunks:
                            working = working_size_of(masks)
                            for i in range(images.shape[0]):
                                writer.write(render(spec.output, images[i:i + 1],
                                                    masks[i:i + 1], spec.background,
                                                    spec.estimate_foreground, working))
                                written += 1
                            self.advance(images.shape[0])
                        if not written:
                            raise EOFError("no frame could be decoded")
                        writer.close()
                    except BaseException:
                        writer.abort()
                        raise
        except (BiRefNetError, EOFError, *video_errors()) as exc:
            detail = str(exc) if isinstance(exc, BiRefNetError) else \
                f"cannot read or write the video ({exc})"
            self.fail(job, detail, time.perf_counter() - t0, frames=0)
            return
        self.done(job, time.perf_counter() - t0, written)


class _LazySegmenter:
    """Loads the model on the first frame that needs it: a re-run whose remaining inputs are
    all unreadable does no model work."""

    def __init__(self, model_path, spec: JobSpec, events: Events):
        self.args, self.segmenter = (model_path, spec, events), None

    def __call__(self, images):
        if self.segmenter is None:
            model_path, spec, events = self.args
            self.segmenter = Segmenter(model_path, spec, on_note=events.note)
            events.loaded(self.segmenter.loaded.info.summary())
        return self.segmenter(images)


def run_local(plan: Plan, spec: JobSpec, model_path: str | os.PathLike,
              tally: Optional[Tally] = None, events: Optional[Events] = None,
              manifest: bool = True) -> Tally:
    """Run ``plan`` here: load the model once, process each input not yet complete, record
    each in the manifest (``OUT/birefnet-manifest.jsonl``) and return the tally (also updated
    in place, so a caller that catches ``KeyboardInterrupt`` still has it)."""
    tally = tally if tally is not None else Tally()
    events = events or Events()
    tally.skipped += len(plan.complete)
    with Manifest(plan.out_dir / MANIFEST_NAME if manifest else None) as log:
        for job in plan.complete:
            log.write(Record(str(job.source), job.target.relative_to(plan.out_dir).as_posix(),
                             "skipped"))
        if not plan.todo:
            return tally
        run = _Run(plan, spec, _LazySegmenter(model_path, spec, events), tally, events, log)
        images: list[Job] = []
        for job in plan.todo + [None]:
            if job is not None and not job.is_video:
                images.append(job)
                continue
            if images:
                run.images(images)
                images = []
            if job is not None:
                run.video(job)
    return tally
