"""How far the optimised model is from the CPU's arithmetic floor (issue 16, item 7).

    PYTHONPATH=. python benchmarks/flop_floor.py --models lite swin_l --size 1024 --threads 2

For one forward of the fast model (random weights; the FLOPs do not depend on the values) it
counts the multiply-adds of every matrix product, convolution and attention call with
``torch.utils.flop_counter`` (the oneDNN linear op the fast model calls is given its formula
here), times the same forward under ``torch.profiler``, and prints per op kind: GFLOP, seconds,
GFLOP/s, and the time that kind would take at the best rate any kind reaches in this forward.
The sum of those times is the floor: what the forward would take if every product ran at the
cores' best measured rate and nothing else cost anything. The target of item 7 (a fraction of
the official code's time) is reachable in fp32 only if it lies above that floor with room for
the memory-bound ops (layer norms, copies, resampling, the deformable sampling), which are
listed with their measured total.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"lite": "swin_v1_t", "swin_l": "swin_v1_l"}


def _linear_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    """``mkldnn::_linear_pointwise``: ``x [..., K] @ w [N, K]^T``; ``w`` is the second argument,
    or the third in the ``.binary`` overload (five arguments: ``x, other, w, b, attr``)."""
    w_shape = args[1] if len(args) == 4 else args[0]
    return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


def _cpu_flash_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """``q k^T`` and ``softmax(.) v``: ``4 B H Lq Lk D``."""
    b, h, lq, d = q_shape
    return 4 * b * h * lq * k_shape[-2] * d


# Keyed by overload packet, as the flop counter looks ops up.
CUSTOM = {
    torch.ops.mkldnn._linear_pointwise: _linear_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
}
# Profiler names of the ops counted above, by the kind printed.
KINDS = {
    "mkldnn::_linear_pointwise": "linear (oneDNN, fused epilogues)",
    "aten::mkldnn_convolution": "convolution (oneDNN)",
    "aten::addmm_": "deformable convolution GEMM",
    "aten::addmm": "other matrix products",
    "aten::mm": "other matrix products",
    "aten::bmm": "other matrix products",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "window attention (flash)",
}
# Flop-counter op names (overload packets) -> the same kinds.
COUNTED = {
    "_linear_pointwise": KINDS["mkldnn::_linear_pointwise"],
    "convolution": KINDS["aten::mkldnn_convolution"],
    "mm": KINDS["aten::mm"],
    "bmm": KINDS["aten::bmm"],
    "_scaled_dot_product_flash_attention_for_cpu":
        KINDS["aten::_scaled_dot_product_flash_attention_for_cpu"],
}


def count_flops(net, x) -> dict[str, float]:
    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM)
    with counter:
        net(x)
    flops = collections.defaultdict(float)
    for op, n in counter.get_flop_counts()["Global"].items():
        name = str(op).split(".")[-1]
        if name == "addmm":
            continue  # from the profiler's shapes instead: in-place addmm_ is the deformable GEMM
        kind = COUNTED.get(name)
        if kind is None:
            raise RuntimeError(f"no kind for counted op {op}")
        flops[kind] += n
    return flops


def profile_forward(net, x):
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        net(x)
    seconds = collections.defaultdict(float)
    addmm = collections.defaultdict(float)
    other = 0.0
    for event in prof.events():
        if event.cpu_parent is not None and event.cpu_parent.name in KINDS:
            continue  # inside a counted op (its own self time is the op's)
        kind = KINDS.get(event.name)
        if kind is not None:
            seconds[kind] += event.self_cpu_time_total / 1e6
            if event.name in ("aten::addmm_", "aten::addmm"):
                _, a, b = event.input_shapes[:3]
                addmm[kind] += 2 * math.prod(a) * b[-1]
        else:
            other += event.self_cpu_time_total / 1e6
    return seconds, addmm, other


def run(model: str, size: int) -> None:
    from birefnet_core.optimize import optimize_for_inference
    from birefnet_core.variants import Architecture
    from birefnet_core.weights import build_model

    torch.manual_seed(0)
    net = optimize_for_inference(build_model(Architecture(MODELS[model])))
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        net(x)  # warm-up (the fast model measures its kernel candidates here)
        start = time.perf_counter()
        net(x)
        wall = time.perf_counter() - start
        flops = count_flops(net, x)
        seconds, addmm, other = profile_forward(net, x)
    for kind, n in addmm.items():
        flops[kind] += n
    rates = {k: flops[k] / seconds[k] for k in flops if seconds.get(k)}
    best = max(rates.values())
    print(f"\n{model} ({MODELS[model]}), {size}², {torch.get_num_threads()} threads: forward "
          f"{wall:.2f} s (profiled: {sum(seconds.values()) + other:.2f} s)")
    print("| op kind | GFLOP | s | GFLOP/s | s at the best rate |")
    print("|---|---|---|---|---|")
    floor = 0.0
    for kind in sorted(flops, key=lambda k: -flops[k]):
        at_best = flops[kind] / best
        floor += at_best
        print(f"| {kind} | {flops[kind] / 1e9:.1f} | {seconds.get(kind, 0):.2f} | "
              f"{rates.get(kind, 0) / 1e9:.0f} | {at_best:.2f} |")
    print(f"| everything else (memory-bound) | | {other:.2f} | | |")
    print(f"floor: {sum(flops.values()) / 1e9:.0f} GFLOP at {best / 1e9:.0f} GFLOP/s = "
          f"{floor:.2f} s; measured {wall:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lite", "swin_l"], choices=list(MODELS))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model in args.models:
        run(model, args.size)


if __name__ == "__main__":
    main()
