"""Every shipped workflow (``workflows/*.json``, UI format) loads and wires up correctly.

No ComfyUI needed: our node types come from the pack (imported with the fake host), core node
types from ``tests/data/core_nodes.json`` (an excerpt of ComfyUI's ``/object_info``, regenerated
by ``tests/data/make_core_nodes.py``). Checked for each workflow: every node type exists; every
link joins an existing output to an existing input and the types agree (``*`` matches any);
``widgets_values`` has the layout the frontend writes for the node's widget inputs, with combo
values among the options and numbers within min/max; every required socket is connected; the
API prompt converted from it has every required input. A renamed or removed input of one of our
nodes therefore fails here before a user's saved workflow breaks.

The layout is checked too, as the canvas draws it: no two nodes overlap (title bars included),
the saved view shows every node in a 1280x720 window, no link is drawn across a note, and our
nodes have room for the panels the web extension adds (model info, colour row), with free
canvas below those whose before/after view appears after the first run, so nothing grows over
its neighbour then.
"""

from __future__ import annotations

import copy
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


# -- layout ------------------------------------------------------------------------------------
# Geometry as LiteGraph draws it: a node's title bar (NODE_TITLE_HEIGHT) sits above its pos; slot
# i is (i + 0.7) * NODE_SLOT_HEIGHT below pos; a link is a cubic spline whose control points lie
# a quarter of the ends' distance right of the output and left of the input.
TITLE = 30
SLOT = 20
# Where the canvas is visible in a 1280x720 window on both frontends 0.3.64 serves (1.27: right
# of a 40 px sidebar, under a 40 px tab bar; 1.38: right of 58 px, under 38 px), in canvas
# pixels; tests/data/make_workflows.py fits the saved view into it.
VIEW = (58, 38, 1240, 680)
# What 1.38 floats over the canvas at the top, the Run toolbar (right) and a menu button (left):
# no node under them.
OVERLAYS = {"the Run toolbar": (930, 38, 1280, 95), "the menu button": (58, 38, 96, 70)}
# Nodes 2.0 draws a workflow saved by the classic renderer 1.2x larger around the top left of
# the nodes' bounds (frontend 1.38 rescales the layout, newer ones a CSS transform) and keeps the
# saved view, so the larger drawing must fit as well.
VUE_SCALE = 1.2
# Below this zoom the classic canvas draws nodes without their text (LiteGraph's level of
# detail: 8 px minimum font size / 14 px node text, on a screen of device pixel ratio 1).
MIN_SCALE = 8 / 14
NOTES = {"Note", "MarkdownNote"}
# The web extension's panels need this much height besides the node's own slots and widgets
# (the model info's title + 6 rows, web/lib/compare.js panelMinHeight for the colour row).
PANEL_ROOM = {"model_info": 100, "color_row": 46}
# A node whose before/after view shows once a preview downstream has a result grows by this
# much then (panelMinHeight with the view, less the slack of the node's own widgets).
COMPARE_GROWTH = 140
COMPARE_NODES = ("BiRefNetSegment", "BiRefNetComposite")
IMAGE_PREVIEWS = {"SaveImage", "PreviewImage", "MaskPreview", "SaveAnimatedWEBP",
                  "SaveAnimatedPNG"}


def _rect(node) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a node on the canvas, title bar included."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE, x + w, y + h


def _overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def overlapping_nodes(wf: dict) -> list[str]:
    nodes = wf["nodes"]
    return [f"{a['id']} ({a.get('title', a['type'])}) overlaps {b['id']} "
            f"({b.get('title', b['type'])})"
            for i, a in enumerate(nodes) for b in nodes[i + 1:] if _overlap(_rect(a), _rect(b))]


