"""The JS extension in ``web/``: its node tests, and that it matches the nodes it decorates.

``node --test web/tests/`` runs the unit tests of ``web/lib`` (colour parsing, compare-view
geometry, model-info text) and a smoke test of ``web/birefnet.js`` against a stub ComfyUI app.
Skipped where ``node`` (18+) is not on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_host  # noqa: E402
from pack import load_pack  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the JS tests of web/ need Node.js 18+")
    out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major = int(re.match(r"v(\d+)", out).group(1)) if re.match(r"v(\d+)", out) else 0
    if major < 18:
        pytest.skip(f"node {out} has no built-in test runner (needs 18+)")
    return node


def test_node_unit_tests_pass():
    node = _node()
    tests = sorted(str(p.relative_to(REPO)) for p in (WEB / "tests").glob("*.test.mjs"))
    assert tests, "no web/tests/*.test.mjs"
    proc = subprocess.run([node, "--test", *tests], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_extension_files_are_es_modules_served_from_web_directory():
    pack = load_pack()
    assert (REPO / pack.WEB_DIRECTORY / "birefnet.js").is_file()
    entry = (WEB / "birefnet.js").read_text()
    # served as /extensions/<pack>/birefnet.js: ComfyUI's scripts are two levels up
    assert 'from "../../scripts/app.js"' in entry
    assert "registerExtension" in entry
    # ComfyUI imports every .js under web/ as an extension: the tests must not be .js
    assert not list((WEB / "tests").glob("*.js"))


def test_names_used_by_the_extension_exist_on_the_nodes(tmp_path):
    fake_host.install(tmp_path)
    try:
        mappings = load_pack().NODE_CLASS_MAPPINGS
        inputs = {name: {**cls.INPUT_TYPES().get("required", {}),
                         **(cls.INPUT_TYPES().get("optional") or {})}
                  for name, cls in mappings.items()}
        returns = {name: cls.RETURN_TYPES for name, cls in mappings.items()}
    finally:
        fake_host.uninstall()
    entry = (WEB / "birefnet.js").read_text()
    for node in re.findall(r"^\s+(BiRefNet\w+): \[", entry, flags=re.M):
        assert node in mappings, f"web/birefnet.js decorates unknown node {node}"
    assert inputs["BiRefNetComposite"]["color"][0] == "STRING"
    sources = (WEB / "lib" / "sources.js").read_text()
    found = re.findall(r"(BiRefNet\w+): Object\.freeze\(\{ input: \"(\w+)\", outputs: "
                       r"Object\.freeze\(\[([\d, ]+)\]\)", sources)
    assert {f[0] for f in found} == {"BiRefNetSegment", "BiRefNetComposite"}, found
    for node, image_input, outputs in found:
        assert inputs[node][image_input][0] == "IMAGE", (node, image_input)
        slots = [int(s) for s in outputs.split(",")]
        assert returns[node][slots[0]] == "IMAGE", (node, slots)
        assert all(0 <= s < len(returns[node]) for s in slots)
