// BiRefNet for ComfyUI: frontend extension (plain ES module, no build step).
//   * BiRefNet Composite: a colour picker (with opacity kept) next to the hex `color` widget.
//   * Load BiRefNet Model: shows the detected model (architecture.family, resolution, size)
//     after it ran.
//   * BiRefNet Remove Background / Composite: a before/after compare view (drag across it),
//     fed by the node's input image and what a preview/save node downstream displayed.
// Everything is defensive: where a frontend lacks an API used here, the feature is skipped
// and nothing throws. Widgets added here are never serialized, so saved workflows and API
// prompts are the same with or without this extension.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { cssColor, isValidHex, mergePickerValue, toPickerValue } from "./lib/color.js";
import { afterClipPath, containRect, splitFromPointer, splitX, viewHeight } from "./lib/compare.js";
import { formatModelInfo } from "./lib/modelinfo.js";
import { afterRank, COMPARE_NODES, firstImage, viewQuery } from "./lib/sources.js";

const EXTENSION = "birefnet.nodes";
const CHECKER = "repeating-conic-gradient(#808080 0% 25%, #b0b0b0 0% 50%) 50% / 16px 16px";

function warn(what, err) {
  try {
    console.warn(`[${EXTENSION}] ${what} disabled:`, err);
  } catch { /* no console */ }
}

/** Run `fn`, turning any exception into a console warning (the feature is skipped). */
function guarded(what, fn) {
  return function (...args) {
    try {
      return fn.apply(this, args);
    } catch (err) {
      warn(what, err);
      return undefined;
    }
  };
}

/** Chain `fn` after a prototype method (the original always runs, first). */
function chain(proto, name, fn) {
  const original = proto[name];
  proto[name] = function (...args) {
    const result = typeof original === "function" ? original.apply(this, args) : undefined;
    try {
      fn.apply(this, args);
    } catch (err) {
      warn(name, err);
    }
    return result;
  };
}

function el(tag, style = {}, text) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * A non-serialized DOM widget, or null where the frontend has no addDOMWidget. It is appended
 * after the node's own widgets: the frontend writes widgets_values by widget index, so a
 * skipped widget in the middle would leave a hole and shift nothing back on load.
 */
function addDomWidget(node, name, element, options = {}) {
  if (typeof node.addDOMWidget !== "function" || typeof document === "undefined") return null;
  const widget = node.addDOMWidget(name, `birefnet_${name}`, element, {
    serialize: false,
    hideOnZoom: false,
    ...options,
  });
  if (widget) {
    widget.serialize = false; // not in widgets_values (keeps saved workflows unchanged)
    if (widget.options) widget.options.serialize = false; // not in the API prompt
  }
  return widget ?? null;
}

function redraw(node) {
  try {
    node.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
  } catch { /* ignore */ }
}

function growToFit(node) {
  try {
    const size = node.computeSize?.();
    if (size && node.size && size[1] > node.size[1]) node.setSize?.([node.size[0], size[1]]);
  } catch { /* ignore */ }
  redraw(node);
}

// -- colour picker ---------------------------------------------------------------------------

