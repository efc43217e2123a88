"""GPU check in one command: tests on the device, fidelity, speed, memory and kernel choices.

    PYTHONPATH=. python benchmarks/gpu_check.py                  # CUDA, < 8 minutes on an H100
    PYTHONPATH=. python benchmarks/gpu_check.py --dry-run        # CPU, tiny sizes, seconds

On the device (default ``cuda``) it

1. runs the device-aware tests (``BIREFNET_TEST_DEVICE=<device>``, see ``tests/devices.py``):
   the fidelity tests of the exact and optimised models, the exact-vs-fast Swin tests and the
   kernel-selection tests with the real kernels;
2. checks fidelity: fp32 on the device against the CPU reference fixtures (max |Δ prob| must be
   ≤ 1e-4, TF32 off), and fp16 / bf16 autocast against fp32 on the device (reported);
3. measures latency at batch 1 and throughput at batch 4 and 16 for lite and Swin-L (random
   weights, 1024²) in exact, optimised and compiled modes, with peak device memory;
4. lists the kernels :mod:`birefnet_core.kernels` chose, with the timings of every candidate;
5. times the post-processing on the device at 2048² (a mask predicted at 1024², soft edges):
   ``refine_edges`` (``guided`` and ``matting``) and ``estimate_foreground``, one frame and a
   batch of 8 (video frames).

It writes one JSON (``--out``, default ``benchmarks/gpu_check.json``; rewritten atomically after
every section and every measured mode, so a run cut short leaves what it measured, with
``"complete": false``) and prints one markdown report (also written beside the JSON as ``.md``). A global time budget (``--budget``, default
450 s) skips what no longer fits, and says so. Targets (H100, fp16/bf16): Swin-L 1024² ≥ 60
images/s batched, ≤ 15 ms at batch 1, ≤ 2.5 GB peak at batch 1; lite ≥ 150 images/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from birefnet_core import kernels  # noqa: E402
from birefnet_core.optimize import compile_for_inference, optimize_for_inference  # noqa: E402

FIXTURES = Path(os.environ.get("BIREFNET_SHARED", ROOT.parent / "shared")) / "fixtures" / "birefnet"
MODELS = {"lite": "swin_v1_t", "swin_l": "swin_v1_l"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICE_TESTS = ["tests/test_model_fidelity.py", "tests/test_optimize.py", "tests/test_kernels.py",
                "-k", "not test_kernels or deformable or swin_stage or reported"]
DRY_TESTS = ["tests/test_kernels.py", "-k", "forced or bucketed"]
TARGETS = {  # (model, metric) -> (comparison, value); for an H100 in fp16 or bf16
    ("swin_l", "images_per_s_batched"): (">=", 60.0),
    ("swin_l", "latency_ms_batch1"): ("<=", 15.0),
    ("swin_l", "peak_gib_batch1"): ("<=", 2.5),
    ("lite", "images_per_s_batched"): (">=", 150.0),
}
FP32_TOLERANCE = 1e-4


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict:
    import torchvision

    info = {"device": kernels.device_name(device), "device_type": device.type,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    return info


# -- 1. tests on the device ----------------------------------------------------------------------

def run_tests(device: torch.device, selection: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        env = {**os.environ, "BIREFNET_TEST_DEVICE": str(device), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", *selection]
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=max(10.0, timeout))
        except subprocess.TimeoutExpired:
            return {"status": f"timed out after {timeout:.0f} s", "selection": selection}
        result = {"selection": selection, "returncode": proc.returncode,
                  "seconds": round(time.monotonic() - start, 1)}
        if report.exists():
            suite = ET.parse(report).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            result.update(counts, passed=counts["tests"] - counts["failures"] - counts["errors"]
                          - counts["skipped"])
            result["failed_tests"] = [f"{case.get('classname')}::{case.get('name')}"
                                      for case in suite.iter("testcase")
                                      if case.find("failure") is not None
                                      or case.find("error") is not None]
        result["status"] = "passed" if proc.returncode == 0 else "FAILED"
        if proc.returncode:
            result["tail"] = proc.stdout[-3000:]
        return result


# -- 2. fidelity ---------------------------------------------------------------------------------

def fidelity(device: torch.device, dry: bool, dtypes: list[str]) -> dict:
    from safetensors.torch import load_file

    from birefnet_core.weights import load_model

    weights = FIXTURES / "lite_fp16.safetensors"
    if not weights.exists():
        return {"status": f"skipped: {weights} is absent"}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    exact = load_model(weights, family="lite", device=device).model
    models = {"exact": exact, "optimised": optimize_for_inference(copy.deepcopy(exact))}
    sizes, orders = (("256x256",), ("split",)) if dry else (("256x256", "256x384"),
                                                            ("split", "einops"))
    rows, worst = [], 0.0
    for size in sizes:
        x = load_file(str(FIXTURES / f"input_{size}.safetensors"))["input"].to(device)
        for order in orders:
            ref = load_file(str(FIXTURES / order / f"output_{size}.safetensors"))["prob"]
            for mode, model in models.items():
                model.patch_order = order
                fp32 = model(x).float().sigmoid()
                err = (fp32.cpu() - ref).abs().max().item()
                worst = max(worst, err)
                rows.append({"mode": mode, "size": size, "order": order, "dtype": "fp32",
                             "vs": "CPU reference", "max_abs": err,
                             "ok": err <= FP32_TOLERANCE})
                for name in dtypes:
                    if name == "fp32":
                        continue
                    with torch.autocast(device.type, dtype=DTYPES[name]):
                        low = model(x).float().sigmoid()
                    d = (low - fp32).abs()
                    rows.append({"mode": mode, "size": size, "order": order, "dtype": name,
                                 "vs": "fp32 on the device", "max_abs": d.max().item(),
                                 "mean_abs": d.mean().item()})
    return {"status": "passed" if worst <= FP32_TOLERANCE else "FAILED",
            "fp32_worst": worst, "tolerance": FP32_TOLERANCE, "rows": rows}


# -- 3. speed and memory -------------------------------------------------------------------------

def build(model: str, device: torch.device):
    from birefnet_core.variants import Architecture
    from birefnet_core.weights import build_model

    torch.manual_seed(0)
    return build_model(Architecture(MODELS[model]), device=device)


def time_batch(net, x: torch.Tensor, device: torch.device, dtype: torch.dtype, warmup: int,
               iters: int) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else torch.autocast(device.type, enabled=False))
    times = []
    with autocast:
        for i in range(warmup + iters):
            sync(device)
            start = time.perf_counter()
            net(x)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1e3
    out = {"median_ms": round(ms, 3), "min_ms": round(min(times) * 1e3, 3),
           "images_per_s": round(x.shape[0] / (ms / 1e3), 2)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def speed(device: torch.device, args, budget: Budget, rows: list | None = None,
          save=lambda: None) -> list[dict]:
    """Exact and optimised modes of every model first, compiled ones last (compiling takes
    the longest, and is what the time budget cuts first). Rows go into ``rows``; ``save()``
    after each mode."""
    rows = [] if rows is None else rows
    dtype = DTYPES[args.speed_dtype]
    groups = [[m for m in args.modes if m != "compiled"],
              [m for m in args.modes if m == "compiled"]]
    for modes in filter(None, groups):
        for model_name in args.models:
            if not budget.allows(args.min_section_s):
                rows += [{"model": model_name, "mode": m, "status": "skipped: time budget"}
                         for m in modes]
                continue
            exact = build(model_name, device)
            for mode in modes:
                rows += speed_of_mode(exact, model_name, mode, device, dtype, args, budget)
                save()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del exact
            torch._dynamo.reset()
    return rows


def speed_of_mode(exact, model_name: str, mode: str, device: torch.device, dtype: torch.dtype,
                  args, budget: Budget) -> list[dict]:
    if not budget.allows(args.min_section_s):
        return [{"model": model_name, "mode": mode, "status": "skipped: time budget"}]
    start = time.monotonic()
    try:
        if mode == "exact":
            net = exact
        elif mode == "optimised":
            net = optimize_for_inference(copy.deepcopy(exact))
        else:
            net = copy.deepcopy(exact)
            torch._dynamo.reset()
            compile_for_inference(net, backend=args.compile_backend,
                                  warmup_sizes=[(args.size, args.size)])
    except Exception as exc:  # noqa: BLE001 - report and go on
        return [{"model": model_name, "mode": mode,
                 "status": f"error: {type(exc).__name__}: {str(exc)[:200]}"}]
    rows = []
    for batch in args.batches:
        row = {"model": model_name, "mode": mode, "dtype": args.speed_dtype, "size": args.size,
               "batch": batch}
        if not budget.allows(args.min_section_s / 2):
            rows.append({**row, "status": "skipped: time budget"})
            continue
        first = time.monotonic()
        try:
            x = torch.randn(batch, 3, args.size, args.size, device=device)
            with torch.inference_mode():
                row.update(time_batch(net, x, device, dtype, args.warmup,
                                      args.iters if batch == 1 else max(1, args.iters // 2)))
        except torch.OutOfMemoryError:
            row["status"] = "out of memory"
        except Exception as exc:  # noqa: BLE001
            row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
        x = None
        row["seconds"] = round(time.monotonic() - first, 1)
        if batch == args.batches[0]:
            row["setup_s"] = round(first - start, 1)  # optimising or compiling
        rows.append(row)
    return rows


def postprocess(device: torch.device, args, budget: Budget, rows: list | None = None,
                save=lambda: None) -> list[dict]:
    """Median times of the mask post-processing on the device: a synthetic frame (a disc with
    a soft, wavy rim over a textured background) at ``args.post_size``², its mask degraded as a
    segmenter at half that size gives it (squash, blur, bilinear back). Rows go into ``rows``;
    ``save()`` after each."""
    from benchmarks.matting_protocol import degrade, wavy_disc
    from birefnet_core.edges import refine_edges
    from birefnet_core.foreground import estimate_foreground

    n, ws = args.post_size, args.post_size // 2
    g = torch.Generator().manual_seed(0)
    alpha = wavy_disc(n, 8)
    fg = torch.tensor([0.8, 0.5, 0.3]).view(1, 3, 1, 1) + 0.05 * torch.rand(1, 3, n, n,
                                                                         generator=g)
    bg = torch.tensor([0.2, 0.6, 0.3]).view(1, 3, 1, 1) + 0.1 * torch.rand(1, 3, n, n,
                                                                        generator=g)
    image = (alpha * fg + (1 - alpha) * bg).clamp(0, 1)
    mask = degrade(alpha, ws, 1.0, blur="gaussian")
    rows = [] if rows is None else rows
    for batch in (1, 8):
        img = image.expand(batch, -1, -1, -1).contiguous().to(device)
        m = mask.expand(batch, -1, -1, -1).contiguous().to(device)
        guide = img.permute(0, 2, 3, 1)
        for op, run in (("refine guided", lambda: refine_edges(m, guide, ws, "guided")),
                        ("refine matting", lambda: refine_edges(m, guide, ws, "matting")),
                        ("estimate_foreground", lambda: estimate_foreground(img, m,
                                                                            working_size=ws))):
            row = {"op": op, "size": n, "working_size": ws, "batch": batch}
            if not budget.allows(args.min_section_s / 2):
                rows.append({**row, "status": "skipped: time budget"})
                continue
            try:
                times = []
                warmup = min(args.warmup, 1)  # (each call is a whole frame's work)
                for i in range(warmup + max(1, min(3, args.iters))):
                    sync(device)
                    start = time.perf_counter()
                    run()
                    sync(device)
                    if i >= warmup:
                        times.append(time.perf_counter() - start)
                row["median_ms"] = round(statistics.median(times) * 1e3, 2)
                row["ms_per_frame"] = round(row["median_ms"] / batch, 2)
            except torch.OutOfMemoryError:
                row["status"] = "out of memory"
            except Exception as exc:  # noqa: BLE001 - report and go on
                row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
            save()
    return rows


def targets(rows: list[dict], device_name: str) -> list[dict]:
    out = []
    for (model, metric), (cmp, value) in TARGETS.items():
        ok_rows = [r for r in rows if r.get("model") == model and "median_ms" in r
                   and r.get("mode") != "exact"]
        if metric == "images_per_s_batched":
            vals = [r["images_per_s"] for r in ok_rows if r["batch"] > 1]
            got = max(vals) if vals else None
        elif metric == "latency_ms_batch1":
            vals = [r["median_ms"] for r in ok_rows if r["batch"] == 1]
            got = min(vals) if vals else None
        else:
            vals = [r["peak_gib"] for r in ok_rows if r["batch"] == 1 and "peak_gib" in r]
            got = min(vals) if vals else None
        met = None if got is None else (got >= value if cmp == ">=" else got <= value)
        out.append({"model": model, "metric": metric, "target": f"{cmp} {value}",
                    "measured": got, "met": met, "on": device_name,
                    "note": "" if "H100" in device_name else "targets are set for an H100"})
    return out


# -- report --------------------------------------------------------------------------------------

def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"## GPU check on {env['device']} ({env['device_type']}), torch {env['torch']}, "
             f"torchvision {env['torchvision']}" + (" — DRY RUN" if result["dry_run"] else ""),
             ""]
    t = result.get("tests", {})
    lines += [f"Tests on the device: **{t.get('status', 'not run')}** "
              f"({t.get('passed', '?')} passed, {t.get('failures', 0)} failed, "
              f"{t.get('skipped', 0)} skipped, {t.get('seconds', '?')} s)", ""]
    f = result.get("fidelity", {})
    lines += [f"Fidelity: **{f.get('status', 'not run')}** (fp32 worst max |Δ prob| vs the CPU "
              f"reference {f.get('fp32_worst', float('nan')):.2e}, bar {FP32_TOLERANCE:g})", ""]
    if f.get("rows"):
        lines += ["| mode | size | order | dtype | vs | max abs | mean abs |",
                  "|---|---|---|---|---|---|---|"]
        for r in f["rows"]:
            mean = f"{r['mean_abs']:.1e}" if "mean_abs" in r else ""
            lines.append(f"| {r['mode']} | {r['size']} | {r['order']} | {r['dtype']} | "
                         f"{r['vs']} | {r['max_abs']:.1e} | {mean} |")
        lines.append("")
    lines += ["| model | mode | dtype | size | batch | median ms | images/s | peak GiB | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result.get("speed", []):
        lines.append(f"| {r.get('model', '')} | {r.get('mode', '')} | {r.get('dtype', '')} | "
                     f"{r.get('size', '')} | {r.get('batch', '')} | {r.get('median_ms', '')} | "
                     f"{r.get('images_per_s', '')} | {r.get('peak_gib', '')} | "
                     f"{r.get('status', '')} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for r in result.get("targets", []):
        lines.append(f"| {r['model']} {r['metric']} {r['target']} | {r['measured']} | "
                     f"{r['met']} {r['note']} |")
    lines += ["", "| kernel op | key | chosen | how | candidate ms |", "|---|---|---|---|---|"]
    for c in result.get("kernels", []):
        times = ", ".join(f"{k} {v:.3f}" for k, v in c["times_ms"].items())
        lines.append(f"| {c['op']} | {c['key']} | {c['chosen']} | {c['source']} | {times} |")
    lines += ["", "| post-processing | size | working size | batch | median ms | ms / frame | "
              "note |", "|---|---|---|---|---|---|---|"]
    for r in result.get("postprocess", []):
        lines.append(f"| {r['op']} | {r['size']} | {r['working_size']} | {r['batch']} | "
                     f"{r.get('median_ms', '')} | {r.get('ms_per_frame', '')} | "
                     f"{r.get('status', '')} |")
    lines += ["", f"Total {result['seconds']} s (budget {result['budget_s']} s)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes, one iteration: checks that the script works")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check.json"))
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for everything")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["exact", "optimised", "compiled"],
                        choices=["exact", "optimised", "compiled"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--speed-dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--fidelity-dtypes", nargs="+", default=["fp16", "bf16"],
                        choices=list(DTYPES))
    parser.add_argument("--post-size", type=int, default=2048,
                        help="frame side for the post-processing timings")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--min-section-s", type=float, default=30.0,
                        help="a model or mode starts only with this much budget left")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device = args.device or "cpu"
        args.size, args.batches, args.warmup, args.iters = 64, [1, 2], 0, 1
        args.post_size = 128
        args.speed_dtype, args.fidelity_dtypes = "fp32", ["bf16"]
        args.compile_backend, args.min_section_s = "eager", 0.0
        if args.models == list(MODELS):
            args.models = ["lite"]  # Swin-L exercises nothing more, slowly
    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --dry-run to check the script on the CPU")
    budget = Budget(args.budget)
    start = time.monotonic()
    result = {"dry_run": args.dry_run, "budget_s": args.budget, "complete": False,
              "environment": environment(device),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["seconds"] = round(time.monotonic() - start, 1)
        result["kernels"] = kernels.choices()
        part = out.with_name(out.name + ".part")
        part.write_text(json.dumps(result, indent=1, default=str))
        os.replace(part, out)

    if not args.skip_tests:
        selection = DRY_TESTS if args.dry_run else DEVICE_TESTS
        result["tests"] = run_tests(device, selection, min(240.0, budget.left() - 120))
        print(f"tests: {result['tests']['status']}", flush=True)
        save()
    result["fidelity"] = (fidelity(device, args.dry_run, args.fidelity_dtypes)
                          if budget.allows(args.min_section_s) else
                          {"status": "skipped: time budget"})
    print(f"fidelity: {result['fidelity']['status']}", flush=True)
    save()
    # Before the model speed: short, and not to be cut by the compiled modes' budget.
    postprocess(device, args, budget, rows=result.setdefault("postprocess", []), save=save)
    speed(device, args, budget, rows=result.setdefault("speed", []), save=save)
    result["targets"] = targets(result["speed"], result["environment"]["device"])
    result["complete"] = True
    save()
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    failed = (result.get("tests", {}).get("status") == "FAILED"
              or result["fidelity"].get("status") == "FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
