"""UI-format workflows (what the ComfyUI frontend saves) -> API prompts (what ``POST /prompt`` takes).

Used by the workflow tests: ``tests/test_workflows.py`` checks ``workflows/*.json`` against node
definitions with :func:`widget_values_by_name`, and ``tests/test_e2e_workflows.py`` runs them on
a real ComfyUI with :func:`workflow_to_prompt`. Node definitions are ``/object_info`` entries
(``input`` / ``input_order`` / ``output`` ...); :func:`node_info` builds one from a V1 node class
so our own nodes need no server.

How the frontend (1.2x) stores a node's widgets, which the conversion has to undo:

* ``widgets_values`` is a list in input order (required, then optional) of the inputs that are
  widgets (INT, FLOAT, STRING, BOOLEAN, combos), whether or not a link is connected to them;
* an INT seed (``control_after_generate`` in its options, or named ``seed`` / ``noise_seed``) is
  followed by its "control after generate" value (``fixed``, ``randomize``, ...);
* a file combo with an upload button (``image_upload`` / ``video_upload``) may be followed by
  the button's placeholder value (``"image"``);
* ``inputs`` lists the sockets, each with ``link`` (a link id or null); ``links`` rows are
  ``[id, from_node, from_slot, to_node, to_slot, type]``.
"""

from __future__ import annotations

from typing import Any, Iterable

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
SEED_NAMES = ("seed", "noise_seed")
# Node types that exist only in the frontend: never sent to the server.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote"})
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowError(ValueError):
    """A workflow that cannot be converted: what is wrong and where."""


# -- node definitions --------------------------------------------------------------------------

def node_info(cls, file_lists: Iterable[str] = ()) -> dict:
    """An ``/object_info``-like entry for a V1 node class (``INPUT_TYPES``, ``RETURN_TYPES``).

    Combos become ``["COMBO", {"options": [...], ...}]``; inputs named in ``file_lists`` (combos
    listing files on the server) become ``["COMBO", {"file_list": True}]``.
    """
    file_lists = set(file_lists)
    types = cls.INPUT_TYPES()
    inputs, order = {}, {}
    for section in ("required", "optional"):
        specs = types.get(section) or {}
        if not specs:
            continue
        inputs[section], order[section] = {}, list(specs)
        for name, spec in specs.items():
            kind = spec[0]
            opts = dict(spec[1]) if len(spec) > 1 and spec[1] else {}
            if isinstance(kind, (list, tuple)):
                opts["options"], kind = list(kind), "COMBO"
            if name in file_lists:
                opts.pop("options", None)
                opts["file_list"] = True
            inputs[section][name] = [kind, opts]
    outputs = list(cls.RETURN_TYPES)
    return {"input": inputs, "input_order": order, "output": outputs,
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or outputs),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}


def input_specs(info: dict) -> list[tuple[str, str, dict, bool]]:
    """``(name, type, options, optional)`` of every input, in the frontend's order."""
    out = []
    for section in ("required", "optional"):
        specs = (info.get("input") or {}).get(section) or {}
        names = (info.get("input_order") or {}).get(section) or list(specs)
        for name in names:
            spec = specs[name]
            kind = spec[0]
            opts = dict(spec[1]) if len(spec) > 1 and spec[1] else {}
            if isinstance(kind, (list, tuple)):
                opts["options"], kind = list(kind), "COMBO"
            out.append((name, kind, opts, section == "optional"))
    return out


def is_widget(kind: str, opts: dict) -> bool:
    return kind in WIDGET_TYPES and not opts.get("forceInput")


def has_control(name: str, kind: str, opts: dict) -> bool:
    """Whether the frontend adds a "control after generate" value after this widget."""
    return kind in ("INT", "COMBO") and bool(opts.get("control_after_generate")
                                              or (kind == "INT" and name in SEED_NAMES))


def widget_specs(info: dict) -> list[tuple[str, str, dict, bool]]:
    return [s for s in input_specs(info) if is_widget(s[1], s[2])]


def split_widget_values(info: dict, values: list | dict | None) -> tuple[dict, dict]:
    """``(values, controls)``: a node's ``widgets_values`` by input name, and the "control after
    generate" values by the name of the widget they follow (upload placeholders are dropped).

    Raises :class:`WorkflowError` when the count fits no layout the frontend writes.
    """
    if isinstance(values, dict):  # some frontends/nodes save a name -> value mapping
        return dict(values), {}
    values = list(values or [])
    specs = widget_specs(info)
    uploads = sum(1 for _, _, o, _ in specs if any(o.get(f) for f in UPLOAD_FLAGS))
    base = len(specs) + sum(1 for n, k, o, _ in specs if has_control(n, k, o))
    if len(values) not in (base, base + uploads):
        raise WorkflowError(f"{len(values)} widget values, expected {base}"
                            + (f" or {base + uploads}" if uploads else "")
                            + f" for widgets {[s[0] for s in specs]}")
    with_upload = len(values) == base + uploads and uploads > 0
    out, controls, i = {}, {}, 0
    for name, kind, opts, _ in specs:
        out[name] = values[i]
        i += 1
        if has_control(name, kind, opts):
            controls[name] = values[i]
            i += 1
        if with_upload and any(opts.get(f) for f in UPLOAD_FLAGS):
            i += 1
    return out, controls


def widget_values_by_name(info: dict, values: list | dict | None) -> dict[str, Any]:
    """A node's ``widgets_values`` by input name (see :func:`split_widget_values`)."""
    return split_widget_values(info, values)[0]


# -- conversion --------------------------------------------------------------------------------

def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    """The API prompt ``{node_id: {"class_type", "inputs", "_meta"}}`` of a UI-format workflow.

    Frontend-only nodes (notes) and muted nodes are left out; bypassed nodes, reroutes,
    primitive nodes and subgraphs are not supported (the shipped workflows use none).
    """
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {row[0]: row for row in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) == MODE_MUTED:
            continue
        if node.get("mode", 0) == MODE_BYPASSED:
            raise WorkflowError(f"node {node['id']} ({kind}) is bypassed: not supported")
        if kind not in object_info:
            raise WorkflowError(f"node {node['id']}: unknown node type {kind!r}")
        info = object_info[kind]
        try:
            inputs = widget_values_by_name(info, node.get("widgets_values"))
        except WorkflowError as exc:
            raise WorkflowError(f"node {node['id']} ({kind}): {exc}") from None
        for slot in node.get("inputs") or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            if link_id not in links:
                raise WorkflowError(f"node {node['id']} ({kind}) input {slot['name']!r}: "
                                    f"link {link_id} is not in 'links'")
            _, src, src_slot, _, _, _ = links[link_id][:6]
            source = nodes.get(src)
            if source is None or source["type"] in FRONTEND_ONLY:
                raise WorkflowError(f"link {link_id} starts at missing node {src}")
            if source.get("mode", 0) == MODE_MUTED:
                continue
            inputs[slot["name"]] = [str(src), int(src_slot)]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title") or kind}}
    return prompt


def find_nodes(prompt: dict, class_type: str, title: str | None = None) -> list[str]:
    """Ids of the prompt's nodes of ``class_type`` (and with ``title``, if given)."""
    return [nid for nid, n in prompt.items() if n["class_type"] == class_type
            and (title is None or n.get("_meta", {}).get("title") == title)]
