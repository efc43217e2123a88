import { test } from "node:test";
import assert from "node:assert/strict";
import { afterClipPath, clampFraction, containRect, PANEL, panelMinHeight, splitFromPointer,
  splitX } from "../lib/compare.js";

test("containRect letterboxes a wide image and pillarboxes a tall one", () => {
  assert.deepEqual(containRect(200, 200, 400, 200), { x: 0, y: 50, w: 200, h: 100 });
  assert.deepEqual(containRect(200, 200, 100, 200), { x: 50, y: 0, w: 100, h: 200 });
  assert.deepEqual(containRect(300, 150, 600, 300), { x: 0, y: 0, w: 300, h: 150 });
  for (const args of [[0, 100, 10, 10], [100, 100, 0, 10], [100, NaN, 10, 10], [-1, 5, 5, 5]]) {
    assert.deepEqual(containRect(...args), { x: 0, y: 0, w: 0, h: 0 });
  }
});

test("split follows the pointer inside the image and clamps outside it", () => {
  const rect = { x: 50, y: 0, w: 100, h: 200 };
  assert.equal(splitFromPointer(100, rect), 0.5);
  assert.equal(splitFromPointer(75, rect), 0.25);
  assert.equal(splitFromPointer(0, rect), 0);
  assert.equal(splitFromPointer(500, rect), 1);
  assert.equal(splitFromPointer(10, { x: 0, y: 0, w: 0, h: 0 }), 0.5);
  assert.equal(splitX(0.25, rect), 75);
  assert.equal(splitX(2, rect), 150);
});

test("clip path and fractions", () => {
  assert.equal(afterClipPath(0.5), "inset(0 0 0 50%)");
  assert.equal(afterClipPath(1 / 3), "inset(0 0 0 33.33%)");
  assert.equal(afterClipPath(-1), "inset(0 0 0 0%)");
  assert.equal(clampFraction(NaN), 0.5);
});

test("the panel asks only for what it shows, the frontend's margins included", () => {
  assert.equal(panelMinHeight({}), 0);
  assert.equal(panelMinHeight({ colorRow: true }), PANEL.margin + PANEL.colorRow);
  assert.equal(panelMinHeight({ view: true }), PANEL.margin + PANEL.viewMin);
  assert.equal(panelMinHeight({ colorRow: true, view: true }),
    PANEL.margin + PANEL.colorRow + PANEL.gap + PANEL.viewMin);
  // small enough that a shown view never pushes a node far over its neighbour
  assert.ok(panelMinHeight({ colorRow: true, view: true }) <= 200);
});
