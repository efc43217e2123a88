"""A real Chromium on the real ComfyUI frontend, driven by Playwright (sync API).

``tests/test_browser.py`` uses it. Debian's ``chromium`` is launched through
``executable_path`` (Playwright's own browser download cannot work on CI machines); set
``BIREFNET_CHROMIUM`` to use another binary.

A :class:`ComfyPage` is one tab on one server with Nodes 2.0 (the Vue node renderer, the user
setting ``Comfy.VueNodes.Enabled``) off or on. It loads workflows as a user does, by dropping the
file onto the canvas, clicks the Run button, and measures what is on screen: :meth:`snapshot`
returns plain data (client-pixel rectangles of the nodes and of the pack's DOM widgets and what
they contain), which the pure functions at the end of this module check for overlaps, clipped
text and empty space. The checks know nothing of how the pack builds its widgets beyond what a
user sees: text, images, a colour input.

Console messages are recorded by an init script that wraps ``console.warn``/``console.error``
before any page script runs, so each message comes with the JavaScript stack that printed it;
a message belongs to the pack when that stack, its location or its text names the pack. The
frontend's deprecation warnings go through ``LiteGraph.onDeprecationWarning``, which holds
``console.warn`` as it was when LiteGraph was built, i.e. the wrapped one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from comfy_host import PACK_LINK, ComfyServer, unavailable

CHROMIUM = os.environ.get("BIREFNET_CHROMIUM", "/usr/bin/chromium")
PACK_URL = f"/extensions/{PACK_LINK}/"
PACK_MODULE = f"custom_nodes.{PACK_LINK}"
EXTENSION = "birefnet.nodes"  # the name web/birefnet.js registers
VIEWPORT = {"width": 1600, "height": 1000}
LOAD_TIMEOUT_MS = 60_000  # first page load: the frontend bundle, /object_info
DROP_TIMEOUT_MS = 20_000

# Written to the server's user settings before a page opens: no first-run template browser (it
# covers the canvas), the missing-nodes dialog explicitly on (the tests look for it), and what a
# user has by default on a wide screen: the minimap on, a workflow's saved view restored.
BASE_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Minimap.Visible": True,
    "Comfy.EnableWorkflowViewRestore": True,
}

# The graph canvas and the minimap panel on screen (client px; the minimap null when hidden).
SCREEN_AREAS = """() => {
  const rect = (e) => { const r = e.getBoundingClientRect();
    return { x: r.x, y: r.y, w: r.width, h: r.height }; };
  const minimap = document.querySelector("canvas.minimap-canvas");
  return { canvas: rect(app.canvas.canvas),
           minimap: minimap && minimap.offsetParent ? rect(minimap.parentElement) : null };
}"""

# Installed before any page script runs. `window.__bt` holds the helpers the tests call; they
# touch `app` only when called.
PAGE_SCRIPT = r"""
(() => {
  // -- console and network ---------------------------------------------------------------
  const log = [];
  const format = (args) => args.map((a) => {
    if (a instanceof Error) return a.stack || String(a);
    if (typeof a === "string") return a;
    try { return JSON.stringify(a); } catch { return String(a); }
  }).join(" ");
  for (const level of ["warn", "error"]) {
    const original = console[level];
    console[level] = function (...args) {
      try { log.push({ level, text: format(args), stack: new Error().stack || "" }); } catch {}
      return original.apply(this, args);
    };
  }
  addEventListener("error", (e) => log.push({ level: "uncaught", text: String(e.message),
    stack: (e.error && e.error.stack) || String(e.filename || "") }));
  addEventListener("unhandledrejection", (e) => log.push({ level: "unhandledrejection",
    text: String(e.reason), stack: (e.reason && e.reason.stack) || "" }));
  let fetching = 0; // requests in flight (the pack asks the server for model descriptions)
  const originalFetch = fetch;
  window.fetch = function (...args) {
    fetching++;
    return originalFetch.apply(this, args).finally(() => fetching--);
  };

  // -- geometry ----------------------------------------------------------------------------
  const canvasEl = () => app.canvasEl ?? document.querySelector("#graph-canvas");
  const rectOf = (r) => ({ x: r.left, y: r.top, w: r.width, h: r.height });
  const union = (rects) => {
    if (!rects.length) return null;
    const x = Math.min(...rects.map((r) => r.left)), y = Math.min(...rects.map((r) => r.top));
    return { x, y, w: Math.max(...rects.map((r) => r.right)) - x,
             h: Math.max(...rects.map((r) => r.bottom)) - y };
  };
  const vueEl = (id) => document.querySelector(`[data-node-id="${id}"]`);
  const shown = (el) => {
    if (!el || !el.isConnected) return false;
    for (let e = el; e && e !== document.documentElement; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === "none" || s.visibility === "hidden") return false;
    }
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0;
  };
  const LEAVES = new Set(["IMG", "INPUT", "CANVAS", "VIDEO", "TEXTAREA", "SELECT", "BUTTON"]);
  // What an element shows: the boxes of its text and of its images/inputs (not of the
  // containers around them, which may stretch over empty space).
  const contentBox = (root) => {
    const rects = [];
    const walk = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT);
    for (let n = walk.currentNode; n; n = walk.nextNode()) {
      if (n.nodeType === Node.TEXT_NODE) {
        if (n.textContent.trim() && shown(n.parentElement)) {
          const range = document.createRange();
          range.selectNodeContents(n);
          rects.push(range.getBoundingClientRect());
        }
      } else if (LEAVES.has(n.tagName) && shown(n)) rects.push(n.getBoundingClientRect());
    }
    return union(rects);
  };
  // Elements whose text is cut off: more to scroll than their box, and overflow not visible.
  const clipped = (root) => {
    const found = [];
    for (const e of [root, ...root.querySelectorAll("*")]) {
      if (!shown(e) || !e.textContent.trim()) continue;
      const s = getComputedStyle(e);
      const cuts = (o) => o !== "visible";
      const wide = cuts(s.overflowX) && e.scrollWidth > e.clientWidth + 1;
      const tall = cuts(s.overflowY) && e.scrollHeight > e.clientHeight + 1;
      if (wide || tall) {
        found.push({ text: e.innerText.trim().slice(0, 200), className: String(e.className),
          scroll: [e.scrollWidth, e.scrollHeight], client: [e.clientWidth, e.clientHeight] });
      }
    }
    return found;
  };

  const preview = (id) => {
    const n = app.graph.getNodeById(id);
    if (!n) return null;
    const scale = app.canvas.ds.scale;
    const el = vueEl(id);
    if (el) {
      return [...el.querySelectorAll("img")].map((i) => {
        const r = i.getBoundingClientRect();
        return { natural: [i.naturalWidth, i.naturalHeight], complete: i.complete,
                 shown: [r.width / scale, r.height / scale] };
      });
    }
    // classic: LiteGraph draws node.imgs fitted into the image-preview widget, or else into
    // the part of the node below the widgets
    const area = n.widgets?.find((w) => w.name === "$$canvas-image-preview");
    let top = 0;
    for (const w of n.widgets ?? []) {
      const h = w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT;
      if (w !== area && Number.isFinite(w.y)) top = Math.max(top, w.y + h);
    }
    const [aw, ah] = area && Number.isFinite(area.computedHeight)
      ? [n.size[0], area.computedHeight] : [n.size[0], Math.max(0, n.size[1] - top)];
    return (n.imgs ?? []).map((i) => {
      const fit = Math.min(aw / (i.naturalWidth || 1), ah / (i.naturalHeight || 1));
      return { natural: [i.naturalWidth, i.naturalHeight], complete: i.complete,
               shown: [i.naturalWidth * fit, i.naturalHeight * fit] };
    });
  };

  const snapshot = (packTypes) => {
    const pack = new Set(packTypes);
    const ds = app.canvas.ds, box = canvasEl().getBoundingClientRect(), scale = ds.scale;
    const fromCanvas = (x, y, w, h) => ({ x: box.left + (x + ds.offset[0]) * scale,
      y: box.top + (y + ds.offset[1]) * scale, w: w * scale, h: h * scale });
    const vue = app.graph.nodes.some((n) => vueEl(n.id));
    const nodes = app.graph.nodes.map((n) => {
      const el = vueEl(n.id);
      let rect;
      if (el) rect = rectOf(el.getBoundingClientRect());
      else {
        const b = n.boundingRect ?? [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT,
          n.size[0], n.size[1] + LiteGraph.NODE_TITLE_HEIGHT];
        rect = fromCanvas(b[0], b[1], b[2], b[3]);
      }
      const values = Object.fromEntries((n.widgets ?? []).filter((w) => !w.element)
        .map((w) => [w.name, w.value]));
      const widgets = [];
      for (const w of pack.has(n.type) ? n.widgets ?? [] : []) {
        const e = w.element;
        if (!(e instanceof HTMLElement)) continue;
        const visible = shown(e);
        widgets.push({
          name: w.name, shown: visible, rect: rectOf(e.getBoundingClientRect()),
          content: visible ? contentBox(e) : null,
          // classic renderer: the height LiteGraph reserves for the widget, and its margin
          slot: !vue && Number.isFinite(w.y) && Number.isFinite(w.computedHeight)
            ? fromCanvas(n.pos[0], n.pos[1] + w.y, n.size[0], w.computedHeight) : null,
          margin: !vue && Number.isFinite(w.margin) ? w.margin : 0,
          text: visible ? e.innerText : "",
          clipped: visible ? clipped(e) : [],
          images: [...e.querySelectorAll("img")].map((i) => ({
            src: i.getAttribute("src") || "", cls: i.className,
            natural: [i.naturalWidth, i.naturalHeight], complete: i.complete,
            shown: shown(i), rect: rectOf(i.getBoundingClientRect()) })),
          // each colour input with the row it sits in (the widget's child holding it)
          colors: [...e.querySelectorAll("input[type=color]")].filter(shown).map((i) => {
            let row = i;
            while (row.parentElement && row.parentElement !== e) row = row.parentElement;
            return rectOf((row.parentElement === e ? row : e).getBoundingClientRect());
          }),
        });
      }
      return { id: n.id, type: n.type, title: n.title ?? n.type, pack: pack.has(n.type),
               rect, values, widgets };
    });
    return { vue, scale, nodes };
  };

  // -- actions -----------------------------------------------------------------------------
  // Dispatch dragenter/dragover/drop with a DataTransfer holding the file on the canvas, at a
  // point where nothing covers it (a user drops on empty canvas, not on a node).
  const drop = (text, name) => {
    const canvas = canvasEl();
    const r = canvas.getBoundingClientRect();
    let point = null;
    for (let fy = 0.95; fy > 0.05 && !point; fy -= 0.05) {
      for (let fx = 0.95; fx > 0.05 && !point; fx -= 0.05) {
        const x = r.left + r.width * fx, y = r.top + r.height * fy;
        if (document.elementFromPoint(x, y) === canvas) point = [x, y];
      }
    }
    if (!point) {
      const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      const what = top ? `<${top.tagName.toLowerCase()} class="${top.className}">` : "nothing";
      return `no uncovered point of the canvas to drop on (at its centre: ${what})`;
    }
    const data = new DataTransfer();
    data.items.add(new File([text], name, { type: "application/json" }));
    const init = { bubbles: true, cancelable: true, composed: true, dataTransfer: data,
                   clientX: point[0], clientY: point[1] };
    for (const type of ["dragenter", "dragover", "drop"]) {
      canvas.dispatchEvent(new DragEvent(type, init));
    }
    return null;
  };

  // Fit the whole graph into the view at once (the frontend's own "fit view" animates).
  const fit = () => {
    const ds = app.canvas.ds, box = canvasEl().getBoundingClientRect();
    // Nodes 2.0 may draw a node larger than LiteGraph's size for it: use what is on screen
    const rects = app.graph.nodes.map((n) => {
      const el = vueEl(n.id);
      if (!el) return n.boundingRect ?? [n.pos[0], n.pos[1], ...n.size];
      const r = el.getBoundingClientRect();
      return [(r.left - box.left) / ds.scale - ds.offset[0],
              (r.top - box.top) / ds.scale - ds.offset[1], r.width / ds.scale, r.height / ds.scale];
    });
    const x0 = Math.min(...rects.map((r) => r[0])), y0 = Math.min(...rects.map((r) => r[1]));
    const x1 = Math.max(...rects.map((r) => r[0] + r[2]));
    const y1 = Math.max(...rects.map((r) => r[1] + r[3]));
    // room above for the frontend's floating action bar, which would hide node titles
    const top = 60;
    ds.fitToBounds([x0, y0 - top, x1 - x0, y1 - y0 + top], { zoom: 0.9 });
    app.canvas.setDirty(true, true);
  };

  // Resolves (true) once nothing is pending: no request in flight, every image loaded, and the
  // view transform and the boxes of Vue nodes and DOM widgets unchanged for three frames.
  const settle = (timeoutMs) => new Promise((resolve) => {
    const start = performance.now();
    let last = null, same = 0;
    const tick = () => {
      const ds = app.canvas.ds;
      const boxes = [...document.querySelectorAll("[data-node-id], .dom-widget, .dom-widget > *")]
        .map((e) => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; });
      const busy = fetching > 0 || [...document.images].some((i) => !i.complete);
      const now = JSON.stringify([busy, ds.scale, ...ds.offset, boxes]);
      same = !busy && now === last ? same + 1 : 0;
      last = now;
      if (same >= 3 || performance.now() - start > timeoutMs) resolve(same >= 3);
      else requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });

  // Once the app is up: LiteGraph warnings repeat from now on (a deprecation warning printed
  // earlier by core code would otherwise hide ours), and app.loadGraphData calls (the drop
  // handler's) are counted so a test can wait until a load has finished.
  const loads = { done: 0 };
  const ready = (extension) => {
    LiteGraph.alwaysRepeatWarnings = true;
    if (!app.__birefnetCounted) {
      app.__birefnetCounted = true;
      const original = app.loadGraphData;
      app.loadGraphData = async function (...args) {
        try { return await original.apply(this, args); } finally { loads.done++; }
      };
    }
    return { version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
             vue: app.extensionManager.setting.get("Comfy.VueNodes.Enabled"),
             extension: (app.extensions ?? []).some((e) => e?.name === extension) };
  };

  window.__bt = { log, loads, preview, snapshot, drop, fit, settle, ready };
})();
"""


def launch(playwright):
    """Debian's Chromium, headless (skips, or fails under CI, where it is absent)."""
    if not Path(CHROMIUM).is_file():
        unavailable(f"{CHROMIUM} is absent: the browser tests need Chromium (Debian: apt-get "
                    "install chromium; or set BIREFNET_CHROMIUM)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True)


def pack_types(server: ComfyServer) -> list[str]:
    """This pack's node types, as the server lists them."""
    info = server.get("/object_info")
    return sorted(k for k, v in info.items()
                  if str(v.get("python_module", "")).startswith(PACK_MODULE))


def from_pack(message: dict, types: list[str]) -> bool:
    """Whether a recorded console message came from (or is about) this pack."""
    where = " ".join(str(message.get(k, "")) for k in ("stack", "location"))
    text = message.get("text", "")
    if PACK_URL in where or PACK_URL in text or f"[{EXTENSION}]" in text:
        return True
    if "/birefnet" in message.get("location", ""):  # a failed request to the pack's routes
        return True
    return any(re.search(rf"\b{t}\b", text) for t in types)


class ComfyPage:
    """One tab on ``server`` with Nodes 2.0 ``vue`` on or off; screenshots go to ``shots``."""

    def __init__(self, browser, server: ComfyServer, vue: bool, types: list[str],
                 shots: list[Path]):
        self.server, self.vue, self.types, self.shots = server, vue, types, shots
        server.post("/settings", {**BASE_SETTINGS, "Comfy.VueNodes.Enabled": vue})
        self.page = browser.new_page(viewport=VIEWPORT)
        self.page.add_init_script(PAGE_SCRIPT)
        self.network: list[dict] = []  # failed resources: the console wrapper cannot see them
        self.page.on("console", self._on_console)
        self.page.goto(server.url)
        self.page.wait_for_function(
            "() => window.app?.graph && window.LiteGraph && app.canvas?.ds"
            " && app.extensionManager?.setting", timeout=LOAD_TIMEOUT_MS)
        self.info = self.page.evaluate("(name) => __bt.ready(name)", EXTENSION)

    def _on_console(self, msg) -> None:
        if msg.type in ("error", "warning") and msg.text.startswith("Failed to load resource"):
            self.network.append({"level": msg.type, "text": msg.text,
                                 "location": msg.location.get("url", "")})

    def close(self) -> None:
        self.page.close()

    # -- console --------------------------------------------------------------------------------
    def messages(self) -> list[dict]:
        return self.page.evaluate("() => __bt.log.slice()") + self.network

    def clear_messages(self) -> None:
        self.network.clear()
        self.page.evaluate("() => { __bt.log.length = 0; }")

    def pack_messages(self) -> list[dict]:
        return [m for m in self.messages() if from_pack(m, self.types)]

    # -- loading --------------------------------------------------------------------------------
    def drop_workflow(self, path: Path, saved_view_shot: str | None = None) -> dict:
        """Drop ``path`` onto the canvas, wait until the graph holds its nodes (and, with Nodes
        2.0, they are on screen), keep what the view saved in the workflow shows
        (:attr:`saved_view`, with a screenshot named ``saved_view_shot``), fit the view;
        returns the workflow."""
        workflow = json.loads(path.read_text())
        ids = sorted(n["id"] for n in workflow["nodes"])
        loads = self.page.evaluate("() => __bt.loads.done")
        # Something may cover the whole canvas for a moment (CI once found it covered on the
        # first drop into a fresh tab): retry for a while; a failure names what covers it.
        deadline = time.monotonic() + DROP_TIMEOUT_MS / 1000
        while True:
            problem = self.page.evaluate("([t, n]) => __bt.drop(t, n)",
                                         [path.read_text(), path.name])
            if problem is None or time.monotonic() > deadline:
                break
            self.page.wait_for_timeout(250)
        assert problem is None, f"{path.name}: {problem}"
        self.page.wait_for_function(
            "([loads, ids]) => __bt.loads.done > loads && JSON.stringify("
            "app.graph.nodes.map((n) => n.id).sort((a, b) => a - b)) === JSON.stringify(ids)",
            arg=[loads, ids], timeout=DROP_TIMEOUT_MS)
        if self.vue:
            self.page.wait_for_function(
                "(ids) => ids.every((id) => document.querySelector(`[data-node-id=\"${id}\"]`))",
                arg=ids, timeout=DROP_TIMEOUT_MS)
        self.saved_view = {"snapshot": self.snapshot(), **self.page.evaluate(SCREEN_AREAS)}
        if saved_view_shot:
            self.saved_view["screenshot"] = self.screenshot(saved_view_shot)
        self.fit_view()
        return workflow

    def fit_view(self) -> None:
        self.page.evaluate("() => __bt.fit()")
        self.settle()

    def settle(self, timeout_ms: float = 10_000) -> bool:
        """Wait until nothing loads or moves (False: still busy after ``timeout_ms``)."""
        return self.page.evaluate("(t) => __bt.settle(t)", timeout_ms)

    def unregistered_types(self) -> list[str]:
        return self.page.evaluate(
            "() => app.graph.nodes.map((n) => n.type).filter((t) =>"
            " !LiteGraph.registered_node_types[t])")

    def dialogs(self) -> list[str]:
        """Text of the dialogs on screen (the missing-nodes warning is one)."""
        return self.page.evaluate(
            "() => [...document.querySelectorAll('.p-dialog, [role=dialog], [role=alertdialog]')]"
            ".filter((d) => d.getClientRects().length && getComputedStyle(d).visibility !="
            " 'hidden').map((d) => d.innerText.trim().slice(0, 500))")

    def close_dialogs(self, timeout_ms: float = 10_000) -> None:
        """Close the dialogs on screen as a user would (Escape, then each one's close button)
        and wait until they and their modal masks are gone: a mask left over the canvas would
        take the next workflow's drop."""
        gone = ("() => ![...document.querySelectorAll('.p-dialog, .p-dialog-mask, [role=dialog],"
                " [role=alertdialog]')].some((d) => d.getClientRects().length)")
        deadline = time.monotonic() + timeout_ms / 1000
        while not self.page.evaluate(gone) and time.monotonic() < deadline:
            self.page.keyboard.press("Escape")
            self.page.evaluate(
                "() => document.querySelectorAll('.p-dialog-close-button, .p-dialog-header-close,"
                " [role=dialog] button[aria-label=Close]').forEach((b) => b.click())")
            self.page.wait_for_timeout(250)
        assert self.page.evaluate(gone), f"dialogs still open: {self.dialogs()}"

    # -- editing and running --------------------------------------------------------------------
    def widget_options(self, node_id: int, name: str) -> list:
        return self.page.evaluate(
            "([id, name]) => app.graph.getNodeById(id)?.widgets?.find((w) => w.name === name)"
            "?.options?.values ?? []", [node_id, name])

    def set_widget(self, node_id: int, name: str, value) -> None:
        """Set a widget's value through the graph, as the frontend's own controls do."""
        self.page.evaluate(
            "([id, name, value]) => { const n = app.graph.getNodeById(id);"
            " const w = n.widgets.find((w) => w.name === name); w.value = value;"
            " w.callback?.(value, app.canvas, n); n.setDirtyCanvas?.(true, true); }",
            [node_id, name, value])

    def click_run(self) -> None:
        """Click the Run button of the action bar."""
        self.page.get_by_role("button", name="Run", exact=True).click()

    def wait_outputs(self, node_ids: list[int], timeout_ms: float) -> None:
        """Wait until every node in ``node_ids`` received images and shows one loaded."""
        self.page.wait_for_function(
            "(ids) => ids.every((id) => app.nodeOutputs?.[String(id)]?.images?.length"
            " && __bt.preview(id)?.some((i) => i.complete && i.natural[0] > 0))",
            arg=node_ids, timeout=timeout_ms)

    def preview(self, node_id: int) -> list[dict]:
        return self.page.evaluate("(id) => __bt.preview(id)", node_id)

    # -- measuring ------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        self.settle()
        return self.page.evaluate("(types) => __bt.snapshot(types)", self.types)

    def screenshot(self, name: str) -> Path:
        """Save the viewport as ``name``.png in the session's folder (and in
        ``BIREFNET_SCREENSHOTS`` when set); returns the first path."""
        first = self.shots[0] / f"{name}.png"
        self.page.screenshot(path=str(first))
        for folder in self.shots[1:]:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(first, folder / first.name)
        return first


# -- checks over a snapshot: pure functions returning readable problems ------------------------

TOLERANCE = 1.0  # px: borders and sub-pixel rounding
MAX_EMPTY = 24.0  # px (canvas units) of empty space a widget may keep, besides its margins


def _intersection(a: dict, b: dict) -> tuple[float, float]:
    w = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    return max(0.0, w), max(0.0, h)


def _size(rect: dict, scale: float) -> str:
    return f"{rect['w'] / scale:.0f}x{rect['h'] / scale:.0f}"


def label(node: dict) -> str:
    return f"#{node['id']} {node['title']!r} ({node['type']})"


def pack_widgets(snap: dict, node_type: str | None = None):
    """(node, widget) for every DOM widget of the pack's nodes (of ``node_type``)."""
    return [(n, w) for n in snap["nodes"] if n["pack"] and node_type in (None, n["type"])
            for w in n["widgets"]]


def overlap_problems(snap: dict) -> list[str]:
    """Nodes over other nodes (every node of the shipped workflows is the pack's layout), pack
    DOM widgets over another node, and pack DOM widgets sticking out of their own node; sizes
    in canvas units."""
    scale, nodes = snap["scale"], snap["nodes"]
    problems = []
    for i, node in enumerate(nodes):
        for other in nodes[i + 1:]:
            w, h = _intersection(node["rect"], other["rect"])
            if w > TOLERANCE and h > TOLERANCE:
                problems.append(f"node {label(node)} overlaps node {label(other)} by "
                                f"{w / scale:.0f}x{h / scale:.0f}")
    for node, widget in pack_widgets(snap):
        if not widget["shown"]:
            continue
        for other in (o for o in nodes if o["id"] != node["id"]):
            w, h = _intersection(widget["rect"], other["rect"])
            if w > TOLERANCE and h > TOLERANCE:
                problems.append(f"widget {widget['name']!r} of {label(node)} overlaps node "
                                f"{label(other)} by {w / scale:.0f}x{h / scale:.0f}")
        r, n = widget["rect"], node["rect"]
        out = max(n["x"] - r["x"], r["x"] + r["w"] - n["x"] - n["w"],
                  n["y"] - r["y"], r["y"] + r["h"] - n["y"] - n["h"])
        if out > TOLERANCE:
            problems.append(f"widget {widget['name']!r} ({_size(r, scale)}) sticks out of its "
                            f"node {label(node)} ({_size(n, scale)}) by {out / scale:.0f}")
    return problems


def saved_view_problems(view: dict) -> list[str]:
    """Nodes that the view saved in a workflow shows off the canvas or under the minimap (in
    screen px: what a user sees on opening it)."""
    canvas, minimap = view["canvas"], view["minimap"]
    if minimap is None:
        return ["no minimap on screen: the check cannot see what it would cover"]
    problems = []
    for node in view["snapshot"]["nodes"]:
        r = node["rect"]
        w, h = _intersection(r, minimap)
        if w > TOLERANCE and h > TOLERANCE:
            problems.append(f"node {label(node)} is under the minimap by {w:.0f}x{h:.0f} px")
        out = max(canvas["x"] - r["x"], r["x"] + r["w"] - canvas["x"] - canvas["w"],
                  canvas["y"] - r["y"], r["y"] + r["h"] - canvas["y"] - canvas["h"])
        if out > TOLERANCE:
            problems.append(f"node {label(node)} runs {out:.0f} px off the canvas")
    return problems


def sizing_problems(snap: dict, max_empty: float = MAX_EMPTY) -> list[str]:
    """Pack DOM widgets not sized to what they show (canvas units): a box, or with the classic
    renderer the height LiteGraph reserves (less its margins), more than ``max_empty`` taller
    than the content; content spilling out of its box; text cut off."""
    scale = snap["scale"]
    problems = []
    for node, w in pack_widgets(snap):
        name = f"widget {w['name']!r} of {label(node)}"
        reserved = w["slot"]["h"] / scale - 2 * w["margin"] if w["slot"] else 0
        if not w["shown"]:
            if reserved > max_empty:
                problems.append(f"{name} is hidden but keeps {reserved:.0f} px of the node empty")
            continue
        box = max(w["rect"]["h"] / scale, reserved)
        content = w["content"]
        if content is None:
            if box > max_empty:
                problems.append(f"{name} shows nothing in {box:.0f} px")
            continue
        if box - content["h"] / scale > max_empty:
            problems.append(f"{name} is {box:.0f} px tall for {content['h'] / scale:.0f} px of "
                            f"content ({box - content['h'] / scale:.0f} px empty)")
        problems += clipping_problems(node, w, scale)
    return problems


def clipping_problems(node: dict, widget: dict, scale: float) -> list[str]:
    """What of a shown pack DOM widget does not fit its box: content spilling out of it
    (canvas units), text its box or an inner box cuts off (CSS px)."""
    problems = []
    r, c = widget["rect"], widget["content"]
    if c is not None:
        spill = max(r["y"] - c["y"], c["y"] + c["h"] - r["y"] - r["h"],
                    r["x"] - c["x"], c["x"] + c["w"] - r["x"] - r["w"]) / scale
        if spill > TOLERANCE:
            problems.append(f"widget {widget['name']!r} of {label(node)}: its content "
                            f"({_size(c, scale)}) spills {spill:.0f} px out of its box "
                            f"({_size(r, scale)})")
    problems += [f"widget {widget['name']!r} of {label(node)}: text cut off, {cut['scroll'][0]}x"
                 f"{cut['scroll'][1]} px in a {cut['client'][0]}x{cut['client'][1]} px box: "
                 f"{cut['text']!r}" for cut in widget["clipped"]]
    return problems


def color_row_problems(snap: dict, low: float = 16.0, high: float = 40.0) -> list[str]:
    """Colour pickers whose row is not a single row's height (canvas units)."""
    scale = snap["scale"]
    return [f"the colour picker row of {label(n)} is {r['h'] / scale:.0f} px tall (a row is "
            f"{low:.0f} to {high:.0f} px)"
            for n, w in pack_widgets(snap) for r in w["colors"]
            if not low <= r["h"] / scale <= high]