def nodes_outside_view(wf: dict) -> list[str]:
    """Nodes the saved view does not show whole (or hides under the frontend's buttons),
    drawn by the classic canvas or Nodes 2.0."""
    ds = wf.get("extra", {}).get("ds")
    if not ds:
        return ["no saved view (extra.ds): the frontend opens it wherever the last one was"]
    scale, (ox, oy) = ds["scale"], ds["offset"]
    rects = [_rect(n) for n in wf["nodes"]]
    ax, ay = min(r[0] for r in rects), min(r[1] for r in rects)  # Nodes 2.0 scales from here
    out = []
    for node, rect in zip(wf["nodes"], rects):
        for renderer, k in (("canvas", 1.0), ("Nodes 2.0", VUE_SCALE)):
            x0, y0, x1, y1 = (ax + (rect[0] - ax) * k, ay + (rect[1] - ay) * k,
                              ax + (rect[2] - ax) * k, ay + (rect[3] - ay) * k)
            sx0, sy0, sx1, sy1 = ((x0 + ox) * scale, (y0 + oy) * scale, (x1 + ox) * scale,
                                  (y1 + oy) * scale)
            where = (f"{node['id']} ({node['type']}, {renderer}) at "
                     f"{[round(v) for v in (sx0, sy0, sx1, sy1)]} px")
            if sx0 < VIEW[0] or sy0 < VIEW[1] or sx1 > VIEW[2] or sy1 > VIEW[3]:
                out.append(f"{where}, the view is {VIEW}")
            for overlay, box in OVERLAYS.items():
                if _overlap((sx0, sy0, sx1, sy1), box):
                    out.append(f"{where}, under {overlay} at {box}")
    return out


def _socket_index(node, slot: int) -> int:
    """Position of input ``slot`` among the node's drawn sockets (widget inputs sit in their
    widget's row, after the sockets)."""
    sockets = [i for i, inp in enumerate(node["inputs"]) if "widget" not in inp]
    return sockets.index(slot) if slot in sockets else len(sockets)


def _spline(a, b, steps: int = 48):
    dist = math.dist(a, b) * 0.25
    p = (a, (a[0] + dist, a[1]), (b[0] - dist, b[1]), b)
    for k in range(steps + 1):
        t = k / steps
        u = 1 - t
        yield (u ** 3 * p[0][0] + 3 * u * u * t * p[1][0] + 3 * u * t * t * p[2][0]
               + t ** 3 * p[3][0],
               u ** 3 * p[0][1] + 3 * u * u * t * p[1][1] + 3 * u * t * t * p[2][1]
               + t ** 3 * p[3][1])


def links_across_notes(wf: dict) -> list[str]:
    nodes = {n["id"]: n for n in wf["nodes"]}
    notes = [n for n in wf["nodes"] if n["type"] in NOTES]
    crossed = []
    for lid, src, out, dst, inp, _ in (row[:6] for row in wf["links"]):
        s, d = nodes[src], nodes[dst]
        a = (s["pos"][0] + s["size"][0], s["pos"][1] + (out + 0.7) * SLOT)
        b = (d["pos"][0], d["pos"][1] + (_socket_index(d, inp) + 0.7) * SLOT)
        for note in notes:
            x0, y0, x1, y1 = _rect(note)
            if any(x0 < x < x1 and y0 < y < y1 for x, y in _spline(a, b)):
                crossed.append(f"link {lid} ({s['type']} -> {d['type']}) crosses note "
                               f"{note['id']}")
    return crossed


def _base_height(info: dict, node: dict) -> float:
    """Height of a node's slots and widgets in the classic renderer (as the generator sizes
    them: a 46 px frame, 22 px per socket row, 24 px per widget value)."""
    sockets = sum(1 for inp in node["inputs"] if "widget" not in inp)
    rows = max(sockets, len(info["output"]))
    return 46 + 22 * rows + 24 * len(node.get("widgets_values") or [])


