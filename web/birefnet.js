// BiRefNet for ComfyUI: frontend extension (plain ES module, no build step).
//   * Load BiRefNet Model: what the selected file is (architecture.family, resolution, size),
//     asked from the server as soon as a file is selected and replaced by the loader's own
//     report after it ran; it follows model_name/family/patch_order/precision.
//   * BiRefNet Composite: a labelled colour chip that opens the browser's colour picker (the
//     #RRGGBBAA opacity is kept), shown only while background_mode is "color".
//   * BiRefNet Remove Background / Composite: a before/after compare view (move the pointer
//     across it), fed by the node's input image and what a preview/save node downstream showed.
// Each node gets one DOM widget (Nodes 2.0 stretches every DOM widget row, so two would share
// the free space). The widgets take the room the node has and never grow it by more than their
// small minimum. Everything is defensive: where a frontend lacks an API used here, the feature
// is skipped and nothing throws. Widgets added here are never serialized, so saved workflows and
// API prompts are the same with or without this extension.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { cssColor, isValidHex, mergePickerValue, toPickerValue } from "./lib/color.js";
import { afterClipPath, containRect, PANEL, panelMinHeight, splitFromPointer, splitX }
  from "./lib/compare.js";
import { INFO_ROUTE, INFO_WIDGETS, infoQuery, modelInfoRows, modelInfoSummary }
  from "./lib/modelinfo.js";
import { afterRank, COMPARE_NODES, fileFromWidgetValue, firstImage, viewQuery }
  from "./lib/sources.js";

const EXTENSION = "birefnet.nodes";
const CHECKER = "repeating-conic-gradient(#808080 0% 25%, #b0b0b0 0% 50%) 50% / 12px 12px";
const INFO_LINE = 15; // px, line height of the model info

// Colours come from the frontend's palette variables, so light and dark themes both work.
const CSS = `
.birefnet-panel { display: flex; flex-direction: column; gap: ${PANEL.gap}px; width: 100%;
  height: 100%; min-width: 0; box-sizing: border-box; }
.birefnet-color-row { display: flex; align-items: center; gap: 8px; flex: none;
  height: ${PANEL.colorRow}px; padding: 0 6px 0 12px; box-sizing: border-box;
  border-radius: 6px; background: var(--comfy-input-bg, #222);
  color: var(--descrip-text, #999); font-size: 12px; font-family: sans-serif; }
.birefnet-color-row .label { flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.birefnet-color-row .note { color: #f66; white-space: nowrap; }
.birefnet-color-row .chip { position: relative; flex: none; width: 44px; height: 16px;
  border-radius: 4px; overflow: hidden; background: ${CHECKER};
  box-shadow: inset 0 0 0 1px #0008; cursor: pointer; }
.birefnet-color-row .chip span { position: absolute; inset: 0; }
.birefnet-color-row .chip input { position: absolute; inset: 0; width: 100%; height: 100%;
  margin: 0; padding: 0; border: 0; opacity: 0; cursor: pointer; }
.birefnet-compare { position: relative; flex: 1 1 auto; min-height: ${PANEL.viewMin}px;
  overflow: hidden; cursor: ew-resize; user-select: none; border-radius: 6px;
  background: var(--comfy-input-bg, #222); }
.birefnet-compare img { position: absolute; pointer-events: none; }
.birefnet-compare img.after { background: ${CHECKER}; }
.birefnet-compare .split { position: absolute; top: 0; bottom: 0; width: 2px; background: #fff;
  box-shadow: 0 0 2px #000; pointer-events: none; }
.birefnet-compare .tag { position: absolute; top: 4px; padding: 0 4px; border-radius: 3px;
  font: 10px/14px sans-serif; color: #fff; background: #0008; pointer-events: none; }
.birefnet-compare .tag.before { left: 4px; }
.birefnet-compare .tag.after { right: 4px; }
.birefnet-info { position: relative; width: 100%; height: 100%; min-width: 0;
  min-height: ${INFO_LINE + 8}px; box-sizing: border-box; overflow: hidden;
  font: 11px/${INFO_LINE}px sans-serif; color: var(--input-text, #ddd); }
.birefnet-info-grid { position: absolute; top: 0; left: 0; right: 0; display: grid;
  grid-template-columns: max-content minmax(0, 1fr); column-gap: 10px; padding: 2px 6px 4px; }
.birefnet-info-line { padding: 2px 6px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.birefnet-info-grid .title { grid-column: 1 / -1; font-weight: 600; overflow-wrap: anywhere; }
.birefnet-info-grid .key { color: var(--descrip-text, #999); white-space: nowrap; }
.birefnet-info-grid .value { overflow-wrap: anywhere; }
.birefnet-info-grid .status { grid-column: 1 / -1; color: var(--descrip-text, #999);
  overflow-wrap: anywhere; }
.birefnet-info-grid .status.error { color: #f77; }
.birefnet-info-grid.stale .title, .birefnet-info-grid.stale .value { opacity: 0.45; }
/* Nodes 2.0 (node elements carry data-node-id) draws its widgets larger than the canvas does */
[data-node-id] .birefnet-color-row { height: 30px; font-size: 13px; }
[data-node-id] .birefnet-info { height: auto; font-size: 12px; line-height: 17px; }
[data-node-id] .birefnet-info-grid { position: static; } /* Nodes 2.0 sizes rows by content */
[data-node-id] .birefnet-panel:not(.with-view) { height: auto; } /* the colour row alone */
`;

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

