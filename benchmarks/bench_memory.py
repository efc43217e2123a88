"""Peak host memory (max RSS) of the command line's path: read -> predict -> write.

Each case runs the ``remove`` command (:func:`birefnet_core.cli.main`) in a fresh process (a
tiny random PVT-v2-b0 model at a small working size, so the frames' own handling dominates)
and reports that process's peak resident set (Linux ``VmHWM``), next to the peak of a process
that only imports torch and the core. Frames are synthetic PNGs written once into ``--cache`` (smooth gradients with a disc:
quick to encode, and the model sees something)::

    python benchmarks/bench_memory.py                      # 8K frame + 1000 x 1080p
    python benchmarks/bench_memory.py --frames 100 --cases seq-mask
    python benchmarks/bench_memory.py --core /tmp/old      # another checkout's core, to compare

Cases: ``8k-mask``, ``8k-rgba`` (one 7680x4320 frame; rgba runs foreground estimation),
``seq-mask``, ``seq-rgba`` (``--frames`` 1920x1080 frames; rgba over ``--rgba-frames`` of them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The process's own resident high-water mark. (Not ru_maxrss: Linux carries that over from the
# parent across exec, and this script's parent is large after writing an 8K frame.)
_PEAK = ("import sys; print(next(line for line in open('/proc/self/status') "
         "if line.startswith('VmHWM:')).replace('VmHWM:', 'PEAK_KIB'), file=sys.stderr)")


def _frame(width: int, height: int, seed: int):
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width * (0.4 + 0.02 * (seed % 10)), height * 0.5
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < (0.3 * height) ** 2
    rgb = np.stack([x / width, y / height, np.full_like(x, (seed % 7) / 7)], -1)
    rgb[disc] = [0.9, 0.4, 0.2]
    return (rgb * 255).astype(np.uint8)


def write_frames(folder: Path, count: int, width: int, height: int) -> Path:
    """``count`` PNGs of ``width`` x ``height`` in ``folder`` (kept between runs)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"frame_{i:05d}.png"
        if not path.exists():
            Image.fromarray(_frame(width, height, i)).save(path, compress_level=1)
    return folder


def tiny_checkpoint(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO))
    from birefnet_core.model import BiRefNet
    from birefnet_core.variants import Architecture

    path = folder / "BiRefNet_lite-random.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        sd = BiRefNet(Architecture("pvt_v2_b0")).state_dict()
        save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
                  str(path))
    return path


def peak_of(code: str, core: Path, threads: int) -> tuple[float, float]:
    """``(peak RSS in MiB, seconds)`` of ``python -c code`` with ``core`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(core), OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", f"{code}\n{_PEAK}"], cwd=core, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}):\n{result.stderr[-3000:]}")
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("PEAK_KIB"))
    return int(line.split()[1]) / 1024, seconds


def cli_code(model: Path, inputs: Path, out: Path, output: str, resolution: str) -> str:
    args = ["remove", str(model), str(inputs), "-o", str(out), "--output", output,
            "--resolution", resolution, "--overwrite", "-q"]
    return f"from birefnet_core.cli import main; rc = main({args!r}); assert rc == 0, rc"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="8k-mask,8k-rgba,seq-mask,seq-rgba")
    parser.add_argument("--frames", type=int, default=1000, help="1080p frames for seq-mask")
    parser.add_argument("--rgba-frames", type=int, default=100, help="1080p frames for seq-rgba")
    parser.add_argument("--resolution", default="256x256", help="the model's working size")
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "birefnet_bench_memory")
    parser.add_argument("--core", type=Path, default=REPO,
                        help="checkout whose birefnet_core runs (default: this one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    model = tiny_checkpoint(cache)
    base, _ = peak_of("import torch, birefnet_core.cli, birefnet_core.weights", args.core,
                      args.threads)
    rows = [("interpreter + torch + core imported", "-", f"{base:.0f}", "-")]
    for case in args.cases.split(","):
        kind, output = case.split("-")
        if kind == "8k":
            inputs, count = write_frames(cache / "8k", 1, 7680, 4320), 1
            label = "one 7680x4320 frame"
        else:
            count = args.frames if output == "mask" else args.rgba_frames
            inputs = write_frames(cache / f"1080p_{count}", count, 1920, 1080)
            label = f"{count} x 1920x1080 frames"
        out = Path(tempfile.mkdtemp(prefix="out_", dir=cache))
        try:
            peak, seconds = peak_of(cli_code(model, inputs, out, output, args.resolution),
                                    args.core, args.threads)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows.append((label, output, f"{peak:.0f}", f"{seconds:.0f}"))
        print(json.dumps(dict(case=case, frames=count, peak_mib=round(peak), seconds=seconds)),
              flush=True)
    print("\n| input | output | peak RSS (MiB) | wall (s) |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
