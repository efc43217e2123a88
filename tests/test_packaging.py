"""The pack's metadata as the tools that read it see it: setuptools building a wheel (pip's
isolated build, so the newest setuptools `>=` allows) and the real host's own pyproject parser
(ComfyUI registers the pack's web folder from it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests import comfy_host
from tests.conftest import REPO

_NOT_SOURCES = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist",
                                      ".pytest_cache", ".venv", "venv")


@pytest.mark.slow
def test_wheel_builds_with_an_spdx_licence_and_no_deprecation(tmp_path):
    """`project.license` as a table stops building on 2027-02-18 (setuptools says so while it
    builds); the SPDX string and the LICENSE file go into the wheel's metadata."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCES)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path / "dist"),
         str(source)], capture_output=True, text=True, timeout=300)
    log = built.stdout + built.stderr
    assert built.returncode == 0, log[-4000:]
    warnings = [line for line in log.splitlines() if "eprecat" in line]
    assert warnings == [], "\n".join(warnings)
    (wheel,) = (tmp_path / "dist").glob("birefnet_nodes-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        licences = [n for n in archive.namelist() if "/licenses/" in n]
    assert "License-Expression: MIT" in metadata.splitlines()
    assert [n.rsplit("/", 1)[1] for n in licences] == ["LICENSE"]
    assert "Permission is hereby granted" in (REPO / "LICENSE").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.e2e
def test_the_hosts_pyproject_parser_reads_the_pack(tmp_path_factory):
    """ComfyUI 0.3.64 parses pyproject.toml when it loads a pack (nodes.py), registering its web
    folder under the project name; a parse error there only logs a warning, so test it here."""
    host = comfy_host.comfyui_dir(tmp_path_factory.mktemp("host"))
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(host)!r})\n"
        "from comfy_config import config_parser\n"
        f"c = config_parser.extract_node_configuration({str(REPO)!r})\n"
        "print(json.dumps({'name': c.project.name, 'licence': c.project.license.text,\n"
        "                  'web': c.tool_comfy.web, 'publisher': c.tool_comfy.publisher_id}))\n")
    parsed = subprocess.run([comfy_host.host_python(), "-c", script], capture_output=True,
                            text=True, timeout=120)
    assert parsed.returncode == 0, parsed.stderr[-4000:]
    assert json.loads(parsed.stdout.strip().splitlines()[-1]) == {
        "name": "birefnet-nodes", "licence": "MIT", "web": "web", "publisher": "birefnet-nodes"}
