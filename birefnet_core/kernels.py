"""Which implementation of an op the fast modules run, chosen by measurement on the device.

Some ops have several exact implementations whose speed depends on the device, the dtype and
the shape: the deformable convolution (the pack's gather + GEMM op, or torchvision's), the
decoder's large-kernel convolutions (direct, or through the FFT on the CPU), the Swin
linear layers (oneDNN's fused bias/GELU/residual GEMM, or the plain ops), the Swin stage (the
gathered-window blocks, or the exact blocks on the same weights), the decoder head (at 1/4 scale
with a composed image convolution, or the exact full-size one). :func:`select` picks one per
(op, device, dtype, shape bucket) the first time it is met, by timing every candidate that
runs there (one timed run each, and a second one for those close to the best when the runs are
long; for short ones a warm-up and the minimum of a few more runs of those within twice the
best, synchronising the device), and caches the choice for the process. The exact
implementation is always a candidate and keeps its place unless another one measures more than
``MARGIN`` faster: a loaded machine's noise cannot make the optimised model slower than the
exact one by more than that.

Choices can be forced, per op, with ``configure(force={"deform_conv": "torchvision"})`` or the
environment (``BIREFNET_KERNELS="deform_conv=torchvision,linear=plain"``; ``default`` runs every
op's default unmeasured, as the test suite does so that processes agree bit for bit), kept on disk
with ``configure(cache_dir=...)`` or ``BIREFNET_KERNEL_CACHE=<folder>``: one JSON file per
device name and torch / torchvision versions, written atomically. :func:`choices` lists what
was chosen, with the timings, for a report.

Under ``torch.compile`` nothing is timed: every op runs its ``default`` candidate (the compiler
fuses and tunes the graph itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from .atomic import atomic_write
from .ops import deform_conv as _dc
from .ops.fft_conv import fft_conv2d
from .ops.linear import _can_fuse, linear, plain_linear

__all__ = ["Candidate", "register", "candidates", "select", "configure", "choices", "clear",
           "defaults",
           "measure", "plain_linear", "linear_for", "deform_conv_for", "conv2d_for",
           "stage_impl_for", "head_impl_for",
           "FORCE_ENV", "CACHE_ENV"]

logger = logging.getLogger(__name__)

FORCE_ENV = "BIREFNET_KERNELS"
CACHE_ENV = "BIREFNET_KERNEL_CACHE"
WARMUP, REPEATS, DROP_FACTOR = 1, 3, 2.0
LONG_S = 0.02  # a first run this long decides with one more run of the close ones at most
CLOSE = 0.25  # long runs within this fraction of the best are timed once more
MARGIN = 0.05  # how much faster than the exact candidate another must measure to replace it


Clock = Callable[[], float]
_clock: Clock = time.perf_counter  # the timer select() uses unless given one (tests fake it)


@dataclass(frozen=True)
class Candidate:
    """One implementation of ``op``. ``available(device, dtype)`` says whether it runs there;
    ``exact`` marks the exact model's own implementation."""

    op: str
    name: str
    fn: Callable[..., Any]
    available: Callable[[torch.device, torch.dtype], bool] = lambda device, dtype: True
    exact: bool = False


@dataclass
class Choice:
    op: str
    key: str
    name: str
    times_ms: dict[str, float] = field(default_factory=dict)
    source: str = "measured"  # measured | forced | only | disk | compile


_REGISTRY: dict[str, dict[str, Candidate]] = {}
_DEFAULT: dict[str, str] = {}
_CHOICES: dict[tuple, Choice] = {}
_LOCK = threading.RLock()
_SETTINGS: dict[str, Any] = {"force": {}, "cache_dir": None}
_DISK: dict[str, dict[str, str]] = {}  # file -> {key: name}, loaded once per file


def register(op: str, name: str, fn: Callable[..., Any], *,
             available: Optional[Callable[[torch.device, torch.dtype], bool]] = None,
             exact: bool = False, default: bool = False) -> Candidate:
    """Add (or replace) candidate ``name`` of ``op``; ``default``: the one run under
    ``torch.compile`` (the first registered otherwise)."""
    cand = Candidate(op, name, fn, available or (lambda device, dtype: True), exact)
    with _LOCK:
        _REGISTRY.setdefault(op, {})[name] = cand
        if default or op not in _DEFAULT:
            _DEFAULT[op] = name
        for key in [k for k in _CHOICES if k[0] == op]:
            del _CHOICES[key]  # a new candidate: measure again
    return cand


