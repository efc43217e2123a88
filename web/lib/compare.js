// Geometry of the before/after compare view: where the image sits inside the view (fitted
// like CSS object-fit: contain) and where the split line is. Pure functions, no DOM.

/**
 * The rectangle {x, y, w, h} (view pixels) of an image of `imageW` x `imageH` fitted inside a
 * `boxW` x `boxH` view, centred, aspect kept. Empty/invalid sizes give a zero rectangle.
 */
export function containRect(boxW, boxH, imageW, imageH) {
  const ok = (v) => Number.isFinite(v) && v > 0;
  if (!ok(boxW) || !ok(boxH) || !ok(imageW) || !ok(imageH)) return { x: 0, y: 0, w: 0, h: 0 };
  const scale = Math.min(boxW / imageW, boxH / imageH);
  const w = imageW * scale;
  const h = imageH * scale;
  return { x: (boxW - w) / 2, y: (boxH - h) / 2, w, h };
}

/** Clamp to 0..1 (NaN -> 0.5, the middle). */
export function clampFraction(f) {
  if (!Number.isFinite(f)) return 0.5;
  return Math.min(1, Math.max(0, f));
}

/**
 * The split as a fraction of the image width (0 = all "after", 1 = all "before") for a
 * pointer at view x `pointerX`, given the image rectangle: clamped to the image.
 */
export function splitFromPointer(pointerX, rect) {
  if (!rect || !(rect.w > 0)) return 0.5;
  return clampFraction((pointerX - rect.x) / rect.w);
}

/** View x of the split line for a fraction of the image rectangle. */
export function splitX(fraction, rect) {
  return rect.x + clampFraction(fraction) * rect.w;
}

/**
 * CSS clip-path for the "after" image laid exactly over the rectangle: "before" shows left of
 * the split, "after" right of it.
 */
export function afterClipPath(fraction) {
  const pct = Math.round(clampFraction(fraction) * 10000) / 100;
  return `inset(0 0 0 ${pct}%)`;
}

// Heights (px) of the panel under the node's widgets. The classic renderer gives a DOM widget
// its height minus a 10 px margin above and below; Nodes 2.0 sizes it from its CSS (the view's
// min-height), so both renderers ask for the same room.
export const PANEL = Object.freeze({ margin: 20, colorRow: 26, gap: 4, viewMin: 150 });

/**
 * The least height the panel asks the node for: the colour row and/or the compare view when
 * they are shown, nothing when neither is (no empty box before the first result). When the
 * view appears the node grows by this much at most; free space in the node goes to the view.
 */
export function panelMinHeight({ colorRow = false, view = false } = {}) {
  const parts = [colorRow ? PANEL.colorRow : 0, view ? PANEL.viewMin : 0].filter((h) => h > 0);
  if (!parts.length) return 0;
  return PANEL.margin + parts.reduce((a, b) => a + b, 0) + PANEL.gap * (parts.length - 1);
}