function addColorPicker(node) {
  const colorWidget = node.widgets?.find((w) => w.name === "color");
  if (!colorWidget) return;
  const box = el("div", { display: "flex", alignItems: "center", gap: "6px",
    padding: "0 4px", fontSize: "12px" });
  const picker = el("input", { width: "36px", height: "22px", padding: "0", border: "none",
    background: "none", cursor: "pointer" });
  picker.type = "color";
  picker.title = "Pick the background colour (the #RRGGBBAA opacity is kept)";
  const swatch = el("span", { width: "36px", height: "18px", borderRadius: "3px",
    background: CHECKER, position: "relative", overflow: "hidden",
    border: "1px solid #0006" });
  const fill = el("span", { position: "absolute", inset: "0" });
  swatch.appendChild(fill);
  const note = el("span", { opacity: "0.8" });
  box.append(picker, swatch, note);

  const refresh = () => {
    const value = colorWidget.value;
    picker.value = toPickerValue(value);
    fill.style.background = cssColor(value) ?? "transparent";
    const ok = isValidHex(value);
    note.textContent = ok ? "" : "not #RRGGBB / #RRGGBBAA";
    note.style.color = ok ? "" : "#f66";
  };
  picker.addEventListener("input", () => {
    const value = mergePickerValue(picker.value, colorWidget.value);
    colorWidget.value = value;
    try {
      colorWidget.callback?.(value, app.canvas, node);
    } catch (err) {
      warn("colour callback", err);
    }
    refresh();
    redraw(node);
  });
  const original = colorWidget.callback;
  colorWidget.callback = function (...args) {
    const result = original?.apply(this, args);
    refresh();
    return result;
  };

  const widget = addDomWidget(node, "color_picker", box, { getMinHeight: () => 28,
    getMaxHeight: () => 28 });
  if (!widget) {
    // Older frontends: a button that opens the browser's colour dialog.
    if (typeof node.addWidget !== "function" || typeof document === "undefined") return;
    const button = node.addWidget("button", "pick colour", null, () => picker.click(),
      { serialize: false });
    if (button) button.serialize = false;
  }
  node.__birefnetRefreshColor = refresh;
  refresh();
}

// -- model info ------------------------------------------------------------------------------

function addModelInfo(node) {
  const pre = el("div", { whiteSpace: "pre", fontFamily: "monospace", fontSize: "11px",
    lineHeight: "14px", padding: "4px 6px", overflow: "hidden", opacity: "0.85" },
  "Run to detect the model.");
  const widget = addDomWidget(node, "model_info", pre, {
    getMinHeight: () => 14 * Math.max(1, node.__birefnetInfoLines ?? 1) + 10 });
  if (!widget) return;
  node.__birefnetShowInfo = (text) => {
    const lines = formatModelInfo(text);
    if (!lines.length) return;
    node.__birefnetInfoLines = lines.length;
    pre.textContent = lines.join("\n");
    pre.title = lines.join("\n");
    growToFit(node);
  };
}

// -- before/after compare view ---------------------------------------------------------------

function imageUrl(file) {
  const query = viewQuery(file);
  if (!query) return null;
  const rand = typeof app.getRandParam === "function" ? app.getRandParam() : "";
  return typeof api?.apiURL === "function" ? api.apiURL(query + rand) : query + rand;
}

function addCompareView(node) {
  const view = el("div", { position: "relative", width: "100%", height: "100%",
    overflow: "hidden", cursor: "ew-resize", display: "none", userSelect: "none" });
  const before = el("img", { position: "absolute", pointerEvents: "none" });
  const after = el("img", { position: "absolute", pointerEvents: "none", background: CHECKER });
  const line = el("div", { position: "absolute", top: "0", bottom: "0", width: "2px",
    background: "#fff", boxShadow: "0 0 2px #000", pointerEvents: "none" });
  const label = el("div", { position: "absolute", left: "4px", top: "2px", fontSize: "10px",
    color: "#fff", textShadow: "0 0 2px #000", pointerEvents: "none" }, "before | after");
  for (const img of [before, after]) {
    img.draggable = false;
    img.alt = "";
  }
  view.append(before, after, line, label);
  const state = { split: 0.5, rect: { x: 0, y: 0, w: 0, h: 0 }, shown: false, aspect: 1 };

  const layout = () => {
    const w = view.clientWidth;
    const h = view.clientHeight;
    const iw = after.naturalWidth || before.naturalWidth;
    const ih = after.naturalHeight || before.naturalHeight;
    if (iw && ih) state.aspect = ih / iw;
    state.rect = containRect(w, h, iw, ih);
    const { x, y, w: rw, h: rh } = state.rect;
    for (const img of [before, after]) {
      Object.assign(img.style, { left: `${x}px`, top: `${y}px`, width: `${rw}px`,
        height: `${rh}px` });
    }
    after.style.clipPath = afterClipPath(state.split);
    line.style.left = `${splitX(state.split, state.rect) - 1}px`;
  };
  view.addEventListener("pointermove", (event) => {
    const box = view.getBoundingClientRect();
    const scale = box.width > 0 && view.clientWidth > 0 ? view.clientWidth / box.width : 1;
    state.split = splitFromPointer((event.clientX - box.left) * scale, state.rect);
    layout();
  });
  before.addEventListener("load", layout);
  after.addEventListener("load", () => {
    layout();
    growToFit(node);
  });
  if (typeof ResizeObserver === "function") new ResizeObserver(layout).observe(view);

  const widget = addDomWidget(node, "compare", view, {
    getMinHeight: () => (state.shown
      ? viewHeight((node.size?.[0] ?? 300) - 20, 1, state.aspect, 120, 480) : 0),
  });
  if (!widget) return;
  node.__birefnetCompare = ({ beforeUrl, afterUrl }) => {
    if (!beforeUrl || !afterUrl) return;
    if (before.getAttribute("src") !== beforeUrl) before.src = beforeUrl;
    if (after.getAttribute("src") !== afterUrl) after.src = afterUrl;
    state.shown = true;
    view.style.display = "block";
    layout();
    growToFit(node);
  };
}

