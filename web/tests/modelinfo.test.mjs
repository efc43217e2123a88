import { test } from "node:test";
import assert from "node:assert/strict";
import { formatModelInfo, parseModelInfo } from "../lib/modelinfo.js";

// The loader's ui text (birefnet_core.weights.ModelInfo.summary + precision).
const SUMMARY = [
  "BiRefNet swin_v1_l.hr_matting",
  "family: HR matting (2048²) [matting]",
  "backbone: swin_v1_l, decoder: v2, batchnorm: yes",
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

test("format orders the useful fields first and clips long lines", () => {
  const lines = formatModelInfo([SUMMARY]);
  assert.deepEqual(lines.slice(0, 4), [
    "BiRefNet swin_v1_l.hr_matting",
    "family: HR matting (2048²) [matting]",
    "working resolution: 2048x2048 (WxH)",
    "backbone: swin_v1_l, decoder: v2, batchnorm: yes",
  ]);
  assert.equal(lines.at(-1), "file: BiRefNet_HR-matting.safetensors");
  const short = formatModelInfo(SUMMARY, 20);
  assert.ok(short.every((l) => l.length <= 20));
  assert.ok(short[0].endsWith("…"));
});

test("empty or odd input", () => {
  assert.deepEqual(formatModelInfo(""), []);
  assert.deepEqual(formatModelInfo(undefined), []);
  assert.deepEqual(formatModelInfo("just a line\nanother"), ["just a line", "another"]);
});
