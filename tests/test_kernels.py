"""Kernel choice by measurement (``birefnet_core.kernels``), tested with a fake clock: each
injected implementation advances it by its own cost, so no test depends on real timing."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from birefnet_core import kernels
from birefnet_core.fast import FastDeformableConv2d
from birefnet_core.model.blocks import DeformableConv2d
from birefnet_core.optimize import optimize_for_inference
from birefnet_core.variants import Architecture
from kernel_fakes import FakeClock, slowed

CPU = torch.device("cpu")


def _costed(clock: FakeClock, cost: float, calls: list, name: str):
    def fn():
        calls.append(name)
        clock.now += cost
    return fn


def _demo(clock, costs: dict[str, float], exact: str = "exact", available=None):
    """Register op ``demo`` with one candidate per entry of ``costs`` (seconds per call)."""
    calls: list[str] = []
    for name, cost in costs.items():
        kernels.register("demo", name, _costed(clock, cost, calls, name), exact=name == exact,
                         available=(available or {}).get(name))
    return calls


def _select(shape=(1, 64, 32, 32), **kwargs):
    return kernels.select("demo", CPU, torch.float32, shape, lambda c: c.fn(), **kwargs)


def test_the_fastest_candidate_is_chosen_and_cached(fresh):
    calls = _demo(fresh, {"exact": 0.010, "fast": 0.002, "middle": 0.004})
    assert _select().name == "fast"
    n = len(calls)
    assert _select().name == "fast" and len(calls) == n, "a cached choice measures nothing"
    (choice,) = kernels.choices()
    assert choice["chosen"] == "fast" and choice["source"] == "measured"
    assert choice["times_ms"] == pytest.approx({"exact": 10.0, "fast": 2.0, "middle": 4.0})
    # Short ones: a first timed run, the warm-up, then the repeats.
    assert calls.count("fast") == 1 + kernels.WARMUP + kernels.REPEATS


def test_shapes_are_bucketed(fresh):
    calls = _demo(fresh, {"exact": 0.010, "fast": 0.002})
    _select((1, 64, 100, 100))
    n = len(calls)
    _select((1, 64, 120, 128))  # the same power-of-two bucket
    assert len(calls) == n
    _select((1, 64, 200, 100))  # another bucket: measured anew
    assert len(calls) > n
    assert len(kernels.choices()) == 2


def test_the_exact_candidate_wins_when_the_fast_one_is_slower(fresh):
    """The guarantee: the optimised model is never slower than the exact one."""
    _demo(fresh, {"exact": 0.003, "fast": 0.005})
    assert _select().name == "exact"


def test_ties_go_to_the_exact_candidate(fresh):
    _demo(fresh, {"fast": 0.004, "exact": 0.004})
    assert _select().name == "exact"


def test_a_much_slower_candidate_is_dropped_after_its_warm_up(fresh):
    calls = _demo(fresh, {"exact": 0.010, "fast": 0.002, "slow": 1.0})
    assert _select().name == "fast"
    assert calls.count("slow") == 1
    assert calls.count("exact") == 1  # 5x the best: dropped as well


def test_long_runs_decide_on_one_run_each(fresh):
    """Where the best candidate takes LONG_S or more, measuring costs one run per candidate."""
    calls = _demo(fresh, {"exact": 3 * kernels.LONG_S, "fast": kernels.LONG_S})
    assert _select().name == "fast"
    assert sorted(calls) == ["exact", "fast"]


def test_another_candidate_must_beat_the_exact_one_by_the_margin(fresh):
    """Within the noise margin the exact candidate stays: under load a 2 % "win" is noise."""
    _demo(fresh, {"exact": 0.0100, "fast": 0.0098})
    assert _select().name == "exact"
    kernels.clear()
    _demo(fresh, {"exact": 0.0100, "fast": 0.0100 / (1 + 2 * kernels.MARGIN)})
    assert _select().name == "fast"


def _sequence(clock: FakeClock, costs: list, calls: list, name: str):
    """A candidate whose successive calls cost ``costs`` (the last repeats): a run disturbed
    by load, then undisturbed ones."""
    def fn():
        calls.append(name)
        clock.now += costs[min(calls.count(name), len(costs)) - 1]
    return fn


def test_close_long_runs_are_timed_again(fresh):
    """A burst of load during the fast candidate's only run made it look slower than the
    exact one: close long runs get a second run each, and the fast one wins on it."""
    calls: list[str] = []
    long = 10 * kernels.LONG_S
    kernels.register("demo", "exact", _sequence(fresh, [long], calls, "exact"), exact=True)
    kernels.register("demo", "fast", _sequence(fresh, [1.1 * long, 0.7 * long], calls, "fast"))
    assert _select().name == "fast"
    assert sorted(calls) == ["exact", "exact", "fast", "fast"]
    (choice,) = kernels.choices()
    assert choice["times_ms"] == pytest.approx({"exact": long * 1e3, "fast": 0.7 * long * 1e3})


def test_a_candidates_set_up_is_not_timed(fresh):
    calls = _demo(fresh, {"exact": 0.010, "fast": 0.002})
    prepared = []

    def prepare(cand):
        prepared.append(cand.name)
        fresh.now += 5.0  # e.g. building a table the candidate keeps

    assert _select(prepare=prepare).name == "fast"
    assert sorted(prepared) == ["exact", "fast"] and calls
    assert _select(prepare=prepare).name == "fast" and len(prepared) == 2, "once per key"


def test_compile_warm_up_runs_the_defaults(fresh):
    calls = _demo(fresh, {"exact": 0.001, "fast": 0.010})
    with kernels.defaults():
        assert _select().name == "exact"  # the first registered: the default
    assert calls == [] and kernels.choices() == []
    assert _select().name == "exact" and calls


def test_unavailable_candidates_are_never_run_and_probed_once(fresh):
    probes = []

    def nowhere(device, dtype):
        probes.append((device, dtype))
        return False

    calls = _demo(fresh, {"exact": 0.010, "fast": 0.001}, available={"fast": nowhere})
    assert _select().name == "exact"
    _select((1, 64, 512, 512))
    assert "fast" not in calls
    assert len(probes) == 1
    # A single runnable candidate needs no measurement at all.
    assert calls == [] and {c["source"] for c in kernels.choices()} == {"only"}


def test_a_failing_candidate_is_skipped_with_a_note(fresh, caplog):
    _demo(fresh, {"exact": 0.010})

    def broken():
        raise RuntimeError("no kernel image is available for execution on the device\nmore")

    kernels.register("demo", "broken", broken)
    caplog.set_level(logging.WARNING, logger=kernels.__name__)
    assert _select().name == "exact"
    (note,) = [r.getMessage() for r in caplog.records]
    assert "'broken' failed" in note and "more" not in note


@pytest.mark.parametrize("how", ("argument", "configure", "environment"))
def test_a_candidate_can_be_forced(fresh, monkeypatch, how):
    calls = _demo(fresh, {"exact": 0.010, "fast": 0.002})
    kwargs = {}
    if how == "argument":
        kwargs["force"] = "exact"
    elif how == "configure":
        kernels.configure(force={"demo": "exact"})
    else:
        monkeypatch.setenv(kernels.FORCE_ENV, "linear=plain, demo=exact")
    assert _select(**kwargs).name == "exact"
    assert calls == [], "a forced choice is not measured"
    assert kernels.choices()[0]["source"] == "forced"


def test_forcing_an_unknown_candidate_is_an_error(fresh):
    _demo(fresh, {"exact": 0.010})
    with pytest.raises(ValueError, match="no candidate 'nope'"):
        _select(force="nope")
    with pytest.raises(ValueError, match="no candidate 'nope'"):
        kernels.configure(force={"demo": "nope"})
    with pytest.raises(KeyError, match="unknown op"):
        kernels.candidates("no_such_op")


def test_choices_persist_on_disk_per_device_and_versions(fresh, tmp_path):
    calls = _demo(fresh, {"exact": 0.010, "fast": 0.002})
    kernels.configure(cache_dir=tmp_path)
    assert _select().name == "fast"
    (path,) = tmp_path.glob("kernels-*.json")
    assert f"torch{torch.__version__}" in path.name and "torchvision" in path.name
    stored = json.loads(path.read_text())
    assert stored["device"] == kernels.device_name(CPU)
    assert list(stored["choices"].values()) == ["fast"]
    # A new process (the in-process choices forgotten): read back, nothing measured.
    kernels.clear()
    del calls[:]
    assert _select().name == "fast"
    assert calls == [] and kernels.choices()[0]["source"] == "disk"
    assert not list(tmp_path.glob(".*")), "no temporary file is left behind"


def test_under_torch_compile_the_default_runs_unmeasured(fresh, monkeypatch):
    calls = _demo(fresh, {"exact": 0.010, "fast": 0.002})
    kernels.register("demo", "fast", kernels.candidates("demo")["fast"].fn, default=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _select().name == "fast"
    assert calls == [] and kernels.choices() == []


def test_measure_synchronises_and_takes_the_minimum(fresh):
    costs = iter([5.0, 3.0, 1.0, 2.0])
    seen = []

    def run():
        cost = next(costs)
        seen.append(cost)
        fresh.now += cost

    assert kernels.measure(run, "cpu", warmup=1, repeats=3) == 1.0
    assert seen == [5.0, 3.0, 1.0, 2.0]


# -- wired into the fast modules -----------------------------------------------------------------

def _dcn() -> DeformableConv2d:
    torch.manual_seed(0)
    dcn = DeformableConv2d(6, 8, 3, 1).eval()
    with torch.no_grad():
        dcn.offset_conv.weight.mul_(20.0)
    return dcn


@pytest.mark.parametrize("slow", ("gather_gemm", "torchvision"))
def test_deformable_convolution_runs_the_faster_kernel(fresh, slow):
    calls = slowed(fresh, "deform_conv", {"gather_gemm": 0.001, "torchvision": 0.001,
                                           slow: 0.5})
    exact = _dcn()
    fast = FastDeformableConv2d.from_exact(exact)
    x = torch.randn(2, 6, 13, 11)
    with torch.inference_mode():
        ref = exact(x)
        out = fast(x)
        del calls[:]
        again = fast(x)
    (choice,) = kernels.choices()
    assert choice["op"] == "deform_conv"
    assert choice["chosen"] != slow and slow in choice["times_ms"]
    assert calls == [choice["chosen"]], "after the choice, one call of the chosen kernel"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_swin_stage_falls_back_to_the_exact_blocks_where_they_are_faster(fresh, monkeypatch):
    """With the exact block computation measured faster, the fast model runs it, and still
    computes the exact model's function; forcing each gives the same output."""
    from birefnet_core.model import BiRefNet

    torch.manual_seed(0)
    exact = BiRefNet(Architecture("swin_v1_t", batch_norm=False))
    fast = optimize_for_inference(copy.deepcopy(exact))
    real = kernels.stage_impl_for

    def costed(x, h, w, impls):
        timed = {name: _costed_impl(fresh, run, 0.001 if name == "exact" else 0.1)
                 for name, run in impls.items()}
        return real(x, h, w, timed)

    monkeypatch.setattr(kernels, "stage_impl_for", costed)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    ref = exact(x)
    out = fast(x)
    chosen = {c["chosen"] for c in kernels.choices() if c["op"] == "swin_block"}
    assert chosen == {"exact"}
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    kernels.configure(force={"swin_block": "windows"})
    torch.testing.assert_close(fast(x), out, rtol=0, atol=1e-4)