/** Image URL shown by (or output from) a node: its preview <img>s or its last outputs. */
function shownImageUrl(node) {
  if (!node) return null;
  const img = Array.isArray(node.imgs) ? node.imgs.find((i) => i?.src) : null;
  if (img) return img.src;
  const outputs = app.nodeOutputs?.[String(node.id)] ?? app.nodeOutputs?.[node.id];
  return imageUrl(firstImage(outputs));
}

function inputSlot(node, name) {
  return (node.inputs ?? []).findIndex((i) => i?.name === name);
}

/** On `executed` of any node with images: feed the compare views of our nodes upstream. */
function onExecuted(event) {
  const detail = event?.detail;
  const file = firstImage(detail?.output);
  if (!file || !app.graph?.getNodeById) return;
  const id = Number(detail.display_node ?? detail.node);
  if (!Number.isFinite(id)) return; // e.g. a node inside a subgraph: not handled
  const shown = app.graph.getNodeById(id);
  if (!shown?.inputs) return;
  let best = null;
  shown.inputs.forEach((input, slot) => {
    if (input?.link == null) return;
    const source = shown.getInputNode?.(slot);
    const link = shown.getInputLink?.(slot);
    if (!source?.__birefnetCompare || !link) return;
    const rank = afterRank(source.comfyClass ?? source.type, link.origin_slot);
    if (rank >= 0 && (!best || rank < best.rank)) best = { source, rank };
  });
  if (!best) return;
  const spec = COMPARE_NODES[best.source.comfyClass ?? best.source.type];
  const slot = inputSlot(best.source, spec.input);
  const upstream = slot >= 0 ? best.source.getInputNode?.(slot) : null;
  const beforeUrl = shownImageUrl(upstream);
  const afterUrl = imageUrl(file);
  best.source.__birefnetCompare({ beforeUrl, afterUrl });
}

// -- registration ----------------------------------------------------------------------------

const PER_NODE = {
  BiRefNetComposite: [addColorPicker, addCompareView],
  BiRefNetSegment: [addCompareView],
  BiRefNetModelLoader: [addModelInfo],
};

export const extension = {
  name: EXTENSION,
  setup: guarded("compare view", () => {
    api?.addEventListener?.("executed", guarded("compare view", onExecuted));
  }),
  beforeRegisterNodeDef: guarded("node UI", (nodeType, nodeData) => {
    const adders = PER_NODE[nodeData?.name];
    if (!adders || !nodeType?.prototype) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      if (typeof document === "undefined") return; // no DOM: nothing to show
      for (const add of adders) guarded(add.name, add)(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      this.__birefnetRefreshColor?.(); // widget values were just restored
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      if (output?.text) this.__birefnetShowInfo?.(output.text);
    });
  }),
};

// ComfyUI may serve web/ twice (WEB_DIRECTORY and pyproject's [tool.comfy] web): register once.
const already = globalThis.__birefnetNodesExtension === true
  || (Array.isArray(app?.extensions) && app.extensions.some((e) => e?.name === EXTENSION));
if (!already && app && typeof app.registerExtension === "function") {
  globalThis.__birefnetNodesExtension = true;
  try {
    app.registerExtension(extension);
  } catch (err) {
    warn("extension", err);
  }
}
