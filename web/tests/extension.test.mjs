// Loads web/birefnet.js against a stub ComfyUI app/api (and a tiny fake DOM) and checks that it
// registers, adds only non-serialized widgets, reads links through the graph API, and never
// throws where frontend APIs are missing.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const WEB = join(dirname(fileURLToPath(import.meta.url)), "..");
let root;
const registered = [];
const listeners = {};
const fetched = [];

class FakeElement {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.style = {};
    this.children = [];
    this.attributes = {};
    this.handlers = {};
    this.textContent = "";
    this.className = "";
    this.clientWidth = 200;
    this.clientHeight = 100;
    this.offsetHeight = 0;
  }
  append(...c) { this.children.push(...c); }
  appendChild(c) { this.children.push(c); return c; }
  replaceChildren(...c) { this.children = [...c]; }
  addEventListener(type, fn) { (this.handlers[type] ??= []).push(fn); }
  dispatch(type, event = {}) { for (const fn of this.handlers[type] ?? []) fn(event); }
  setAttribute(k, v) { this.attributes[k] = String(v); }
  getAttribute(k) { return this.attributes[k] ?? null; }
  getBoundingClientRect() { return { left: 0, top: 0, width: 200, height: 100 }; }
  click() {}
  set src(v) { this.attributes.src = v; }
  get src() { return this.attributes.src ?? ""; }
}

const fakeDocument = () => ({ createElement: (tag) => new FakeElement(tag) });

/** Every element under `root` (depth first) whose class list contains `cls`. */
function findAll(root, cls) {
  const out = [];
  const walk = (e) => {
    if (String(e.className).split(" ").includes(cls)) out.push(e);
    for (const c of e.children ?? []) walk(c);
  };
  walk(root);
  return out;
}

const tick = (ms = 80) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  root = mkdtempSync(join(tmpdir(), "birefnet-web-"));
  mkdirSync(join(root, "scripts"));
  writeFileSync(join(root, "scripts", "app.js"), "export const app = globalThis.__fakeApp;\n");
  writeFileSync(join(root, "scripts", "api.js"), "export const api = globalThis.__fakeApi;\n");
  cpSync(WEB, join(root, "extensions", "pack"), { recursive: true,
    filter: (src) => !src.includes(`${join(WEB, "tests")}`) });
  globalThis.__fakeApp = {
    registerExtension: (ext) => registered.push(ext),
    graph: { getNodeById: () => null, setDirtyCanvas() {} },
  };
  globalThis.__fakeApi = {
    addEventListener: (type, fn) => { listeners[type] = fn; },
    apiURL: (p) => `/api${p}`,
    fetchApi: async (route) => {
      const call = { route };
      fetched.push(call);
      return new Promise((resolve) => { call.answer = (status, body) =>
        resolve({ ok: status === 200, status, json: async () => body }); });
    },
  };
  await import(pathToFileURL(join(root, "extensions", "pack", "birefnet.js")).href);
});

after(() => {
  rmSync(root, { recursive: true, force: true });
  delete globalThis.document;
});

function nodeClass(name) {
  class Node {}
  registered[0].beforeRegisterNodeDef(Node, { name });
  return Node;
}

/** A node whose inputs throw when `.link` is read: links must come from getInputLink. */
function fakeNode(Node, widgets, { dom = true, inputs = [], links = {} } = {}) {
  const node = new Node();
  node.id = 1;
  node.size = [300, 200];
  node.widgets = widgets;
  node.inputs = inputs.map((name) => {
    const input = { name };
    Object.defineProperty(input, "link", {
      get() { throw new Error("input.link read (deprecated): use the graph's link API"); },
    });
    return input;
  });
  node.getInputLink = (slot) => links[node.inputs[slot]?.name] ?? null;
  node.added = [];
  if (dom) {
    node.addDOMWidget = (name, type, element, options) => {
      const w = { name, type, element, options: { ...options } };
      node.added.push(w);
      return w;
    };
  }
  node.computeSize = () => [300, 260];
  node.setSize = (s) => { node.size = s; };
  return node;
}

test("registers one extension with the hooks it needs", () => {
  assert.equal(registered.length, 1);
  assert.equal(registered[0].name, "birefnet.nodes");
  registered[0].setup();
  assert.equal(typeof listeners.executed, "function");
});

test("without a DOM or DOM widgets nothing throws and nothing is added", () => {
  delete globalThis.document;
  const Node = nodeClass("BiRefNetComposite");
  const node = fakeNode(Node, [{ name: "color", value: "#00FF00" }], { dom: false });
  assert.doesNotThrow(() => node.onNodeCreated());
  assert.doesNotThrow(() => node.onConfigure({}));
  assert.doesNotThrow(() => node.onConnectionsChange(1, 0, true));
  assert.doesNotThrow(() => node.onExecuted({ text: ["x"] }));
  const Loader = nodeClass("BiRefNetModelLoader");
  const loader = fakeNode(Loader, []);
  assert.doesNotThrow(() => loader.onNodeCreated());
  assert.doesNotThrow(() => listeners.executed({ detail: { node: "3", output: {} } }));
  assert.doesNotThrow(() => registered[0].beforeRegisterNodeDef(undefined, undefined));
  assert.equal(node.added.length, 0);
});

