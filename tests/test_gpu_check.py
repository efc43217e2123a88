"""``benchmarks/gpu_check.py --dry-run`` works end to end on the CPU (tiny sizes), so the GPU
check is known to run before a GPU is ever lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # minutes on a loaded 2-core CPU: one tiny model in three modes, plus pytest
def test_dry_run_end_to_end(tmp_path, fixtures_dir):
    out = tmp_path / "check.json"
    # as a user runs it: kernels measured, not the test session's fixed defaults (conftest.py)
    env = {k: v for k, v in os.environ.items() if k != "BIREFNET_KERNELS"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                           "--dry-run", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["environment"]["device_type"] == "cpu"
    # (rewritten after every section; the finished file says so and leaves no partial one)
    assert result["complete"] is True and not out.with_name(out.name + ".part").exists()
    assert result["tests"]["status"] == "passed" and result["tests"]["passed"] >= 1
    assert result["fidelity"]["status"] == "passed"
    assert result["fidelity"]["fp32_worst"] <= 1e-4
    assert {r["dtype"] for r in result["fidelity"]["rows"]} == {"fp32", "bf16"}
    modes = {(r["mode"], r["batch"]) for r in result["speed"] if "median_ms" in r}
    assert modes == {(m, b) for m in ("exact", "optimised", "compiled") for b in (1, 2)}
    assert {c["op"] for c in result["kernels"]} >= {"deform_conv", "linear", "swin_block"}
    assert {t["metric"] for t in result["targets"]} >= {"latency_ms_batch1"}
    post = {(r["op"], r["batch"]) for r in result["postprocess"] if "median_ms" in r}
    assert post == {(op, b) for op in ("refine guided", "refine matting", "estimate_foreground")
                    for b in (1, 8)}
    table = out.with_suffix(".md").read_text()
    assert table in proc.stdout and "| lite | optimised | fp32 | 64 | 1 |" in table
    assert "| refine guided | 128 | 64 | 8 |" in table
