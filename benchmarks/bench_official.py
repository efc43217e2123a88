"""CPU speed against the official BiRefNet code, side by side in one process (issue 16, item 7).

Three models with the same weights run the same input, timed interleaved (official, exact, fast,
official, exact, fast, ...) so that load from other processes hits all of them alike:

* ``official``: the model class of the official repository (ZhengPeng7/BiRefNet), imported at run
  time from a checkout *outside* this repo, float32, eval mode, under ``torch.no_grad()`` as its
  ``inference.py`` runs it;
* ``exact``: this repo's re-implementation as ``load_model`` builds it, loaded with the official
  model's state dict (``birefnet_core.weights``);
* ``fast``: the same after ``birefnet_core.optimize.optimize_for_inference``.

Before timing, the outputs are compared (max |Δ sigmoid| and max |Δ logit| against the official
output). Weights are the official model's own random initialisation (``bb_pretrained=False``),
or ``--checkpoint FILE`` (any BiRefNet weights file this repo reads; its backbone must be the one
of the single ``--models`` given). Speed does not depend on the values. With the random init the
logits stay near 0 (|logit| < 0.5, every sigmoid near 0.5), so the logit difference is the
stricter check there; real weights (e.g. ``--checkpoint ../shared/fixtures/birefnet/
lite_fp16.safetensors`` for lite) give saturating masks. The first (warm-up) call of each mode is
printed separately; the fast model's includes measuring its kernel candidates
(``birefnet_core.kernels``).

Getting the official code (never copy it into this repo; it is only put on ``sys.path`` here)::

    git clone https://github.com/ZhengPeng7/BiRefNet /work/official/BiRefNet

(checked against its commit 25cb930 of 2026-07-24; the commit is printed with the results).
It needs ``timm``, ``einops``, ``kornia`` and ``huggingface_hub`` importable (``pip install
--no-deps timm einops kornia kornia_rs huggingface_hub`` if missing; never let pip touch torch).
Its ``dataset.py`` (imported by the model for a training-only label list) needs OpenCV; when
``cv2`` is missing a stand-in module with that list is used instead. The official ``Config``
picks the backbone by a hard-coded list index; this script wraps ``Config.__init__`` at run time
to select ``swin_v1_t`` (lite) or ``swin_v1_l`` (Swin-L) and derive the decoder widths from it
as the official config does. All its other settings stay the official defaults (multi-scale input
``cat``, ``dec_ipt`` with split patches, BatchNorm since ``batch_size > 1``, SDPA attention).

Run from the repo root, on a quiet machine::

    PYTHONPATH=. python benchmarks/bench_official.py --official /work/official/BiRefNet \\
        --models lite swin_l --size 1024 --threads 2 --repeats 3

    # quick correctness check (about a minute)
    PYTHONPATH=. python benchmarks/bench_official.py --official /work/official/BiRefNet \\
        --models lite --size 256 --repeats 1

Per model it prints the timings, then one JSON line (``{"model": ..., "median_ms": ...}``) and a
markdown table row: model | official | exact | fast | fast/official | exact/official | max |Δ
sigmoid| (medians; min in parentheses). ``--bf16`` adds the fast model under CPU bf16 autocast
(what ``precision="bf16"`` runs) to the printed timings and the JSON, with its own max |Δ sigmoid|
(not in the table, which compares fp32 with fp32).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

MODELS = {"lite": "swin_v1_t", "swin_l": "swin_v1_l"}
# The official config's ``lateral_channels_in_collection`` for the two backbones benchmarked.
_OFFICIAL_LATERAL = {"swin_v1_t": [768, 384, 192, 96], "swin_v1_l": [1536, 768, 384, 192]}
_OFFICIAL_MODULES = ("config", "dataset", "models", "utils", "image_proc")

_variant = {"bb": None}  # the backbone the wrapped official Config selects


def import_official(path: Path):
    """The official ``BiRefNet`` class and the source of its model module, imported from
    ``path`` with its ``Config`` wrapped to honour ``_variant['bb']``."""
    if not (path / "models" / "birefnet.py").is_file() or not (path / "config.py").is_file():
        sys.exit(f"{path} is not a checkout of ZhengPeng7/BiRefNet (no config.py / "
                 "models/birefnet.py)")
    repo = Path(__file__).resolve().parents[1]
    if path.resolve() == repo or repo in path.resolve().parents:
        sys.exit(f"{path} is inside this repo; check the official code out elsewhere")
    clash = [m for m in _OFFICIAL_MODULES if m in sys.modules]
    if clash:
        sys.exit(f"modules {clash} are already imported; the official code needs those names")
    sys.path.insert(0, str(path))

    config = importlib.import_module("config")
    original_init = config.Config.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        bb = _variant["bb"]
        if bb is None or bb == self.bb:
            return
        self.bb = bb
        lateral = list(_OFFICIAL_LATERAL[bb])
        if self.mul_scl_ipt == "cat":
            lateral = [c * 2 for c in lateral]
        self.lateral_channels_in_collection = lateral
        self.cxt = lateral[1:][::-1][-self.cxt_num:] if self.cxt_num else []

    config.Config.__init__ = init

    try:
        importlib.import_module("dataset")
    except ImportError as exc:  # cv2 (OpenCV) for the data pipeline, which is not run here
        stub = types.ModuleType("dataset")
        # Used only by the auxiliary classification head, off in the official config.
        stub.class_labels_TR_sorted = []
        sys.modules["dataset"] = stub
        print(f"note: official dataset.py not importable ({exc}); a stand-in provides "
              "class_labels_TR_sorted", flush=True)
    module = importlib.import_module("models.birefnet")
    return module.BiRefNet, inspect.getsource(module)


def official_patch_order(source: str) -> str:
    """The image-patch channel order of the official decoder: ``einops`` since Nov 2024."""
    return "einops" if "b (c hg wg) h w" in source else "split"


def build_pair(official_cls, model: str, checkpoint: str | None, patch_order: str):
    """The official model and ours with the same weights; ``(official, exact, info)``."""
    from birefnet_core.weights import (
        build_model,
        detect_architecture,
        filter_checkpoint,
        read_checkpoint,
    )

    _variant["bb"] = MODELS[model]
    torch.manual_seed(0)
    official = official_cls(bb_pretrained=False).eval()
    if official.config.bb != MODELS[model]:
        sys.exit(f"the official Config selected {official.config.bb}, not {MODELS[model]}")
    if checkpoint:
        sd, stored = filter_checkpoint(read_checkpoint(checkpoint), checkpoint)
        missing, unexpected = official.load_state_dict(sd, strict=False)
        # relative_position_index is a derived buffer that some exports leave out.
        missing = [k for k in missing if not k.endswith("relative_position_index")]
        if missing or unexpected:
            sys.exit(f"{checkpoint} does not fit the official {MODELS[model]} model: "
                     f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        source = f"{checkpoint} ({stored})"
    else:
        source = "random (official init, seed 0)"
    # The official model's own state dict, cloned so that ours shares no storage with it.
    sd = {k: v.detach().clone() for k, v in official.state_dict().items()}
    clean, _ = filter_checkpoint(sd)
    arch = detect_architecture(clean)
    if arch.backbone != MODELS[model]:
        sys.exit(f"the weights are {arch.backbone}, not {MODELS[model]} ({model})")
    exact = build_model(arch, clean, patch_order=patch_order)
    return official, exact, {"weights": source, "arch": arch.name}


def bench(args: argparse.Namespace, official_cls, patch_order: str, model: str) -> dict:
    from birefnet_core.optimize import optimize_for_inference

    official, exact, info = build_pair(official_cls, model, args.checkpoint, patch_order)
    fast = optimize_for_inference(copy.deepcopy(exact))
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def run_official(t):
        with torch.no_grad():
            return official(t)[-1]

    runs = [("official", run_official), ("exact", exact), ("fast", fast)]
    if args.bf16:
        from birefnet_core.plan import resolve_precision

        bf16 = resolve_precision("bf16", "cpu")

        def run_fast_bf16(t):
            with bf16.autocast():  # what precision="bf16" runs on a CPU
                return fast(t)

        runs.append(("fast_bf16", run_fast_bf16))
    times = {mode: [] for mode, _ in runs}
    first = {}
    outputs = {}
    for i in range(args.warmup + args.repeats):
        for mode, fn in runs:
            start = time.perf_counter()
            out = fn(x)
            elapsed = time.perf_counter() - start
            if i == 0:
                outputs[mode] = out.float()
            if i >= args.warmup:
                times[mode].append(elapsed)
            elif i == 0:
                first[mode] = elapsed * 1e3
        if i == 0:
            ref = outputs["official"]
            diffs = {mode: {"max_dsigmoid": (outputs[mode].sigmoid() - ref.sigmoid())
                            .abs().max().item(),
                            "max_dlogit": (outputs[mode] - ref).abs().max().item()}
                     for mode in outputs if mode != "official"}
            sig = ref.sigmoid()
            logit_stats = {"logit_std": ref.std().item(), "logit_absmax": ref.abs().max().item(),
                           "frac_sigmoid_in_0.01_0.99": ((sig > 0.01) & (sig < 0.99))
                           .float().mean().item()}
            print(f"  {model}: output check vs official: " + "; ".join(
                f"{m} max|Δ sigmoid| {d['max_dsigmoid']:.1e}, max|Δ logit| {d['max_dlogit']:.1e}"
                for m, d in diffs.items())
                + f" (official logits std {logit_stats['logit_std']:.3g}, "
                f"|max| {logit_stats['logit_absmax']:.3g}, "
                f"{logit_stats['frac_sigmoid_in_0.01_0.99']:.0%} of sigmoid in (0.01, 0.99))",
                flush=True)
            if any(d["max_dsigmoid"] > args.tolerance for m, d in diffs.items()
                   if m != "fast_bf16"):
                print(f"  WARNING: {model} differs from the official output by more than "
                      f"{args.tolerance:g}", flush=True)
    med = {mode: statistics.median(t) * 1e3 for mode, t in times.items()}
    low = {mode: min(t) * 1e3 for mode, t in times.items()}
    return {"model": model, **info, "size": args.size, "threads": args.threads,
            "patch_order": patch_order, "repeats": args.repeats,
            "median_ms": med, "min_ms": low, "first_ms": first,
            "times_ms": {m: [round(t * 1e3, 1) for t in ts] for m, ts in times.items()},
            "fast_over_official": med["fast"] / med["official"],
            "exact_over_official": med["exact"] / med["official"],
            "fast_over_official_min": low["fast"] / low["official"],
            "exact_over_official_min": low["exact"] / low["official"],
            **({"fast_bf16_over_official": med["fast_bf16"] / med["official"]}
               if "fast_bf16" in med else {}),
            "check": diffs, **logit_stats}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ms(med: float, low: float) -> str:
    return f"{med:,.0f} ms ({low:,.0f})".replace(",", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path,
                        help="checkout of github.com/ZhengPeng7/BiRefNet outside this repo")
    parser.add_argument("--models", nargs="+", default=["lite", "swin_l"], choices=list(MODELS))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None,
                        help="weights file for both (default: the official random init)")
    parser.add_argument("--patch-order", choices=("auto", "split", "einops"), default="auto",
                        help="ours; auto: the one the official checkout's decoder uses")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max |Δ sigmoid| above which a warning is printed")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the fast model under CPU bf16 autocast (precision=bf16; "
                             "not the fp32 comparison of issue 16, a separate row)")
    args = parser.parse_args()
    if args.size % 32:
        parser.error("--size must be a multiple of 32")
    if args.warmup < 1 or args.repeats < 1:
        parser.error("--warmup and --repeats must be at least 1")
    if args.checkpoint and len(args.models) != 1:
        parser.error("--checkpoint needs exactly one --models entry (the file's backbone)")
    torch.set_num_threads(args.threads)

    official_cls, source = import_official(args.official.expanduser())
    order = official_patch_order(source) if args.patch_order == "auto" else args.patch_order
    commit = _git_head(args.official)
    print(f"torch {torch.__version__}, {_cpu_name()}, float32, batch 1, {args.size}x{args.size}, "
          f"{args.threads} threads, {args.repeats} timed repeats after {args.warmup} warm-up; "
          f"official code {args.official} ({commit}), patch order {order}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    rows = []
    for model in args.models:
        r = bench(args, official_cls, order, model)
        r["official_commit"] = commit
        r["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
        med, low = r["median_ms"], r["min_ms"]
        print(f"  {model:7s} official {med['official']:9.0f} ms  exact {med['exact']:9.0f} ms  "
              f"fast {med['fast']:9.0f} ms  fast/official {r['fast_over_official']:.3f}  "
              f"exact/official {r['exact_over_official']:.3f}"
              + (f"  fast bf16 {med['fast_bf16']:.0f} ms, /official "
                 f"{r['fast_bf16_over_official']:.3f}" if "fast_bf16" in med else ""),
              flush=True)
        print(f"          all timings (ms): {r['times_ms']}; first call (ms): "
              + ", ".join(f"{m} {t:.0f}" for m, t in r["first_ms"].items()), flush=True)
        print(json.dumps(r), flush=True)
        worst = max(d["max_dsigmoid"] for m, d in r["check"].items() if m != "fast_bf16")
        rows.append(f"| {model} | {_ms(med['official'], low['official'])} | "
                    f"{_ms(med['exact'], low['exact'])} | {_ms(med['fast'], low['fast'])} | "
                    f"**{r['fast_over_official']:.3f}** ({r['fast_over_official_min']:.3f}) | "
                    f"{r['exact_over_official']:.3f} ({r['exact_over_official_min']:.3f}) | "
                    f"{worst:.1e} |")
        del r
    print("\n| model | official | exact | fast | fast / official | exact / official | "
          "max \\|Δ sigmoid\\| |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("(medians; min in parentheses)")


def _git_head(path: Path) -> str:
    """The checkout's commit when it is a git work tree, else 'no git metadata'."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "no git metadata"
    return out.stdout.strip() if out.returncode == 0 else "no git metadata"


if __name__ == "__main__":
    main()
