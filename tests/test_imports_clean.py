"""The core is self-contained: no ComfyUI, no transformers, no remote code (issue 2)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "birefnet_core"
FORBIDDEN = ("comfy", "folder_paths", "transformers", "huggingface_hub", "einops")


def _imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_forbidden_imports_in_core():
    offenders = [(p.name, m) for p in CORE.rglob("*.py") for m in _imported_modules(p)
                 if m.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_no_remote_code_or_eval():
    for path in CORE.rglob("*.py"):
        text = path.read_text()
        assert "trust_remote_code" not in text, path
        assert "eval(" not in text.replace(".eval(", ""), path


def test_loading_the_core_imports_no_forbidden_module():
    code = ("import sys, birefnet_core, birefnet_core.weights, birefnet_core.model;"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=CORE.parent, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_declared_dependency_is_used_by_the_pack():
    """pyproject's runtime dependencies and requirements.txt name only what the pack's code
    imports (a dependency nothing imports leaves both)."""
    import re
    import tomllib

    repo = CORE.parent
    import_name = {"pillow": "PIL"}
    declared = [re.split(r"[<>=\[ ;]", d)[0].lower()
                for d in tomllib.loads((repo / "pyproject.toml").read_text())["project"][
                    "dependencies"]]
    listed = [re.split(r"[<>=\[ ;]", line)[0].lower()
              for line in (repo / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted(declared) == sorted(listed)
    used = {m.split(".")[0] for folder in (CORE, repo / "nodes") for p in folder.rglob("*.py")
            for m in _imported_modules(p)}
    unused = [d for d in declared if import_name.get(d, d) not in used]
    assert unused == [], f"declared but never imported: {unused}"