def candidates(op: str) -> dict[str, Candidate]:
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_REGISTRY)}")
    return dict(_REGISTRY[op])


def configure(*, force: Optional[dict[str, str]] = None,
              cache_dir: Optional[str | os.PathLike] = None) -> None:
    """Force candidates per op (``{op: name}``; an empty dict clears) and/or set the folder of
    the on-disk cache (``""`` turns it off). Clears the in-process choices."""
    with _LOCK:
        if force is not None:
            for op, name in force.items():
                if name not in candidates(op):
                    raise ValueError(f"{op} has no candidate {name!r}; "
                                     f"choose one of {sorted(candidates(op))}")
            _SETTINGS["force"] = dict(force)
        if cache_dir is not None:
            _SETTINGS["cache_dir"] = Path(cache_dir) if str(cache_dir) else None
        _CHOICES.clear()


@contextlib.contextmanager
def defaults():
    """Run every op's ``default`` candidate, unmeasured, inside the block: what a compiled
    graph runs, so an eager warm-up before compiling fills the caches that graph reads."""
    with _LOCK:
        _SETTINGS["defaults"] = _SETTINGS.get("defaults", 0) + 1
    try:
        yield
    finally:
        with _LOCK:
            _SETTINGS["defaults"] -= 1


def clear() -> None:
    """Forget every choice made in this process (the disk cache is kept)."""
    with _LOCK:
        _CHOICES.clear()
        _DISK.clear()


def choices() -> list[dict[str, Any]]:
    """What :func:`select` chose so far: op, key (device, dtype, shape bucket), the chosen
    candidate, how (measured, forced, only, disk, compile) and the timings in ms."""
    with _LOCK:
        return [{"op": c.op, "key": c.key, "chosen": c.name, "source": c.source,
                 "times_ms": dict(c.times_ms)} for c in _CHOICES.values()]


def _forced(op: str) -> Optional[str]:
    if op in _SETTINGS["force"]:
        return _SETTINGS["force"][op]
    for item in os.environ.get(FORCE_ENV, "").split(","):
        name, _, value = item.strip().partition("=")
        if name == op and value:
            return value.strip()
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform

        return platform.processor() or platform.machine() or "cpu"
    return device.type


def bucket(n: int) -> int:
    """Sizes are bucketed to the next power of two: nearby sizes share a measurement."""
    return 1 << max(0, int(n) - 1).bit_length()


