"""Video files in and out, with PyAV (the ``video`` extra; ComfyUI environments have it).

Reading decodes any FFmpeg-readable video to ``[H, W, 3]`` uint8 RGB frames, one at a time, so
a caller that groups them in chunks holds one chunk, whatever the video's length. Writing
encodes rendered frames as they come:

- ``mov``: ProRes 4444 with alpha (``yuva444p10le``) for RGBA; ProRes 422 HQ otherwise;
- ``webm``: VP9, ``yuva420p`` for RGBA (alpha in the WebM block additions, as browsers and
  FFmpeg's libvpx decoder read it), ``yuv420p`` otherwise;
- ``mp4``: H.264 ``yuv420p`` (no alpha: for masks and composites).

The source's frame rate is kept, and its audio is copied (not re-encoded) when the output
container accepts its codec; otherwise a note says it was left out.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

from ..errors import InputError
from .extras import require

VIDEO_FORMATS = ("mov", "webm", "mp4", "png")
# Audio codecs each container takes as they are (copied packet by packet).
_AUDIO_OK = {
    "mov": {"aac", "mp3", "alac", "ac3", "pcm_s16le", "pcm_s24le", "pcm_s16be", "pcm_f32le"},
    "mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
    "webm": {"opus", "vorbis"},
}
_MUXER = {"mov": "mov", "mp4": "mp4", "webm": "webm"}


def av():
    """The ``av`` module, or a clear error naming the extra that installs it."""
    return require("av", "video", "reading or writing video files")


def video_errors() -> tuple[type[BaseException], ...]:
    """What a damaged or unreadable video raises while it is opened or decoded."""
    mod = av()
    return (mod.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    rate: Fraction  # frames per second
    frames: int  # from the container's header or its duration (an estimate; 0 if unknown)
    audio_codec: Optional[str] = None


def _openable(path):
    """A path (str / Path) as a string; a file object as it is."""
    return str(path) if isinstance(path, (str, Path)) else path


def _rate_of(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, frame count (estimated where the header has none) and audio codec."""
    with av().open(_openable(path)) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        vs = container.streams.video[0]
        rate = _rate_of(vs)
        frames = vs.frames
        if not frames and vs.duration and vs.time_base:
            frames = round(float(vs.duration * vs.time_base * rate))
        elif not frames and container.duration:
            frames = round(container.duration / 1_000_000 * float(rate))
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return VideoInfo(vs.codec_context.width, vs.codec_context.height, rate, int(frames or 0),
                         audio)


def read_frames(path: str | Path, start_pts: Optional[int] = None,
                stop_pts: Optional[int] = None) -> Iterator["object"]:
    """Decode the video's frames as ``[H, W, 3]`` uint8 tensors, in presentation order.

    With ``start_pts``/``stop_pts`` (in the stream's time base, see :func:`frame_index`),
    only the frames with ``start_pts <= pts < stop_pts``: decoding starts at the keyframe
    at or before ``start_pts``.
    """
    import torch

    with av().open(_openable(path)) as container:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        if start_pts is not None:
            container.seek(start_pts, stream=vs, backward=True)
        for frame in container.decode(vs):
            if start_pts is not None and frame.pts is not None and frame.pts < start_pts:
                continue
            if stop_pts is not None and frame.pts is not None and frame.pts >= stop_pts:
                break
            yield torch.from_numpy(frame.to_ndarray(format="rgb24"))


@dataclass(frozen=True)
class FrameIndex:
    """Every frame's pts in presentation order and which frames are keyframes, read from the
    packets without decoding (fast: a demux pass)."""

    pts: list = field(default_factory=list)
    keyframes: list = field(default_factory=list)  # frame numbers
    end_pts: int = 0  # one past the last frame

    def __len__(self) -> int:
        return len(self.pts)

    def segments(self, min_frames: int) -> list[tuple[int, int]]:
        """Keyframe-aligned ``(first, stop)`` frame ranges of at least ``min_frames`` frames
        (the last may be shorter), covering every frame once, in order.

        >>> FrameIndex(list(range(10)), [0, 3, 6, 9], 10).segments(4)
        [(0, 6), (6, 10)]
        """
        bounds = [0]
        for k in self.keyframes:
            if k - bounds[-1] >= min_frames and k < len(self.pts):
                bounds.append(k)
        bounds.append(len(self.pts))
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def pts_of(self, frame: int) -> int:
        return self.pts[frame] if frame < len(self.pts) else self.end_pts