def after_first_run(wf: dict) -> dict:
    """The workflow as it looks once it ran: the compare nodes feeding a preview have grown."""
    grown = copy.deepcopy(wf)
    nodes = {n["id"]: n for n in grown["nodes"]}
    previewed = {row[1] for row in grown["links"] if nodes[row[3]]["type"] in IMAGE_PREVIEWS}
    for node in grown["nodes"]:
        if node["type"] in COMPARE_NODES and node["id"] in previewed:
            node["size"][1] += COMPARE_GROWTH
    return grown


def panels_without_room(wf: dict, object_info: dict) -> list[str]:
    problems = []
    for node in wf["nodes"]:
        kind = node["type"]
        need = 0
        if kind == "BiRefNetModelLoader":
            need += PANEL_ROOM["model_info"]
        if kind == "BiRefNetComposite":
            values = widget_values_by_name(object_info[kind], node["widgets_values"])
            if values.get("background_mode") == "color":
                need += PANEL_ROOM["color_row"]
        if need and node["size"][1] < _base_height(object_info[kind], node) + need:
            problems.append(f"{node['id']} ({kind}) is {node['size'][1]} px tall, its widgets "
                            f"and panel need {_base_height(object_info[kind], node) + need}")
    return problems


LAYOUT_STATES = {"as loaded": lambda wf: wf, "after a run": after_first_run}


@pytest.mark.parametrize("state", LAYOUT_STATES)
@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_layout_nodes_do_not_overlap(path, state):
    problems = overlapping_nodes(LAYOUT_STATES[state](_load(path)))
    assert not problems, f"{path.name} ({state}):\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("state", LAYOUT_STATES)
@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_layout_saved_view_shows_every_node(path, state):
    wf = LAYOUT_STATES[state](_load(path))
    problems = nodes_outside_view(wf)
    assert not problems, (f"{path.name} ({state}, ds {wf['extra'].get('ds')}):\n  "
                          + "\n  ".join(problems))
    assert MIN_SCALE <= wf["extra"]["ds"]["scale"] <= 1.0, (
        f"{path.name}: fitted at zoom {wf['extra']['ds']['scale']}, where the canvas drops the "
        "nodes' text; make the layout more compact")


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_layout_links_do_not_cross_notes(path):
    problems = links_across_notes(_load(path))
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_layout_pack_nodes_have_room_for_their_panels(path, object_info):
    problems = panels_without_room(_load(path), object_info)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def test_layout_checks_catch_what_they_are_for(object_info):
    wf = _first_workflow()
    seg, note = _node(wf, "BiRefNetSegment"), _node(wf, "Note")
    assert not overlapping_nodes(wf) and not links_across_notes(wf)
    # a node moved so that only its title bar covers the node above it
    below = dict(seg, id=99, pos=[seg["pos"][0], seg["pos"][1] + seg["size"][1] + 5])
    assert overlapping_nodes({"nodes": [seg, below]}), "title bars count"
    # a node pushed off the right edge of the saved view
    moved = json.loads(json.dumps(wf))
    _node(moved, "SaveImage")["pos"][0] += 2000
    assert any("SaveImage" in p for p in nodes_outside_view(moved))
    # the note put where the model link runs
    loader = _node(wf, "BiRefNetModelLoader")
    note["pos"] = [loader["pos"][0] + loader["size"][0] + 5, seg["pos"][1] + 10]
    note["size"] = [30, 400]
    assert any("crosses note" in p for p in links_across_notes(wf))
    # a loader without room for the model info
    wf = _first_workflow()
    _node(wf, "BiRefNetModelLoader")["size"][1] = 170
    assert any("BiRefNetModelLoader" in p for p in panels_without_room(wf, object_info))
    # the segment's compare view, once shown, would reach the note below it
    wf = _first_workflow()
    seg, note = _node(wf, "BiRefNetSegment"), _node(wf, "Note")
    note["pos"][1] = seg["pos"][1] + seg["size"][1] + TITLE + 10
    assert not overlapping_nodes(wf)
    assert any("overlaps" in p for p in overlapping_nodes(after_first_run(wf)))


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
