"""Peak host memory of a snippet, measured in a fresh interpreter.

``tracemalloc`` does not see torch's allocations, so the probe reads the process's resident
high-water mark (``VmHWM`` in ``/proc/self/status``). That mark is reset (``clear_refs``) after
a warm-up snippet (the same calls with small parameters), so neither lazy initialisation nor
the warm-up's own peak is counted. ``ru_maxrss`` is not used: Linux carries it over from the
parent process across ``exec``, so a child of a big pytest process would report the parent's
peak and hide its own growth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_TEMPLATE = """
import json, time
import torch
torch.set_num_threads(1)
{setup}
def _status_mib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
{warmup}
_reset_peak()
_base = _status_mib("VmRSS")
_t0 = time.perf_counter()
{work}
print(json.dumps({{"growth_mb": _status_mib("VmHWM") - _base,
                  "seconds": time.perf_counter() - _t0}}))
"""


def peak_growth(work: str, warmup: str = "", setup: str = "", *, timeout: float = 120,
                pythonpath: str | None = None) -> dict:
    """Run ``setup``, ``warmup``, then ``work`` in a new Python; returns ``{"growth_mb": peak
    resident-memory growth during ``work``, "seconds": its wall time}``. ``pythonpath`` puts
    another copy of the core first (to show that a test fails on an older version)."""
    if not sys.platform.startswith("linux"):
        import pytest

        pytest.skip("the memory probe reads Linux's /proc/self/status")
    code = _TEMPLATE.format(setup=textwrap.dedent(setup), warmup=textwrap.dedent(warmup),
                            work=textwrap.dedent(work))
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    # `python -c` imports from its working folder first: the checkout, or the other copy.
    result = subprocess.run([sys.executable, "-c", code], cwd=pythonpath or REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
