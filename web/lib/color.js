// Hex colours as the BiRefNet Composite node accepts them: "#RRGGBB" or "#RRGGBBAA"
// (AA = opacity), the "#" optional, case-insensitive, surrounding spaces ignored; the same
// rule as birefnet_core.composite.parse_hex_color, so the UI never accepts what the node
// rejects. Pure functions, no DOM: tested with `node --test web/tests/`.

const HEX = /^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{8})$/;

/** Whether `text` is a colour the node accepts. */
export function isValidHex(text) {
  return typeof text === "string" && HEX.test(text.trim());
}

/** "#RRGGBB[AA]" -> {r, g, b, a} with 0..255 integers (a = 255 when absent), or null. */
export function parseHex(text) {
  if (typeof text !== "string") return null;
  const m = HEX.exec(text.trim());
  if (!m) return null;
  const h = m[1];
  const byte = (i) => parseInt(h.slice(i, i + 2), 16);
  return { r: byte(0), g: byte(2), b: byte(4), a: h.length === 8 ? byte(6) : 255 };
}

function hex2(v) {
  const n = Math.min(255, Math.max(0, Math.round(Number(v) || 0)));
  return n.toString(16).padStart(2, "0").toUpperCase();
}

/**
 * {r, g, b, a} -> "#RRGGBB", or "#RRGGBBAA" when a < 255 (or `alpha` is "always").
 * Components are clamped to 0..255 and rounded.
 */
export function formatHex({ r, g, b, a = 255 }, alpha = "auto") {
  const base = `#${hex2(r)}${hex2(g)}${hex2(b)}`;
  const aa = Math.min(255, Math.max(0, Math.round(Number(a))));
  return alpha === "always" || aa < 255 ? base + hex2(aa) : base;
}

/** The "#rrggbb" an <input type="color"> needs (it has no alpha); black when invalid. */
export function toPickerValue(text) {
  const c = parseHex(text);
  return (c ? formatHex({ ...c, a: 255 }) : "#000000").toLowerCase();
}

/**
 * A new value from the colour picker ("#rrggbb") merged with the previous widget value:
 * the picker sets the colour, the previous value's opacity (AA) is kept.
 */
export function mergePickerValue(pickerValue, previous) {
  const picked = parseHex(pickerValue);
  if (!picked) return typeof previous === "string" ? previous : "#000000";
  const old = parseHex(previous);
  return formatHex({ ...picked, a: old ? old.a : 255 });
}

/** Normalise what a user typed ("00ff00" -> "#00FF00"); null when it is not a colour. */
export function normalizeHex(text) {
  const c = parseHex(text);
  if (!c) return null;
  const digits = text.trim().replace(/^#/, "");
  return formatHex(c, digits.length === 8 ? "always" : "auto");
}

/** CSS rgba() of a hex colour (for a swatch); null when invalid. */
export function cssColor(text) {
  const c = parseHex(text);
  if (!c) return null;
  const alpha = Math.round((c.a / 255) * 1000) / 1000;
  return `rgba(${c.r}, ${c.g}, ${c.b}, ${alpha})`;
}
