"""Exact vs fast mode, side by side in one process: same weights, same input (issue 6).

    PYTHONPATH=. python benchmarks/bench_speed.py                      # lite and Swin-L, 1024²
    PYTHONPATH=. python benchmarks/bench_speed.py --models lite --size 512 --repeats 3
    PYTHONPATH=. python benchmarks/bench_speed.py --checkpoint model.safetensors

Timings alternate exact, fast, exact, fast ... so that load from other processes hits both
modes alike; the medians and their ratio are printed, and the first (warm-up) call of each
mode, in which the fast model measures its kernel candidates (``birefnet_core.kernels``). Peak RSS is measured per mode in a fresh
subprocess (build the model, optionally optimise, one forward), so neither mode inherits the
other's high-water mark. Random weights unless ``--checkpoint`` is given; speed does not depend
on the values.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

MODELS = {"lite": "swin_v1_t", "swin_l": "swin_v1_l"}


def build(model: str, checkpoint: str | None):
    from birefnet_core.variants import Architecture
    from birefnet_core.weights import build_model, load_model

    if checkpoint:
        return load_model(checkpoint).model
    torch.manual_seed(0)
    return build_model(Architecture(MODELS[model]))


def peak_rss_child(args: argparse.Namespace, model: str, mode: str) -> float:
    """Peak RSS in MiB of a fresh process that builds the model and runs one forward."""
    cmd = [sys.executable, __file__, "--_child", mode, "--models", model, "--size",
           str(args.size), "--threads", str(args.threads)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def child(args: argparse.Namespace) -> None:
    from birefnet_core.optimize import optimize_for_inference

    net = build(args.models[0], args.checkpoint)
    if args._child == "fast":
        optimize_for_inference(net)
    net(torch.randn(1, 3, args.size, args.size))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_rss_mib": peak}))


def bench(args: argparse.Namespace, model: str) -> dict:
    from birefnet_core.optimize import optimize_for_inference

    exact = build(model, args.checkpoint)
    fast = optimize_for_inference(copy.deepcopy(exact))
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    times = {"exact": [], "fast": []}
    first = {}
    outputs = {}
    for i in range(args.warmup + args.repeats):
        for mode, net in (("exact", exact), ("fast", fast)):
            start = time.perf_counter()
            outputs[mode] = net(x)
            if i >= args.warmup:
                times[mode].append(time.perf_counter() - start)
            elif i == 0:
                first[mode] = (time.perf_counter() - start) * 1e3
    med = {mode: statistics.median(t) * 1e3 for mode, t in times.items()}
    diff = (outputs["fast"].sigmoid() - outputs["exact"].sigmoid()).abs().max().item()
    return {"model": model, "times_ms": times, "median_ms": med, "first_ms": first,
            "ratio": med["fast"] / med["exact"], "max_dsigmoid": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lite", "swin_l"], choices=list(MODELS))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--checkpoint", default=None, help="weights file (default: random)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--_child", choices=("exact", "fast"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._child:
        child(args)
        return
    print(f"torch {torch.__version__}, CPU, float32, batch 1, {args.size}x{args.size}, "
          f"{args.threads} threads, {args.repeats} timed repeats after {args.warmup} warm-up")
    for model in args.models:
        r = bench(args, model)
        rss = ({} if args.no_rss else
               {mode: peak_rss_child(args, model, mode) for mode in ("exact", "fast")})
        med = r["median_ms"]
        line = (f"{model:7s} exact {med['exact']:9.0f} ms  fast {med['fast']:9.0f} ms  "
                f"fast/exact {r['ratio']:.3f}  max|Δ sigmoid| {r['max_dsigmoid']:.1e}")
        if rss:
            line += (f"  peak RSS exact {rss['exact']:.0f} MiB  fast {rss['fast']:.0f} MiB "
                     f"({rss['fast'] / rss['exact']:.2f}x)")
        print(line, flush=True)
        raw = {m: [round(t * 1e3) for t in ts] for m, ts in r["times_ms"].items()}
        print(f"        all timings (ms): {raw}", flush=True)
        if r["first_ms"]:
            # The fast model's first call at a size also measures its kernel candidates
            # (birefnet_core.kernels), once per process.
            print("        first call (ms): " + ", ".join(
                f"{m} {t:.0f}" for m, t in r["first_ms"].items()), flush=True)
        from collections import Counter

        from birefnet_core import kernels

        chosen = Counter((c["op"], c["chosen"]) for c in kernels.choices())
        print("        kernels chosen: " + ", ".join(
            f"{op}={name} x{n}" for (op, name), n in sorted(chosen.items())), flush=True)


if __name__ == "__main__":
    main()
