"""Regenerate ``core_nodes.json``: the core ComfyUI node types the shipped workflows use.

``tests/test_workflows.py`` validates ``workflows/*.json`` without a ComfyUI; for core node types
it reads their inputs and outputs from this checked-in excerpt of a real ComfyUI's
``/object_info``. Regenerate it after adding a core node to a workflow, or to re-check against a
newer ComfyUI, from a running server (start it with an empty ``--base-directory`` so that file
lists stay empty)::

    python tests/data/make_core_nodes.py http://127.0.0.1:8188

Only the node types found in ``workflows/*.json`` are kept (plus ``--also TYPE``), and of each
only what the checks need: inputs (type, default/min/max/options, upload and seed-control flags),
input order, outputs. Combos whose options are a listing of files (uploads, model folders) are
stored as ``["COMBO", {"file_list": true, ...}]``: any file name is accepted for them.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "core_nodes.json"

# Frontend-only node types (no Python class): never in /object_info.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Combo inputs whose options list files on the server (not fixed options).
FILE_LIST_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"),
    ("LoadImage", "image"),
    ("LoadVideo", "file"),
}
KEEP_OPTIONS = ("default", "min", "max", "step", "round", "control_after_generate",
                "image_upload", "video_upload", "animated_image_upload", "multiline")


def workflow_node_types(folder: Path) -> set[str]:
    types = set()
    for path in sorted(folder.glob("*.json")):
        types |= {node["type"] for node in json.loads(path.read_text())["nodes"]}
    return types


def slim_spec(node_type: str, name: str, spec: list) -> list:
    """One ``[type, options]`` input spec without tooltips; old-style combos -> ``COMBO``."""
    kind, opts = spec[0], dict(spec[1]) if len(spec) > 1 and spec[1] else {}
    if isinstance(kind, list):  # V1 combo: the options are the type
        opts["options"], kind = kind, "COMBO"
    slim = {k: v for k, v in opts.items() if k in KEEP_OPTIONS}
    if kind == "COMBO":
        if (node_type, name) in FILE_LIST_INPUTS or any(
                opts.get(k) for k in ("image_upload", "video_upload", "animated_image_upload")):
            slim["file_list"] = True
        else:
            slim["options"] = list(opts.get("options", []))
    return [kind, slim]


def slim_node(node_type: str, info: dict) -> dict:
    inputs = {}
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section) or {}
        if specs:
            inputs[section] = {name: slim_spec(node_type, name, spec)
                               for name, spec in specs.items()}
    order = {s: list(names) for s, names in (info.get("input_order") or {}).items()
             if s in inputs}
    if not order:
        order = {s: list(specs) for s, specs in inputs.items()}
    return {"input": inputs, "input_order": order, "output": list(info.get("output", [])),
            "output_name": list(info.get("output_name", [])),
            "output_node": bool(info.get("output_node", False))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="base URL of a running ComfyUI, e.g. http://127.0.0.1:8188")
    parser.add_argument("--workflows", type=Path, default=REPO / "workflows")
    parser.add_argument("--also", action="append", default=[], metavar="TYPE",
                        help="keep this node type too (repeatable)")
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args(argv)

    base = args.url.rstrip("/")
    with urllib.request.urlopen(base + "/object_info", timeout=60) as r:
        object_info = json.loads(r.read())
    with urllib.request.urlopen(base + "/system_stats", timeout=60) as r:
        version = json.loads(r.read()).get("system", {}).get("comfyui_version", "unknown")

    wanted = (workflow_node_types(args.workflows) | set(args.also)) - FRONTEND_ONLY
    core = {t for t in wanted if t in object_info
            and object_info[t].get("python_module", "nodes").split(".")[0] != "custom_nodes"}
    missing = sorted(t for t in wanted - core if not t.startswith("BiRefNet"))
    if missing:
        print(f"not core node types of this ComfyUI: {', '.join(missing)}", file=sys.stderr)
        return 1
    data = {"comfyui_version": version,
            "generated_by": "tests/data/make_core_nodes.py",
            "nodes": {t: slim_node(t, object_info[t]) for t in sorted(core)}}
    args.output.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print(f"wrote {len(core)} core node types (ComfyUI {version}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