test("composite: one non-serialized panel; the colour chip writes the hex value, alpha kept",
  () => {
    globalThis.document = fakeDocument();
    const Node = nodeClass("BiRefNetComposite");
    const calls = [];
    const color = { name: "color", value: "#00FF0080", callback: (v) => calls.push(v) };
    const mode = { name: "background_mode", value: "color" };
    const node = fakeNode(Node, [mode, color], { inputs: ["image", "mask", "color"] });
    node.onNodeCreated();
    assert.deepEqual(node.added.map((w) => w.name), ["panel"], "one DOM widget per node");
    const [panel] = node.added;
    assert.equal(panel.serialize, false);
    assert.equal(panel.options.serialize, false);
    const [row] = findAll(panel.element, "birefnet-color-row");
    assert.equal(row.style.display, "flex");
    assert.equal(findAll(row, "label")[0].textContent, "pick colour", "the row has a label");
    const [chip] = findAll(row, "chip");
    const inputs = chip.children.filter((c) => c.tagName === "INPUT");
    assert.equal(inputs.length, 1, "one chip, which is the picker");
    const [input] = inputs;
    assert.equal(input.type, "color");
    assert.equal(input.value, "#00ff00");
    input.value = "#2e86de";
    input.dispatch("input");
    assert.equal(color.value, "#2E86DE80");
    assert.deepEqual(calls, ["#2E86DE80"]);
    // an invalid typed value shows a note instead of throwing
    color.value = "blue";
    color.callback("blue");
    assert.match(findAll(row, "note")[0].textContent, /RRGGBB/);
    // the compare view is there too, hidden until images arrive; the panel asks for the row only
    const [view] = findAll(panel.element, "birefnet-compare");
    assert.equal(view.style.display, "none");
    const withRow = panel.options.getMinHeight();
    assert.ok(withRow > 20 && withRow < 60, `colour row only: ${withRow}`);
  });

test("composite: the colour row is hidden unless background_mode is color and color is unlinked",
  () => {
    globalThis.document = fakeDocument();
    const Node = nodeClass("BiRefNetComposite");
    const mode = { name: "background_mode", value: "image" };
    const links = {};
    const node = fakeNode(Node, [mode, { name: "color", value: "#00FF00" }],
      { inputs: ["image", "mask", "color"], links });
    node.onNodeCreated();
    const [panel] = node.added;
    const [row] = findAll(panel.element, "birefnet-color-row");
    assert.equal(row.style.display, "none");
    assert.equal(panel.options.getMinHeight(), 0, "nothing shown: no room asked");
    assert.equal(panel.options.getMaxHeight(), 0, "nor given");
    assert.equal(panel.element.style.display, "none", "and no empty box");
    mode.value = "color";
    mode.callback?.("color");
    assert.equal(row.style.display, "flex");
    assert.equal(panel.element.style.display, "flex");
    assert.equal(panel.options.getMaxHeight(), panel.options.getMinHeight(), "the row only");
    links.color = { origin_id: 9, origin_slot: 0 }; // 'color' converted to a linked input
    node.onConnectionsChange(1, 2, true);
    assert.equal(row.style.display, "none");
    delete links.color;
    mode.value = "transparent";
    node.onConfigure({}); // e.g. a workflow loaded with another mode
    assert.equal(row.style.display, "none");
  });