/** Chain `fn` after a method of `target` (the original always runs, first). */
function chain(target, name, fn) {
  const original = target[name];
  target[name] = function (...args) {
    const result = typeof original === "function" ? original.apply(this, args) : undefined;
    try {
      fn.apply(this, args);
    } catch (err) {
      warn(name, err);
    }
    return result;
  };
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function installStyle() {
  if (typeof document === "undefined" || !document.head) return;
  if (document.getElementById?.("birefnet-nodes-style")) return;
  const style = el("style");
  style.id = "birefnet-nodes-style";
  style.textContent = CSS;
  document.head.appendChild(style);
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

function widgetNamed(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** Call `fn` after the widget's own callback whenever the user changes its value. */
function onWidgetChange(node, name, fn) {
  const widget = widgetNamed(node, name);
  if (widget) chain(widget, "callback", fn);
}

function redraw(node) {
  try {
    node.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
  } catch { /* ignore */ }
}

/** Grow the node to its computed size where that is taller (never shrinks, never wider). */
function growToFit(node) {
  try {
    const size = node.computeSize?.();
    if (size && node.size && size[1] > node.size[1]) node.setSize?.([node.size[0], size[1]]);
  } catch { /* ignore */ }
  redraw(node);
}

/** The index of the input named `name`, or -1. */
function inputSlot(node, name) {
  return (node.inputs ?? []).findIndex((i) => i?.name === name);
}

/** Whether the input named `name` has a link (through the graph's link API). */
function isLinked(node, name) {
  const slot = inputSlot(node, name);
  return slot >= 0 && node.getInputLink?.(slot) != null;
}

// -- colour chip -----------------------------------------------------------------------------

/** A labelled chip that opens the colour picker; {row, refresh, visible} or null. */
function colorRow(node) {
  const colorWidget = widgetNamed(node, "color");
  if (!colorWidget) return null;
  const row = el("div", "birefnet-color-row");
  row.title = "Click the chip to pick the background colour (written to 'color'; an opacity "
    + "given as #RRGGBBAA is kept). Used when background_mode is color.";
  const label = el("span", "label", "pick colour");
  const note = el("span", "note");
  const chip = el("label", "chip");
  const fill = el("span");
  const picker = el("input");
  picker.type = "color";
  chip.append(fill, picker);
  row.append(label, note, chip);

  const visible = () => widgetNamed(node, "background_mode")?.value === "color"
    && !isLinked(node, "color");
  const refresh = () => {
    const value = colorWidget.value;
    picker.value = toPickerValue(value);
    fill.style.background = cssColor(value) ?? "transparent";
    note.textContent = isValidHex(value) ? "" : "not #RRGGBB[AA]";
    row.style.display = visible() ? "flex" : "none";
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
  onWidgetChange(node, "color", refresh);
  return { row, refresh, visible };
}

// -- before/after compare view ---------------------------------------------------------------

function withoutRand(url) {
  return String(url ?? "").replace(/[?&]rand=[^&]*/, "");
}

function imageUrl(file) {
  const query = viewQuery(file);
  if (!query) return null;
  const rand = typeof app.getRandParam === "function" ? app.getRandParam() : "";
  return typeof api?.apiURL === "function" ? api.apiURL(query + rand) : query + rand;
}

/** The compare view: {view, show({beforeUrl, afterUrl}), shown()}. */
function compareView() {
  const view = el("div", "birefnet-compare");
  view.style.display = "none";
  const before = el("img", "before");
  const after = el("img", "after");
  const line = el("div", "split");
  view.title = "Move the pointer across the image: original on the left, result on the right";
  for (const img of [before, after]) {
    img.draggable = false;
    img.alt = "";
  }
  view.append(before, after, line, el("div", "tag before", "before"),
    el("div", "tag after", "after"));
  const state = { split: 0.5, rect: { x: 0, y: 0, w: 0, h: 0 }, shown: false };

  const layout = () => {
    const iw = after.naturalWidth || before.naturalWidth;
    const ih = after.naturalHeight || before.naturalHeight;
    state.rect = containRect(view.clientWidth, view.clientHeight, iw, ih);
    const { x, y, w, h } = state.rect;
    for (const img of [before, after]) {
      Object.assign(img.style, { left: `${x}px`, top: `${y}px`, width: `${w}px`,
        height: `${h}px` });
    }
    after.style.clipPath = afterClipPath(state.split);
    line.style.left = `${splitX(state.split, state.rect) - 1}px`;
  };
  view.addEventListener("pointermove", (event) => {
    const box = view.getBoundingClientRect();
    // the canvas may scale the element (classic renderer): pointer px -> element px
    const scale = box.width > 0 && view.clientWidth > 0 ? view.clientWidth / box.width : 1;
    state.split = splitFromPointer((event.clientX - box.left) * scale, state.rect);
    layout();
  });
  before.addEventListener("load", layout);
  after.addEventListener("load", layout);
  if (typeof ResizeObserver === "function") new ResizeObserver(layout).observe(view);

  // the same file again (the rand parameter aside) is not fetched again
  const setSrc = (img, url) => {
    if (withoutRand(img.getAttribute("src")) !== withoutRand(url)) img.src = url;
  };
  const show = ({ beforeUrl, afterUrl }) => {
    if (!beforeUrl || !afterUrl) return false;
    setSrc(before, beforeUrl);
    setSrc(after, afterUrl);
    state.shown = true;
    view.style.display = "block";
    layout();
    return true;
  };
  return { view, show, shown: () => state.shown };
}

/**
 * One panel per node: the colour chip (Composite) above the compare view; not displayed while
 * neither has anything to show (no empty box before the first run).
 */
function addPanel(node) {
  const panel = el("div", "birefnet-panel");
  const color = colorRow(node); // Composite only (it has the 'color' widget)
  const compare = compareView();
  if (color) panel.append(color.row);
  panel.append(compare.view);
  const minHeight = () => panelMinHeight({ colorRow: !!color?.visible(), view: compare.shown() });
  const widget = addDomWidget(node, "panel", panel, {
    getMinHeight: minHeight,
    // the node's free space goes to the view, and nowhere while there is none to show
    getMaxHeight: () => (compare.shown() ? undefined : minHeight()),
  });
  if (!widget) return;
  const update = () => {
    color?.refresh();
    panel.style.display = color?.visible() || compare.shown() ? "flex" : "none";
    panel.className = compare.shown() ? "birefnet-panel with-view" : "birefnet-panel";
    growToFit(node); // the row or the view may have appeared
  };
  if (color) {
    onWidgetChange(node, "background_mode", update);
    node.__birefnetRefreshColor = update;
  }
  node.__birefnetCompare = (urls) => {
    if (compare.show(urls)) update();
  };
  update();
}

/**
 * Image URL shown by a node: its preview <img>s, its last outputs, or the file its "image"
 * widget names (LoadImage, whose preview may not be restored yet).
 */
function shownImageUrl(node) {
  if (!node) return null;
  const img = Array.isArray(node.imgs) ? node.imgs.find((i) => i?.src) : null;
  if (img) return img.src;
  const file = firstImage(app.nodeOutputs?.[String(node.id)])
    ?? fileFromWidgetValue(widgetNamed(node, "image")?.value);
  return imageUrl(file);
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
  shown.inputs.forEach((_, slot) => {
    const link = shown.getInputLink?.(slot);
    if (!link) return;
    const source = shown.getInputNode?.(slot);
    if (!source?.__birefnetCompare) return;
    const rank = afterRank(source.comfyClass ?? source.type, link.origin_slot);
    if (rank >= 0 && (!best || rank < best.rank)) best = { source, rank };
  });
  if (!best) return;
  // Several previews of one run report one by one (Save Image of the cut-out, Preview Mask of
  // the mask): within a prompt, a worse-ranked output never replaces a better one.
  const promptId = detail.prompt_id ?? null;
  const last = best.source.__birefnetAfter;
  if (last && promptId !== null && last.promptId === promptId && last.rank < best.rank) return;
  best.source.__birefnetAfter = { promptId, rank: best.rank };
  const spec = COMPARE_NODES[best.source.comfyClass ?? best.source.type];
  const slot = inputSlot(best.source, spec.input);
  const upstream = slot >= 0 ? best.source.getInputNode?.(slot) : null;
  best.source.__birefnetCompare({ beforeUrl: shownImageUrl(upstream), afterUrl: imageUrl(file) });
}

/**
 * Show the last before/after again from what the nodes downstream still display (the frontend
 * restores their outputs after a workflow tab switch).
 */
function restoreCompare(node) {
  const spec = COMPARE_NODES[node.comfyClass ?? node.type];
  if (!spec || !node.__birefnetCompare) return;
  for (const slot of spec.outputs) { // best first
    for (const target of node.getOutputNodes?.(slot) ?? []) {
      const file = firstImage(app.nodeOutputs?.[String(target?.id)]);
      if (!file) continue;
      const input = inputSlot(node, spec.input);
      const upstream = input >= 0 ? node.getInputNode?.(input) : null;
      node.__birefnetCompare({ beforeUrl: shownImageUrl(upstream), afterUrl: imageUrl(file) });
      return;
    }
  }
}

// -- model info ------------------------------------------------------------------------------

/**
 * What the selected file is, as rows (title, family, resolution, ...). A node with room shows
 * them all; a shorter one (a workflow saved before this panel existed) shows one summary line
 * with the rows as its tooltip rather than growing over its neighbours; a node just added from
 * the menu grows to show them.
 */
function addModelInfo(node) {
  const box = el("div", "birefnet-info");
  const grid = el("div", "birefnet-info-grid"); // absolutely placed: its natural height
  const line = el("div", "birefnet-info-line");
  box.append(grid, line);
  const state = { query: undefined, text: null, error: null, pending: false, timer: null,
    asked: 0 };

  const fit = () => {
    const room = box.clientHeight || 0;
    let need = grid.scrollHeight || 0;
    if (need > room && room > 0 && !node.__birefnetConfigured && node.size) {
      node.setSize?.([node.size[0], node.size[1] + need - room]); // a new node: make room
      redraw(node);
      need = room;
    }
    const full = need <= room + 1 || room === 0;
    grid.style.visibility = full ? "visible" : "hidden";
    line.style.display = full ? "none" : "block";
  };
  const render = () => {
    const { title, rows } = modelInfoRows(state.text ?? "");
    const items = [];
    if (title) items.push(el("div", "title", title));
    for (const [key, value] of rows) items.push(el("div", "key", key), el("div", "value", value));
    let status = "";
    if (state.error) status = state.error;
    else if (state.pending) status = "reading the file…";
    else if (!title && state.query === null) status = "Select a BiRefNet model file.";
    else if (!title) status = "Run the workflow to see what the model is.";
    if (status) items.push(el("div", `status${state.error ? " error" : ""}`, status));
    grid.replaceChildren?.(...items);
    grid.className = `birefnet-info-grid${state.pending && title ? " stale" : ""}`;
    line.textContent = state.error || (title ? modelInfoSummary(state.text) : status);
    line.style.color = state.error ? "#f77" : "";
    box.title = state.error || (state.text ?? status);
    redraw(node);
    if (typeof requestAnimationFrame === "function") requestAnimationFrame(fit);
  };
  if (typeof ResizeObserver === "function") new ResizeObserver(fit).observe(box);
  const values = () => Object.fromEntries(
    INFO_WIDGETS.map((n) => [n, widgetNamed(node, n)?.value]));

  const ask = async (query) => {
    const asked = ++state.asked;
    let text = null;
    let error = null;
    try {
      const response = await api.fetchApi(`${INFO_ROUTE}?${query}`);
      const body = await response.json();
      if (response.ok && typeof body?.text === "string") text = body.text;
      else error = body?.error ?? `the server answered ${response.status}`;
    } catch (err) {
      error = `could not ask the server (${err?.message ?? err})`;
    }
    if (asked !== state.asked) return; // a newer question or the loader's own report won
    Object.assign(state, { text, error: error && String(error).slice(0, 300), pending: false });
    render();
  };
  const refresh = () => {
    const query = infoQuery(values());
    if (query === state.query) return;
    state.query = query;
    clearTimeout(state.timer);
    state.asked++; // drops answers to earlier questions
    if (query === null || typeof api?.fetchApi !== "function") {
      Object.assign(state, { text: null, error: null, pending: false });
    } else {
      Object.assign(state, { error: null, pending: true });
      // widget values arrive one by one while a workflow loads: ask once they settled
      state.timer = setTimeout(() => ask(query), 50);
    }
    render();
  };

  const widget = addDomWidget(node, "model_info", box, {
    getMinHeight: () => PANEL.margin + INFO_LINE + 8, // one line; more where the node has room
    getMaxHeight: () => PANEL.margin + Math.max(INFO_LINE + 8, grid.scrollHeight || 0),
  });
  if (!widget) return;
  for (const name of INFO_WIDGETS) onWidgetChange(node, name, refresh);
  node.__birefnetRefreshInfo = refresh;
  node.__birefnetShowInfo = (text) => {
    clearTimeout(state.timer);
    state.asked++;
    Object.assign(state, { query: infoQuery(values()), text: String(text), error: null,
      pending: false });
    render();
  };
  refresh();
}

// -- registration ----------------------------------------------------------------------------

const PER_NODE = {
  BiRefNetComposite: [addPanel],
  BiRefNetSegment: [addPanel],
  BiRefNetModelLoader: [addModelInfo],
};

export const extension = {
  name: EXTENSION,
  setup: guarded("compare view", () => {
    installStyle();
    api?.addEventListener?.("executed", guarded("compare view", onExecuted));
  }),
  // outputs replaced as a whole (workflow tab switched back): refill the compare views
  onNodeOutputsUpdated: guarded("compare view", () => {
    for (const node of app.graph?.nodes ?? []) restoreCompare(node);
  }),
  beforeRegisterNodeDef: guarded("node UI", (nodeType, nodeData) => {
    const adders = PER_NODE[nodeData?.name];
    if (!adders || !nodeType?.prototype) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      if (typeof document === "undefined") return; // no DOM: nothing to show
      installStyle();
      for (const add of adders) guarded(add.name, add)(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      // widget values and links were just restored (workflow opened, tab switched, undo);
      // the node keeps the size it was saved with
      this.__birefnetConfigured = true;
      this.__birefnetRefreshColor?.();
      this.__birefnetRefreshInfo?.();
    });
    chain(nodeType.prototype, "onConnectionsChange", function () {
      this.__birefnetRefreshColor?.(); // 'color' may have been linked or unlinked
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      if (output?.text) this.__birefnetShowInfo?.(output.text);
    });
  }),
};

// ComfyUI may serve web/ twice (WEB_DIRECTORY and pyproject's [tool.comfy] web): register once.
if (globalThis.__birefnetNodesExtension !== true && typeof app?.registerExtension === "function") {
  globalThis.__birefnetNodesExtension = true;
  try {
    app.registerExtension(extension);
  } catch (err) {
    warn("extension", err);
  }
}
