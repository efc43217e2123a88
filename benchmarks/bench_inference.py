"""Throughput and peak memory of ``birefnet_core.inference.predict_masks``.

Prints frames/s and peak memory (CUDA: the caching allocator's peak; CPU: the process's peak
resident set) for one model, working resolution, precision and chunk size, next to the
engine's own estimate (``estimate_memory``)::

    python benchmarks/bench_inference.py models/BiRefNet-general.safetensors --device cuda \\
        --resolution 1024x1024 --precision auto --batch-size 4 --frames 32
    python benchmarks/bench_inference.py --random pvt_v2_b0 --resolution 512x512 --frames 4
    python benchmarks/bench_inference.py --random swin_v1_l --device cuda --size 1024x1024 \\
        --batch-size 1 --frames 32 --repeats 3 --compare-fp32      # latency, mask vs fp32

``--mode``: ``fast`` (default, what the nodes run), ``exact`` (the unmodified network) or
``compiled`` (``compile_for_inference``, ``--compile-mode`` e.g. ``reduce-overhead``; the
warm-up call compiles). ``--compare-fp32`` also runs the frames in fp32 and prints the largest
mask difference (the issue's 1e-2 criterion for reduced precision).

``--random ARCH`` builds a random-weight model (``swin_v1_l``, ``pvt_v2_b0``, ...,
``swin_v1_l_legacy``, ``swin_v1_l_no_bn``) so it runs without a checkpoint: the speed and memory
of random weights are those of the real ones.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from birefnet_core.inference import predict_masks  # noqa: E402
from birefnet_core.plan import (  # noqa: E402
    Precision,
    estimate_memory,
    resolve_precision,
    resolve_working_size,
)
from birefnet_core.variants import BACKBONES, Architecture, get_family  # noqa: E402


def random_model(arch_name: str, device: str):
    from birefnet_core.model import BiRefNet

    backbone = next((b for b in sorted(BACKBONES, key=len, reverse=True)
                     if arch_name.startswith(b)), None)
    if backbone is None:
        raise SystemExit(f"unknown architecture {arch_name!r}; one of {', '.join(BACKBONES)} "
                         "with an optional _legacy / _no_bn suffix")
    arch = Architecture(backbone, decoder="legacy" if "_legacy" in arch_name else "current",
                        batch_norm="_no_bn" not in arch_name)
    torch.manual_seed(0)
    return BiRefNet(arch).to(device), arch.name


def peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="checkpoint file (.safetensors/.pth)")
    parser.add_argument("--random", metavar="ARCH", help="random-weight model of this architecture")
    parser.add_argument("--family", default=None, help="family name (default: from the file "
                        "name, or 'general' for --random)")
    parser.add_argument("--resolution", default="auto", help="auto, dynamic or WxH")
    parser.add_argument("--precision", default="auto", choices=[p.value for p in Precision])
    parser.add_argument("--batch-size", type=int, default=0, help="frames per chunk (0 = auto)")
    parser.add_argument("--frames", type=int, default=8, help="frames per timed call")
    parser.add_argument("--size", default="1920x1080", help="frame size WxH")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of one chunk")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    parser.add_argument("--mode", default="fast", choices=("fast", "exact", "compiled"))
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode for --mode compiled (e.g. reduce-overhead)")
    parser.add_argument("--compare-fp32", action="store_true",
                        help="also run in fp32 and print the largest mask difference")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.random is None):
        parser.error("give a model file or --random ARCH (not both)")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if args.random:
        model, arch_name = random_model(args.random, args.device)
        family = get_family(args.family or "general")
    else:
        from birefnet_core.weights import load_model

        loaded = load_model(args.model, family=args.family, device=args.device)
        model, arch_name, family = loaded.model, loaded.info.arch.name, loaded.info.family

    width, height = (int(v) for v in args.size.lower().split("x"))
    images = torch.rand(args.frames, height, width, 3)
    size = resolve_working_size(family, (height, width), override=args.resolution)
    if args.mode != "exact":
        from birefnet_core.optimize import compile_for_inference, optimize_for_inference

        if args.mode == "compiled":  # optimises first
            compile_for_inference(model, mode=args.compile_mode, warmup_sizes=[size.hw])
        else:
            optimize_for_inference(model)
    plan = resolve_precision(args.precision, device)
    notes: list[str] = []
    kwargs = dict(family=family, resolution=args.resolution, precision=args.precision,
                  device=device, batch_size=args.batch_size, on_note=notes.append)

    # A compiled model compiles again for each new chunk shape: warm it up on the timed call.
    warm = args.frames if args.mode == "compiled" else max(1, args.batch_size or 1)
    for _ in range(args.warmup):
        predict_masks(model, images[:warm], **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_bytes()

    start = time.perf_counter()
    for _ in range(args.repeats):
        masks = predict_masks(model, images, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    n = args.frames * args.repeats
    chunk = args.batch_size or "auto"
    estimate = estimate_memory(model, size.wh, plan.dtype, args.batch_size or 1)
    print(f"model      {arch_name}.{family.name} ({args.mode}) on {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads)")
    print(f"work       {n} frames {width}x{height} -> {size} (WxH), {plan.name}, chunk {chunk}")
    print(f"speed      {n / seconds:.3f} frames/s ({1000 * seconds / n:.1f} ms/frame)")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        reserved = torch.cuda.max_memory_reserved(device)
        print(f"peak GPU   {peak / 2**20:.0f} MiB allocated, {reserved / 2**20:.0f} MiB reserved")
    print(f"peak host  {peak_rss_bytes() / 2**20:.0f} MiB resident "
          f"(+{max(0, peak_rss_bytes() - rss_before) / 2**20:.0f} MiB during the timed calls; "
          f"inputs {images.numel() * 4 / 2**20:.0f} MiB)")
    print(f"estimate   {estimate / 2**20:.0f} MiB for one chunk with weights (estimate_memory)")
    if args.compare_fp32:
        reference = predict_masks(model, images, **{**kwargs, "precision": "fp32"})
        delta = (masks - reference).abs()
        print(f"vs fp32    max |Δ mask| {delta.max().item():.2e}, mean {delta.mean().item():.2e}")
    for note in dict.fromkeys(notes):
        print(f"note       {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