test("model info: asked from the server for the selected file, replaced by the loader's report",
  async () => {
    globalThis.document = fakeDocument();
    fetched.length = 0;
    const Node = nodeClass("BiRefNetModelLoader");
    const name = { name: "model_name", value: "BiRefNet_lite.safetensors" };
    const widgets = [name, { name: "precision", value: "auto" },
      { name: "family", value: "auto" }, { name: "patch_order", value: "auto" }];
    const node = fakeNode(Node, widgets);
    node.onNodeCreated();
    node.onConfigure({}); // a workflow load: values settle before the server is asked
    const [info] = node.added;
    assert.equal(info.name, "model_info");
    assert.equal(info.serialize, false);
    await tick();
    assert.equal(fetched.length, 1, "asked once");
    assert.equal(fetched[0].route, "/birefnet/model_info?model_name=BiRefNet_lite.safetensors"
      + "&family=auto&patch_order=auto&precision=auto");
    fetched[0].answer(200, { text: "BiRefNet swin_v1_t.lite\nfamily: Lite (1024²)\n"
      + "backbone: swin_v1_t, decoder: current, batchnorm: yes\nfile: BiRefNet_lite.safetensors" });
    await tick(0);
    const grid = info.element.children[0];
    assert.equal(findAll(grid, "title")[0].textContent, "swin_v1_t.lite");
    assert.deepEqual(findAll(grid, "value").map((v) => v.textContent),
      ["Lite (1024²)", "swin_v1_t, decoder: current, batchnorm: yes"]);
    assert.ok(info.options.getMinHeight() <= 50, "asks for one line: a loaded node never grows "
      + "by more");

    // another file: the old rows are marked stale at once, a late answer for it is dropped
    name.value = "BiRefNet_HR.safetensors";
    name.callback?.(name.value);
    assert.match(grid.className, /stale/);
    await tick();
    assert.equal(fetched.length, 2);
    assert.match(fetched[1].route, /model_name=BiRefNet_HR\.safetensors/);
    name.value = "broken.pth";
    name.callback?.(name.value);
    await tick();
    assert.equal(fetched.length, 3);
    fetched[2].answer(422, { error: "broken.pth is not a BiRefNet checkpoint" });
    await tick(0);
    fetched[1].answer(200, { text: "BiRefNet swin_v1_t.hr\nfamily: HR (2048²)" });
    await tick(0);
    assert.equal(findAll(grid, "title").length, 0, "the late answer for the HR file is dropped");
    assert.match(findAll(grid, "status")[0].textContent, /not a BiRefNet checkpoint/);
    assert.match(findAll(grid, "status")[0].className, /error/);

    // the loader ran: its own report wins over a pending question
    name.value = "BiRefNet_lite.safetensors";
    name.callback?.(name.value);
    node.onExecuted({ text: ["BiRefNet swin_v1_t.lite\nprecision: fp16"] });
    await tick();
    assert.equal(fetched.length, 3, "no question once the report arrived");
    assert.equal(findAll(grid, "title")[0].textContent, "swin_v1_t.lite");
    assert.deepEqual(findAll(grid, "value").map((v) => v.textContent), ["fp16"]);
    assert.doesNotMatch(grid.className, /stale/);
  });

test("model info: all rows where the node has room, one line where not; a new node grows",
  async () => {
    globalThis.document = fakeDocument();
    globalThis.requestAnimationFrame = (fn) => fn();
    const Node = nodeClass("BiRefNetModelLoader");
    const make = () => {
      const node = fakeNode(Node, [{ name: "model_name", value: "m.safetensors" }]);
      node.onNodeCreated();
      const [info] = node.added;
      const [grid, line] = info.element.children;
      info.element.clientHeight = 40; // room for one line
      grid.scrollHeight = 120; // what the rows need
      return { node, grid, line };
    };
    const text = "BiRefNet swin_v1_t.lite\nfamily: Lite (1024²)\nparameters: 44.3 M (stored as "
      + "float16)\nbackbone: swin_v1_t";
    try {
      const loaded = make();
      loaded.node.onConfigure({}); // from a saved workflow: its size is kept
      loaded.node.onExecuted({ text: [text] });
      assert.deepEqual(loaded.node.size, [300, 200]);
      assert.equal(loaded.grid.style.visibility, "hidden");
      assert.equal(loaded.line.style.display, "block");
      assert.equal(loaded.line.textContent, "swin_v1_t.lite · Lite (1024²) · 44.3 M");
      const added = make(); // just added from the menu
      added.node.onExecuted({ text: [text] });
      assert.deepEqual(added.node.size, [300, 280], "grown by what the rows lack");
      assert.equal(added.grid.style.visibility, "visible");
      assert.equal(added.line.style.display, "none");
    } finally {
      delete globalThis.requestAnimationFrame;
    }
    await tick();
  });

test("compare view gets the upstream preview as before and the downstream image as after", () => {
  globalThis.document = fakeDocument();
  const Node = nodeClass("BiRefNetSegment");
  const load = { id: 2, imgs: [{ src: "/api/view?filename=in.png&type=input" }] };
  const seg = fakeNode(Node, [], { inputs: ["model", "images"],
    links: { model: { origin_id: 1 }, images: { origin_id: 2, origin_slot: 0 } } });
  seg.comfyClass = "BiRefNetSegment";
  seg.id = 3;
  seg.getInputNode = (slot) => (slot === 1 ? load : null);
  seg.onNodeCreated();
  const save = fakeNode(nodeClass("SaveImage"), [], { inputs: ["images"],
    links: { images: { origin_id: 3, origin_slot: 1 } } });
  save.id = 4;
  save.getInputNode = () => seg;
  globalThis.__fakeApp.graph.getNodeById = (id) => (id === 4 ? save : null);
  const [panel] = seg.added;
  assert.equal(panel.options.getMinHeight(), 0, "no colour row, no images: no room asked");
  assert.equal(panel.element.style.display, "none");
  listeners.executed({ detail: { node: "4", output: { images: [
    { filename: "out.png", subfolder: "", type: "output" }] } } });
  const [view] = findAll(panel.element, "birefnet-compare");
  assert.equal(view.style.display, "block");
  assert.equal(panel.element.style.display, "flex");
  const [beforeImg, afterImg] = view.children;
  assert.equal(beforeImg.src, "/api/view?filename=in.png&type=input");
  assert.equal(afterImg.src, "/api/view?filename=out.png&type=output&subfolder=");
  const shown = panel.options.getMinHeight();
  assert.ok(shown >= 100 && shown <= 200, `a shown view asks for a bounded height: ${shown}`);
  assert.equal(panel.options.getMaxHeight(), undefined, "and takes the node's free space");
  view.dispatch("pointermove", { clientX: 50 });
  assert.match(afterImg.style.clipPath, /^inset\(0 0 0 [\d.]+%\)$/);
});

