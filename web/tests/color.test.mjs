import { test } from "node:test";
import assert from "node:assert/strict";
import { cssColor, formatHex, isValidHex, mergePickerValue, normalizeHex, parseHex, toPickerValue }
  from "../lib/color.js";

test("parseHex accepts #RRGGBB and #RRGGBBAA like the node", () => {
  assert.deepEqual(parseHex("#00FF00"), { r: 0, g: 255, b: 0, a: 255 });
  assert.deepEqual(parseHex("#ff000080"), { r: 255, g: 0, b: 0, a: 128 });
  assert.deepEqual(parseHex("  2e86de "), { r: 46, g: 134, b: 222, a: 255 });
  for (const bad of ["#0f0", "#00FF0", "#00FF00F", "#GG0000", "", "red", null, 12, "##00FF00"]) {
    assert.equal(parseHex(bad), null, String(bad));
    assert.equal(isValidHex(bad), false, String(bad));
  }
});

test("formatHex writes upper case and adds alpha only when not opaque", () => {
  assert.equal(formatHex({ r: 0, g: 255, b: 0 }), "#00FF00");
  assert.equal(formatHex({ r: 0, g: 255, b: 0, a: 255 }, "always"), "#00FF00FF");
  assert.equal(formatHex({ r: 255, g: 0, b: 0, a: 128 }), "#FF000080");
  assert.equal(formatHex({ r: 300, g: -5, b: 12.6, a: 0 }), "#FF000D00");
});

test("round trip", () => {
  for (const text of ["#000000", "#FFFFFF", "#123456", "#12345678", "#ABCDEF00"]) {
    assert.equal(formatHex(parseHex(text), text.length === 9 ? "always" : "auto"), text);
  }
});

test("picker values: no alpha in, alpha of the old value kept out", () => {
  assert.equal(toPickerValue("#FF000080"), "#ff0000");
  assert.equal(toPickerValue("nonsense"), "#000000");
  assert.equal(mergePickerValue("#2e86de", "#00FF0080"), "#2E86DE80");
  assert.equal(mergePickerValue("#2e86de", "#00FF00"), "#2E86DE");
  assert.equal(mergePickerValue("#2e86de", "oops"), "#2E86DE");
  assert.equal(mergePickerValue("bad", "#00FF00"), "#00FF00");
});

test("normalizeHex and cssColor", () => {
  assert.equal(normalizeHex("00ff00"), "#00FF00");
  assert.equal(normalizeHex("#00ff00ff"), "#00FF00FF");
  assert.equal(normalizeHex("#0f0"), null);
  assert.equal(cssColor("#FF000080"), "rgba(255, 0, 0, 0.502)");
  assert.equal(cssColor("x"), null);
});
