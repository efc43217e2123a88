// Loads web/birefnet.js against a stub ComfyUI app/api (and a tiny fake DOM) and checks that it
// registers, adds only non-serialized widgets, and never throws where frontend APIs are missing.
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

class FakeElement {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.style = {};
    this.children = [];
    this.attributes = {};
    this.handlers = {};
    this.textContent = "";
    this.clientWidth = 200;
    this.clientHeight = 100;
  }
  append(...c) { this.children.push(...c); }
  appendChild(c) { this.children.push(c); return c; }
  addEventListener(type, fn) { (this.handlers[type] ??= []).push(fn); }
  dispatch(type, event = {}) { for (const fn of this.handlers[type] ?? []) fn(event); }
  setAttribute(k, v) { this.attributes[k] = String(v); }
  getAttribute(k) { return this.attributes[k] ?? null; }
  getBoundingClientRect() { return { left: 0, top: 0, width: 200, height: 100 }; }
  click() {}
  set src(v) { this.attributes.src = v; }
  get src() { return this.attributes.src ?? ""; }
}

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

function fakeNode(Node, widgets, { dom = true } = {}) {
  const node = new Node();
  node.id = 1;
  node.size = [300, 200];
  node.widgets = widgets;
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
  assert.doesNotThrow(() => node.onExecuted({ text: ["x"] }));
  const Loader = nodeClass("BiRefNetModelLoader");
  const loader = fakeNode(Loader, []);
  assert.doesNotThrow(() => loader.onNodeCreated());
  assert.doesNotThrow(() => listeners.executed({ detail: { node: "3", output: {} } }));
  assert.doesNotThrow(() => registered[0].beforeRegisterNodeDef(undefined, undefined));
});

test("colour picker: non-serialized widget that writes the hex value, alpha kept", () => {
  globalThis.document = { createElement: (tag) => new FakeElement(tag) };
  const Node = nodeClass("BiRefNetComposite");
  const calls = [];
  const color = { name: "color", value: "#00FF0080", callback: (v) => calls.push(v) };
  const node = fakeNode(Node, [color]);
  node.onNodeCreated();
  const picker = node.added.find((w) => w.name === "color_picker");
  assert.ok(picker, "picker widget added");
  assert.equal(picker.serialize, false);
  assert.equal(picker.options.serialize, false);
  const input = picker.element.children.find((c) => c.tagName === "INPUT");
  assert.equal(input.value, "#00ff00");
  input.value = "#2e86de";
  input.dispatch("input");
  assert.equal(color.value, "#2E86DE80");
  assert.deepEqual(calls, ["#2E86DE80"]);
  // typing an invalid value shows a note instead of throwing
  color.value = "blue";
  color.callback("blue");
  const note = picker.element.children.at(-1);
  assert.match(note.textContent, /RRGGBB/);
  // the compare view is there too, hidden until images arrive
  const compare = node.added.find((w) => w.name === "compare");
  assert.ok(compare);
  assert.equal(compare.serialize, false);
  assert.equal(compare.element.style.display, "none");
});

test("model info shows the loader's text after it ran", () => {
  globalThis.document = { createElement: (tag) => new FakeElement(tag) };
  const Node = nodeClass("BiRefNetModelLoader");
  const node = fakeNode(Node, []);
  node.onNodeCreated();
  const info = node.added.find((w) => w.name === "model_info");
  assert.equal(info.serialize, false);
  node.onExecuted({ text: ["BiRefNet pvt_v2_b0.lite\nfamily: Lite (1024²)\nfile: x.safetensors"] });
  assert.equal(info.element.textContent,
    "BiRefNet pvt_v2_b0.lite\nfamily: Lite (1024²)\nfile: x.safetensors");
});

test("compare view gets the upstream preview as before and the downstream image as after", () => {
  globalThis.document = { createElement: (tag) => new FakeElement(tag) };
  const Node = nodeClass("BiRefNetSegment");
  const seg = fakeNode(Node, []);
  seg.comfyClass = "BiRefNetSegment";
  seg.id = 3;
  seg.inputs = [{ name: "model", link: 1 }, { name: "images", link: 2 }];
  const load = { id: 2, imgs: [{ src: "/api/view?filename=in.png&type=input" }] };
  seg.getInputNode = (slot) => (slot === 1 ? load : null);
  seg.onNodeCreated();
  const save = { id: 4, inputs: [{ name: "images", link: 7 }],
    getInputNode: () => seg, getInputLink: () => ({ origin_slot: 1 }) };
  globalThis.__fakeApp.graph.getNodeById = (id) => (id === 4 ? save : null);
  listeners.executed({ detail: { node: "4", output: { images: [
    { filename: "out.png", subfolder: "", type: "output" }] } } });
  const view = seg.added.find((w) => w.name === "compare").element;
  assert.equal(view.style.display, "block");
  const [beforeImg, afterImg] = view.children;
  assert.equal(beforeImg.src, "/api/view?filename=in.png&type=input");
  assert.equal(afterImg.src, "/api/view?filename=out.png&type=output&subfolder=");
  view.dispatch("pointermove", { clientX: 50 });
  assert.match(afterImg.style.clipPath, /^inset\(0 0 0 [\d.]+%\)$/);
});

test("a second copy of the module (web/ served twice) does not register again", async () => {
  const copy = join(root, "extensions", "again");
  cpSync(join(root, "extensions", "pack"), copy, { recursive: true });
  await import(pathToFileURL(join(copy, "birefnet.js")).href);
  assert.equal(registered.length, 1);
});