def test_decoder_head_falls_back_to_the_exact_head_where_it_is_faster(fresh, monkeypatch):
    from birefnet_core.model import BiRefNet

    torch.manual_seed(0)
    exact = BiRefNet(Architecture("pvt_v2_b0"))
    fast = optimize_for_inference(copy.deepcopy(exact))
    real = kernels.head_impl_for

    def costed(p, image, impls):
        timed = {name: _costed_impl(fresh, run, 0.001 if name == "exact" else 0.1)
                 for name, run in impls.items()}
        return real(p, image, timed)

    monkeypatch.setattr(kernels, "head_impl_for", costed)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = exact(x)
    out = fast(x)
    assert [c["chosen"] for c in kernels.choices() if c["op"] == "decoder_head"] == ["exact"]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    kernels.configure(force={"decoder_head": "split"})
    torch.testing.assert_close(fast(x), out, rtol=0, atol=1e-4)


def _costed_impl(clock, run, cost):
    def timed():
        clock.now += cost
        return run()
    return timed


def test_choices_are_reported_for_a_whole_model(fresh):
    from birefnet_core.model import BiRefNet

    torch.manual_seed(0)
    fast = optimize_for_inference(BiRefNet(Architecture("swin_v1_t")))
    fast(torch.randn(1, 3, 64, 64))
    ops = {c["op"] for c in kernels.choices()}
    assert {"deform_conv", "linear", "swin_block", "decoder_head"} <= ops
    for c in kernels.choices():
        assert c["chosen"] in kernels.candidates(c["op"])
        assert c["key"].startswith(f"{c['op']}|cpu|float32|")


def test_every_op_has_the_exact_implementation_as_a_candidate(fresh):
    for op in ("deform_conv", "linear", "swin_block", "decoder_head"):
        exact = [name for name, c in kernels.candidates(op).items() if c.exact]
        assert len(exact) == 1, op
    assert kernels.candidates("deform_conv")["torchvision"].exact


def test_default_in_the_environment_runs_every_default_unmeasured(fresh, monkeypatch):
    """What the test session sets (tests/conftest.py): no timing, every process the same."""
    calls = _demo(fresh, {"exact": 0.010, "fast": 0.002})
    default = kernels._DEFAULT["demo"]
    monkeypatch.setenv(kernels.FORCE_ENV, "default")
    assert _select().name == default and calls == []
    monkeypatch.delenv(kernels.FORCE_ENV)
    assert _select().name == "fast" and calls  # measured again once the setting is gone
