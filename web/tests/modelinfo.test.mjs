import { test } from "node:test";
import assert from "node:assert/strict";
import { INFO_WIDGETS, infoQuery, modelInfoRows, modelInfoSummary, parseModelInfo }
  from "../lib/modelinfo.js";

// The loader's ui text (nodes/loader.py summary_text: ModelInfo.summary() + precision).
const SUMMARY = [
  "BiRefNet swin_v1_l.hr_matting",
  "family: HR matting (2048²) [matting]",
  "backbone: swin_v1_l, decoder: current, batchnorm: yes",
  "working resolution: 2048x2048 (WxH)",
  "patch order: split",
  "parameters: 220.2 M (stored as float16)",
  "file: BiRefNet_HR-matting.safetensors",
  "precision: fp16",
].join("\n");

test("parse", () => {
  const { title, fields } = parseModelInfo(SUMMARY);
  assert.equal(title, "BiRefNet swin_v1_l.hr_matting");
  assert.deepEqual(fields[0], ["family", "HR matting (2048²) [matting]"]);
  assert.equal(fields.length, 7);
});

test("rows: the useful fields first, values whole (underscores included), file left out", () => {
  const { title, rows } = modelInfoRows([SUMMARY]);
  assert.equal(title, "swin_v1_l.hr_matting");
  assert.deepEqual(rows, [
    ["family", "HR matting (2048²) [matting]"],
    ["resolution", "2048x2048 (WxH)"],
    ["backbone", "swin_v1_l, decoder: current, batchnorm: yes"],
    ["parameters", "220.2 M (stored as float16)"],
    ["patch order", "split"],
    ["precision", "fp16"],
  ]);
});

test("rows keep fields they do not know, after the known ones", () => {
  const { rows } = modelInfoRows("BiRefNet x.y\nnew field: 1\nfamily: F");
  assert.deepEqual(rows, [["family", "F"], ["new field", "1"]]);
});

test("empty or odd input", () => {
  assert.deepEqual(modelInfoRows(""), { title: "", rows: [] });
  assert.deepEqual(modelInfoRows(undefined), { title: "", rows: [] });
  assert.deepEqual(modelInfoRows("just a line\nanother"),
    { title: "just a line", rows: [["", "another"]] });
});

test("query for the info route: the loader's widgets, escaped; none without a model", () => {
  assert.deepEqual([...INFO_WIDGETS], ["model_name", "family", "patch_order", "precision"]);
  assert.equal(infoQuery({ model_name: "a b&c.pth", family: "auto", patch_order: "split",
    precision: "fp16" }), "model_name=a+b%26c.pth&family=auto&patch_order=split&precision=fp16");
  assert.equal(infoQuery({ model_name: "m.safetensors", family: undefined }),
    "model_name=m.safetensors");
  for (const name of [undefined, "", "none", 3]) {
    assert.equal(infoQuery({ model_name: name }), null, String(name));
  }
  assert.equal(infoQuery(undefined), null);
});

test("one-line summary for a short node", () => {
  assert.equal(modelInfoSummary(SUMMARY), "swin_v1_l.hr_matting · HR matting (2048²) · 220.2 M");
  assert.equal(modelInfoSummary("BiRefNet x.y"), "x.y");
  assert.equal(modelInfoSummary(""), "");
});
