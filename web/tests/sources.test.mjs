import { test } from "node:test";
import assert from "node:assert/strict";
import { afterRank, COMPARE_NODES, fileFromWidgetValue, firstImage, viewQuery }
  from "../lib/sources.js";

test("view query escapes names", () => {
  assert.equal(viewQuery({ filename: "a b&c.png", subfolder: "x/y", type: "temp" }),
    "/view?filename=a+b%26c.png&type=temp&subfolder=x%2Fy");
  assert.equal(viewQuery({ filename: "a.png" }), "/view?filename=a.png&type=output&subfolder=");
  assert.equal(viewQuery(null), null);
  assert.equal(viewQuery({ filename: "" }), null);
});

test("first image of an executed output", () => {
  assert.deepEqual(firstImage({ images: [null, { filename: "x.png" }] }), { filename: "x.png" });
  assert.equal(firstImage({ text: ["..."] }), null);
  assert.equal(firstImage(undefined), null);
});

test("after ranks: the image outputs first", () => {
  assert.equal(afterRank("BiRefNetSegment", 1), 0); // rgba
  assert.equal(afterRank("BiRefNetSegment", 0), 1); // mask
  assert.equal(afterRank("BiRefNetComposite", 0), 0);
  assert.equal(afterRank("BiRefNetComposite", 5), -1);
  assert.equal(afterRank("SaveImage", 0), -1);
  assert.equal(COMPARE_NODES.BiRefNetSegment.input, "images");
});

test("file named by a LoadImage widget", () => {
  assert.deepEqual(fileFromWidgetValue("example.png"),
    { filename: "example.png", subfolder: "", type: "input" });
  assert.deepEqual(fileFromWidgetValue("pasted/a b.JPG [output]"),
    { filename: "a b.JPG", subfolder: "pasted", type: "output" });
  for (const bad of [undefined, "", "clip.mp4", 3, "  "]) {
    assert.equal(fileFromWidgetValue(bad), null, String(bad));
  }
});
