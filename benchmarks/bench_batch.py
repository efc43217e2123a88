"""Batch jobs: the local engine against the Ray engine, Ray's start-up cost, and the local
engine's peak memory on long 1080p videos.

A random-weight PVT-v2-b0 model (the smallest architecture; the weights do not change the
work) at a chosen working size, on synthetic inputs written once into ``--cache``::

    python benchmarks/bench_batch.py throughput --images 64      # local vs Ray 1 and 2 actors
    python benchmarks/bench_batch.py memory --seconds 10 60 600  # peak RSS per video length

``throughput`` runs the same job three ways in this process: the local engine
(``--local-threads``), then Ray (a local cluster, ``ray.init(num_cpus=4)``) with 1 and 2
model actors of one CPU (one torch thread) each, each at two job sizes. The steady rate is
taken from the difference of the two sizes' wall times, and the start-up (cluster and actor
start, model load, pipeline fill) is what the smaller job took beyond its frames at that
rate. The scaling efficiency is the 2-actor steady rate over twice the 1-actor one.

``memory`` runs ``birefnet remove`` on a synthetic H.264 1080p 25 fps video of each length
(``--output mask --video-format png``: no encoder state in the way) in a fresh process and
reports its peak resident set (Linux ``VmHWM``): bounded by one chunk, it should not grow with
the video's length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

_PEAK = ("import sys; print(next(line for line in open('/proc/self/status') "
         "if line.startswith('VmHWM:')).replace('VmHWM:', 'PEAK_KIB'), file=sys.stderr)")


def _checkpoint(cache: Path) -> Path:
    from media import write_checkpoint

    path = cache / "models" / "BiRefNet_lite-test.safetensors"
    return path if path.exists() else write_checkpoint(cache / "models")


def _images(cache: Path, count: int, size: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image

    folder = cache / f"images-{count}-{size[0]}x{size[1]}"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(count):
        img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, (i * 37) % 256)], -1)
        cx, cy, r = rng.integers(w // 4, 3 * w // 4), rng.integers(h // 4, 3 * h // 4), h // 4
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (240, 220, 40)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img_{i:05d}.png")
    return folder


def _video(cache: Path, seconds: int, size=(1920, 1080), rate=25) -> Path:
    """A synthetic H.264 video (tests/media.py's moving square), made once, ultrafast preset."""
    from media import write_video

    path = cache / f"video-{seconds}s-{size[0]}x{size[1]}.mp4"
    if not path.exists():
        tmp = path.with_suffix(".part.mp4")
        write_video(tmp, count=seconds * rate, size=size, rate=rate, audio=False,
                    options={"preset": "ultrafast", "crf": "23"})
        os.replace(tmp, path)
    return path


def _timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _fit(name: str, counts, walls) -> dict:
    """Steady rate from the difference of two job sizes; start-up = what the smaller job took
    beyond its frames at that rate (cluster/actor start, model load, pipeline fill)."""
    (n1, n2), (t1, t2) = counts, walls
    fps = (n2 - n1) / (t2 - t1)
    return dict(engine=name, **{f"wall_s_{n1}": round(t1, 2), f"wall_s_{n2}": round(t2, 2)},
                steady_fps=round(fps, 3), startup_s=round(t1 - n1 / fps, 2))


def throughput(args) -> list[dict]:
    import torch

    from birefnet_core.batch import JobSpec, plan_job, run_local

    cache = Path(args.cache)
    ckpt = _checkpoint(cache)
    size = tuple(map(int, args.size.split("x")))
    counts = args.images
    folders = [_images(cache, n, size) for n in counts]
    spec = JobSpec(output=args.output, exact=False, resolution=args.resolution,
                   batch_size=args.batch_size)
    rows = []
    torch.set_num_threads(args.local_threads)
    with tempfile.TemporaryDirectory() as tmp:
        walls = []
        for n, folder in zip(counts, folders):
            out = Path(tmp) / f"local{n}"
            plan = plan_job([str(folder)], out, spec)
            out.mkdir()
            walls.append(_timed(lambda: run_local(plan, spec, ckpt, manifest=False)))
        rows.append(_fit(f"local, {args.local_threads} thread(s)", counts, walls))
        print(json.dumps(rows[-1]), flush=True)

        import ray

        from birefnet_core.batch.ray_engine import run_ray

        init_s = _timed(lambda: ray.init(num_cpus=4, include_dashboard=False,
                                         log_to_driver=False,
                                         runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}))
        rows.append(dict(engine="ray.init (local cluster, 4 logical CPUs)",
                         startup_s=round(init_s, 2)))
        print(json.dumps(rows[-1]), flush=True)
        for workers in (1, 2):
            walls = [_timed(lambda: run_ray([str(folder)], str(Path(tmp) / f"ray{workers}-{n}"),
                                            spec, str(ckpt), workers=workers))
                     for n, folder in zip(counts, folders)]
            rows.append(_fit(f"ray, {workers} actor(s) x 1 CPU", counts, walls))
            print(json.dumps(rows[-1]), flush=True)
        ray.shutdown()
    one, two = rows[2]["steady_fps"], rows[3]["steady_fps"]
    rows.append(dict(engine="scaling efficiency (2 actors / 2 x 1 actor, steady)",
                     value=round(two / (2 * one), 3)))
    print(json.dumps(rows[-1]), flush=True)
    return rows


def memory(args) -> list[dict]:
    cache = Path(args.cache)
    ckpt = _checkpoint(cache)
    rows = []
    for seconds in args.seconds:
        video = _video(cache, seconds)
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["remove", str(ckpt), str(video), "-o", tmp, "--output", "mask",
                    "--video-format", "png", "--resolution", args.resolution, "-q"]
            code = (f"import atexit; atexit.register(lambda: exec({_PEAK!r}));"
                    "from birefnet_core.cli import main; import sys;"
                    f"sys.exit(main({argv!r}))")
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  cwd=REPO)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            peak = next(int(line.split()[1]) for line in proc.stderr.splitlines()
                        if line.startswith("PEAK_KIB"))
            frames = len(list((Path(tmp) / video.stem).iterdir()))
        rows.append(dict(video=f"{seconds} s 1080p 25 fps", frames=frames,
                         peak_rss_mib=round(peak / 1024), wall_s=round(wall, 1),
                         fps=round(frames / wall, 2)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                        "birefnet-bench-batch"))
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--images", type=int, nargs=2, default=[16, 48],
                   help="two job sizes: the steady rate is taken from their difference")
    t.add_argument("--local-threads", type=int, default=1,
                   help="torch threads of the local engine (1: like one Ray actor)")
    t.add_argument("--size", default="640x480")
    t.add_argument("--resolution", default="256x256")
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--output", default="mask")
    m = sub.add_parser("memory")
    m.add_argument("--seconds", type=int, nargs="+", default=[10, 60])
    m.add_argument("--resolution", default="64x64")
    args = parser.parse_args()
    rows = throughput(args) if args.what == "throughput" else memory(args)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