test("compare view keeps the cut-out when the mask preview of the same run reports last", () => {
  globalThis.document = fakeDocument();
  const load = { id: 2, imgs: [{ src: "/api/view?filename=in.png&type=input" }] };
  const seg = fakeNode(nodeClass("BiRefNetSegment"), [], { inputs: ["model", "images"],
    links: { model: { origin_id: 1 }, images: { origin_id: 2, origin_slot: 0 } } });
  seg.comfyClass = "BiRefNetSegment";
  seg.id = 3;
  seg.getInputNode = (slot) => (slot === 1 ? load : null);
  seg.onNodeCreated();
  const downstream = (id, slot) => {
    const n = fakeNode(nodeClass(id === 4 ? "SaveImage" : "MaskPreview"), [], {
      inputs: [id === 4 ? "images" : "mask"], links: { [id === 4 ? "images" : "mask"]:
        { origin_id: 3, origin_slot: slot } } });
    n.id = id;
    n.getInputNode = () => seg;
    return n;
  };
  const nodes = { 4: downstream(4, 1), 5: downstream(5, 0) }; // rgba -> Save, mask -> Preview
  globalThis.__fakeApp.graph.getNodeById = (id) => nodes[id] ?? null;
  const [view] = findAll(seg.added[0].element, "birefnet-compare");
  const after = () => view.children[1].src;
  const report = (node, filename, promptId) => listeners.executed({ detail: {
    node: String(node), prompt_id: promptId,
    output: { images: [{ filename, subfolder: "", type: node === 4 ? "output" : "temp" }] } } });
  report(4, "cut.png", "p1");
  report(5, "mask.png", "p1");
  assert.match(after(), /filename=cut\.png/, "the mask of the same run does not win");
  report(5, "mask2.png", "p2"); // a later run with only the mask preview re-executed
  assert.match(after(), /filename=mask2\.png/);
  report(4, "cut2.png", "p2");
  assert.match(after(), /filename=cut2\.png/, "a better output of the same run still wins");
});

test("compare view comes back from the restored outputs after a workflow tab switch", () => {
  globalThis.document = fakeDocument();
  const Node = nodeClass("BiRefNetComposite");
  const load = { id: 2, imgs: [{ src: "/api/view?filename=in.png&type=input" }] };
  const comp = fakeNode(Node, [{ name: "background_mode", value: "transparent" },
    { name: "color", value: "#00FF00" }], { inputs: ["image", "mask"] });
  comp.comfyClass = "BiRefNetComposite";
  comp.getInputNode = (slot) => (slot === 0 ? load : null);
  const save = { id: 7 };
  comp.getOutputNodes = (slot) => (slot === 0 ? [save] : null);
  comp.onNodeCreated();
  const [view] = findAll(comp.added[0].element, "birefnet-compare");
  globalThis.__fakeApp.graph.nodes = [comp, save];
  globalThis.__fakeApp.nodeOutputs = { 7: { images: [
    { filename: "res.png", subfolder: "birefnet", type: "output" }] } };
  try {
    registered[0].onNodeOutputsUpdated(globalThis.__fakeApp.nodeOutputs);
  } finally {
    delete globalThis.__fakeApp.graph.nodes;
    delete globalThis.__fakeApp.nodeOutputs;
  }
  assert.equal(view.style.display, "block");
  assert.equal(view.children[0].src, "/api/view?filename=in.png&type=input");
  assert.equal(view.children[1].src, "/api/view?filename=res.png&type=output&subfolder=birefnet");
});

test("a second copy of the module (web/ served twice) does not register again", async () => {
  const copy = join(root, "extensions", "again");
  cpSync(join(root, "extensions", "pack"), copy, { recursive: true });
  await import(pathToFileURL(join(copy, "birefnet.js")).href);
  assert.equal(registered.length, 1);
});