def measure(run: Callable[[], Any], device: torch.device | str, *, warmup: int = WARMUP,
            repeats: int = REPEATS, clock: Optional[Clock] = None) -> float:
    """Seconds of one ``run()``: the minimum over ``repeats`` runs after ``warmup`` untimed
    ones, the device synchronised around each (for reports such as ``gpu_check``)."""
    device = torch.device(device)
    for _ in range(warmup):
        run()
    return min(_time(run, device, clock or _clock) for _ in range(max(1, repeats)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def select(op: str, device: torch.device | str, dtype: torch.dtype, shape: Iterable[int],
           bench: Callable[[Candidate], Any], *, force: Optional[str] = None,
           clock: Optional[Clock] = None, warmup: int = WARMUP,
           repeats: int = REPEATS, prepare: Optional[Callable[[Candidate], Any]] = None
           ) -> Candidate:
    """The candidate of ``op`` to run on ``device`` for ``dtype`` and ``shape`` (bucketed).

    First use of a key measures ``bench(candidate)`` (which runs the candidate once on
    representative inputs) for every candidate available there, and keeps the fastest; later
    uses are a dictionary lookup. ``force`` (or :func:`configure` / ``$BIREFNET_KERNELS``)
    names the candidate to run instead; ``clock`` is the timer (tests inject a fake one);
    ``prepare(candidate)``, untimed before its first timed run, builds what it keeps for
    later calls (so a one-off set-up is not counted against it)."""
    device = torch.device(device)
    table = candidates(op)
    if (torch.compiler.is_compiling() or _SETTINGS.get("defaults")
            or os.environ.get(FORCE_ENV, "").strip() == "default"):
        return table[_DEFAULT[op]]
    key = (op, device.type, device.index, dtype, tuple(bucket(s) for s in shape))
    forced = force or _forced(op)
    if forced:
        if forced not in table:
            raise ValueError(f"{op} has no candidate {forced!r}; choose one of {sorted(table)}")
        if key not in _CHOICES or _CHOICES[key].name != forced:
            _CHOICES[key] = Choice(op, _key_text(key), forced, source="forced")
        return table[forced]
    choice = _CHOICES.get(key)
    if choice is not None and choice.name in table:
        return table[choice.name]
    with _LOCK:
        choice = _CHOICES.get(key)
        if choice is None or choice.name not in table:
            choice = _CHOICES[key] = _choose(key, table, device, dtype, bench,
                                             clock or _clock, warmup, repeats, prepare)
    return table[choice.name]


def _key_text(key: tuple) -> str:
    op, dev_type, index, dtype, shape = key
    dev = dev_type if index is None else f"{dev_type}:{index}"
    return f"{op}|{dev}|{str(dtype).replace('torch.', '')}|{'x'.join(map(str, shape))}"


def _choose(key, table, device, dtype, bench, clock, warmup, repeats, prepare=None) -> Choice:
    op, text = key[0], _key_text(key)
    usable = [c for c in table.values() if _available(c, device, dtype)]
    if not usable:
        raise RuntimeError(f"no implementation of {op} runs on {device} in {dtype}")
    if len(usable) == 1:
        return Choice(op, text, usable[0].name, source="only")
    stored = _from_disk(device, text)
    if stored in {c.name for c in usable}:
        return Choice(op, text, stored, source="disk")
    # Round 1: one timed run each (the exact candidate first). Where the best took LONG_S or
    # more, those within CLOSE of it run once more in reverse order (a burst of load during
    # one run cannot decide alone; the first-call cost stays ~one or two extra runs).
    # Otherwise round 2: those within DROP_FACTOR of the best run ``warmup`` more times
    # untimed (one-off costs: kernel selection, caches), then ``repeats`` timed; the minimum.
    order = sorted(usable, key=lambda c: not c.exact)
    samples: dict[str, list[float]] = {}
    for cand in order:
        try:
            if prepare is not None:
                prepare(cand)
            samples[cand.name] = [_time(lambda: bench(cand), device, clock)]
        except Exception as exc:  # noqa: BLE001 - a candidate that fails here is not chosen
            lines = str(exc).strip().splitlines()
            logger.warning("BiRefNet: %s candidate %r failed on %s (%s); not used", op,
                           cand.name, device, lines[0][:160] if lines else type(exc).__name__)
    if not samples:
        raise RuntimeError(f"every implementation of {op} failed on {device}")
    best = min(t[0] for t in samples.values())
    if best < LONG_S and repeats:
        for cand in order:
            if cand.name in samples and samples[cand.name][0] <= DROP_FACTOR * best:
                for _ in range(warmup):
                    bench(cand)
                samples[cand.name] = [_time(lambda: bench(cand), device, clock)
                                      for _ in range(repeats)]
    else:
        close = [c for c in order
                 if c.name in samples and samples[c.name][0] <= (1 + CLOSE) * best]
        if len(close) > 1:
            for cand in reversed(close):
                samples[cand.name].append(_time(lambda: bench(cand), device, clock))
    times = {name: min(t) * 1e3 for name, t in samples.items()}
    name = min(times, key=times.get)
    exact = next((c.name for c in order if c.exact and c.name in times), None)
    if exact is not None and times[exact] <= (1 + MARGIN) * times[name]:
        name = exact  # not faster by more than the noise margin: keep the exact one
    _to_disk(device, text, name)
    return Choice(op, text, name, {k: round(v, 4) for k, v in times.items()})


def _time(run: Callable[[], Any], device: torch.device, clock: Clock) -> float:
    _sync(device)
    start = clock()
    run()
    _sync(device)
    return clock() - start


_AVAILABLE: dict[tuple, bool] = {}


def _available(cand: Candidate, device: torch.device, dtype: torch.dtype) -> bool:
    key = (cand.op, cand.name, device.type, device.index, dtype)
    if key not in _AVAILABLE:
        try:
            _AVAILABLE[key] = bool(cand.available(device, dtype))
        except Exception:  # noqa: BLE001 - a probe that raises means "not here"
            _AVAILABLE[key] = False
    return _AVAILABLE[key]


# -- on-disk cache ------------------------------------------------------------------------------

def _cache_file(device: torch.device) -> Optional[Path]:
    folder = _SETTINGS["cache_dir"]
    if folder is None and os.environ.get(CACHE_ENV):
        folder = Path(os.environ[CACHE_ENV])
    if folder is None:
        return None
    try:
        import torchvision

        tv = torchvision.__version__
    except Exception:  # noqa: BLE001
        tv = "none"
    name = f"{device_name(device)}-torch{torch.__version__}-torchvision{tv}"
    return Path(folder) / ("kernels-" + re.sub(r"[^A-Za-z0-9._+-]+", "_", name) + ".json")


def _from_disk(device: torch.device, key: str) -> Optional[str]:
    path = _cache_file(device)
    if path is None:
        return None
    entries = _DISK.get(str(path))
    if entries is None:
        try:
            entries = json.loads(path.read_text())["choices"]
        except (OSError, ValueError, KeyError, TypeError):
            entries = {}
        _DISK[str(path)] = entries
    return entries.get(key)


def _to_disk(device: torch.device, key: str, name: str) -> None:
    path = _cache_file(device)
    if path is None:
        return
    entries = _DISK.setdefault(str(path), {})
    entries[key] = name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": device_name(device), "torch": torch.__version__,
                   "choices": dict(sorted(entries.items()))}
        with atomic_write(path) as f:
            f.write(json.dumps(payload, indent=1).encode())
    except OSError as exc:
        logger.warning("BiRefNet: cannot write the kernel cache %s (%s)", path, exc)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op on ``x`` computes in: autocast's where it is on for ``x``'s device."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


# -- the ops and their candidates ---------------------------------------------------------------

def _fusable(device: torch.device, dtype: torch.dtype) -> bool:
    probe = torch.empty(1, 1, device=device, dtype=dtype)
    return _can_fuse(probe, probe)


register("linear", "plain", plain_linear, exact=True, default=True)
register("linear", "fused", linear, available=_fusable)


def linear_for(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               hidden: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None
               ) -> Callable[..., torch.Tensor]:
    """The ``linear(x, w, b, *, gelu, residual)`` to run for tokens ``x`` ``[..., C]`` and an
    MLP ``weight``/``bias`` ``[4C, C]`` (with ``hidden`` = the second layer's weight and bias):
    measured on that MLP over up to 4096 of ``x``'s rows."""
    rows = x.reshape(-1, x.shape[-1])
    n = min(rows.shape[0], 4096)
    dtype = _compute_dtype(x)

    def bench(cand: Candidate):
        with torch.no_grad():
            sample = rows[:n]
            h = cand.fn(sample, weight, bias, gelu=True)
            if hidden is not None:
                cand.fn(h, hidden[0], hidden[1], residual=sample)

    return select("linear", x.device, dtype, (n, x.shape[-1], weight.shape[0]), bench).fn


DEFORM_BENCH_PIXELS = {"cpu": 64 * 64, "other": 512 * 512}


def _torchvision_op():
    from torchvision.ops import deform_conv2d

    return deform_conv2d


def _torchvision_deform(x, offset, weight, bias=None, *, padding, mask, out=None):
    """torchvision's op as the exact model runs it: non-finite offsets made harmless (its CPU
    kernel reads out of bounds at NaN), reduced precision computed in fp32."""
    offset = torch.nan_to_num(offset, nan=float("-inf"), posinf=float("inf"),
                              neginf=float("-inf"))
    op = _torchvision_op()
    if x.dtype in (torch.float16, torch.bfloat16) or offset.dtype != x.dtype:
        y = op(x.float(), offset.float(), weight.float(), None if bias is None else bias.float(),
               padding=padding, mask=mask.float()).to(x.dtype)
    else:
        y = op(x, offset, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
               padding=padding, mask=mask)
    return y if out is None else out.copy_(y)


def _torchvision_runs(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        op = _torchvision_op()
    except Exception:  # noqa: BLE001 - ImportError, or a build for another torch
        return False
    return _dc._torchvision_problem(op, device) is None


register("deform_conv", "gather_gemm", _dc.deform_conv2d, default=True)
register("deform_conv", "torchvision", _torchvision_deform, available=_torchvision_runs,
         exact=True)


def deform_conv_for(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], padding: int, mask: torch.Tensor
                    ) -> Callable[..., torch.Tensor]:
    """The deformable convolution ``fn(x, offset, weight, bias, *, padding, mask, out)`` to
    run for these inputs, measured on their first rows (up to ``DEFORM_BENCH_PIXELS`` output
    pixels of the first image: the cost per pixel is what differs between the kernels)."""
    b, c, h, w = x.shape
    cap = DEFORM_BENCH_PIXELS["cpu" if x.device.type == "cpu" else "other"]
    rows = max(1, min(h, cap // max(1, w)))
    if rows < h or b > 1:
        x, offset, mask = (t[:1, :, :rows] for t in (x, offset, mask))

    def bench(cand: Candidate):
        with torch.no_grad():
            cand.fn(x, offset, weight, bias, padding=padding, mask=mask)

    return select("deform_conv", x.device, x.dtype,
                  (b, c, weight.shape[0], weight.shape[-1], h, w), bench).fn


# The FFT form measured slower than the direct one for every 3x3 convolution of the decoder
# (benchmarks/RESULTS.md), so smaller kernels are not timed.
FFT_MIN_KERNEL = 5
CONV_BENCH_PIXELS = 128 * 128


def _direct_conv(conv, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


def _fft_conv(conv, x: torch.Tensor) -> torch.Tensor:
    return fft_conv2d(x, conv.spectrum(x), conv.bias, conv.kernel_size[0])


def _fft_runs(device: torch.device, dtype: torch.dtype) -> bool:
    # On CUDA cuDNN picks among its own (FFT-tiled among them) algorithms; the reduced dtypes
    # have no CPU FFT.
    return device.type == "cpu" and dtype == torch.float32


register("conv2d", "direct", _direct_conv, exact=True, default=True)
register("conv2d", "fft", _fft_conv, available=_fft_runs)


def conv2d_for(conv, x: torch.Tensor) -> Callable[..., torch.Tensor]:
    """The convolution ``fn(conv, x)`` to run for ``conv`` (a
    :class:`~birefnet_core.fast.FastConv2d`) on ``x``: measured on up to
    ``CONV_BENCH_PIXELS`` output pixels of its first image where the FFT form applies (stride
    1, "same" padding, odd square kernels of ``FFT_MIN_KERNEL`` px or more, on the CPU in
    float32), direct otherwise. A convolution that keeps the direct form drops the spectrum
    the FFT form was measured with."""
    k = conv.kernel_size[0]
    dtype = _compute_dtype(x)
    if not (conv.fft_applies and k >= FFT_MIN_KERNEL and _fft_runs(x.device, dtype)):
        return _direct_conv  # also where ``fft`` is forced but cannot run
    b, c, h, w = x.shape
    rows = max(1, min(h, CONV_BENCH_PIXELS // max(1, w)))
    sample = x[:1, :, :rows] if rows < h or b > 1 else x

    def bench(cand: Candidate):
        with torch.no_grad():
            cand.fn(conv, sample)

    def prepare(cand: Candidate):
        if cand.name == "fft":
            conv.spectrum(sample)

    chosen = select("conv2d", x.device, dtype, (b, c, conv.out_channels, k, h, w), bench,
                    prepare=prepare)
    if chosen.name != "fft" and conv.has_spectrum:
        conv.drop_spectrum()
    return chosen.fn


def stage_impl_for(x: torch.Tensor, h: int, w: int, impls: dict[str, Callable[[], Any]]
                   ) -> str:
    """Which Swin block implementation a stage runs (``"windows"`` or ``"exact"``), measured by
    ``impls[name]()`` (one block on the stage's input)."""
    dtype = _compute_dtype(x)
    return select("swin_block", x.device, dtype, (x.shape[0], h, w, x.shape[-1]),
                  lambda cand: impls[cand.name]()).name


register("swin_block", "windows", None, default=True)
register("swin_block", "exact", None, exact=True)


def head_impl_for(p: torch.Tensor, image: torch.Tensor, impls: dict[str, Callable[[], Any]]
                  ) -> str:
    """Which decoder head a :class:`~birefnet_core.fast.FastDecoder` runs (``"split"``: at
    1/4 scale, or ``"exact"``), measured by ``impls[name]()``."""
    dtype = _compute_dtype(p)
    return select("decoder_head", p.device, dtype, (p.shape[0], p.shape[1], *image.shape[-2:]),
                  lambda cand: impls[cand.name]()).name


register("decoder_head", "split", None, default=True)
register("decoder_head", "exact", None, exact=True)