def frame_index(path: str | Path) -> FrameIndex:
    with av().open(_openable(path)) as container:
        vs = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe, p.duration or 0) for p in container.demux(vs)
                   if p.pts is not None]
    packets.sort()
    pts = [p for p, _, _ in packets]
    keys = [i for i, (_, key, _) in enumerate(packets) if key]
    end = packets[-1][0] + max(packets[-1][2], 1) if packets else 0
    return FrameIndex(pts, keys, end)


def frame_number_of(index: FrameIndex, pts: int) -> int:
    return bisect.bisect_left(index.pts, pts)


class VideoWriter:
    """Encode rendered frames into ``fileobj`` as a ``fmt`` video (see the module docstring).

    ``kind`` is the render kind: ``rgba`` frames ``[k,H,W,4]``, ``composite`` ``[k,H,W,3]``,
    ``mask`` ``[k,H,W]`` (written as grey). Frames are float 0..1 or uint8. ``audio_from``: a
    video whose first audio stream is copied in, interleaved as the frames are written.
    """

    def __init__(self, fileobj: BinaryIO | str, fmt: str, kind: str, info: VideoInfo,
                 audio_from: Optional[str | Path] = None,
                 on_note: Optional[Callable[[str], None]] = None):
        check_format(fmt, kind)
        mod = av()
        self.kind, self.rate = kind, info.rate
        self.container = mod.open(fileobj, "w", format=_MUXER[fmt])
        rgba = kind == "rgba"
        if fmt == "mov":
            codec, pix, opts = "prores_ks", ("yuva444p10le" if rgba else "yuv422p10le"), \
                {"profile": "4" if rgba else "3"}
        elif fmt == "webm":
            codec, pix = "libvpx-vp9", ("yuva420p" if rgba else "yuv420p")
            opts = {"crf": "12", "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
        else:
            codec, pix, opts = "libx264", "yuv420p", {"crf": "14", "preset": "medium", "bf": "0"}
            if info.width % 2 or info.height % 2:
                raise InputError(f"mp4 (H.264 4:2:0) needs an even width and height, the video "
                                 f"is {info.width}x{info.height}: use --video-format mov")
        self.stream = self.container.add_stream(codec, rate=info.rate, options=opts)
        self.stream.width, self.stream.height, self.stream.pix_fmt = info.width, info.height, pix
        self.count = 0
        self.audio = _AudioCopy.open(self.container, fmt, info, audio_from, on_note)

    def write(self, frames) -> None:
        import numpy as np
        import torch

        from .sinks import to_uint8

        mod = av()
        data = frames if frames.dtype == torch.uint8 else to_uint8(frames)
        fmt = {"rgba": "rgba", "composite": "rgb24", "mask": "gray"}[self.kind]
        for i in range(data.shape[0]):
            frame = mod.VideoFrame.from_ndarray(np.ascontiguousarray(data[i].numpy()), format=fmt)
            frame.pts = self.count
            self.count += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        if self.audio is not None:
            self.audio.mux(until=Fraction(self.count) / self.rate)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        if self.audio is not None:
            self.audio.mux(until=None)
            self.audio.close()
        self.container.close()

    def abort(self) -> None:
        for c in (self.container, self.audio and self.audio.source):
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - the file is being thrown away
                    pass


class _AudioCopy:
    """Copies the first audio stream of a source video into an output container, packet by
    packet, interleaved with the video as it is written (``mux(until=seconds)``)."""

    def __init__(self, source, out_stream, container):
        self.source, self.out_stream, self.container = source, out_stream, container
        self.packets = source.demux(source.streams.audio[0])
        self.pending = None

    @classmethod
    def open(cls, container, fmt: str, info: VideoInfo, audio_from, on_note):
        if audio_from is None or not info.audio_codec:
            return None
        if info.audio_codec not in _AUDIO_OK[fmt]:
            if on_note is not None:
                on_note(f"{Path(str(audio_from)).name}: its audio ({info.audio_codec}) cannot go "
                        f"into .{fmt} as it is; the output has no sound (use --video-format "
                        "mov or mp4 for AAC audio)")
            return None
        source = av().open(audio_from if not isinstance(audio_from, Path) else str(audio_from))
        out = container.add_stream_from_template(source.streams.audio[0])
        return cls(source, out, container)

    def mux(self, until: Optional[Fraction]) -> None:
        if self.packets is None:
            return
        while True:
            packet = self.pending
            if packet is None:
                packet = next(self.packets, None)
                if packet is None:
                    self.packets = None
                    return
            if packet.dts is None:  # a demuxer's flush packet
                self.pending = None
                continue
            if until is not None and packet.pts is not None and \
                    packet.pts * packet.time_base >= until:
                self.pending = packet
                return
            self.pending = None
            packet.stream = self.out_stream
            self.container.mux(packet)

    def close(self) -> None:
        self.source.close()


def join_parts(parts: list, frames: list[int], fileobj: BinaryIO | str, fmt: str,
               info: VideoInfo, audio_from=None, on_note=None) -> None:
    """Concatenate video files written by :class:`VideoWriter` (same codec and settings, each
    starting at frame 0) into one ``fmt`` video, in order, without re-encoding; ``frames[i]``
    is the frame count of ``parts[i]``. The source's audio is copied in as by the writer."""
    mod = av()
    out = mod.open(fileobj, "w", format=_MUXER[fmt])
    stream = None
    audio = None
    offset = 0
    try:
        for part, count in zip(parts, frames):
            with mod.open(part if not isinstance(part, Path) else str(part)) as src:
                vs = src.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(vs)
                    # (the muxer would otherwise pick a default tag: ProRes 4444 would be
                    # tagged 422 HQ and decoded without alpha)
                    stream.codec_context.codec_tag = vs.codec_context.codec_tag
                    audio = _AudioCopy.open(out, fmt, info, audio_from, on_note)
                shift = int(round(Fraction(offset) / info.rate / vs.time_base))
                for packet in src.demux(vs):
                    if packet.dts is None:
                        continue
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = stream
                    out.mux(packet)
            offset += count
            if audio is not None:
                audio.mux(until=Fraction(offset) / info.rate)
        if audio is not None:
            audio.mux(until=None)
    finally:
        if audio is not None:
            audio.close()
        out.close()


def check_format(fmt: str, kind: str) -> None:
    """Refuse a video format that cannot hold the output kind (before any work)."""
    if fmt not in VIDEO_FORMATS:
        raise InputError(f"--video-format {fmt!r} is not one of {', '.join(VIDEO_FORMATS)}")
    if fmt == "mp4" and kind == "rgba":
        raise InputError("an mp4 (H.264) video has no alpha channel: use --video-format mov "
                         "(ProRes 4444) or webm (VP9 with alpha), or --output mask / composite")


def default_format(kind: str) -> str:
    """ProRes 4444 ``.mov`` for RGBA (alpha, near-lossless); H.264 ``.mp4`` otherwise."""
    return "mov" if kind == "rgba" else "mp4"


def _alpha_plane(frame):
    """The alpha plane of a planar ``yuva*`` frame as uint8 ``[H, W]``, rounded from its bit
    depth (swscale's RGBA conversion can be a level off; the stored alpha is what counts)."""
    import numpy as np

    name = frame.format.name
    plane = frame.planes[3]
    deep = not name.endswith("p")  # yuva444p10le, yuva444p12le ...
    dtype = np.dtype("<u2") if deep else np.uint8
    rows = np.frombuffer(bytes(plane), dtype).reshape(plane.height, -1)[:, :frame.width]
    if not deep:
        return rows.copy()
    bits = int("".join(ch for ch in name.split("p")[-1] if ch.isdigit()))
    return np.rint(rows.astype(np.float64) * 255 / ((1 << bits) - 1)).astype(np.uint8)


def decode_rgba(path: str | Path) -> Iterator["object"]:
    """Decode a video written by :class:`VideoWriter` back to ``[H, W, 4]`` uint8 frames,
    alpha included (a VP9 ``.webm`` keeps alpha where only the libvpx decoder reads it); a
    video without alpha gets 255."""
    import numpy as np
    import torch

    mod = av()
    with mod.open(str(path)) as container:
        vs = container.streams.video[0]
        if vs.codec_context.name == "vp9":
            ctx = mod.CodecContext.create("libvpx-vp9", "r")
            if vs.codec_context.extradata:
                ctx.extradata = vs.codec_context.extradata
            frames = (f for packet in container.demux(vs) for f in ctx.decode(packet))
        else:
            frames = container.decode(vs)
        for frame in frames:
            rgba = np.empty((frame.height, frame.width, 4), np.uint8)
            rgba[..., :3] = frame.to_ndarray(format="rgb24")
            rgba[..., 3] = _alpha_plane(frame) if frame.format.name.startswith("yuva") else 255
            yield torch.from_numpy(rgba)
