"""Every shipped workflow (``workflows/*.json``, UI format) loads and wires up correctly.

No ComfyUI needed: our node types come from the pack (imported with the fake host), core node
types from ``tests/data/core_nodes.json`` (an excerpt of ComfyUI's ``/object_info``, regenerated
by ``tests/data/make_core_nodes.py``). Checked for each workflow: every node type exists; every
link joins an existing output to an existing input and the types agree (``*`` matches any);
``widgets_values`` has the layout the frontend writes for the node's widget inputs, with combo
values among the options and numbers within min/max; every required socket is connected; the
API prompt converted from it has every required input. A renamed or removed input of one of our
nodes therefore fails here before a user's saved workflow breaks.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pack.py, fake_host/, helpers

import fake_host  # noqa: E402
from pack import load_pack  # noqa: E402
from workflow_to_prompt import (  # noqa: E402
    FRONTEND_ONLY,
    WorkflowError,
    input_specs,
    is_widget,
    node_info,
    split_widget_values,
    widget_specs,
    widget_values_by_name,
    workflow_to_prompt,
)

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
CORE_NODES = Path(__file__).resolve().parent / "data" / "core_nodes.json"
# Our combo inputs whose options are files on the user's machine.
OUR_FILE_LISTS = {"BiRefNetModelLoader": ("model_name",)}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# The workflows issue 5 asks for (file -> what it must contain).
EXPECTED = {
    "birefnet_remove_background.json": {"LoadImage", "BiRefNetSegment", "SaveImage"},
    "birefnet_replace_background.json": {"BiRefNetComposite", "SaveImage"},
    "birefnet_video.json": {"LoadVideo", "GetVideoComponents", "BiRefNetSegment",
                            "BiRefNetRefineMask", "BiRefNetComposite", "CreateVideo",
                            "SaveVideo"},
    "birefnet_sd_inpaint_background.json": {"CheckpointLoaderSimple", "KSampler",
                                            "BiRefNetSegment"},
    "birefnet_box_guided_large_image.json": {"BiRefNetSegment"},
}


@pytest.fixture(scope="module")
def object_info(tmp_path_factory) -> dict:
    """``/object_info``-like definitions: core excerpt + our nodes from the pack."""
    core = json.loads(CORE_NODES.read_text())["nodes"]
    fake_host.install(tmp_path_factory.mktemp("models"))
    try:
        pack = load_pack()
        ours = {name: node_info(cls, OUR_FILE_LISTS.get(name, ()))
                for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
    finally:
        fake_host.uninstall()
    assert not set(core) & set(ours), "a core id is defined by the pack"
    return {**core, **ours}


def _workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


# -- the set of workflows ----------------------------------------------------------------------

def test_the_requested_workflows_exist_and_are_documented():
    names = {p.name for p in _workflow_files()}
    assert set(EXPECTED) <= names, f"missing: {sorted(set(EXPECTED) - names)}"
    readme = (WORKFLOWS / "README.md").read_text()
    undocumented = [n for n in sorted(names) if n not in readme]
    assert not undocumented, f"not described in workflows/README.md: {undocumented}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workflow_uses_the_expected_nodes(name):
    types = {n["type"] for n in _load(WORKFLOWS / name)["nodes"]}
    assert EXPECTED[name] <= types, f"{name} lacks {sorted(EXPECTED[name] - types)}"


# -- per workflow ------------------------------------------------------------------------------

def _types_match(a: str, b: str) -> bool:
    if "*" in (a, b):
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def _check_value(where: str, kind: str, opts: dict, value, errors: list[str]) -> None:
    if kind == "COMBO":
        if opts.get("file_list"):
            if not isinstance(value, str) or not value:
                errors.append(f"{where}: file name must be a non-empty string, got {value!r}")
        elif value not in opts.get("options", []):
            errors.append(f"{where}: {value!r} is not one of {opts.get('options')}")
        return
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            errors.append(f"{where}: expected a boolean, got {value!r}")
        return
    if kind == "STRING":
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string, got {value!r}")
        return
    # INT / FLOAT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        errors.append(f"{where}: expected a number, got {value!r}")
        return
    if kind == "INT" and not float(value).is_integer():
        errors.append(f"{where}: expected an integer, got {value!r}")
    lo, hi = opts.get("min"), opts.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        errors.append(f"{where}: {value!r} outside [{lo}, {hi}]")


def validate_workflow(wf: dict, object_info: dict) -> list[str]:
    """All problems found in one UI-format workflow (empty when it is fine)."""
    errors: list[str] = []
    for key in ("nodes", "links", "last_node_id", "last_link_id", "version"):
        if key not in wf:
            errors.append(f"missing top-level key {key!r}")
    if errors:
        return errors
    nodes = {}
    for node in wf["nodes"]:
        if node["id"] in nodes:
            errors.append(f"duplicate node id {node['id']}")
        nodes[node["id"]] = node
        for key in ("type", "pos", "size", "inputs" if node["type"] not in FRONTEND_ONLY else "pos",
                    "outputs" if node["type"] not in FRONTEND_ONLY else "pos"):
            if key not in node:
                errors.append(f"node {node['id']}: missing {key!r}")
    if nodes and wf["last_node_id"] < max(nodes):
        errors.append(f"last_node_id {wf['last_node_id']} < largest node id {max(nodes)}")
    links = {}
    for row in wf["links"]:
        if len(row) < 6:
            errors.append(f"link {row}: expected [id, from, from_slot, to, to_slot, type]")
            continue
        if row[0] in links:
            errors.append(f"duplicate link id {row[0]}")
        links[row[0]] = row
    if links and wf["last_link_id"] < max(links):
        errors.append(f"last_link_id {wf['last_link_id']} < largest link id {max(links)}")

    for node in wf["nodes"]:
        kind, nid = node["type"], node["id"]
        where = f"node {nid} ({kind})"
        if kind in FRONTEND_ONLY:
            continue
        if kind not in object_info:
            errors.append(f"{where}: unknown node type (neither ours nor in core_nodes.json)")
            continue
        info = object_info[kind]
        specs = {name: (k, o, opt) for name, k, o, opt in input_specs(info)}
        # outputs as the node declares them
        declared = info["output"]
        if len(node["outputs"]) != len(declared):
            errors.append(f"{where}: {len(node['outputs'])} outputs, the node has "
                          f"{len(declared)}")
        for slot, out in enumerate(node["outputs"]):
            if slot < len(declared) and out.get("type") != declared[slot]:
                errors.append(f"{where}: output {slot} typed {out.get('type')!r}, the node "
                              f"gives {declared[slot]!r}")
            for lid in out.get("links") or []:
                if lid not in links or links[lid][1] != nid or links[lid][2] != slot:
                    errors.append(f"{where}: output {slot} lists link {lid}, which does not "
                                  "start there")
        # input sockets
        linked = set()
        for slot, inp in enumerate(node["inputs"]):
            name = inp.get("name")
            if name not in specs:
                errors.append(f"{where}: input {name!r} is not an input of the node")
                continue
            lid = inp.get("link")
            if lid is None:
                continue
            row = links.get(lid)
            if row is None or row[3] != nid or row[4] != slot:
                errors.append(f"{where}: input {name!r} refers to link {lid}, which does not "
                              "end there")
                continue
            linked.add(name)
        for name, (k, o, optional) in specs.items():
            if not optional and not is_widget(k, o) and name not in linked:
                errors.append(f"{where}: required input {name!r} is not connected")
        # widgets
        try:
            values, controls = split_widget_values(info, node.get("widgets_values"))
        except WorkflowError as exc:
            errors.append(f"{where}: {exc}")
            values, controls = {}, {}
        for name, k, o, _ in widget_specs(info):
            if name in values and name not in linked:
                _check_value(f"{where} widget {name!r}", k, o, values[name], errors)
        for name, control in controls.items():
            if control not in CONTROL_VALUES:
                errors.append(f"{where}: control_after_generate of {name!r} is {control!r}")

    # links: ends exist, slots exist, types agree
    for lid, row in links.items():
        _, src, src_slot, dst, dst_slot, ltype = row[:6]
        s, d = nodes.get(src), nodes.get(dst)
        if s is None or d is None:
            errors.append(f"link {lid}: node {src if s is None else dst} does not exist")
            continue
        if s["type"] not in object_info or d["type"] not in object_info:
            continue  # reported above
        outs = object_info[s["type"]]["output"]
        if not 0 <= src_slot < len(outs):
            errors.append(f"link {lid}: {s['type']} has no output {src_slot}")
            continue
        if not 0 <= dst_slot < len(d["inputs"]):
            errors.append(f"link {lid}: {d['type']} (node {dst}) has no input slot {dst_slot}")
            continue
        inp = d["inputs"][dst_slot]
        if inp.get("link") != lid:
            errors.append(f"link {lid}: input {dst_slot} of node {dst} has link "
                          f"{inp.get('link')}")
        if lid not in (s["outputs"][src_slot].get("links") or []):
            errors.append(f"link {lid}: not listed on output {src_slot} of node {src}")
        specs = {name: k for name, k, _, _ in input_specs(object_info[d["type"]])}
        want = specs.get(inp.get("name"))
        got = outs[src_slot]
        if want is None:
            continue  # reported above
        if not _types_match(got, want):
            errors.append(f"link {lid}: {s['type']}.{got} -> {d['type']}.{inp['name']} "
                          f"({want}): types differ")
        if not _types_match(ltype, got):
            errors.append(f"link {lid}: typed {ltype!r}, the output gives {got!r}")
    if not any(object_info.get(n["type"], {}).get("output_node") for n in wf["nodes"]):
        errors.append("no output node (nothing would run)")
    return errors


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_workflow_is_valid(path, object_info):
    errors = validate_workflow(_load(path), object_info)
    assert not errors, f"{path.name}:\n  " + "\n  ".join(errors)


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_workflow_converts_to_a_complete_api_prompt(path, object_info):
    wf = _load(path)
    prompt = workflow_to_prompt(wf, object_info)
    assert len(prompt) == sum(1 for n in wf["nodes"] if n["type"] not in FRONTEND_ONLY)
    for nid, node in prompt.items():
        specs = input_specs(object_info[node["class_type"]])
        missing = [name for name, _, _, optional in specs
                   if not optional and name not in node["inputs"]]
        assert not missing, f"node {nid} ({node['class_type']}) lacks {missing}"
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                assert value[0] in prompt, f"node {nid}.{name} links to a missing node"


# -- the checker itself catches the mistakes it is there for ----------------------------------

def _first_workflow() -> dict:
    return _load(WORKFLOWS / "birefnet_remove_background.json")


def _node(wf, kind):
    return next(n for n in wf["nodes"] if n["type"] == kind)


def test_checker_flags_unknown_node_type(object_info):
    wf = _first_workflow()
    _node(wf, "BiRefNetSegment")["type"] = "BiRefNetSegmentV9"
    assert any("unknown node type" in e for e in validate_workflow(wf, object_info))


def test_checker_flags_renamed_input(object_info):
    wf = _first_workflow()
    for inp in _node(wf, "BiRefNetSegment")["inputs"]:
        if inp["name"] == "images":
            inp["name"] = "image"
    errors = validate_workflow(wf, object_info)
    assert any("'image' is not an input" in e for e in errors), errors


def test_checker_flags_wrong_widget_count_and_values(object_info):
    wf = _first_workflow()
    seg = _node(wf, "BiRefNetSegment")
    seg["widgets_values"] = seg["widgets_values"][:-1]
    assert any("widget values" in e for e in validate_workflow(wf, object_info))
    wf = _first_workflow()
    seg = _node(wf, "BiRefNetSegment")
    seg["widgets_values"] = ["999x999", 99.0, 1.5]
    errors = validate_workflow(wf, object_info)
    assert any("'999x999' is not one of" in e for e in errors), errors
    assert any("outside" in e for e in errors), errors
    assert any("expected an integer" in e for e in errors), errors


def test_checker_flags_type_mismatch_and_dangling_required_input(object_info):
    wf = _first_workflow()
    seg = _node(wf, "BiRefNetSegment")
    img = _node(wf, "LoadImage")
    row = next(r for r in wf["links"] if r[3] == seg["id"]
               and seg["inputs"][r[4]]["name"] == "images")
    row[2], row[5] = 1, "MASK"  # LoadImage's MASK into images
    img["outputs"][0]["links"].remove(row[0])
    img["outputs"][1]["links"] = [*(img["outputs"][1].get("links") or []), row[0]]
    errors = validate_workflow(wf, object_info)
    assert any("types differ" in e for e in errors), errors
    wf = _first_workflow()
    seg = _node(wf, "BiRefNetSegment")
    for inp in seg["inputs"]:
        if inp["name"] == "model":
            inp["link"] = None
    assert any("required input 'model' is not connected" in e
               for e in validate_workflow(wf, object_info))


def test_seed_control_value_is_skipped(object_info):
    info = object_info["KSampler"]
    names = [s[0] for s in widget_specs(info)]
    assert names[0] == "seed"
    values = [7, "randomize", 20, 8.0, "euler", "normal", 1.0]
    mapped = widget_values_by_name(info, values)
    assert mapped["seed"] == 7 and mapped["steps"] == 20 and mapped["denoise"] == 1.0
    with pytest.raises(WorkflowError):
        widget_values_by_name(info, values[:1] + values[2:])


def test_upload_placeholder_is_optional(object_info):
    info = object_info["LoadImage"]
    assert widget_values_by_name(info, ["a.png", "image"]) == {"image": "a.png"}
    assert widget_values_by_name(info, ["a.png"]) == {"image": "a.png"}
