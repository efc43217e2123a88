// The model summary the loader sends after it ran (ui text: "BiRefNet <arch.family>\nkey:
// value\n..."), parsed and shortened for display on the node. Pure functions, no DOM.

/** "BiRefNet swin_v1_l.general\nfamily: ...\n..." -> {title, fields: [[key, value], ...]}. */
export function parseModelInfo(text) {
  const lines = String(Array.isArray(text) ? text.join("\n") : text ?? "")
    .split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  const fields = [];
  let title = "";
  for (const line of lines) {
    const i = line.indexOf(": ");
    if (i > 0) fields.push([line.slice(0, i), line.slice(i + 2)]);
    else if (!title) title = line;
    else fields.push(["", line]);
  }
  return { title, fields };
}

const ORDER = ["family", "working resolution", "backbone", "parameters", "precision",
  "patch order", "file"];

/**
 * The display lines: the title, then the known fields in a fixed order (then any others);
 * each line at most `maxChars` long (ellipsis).
 */
export function formatModelInfo(text, maxChars = 64) {
  const { title, fields } = parseModelInfo(text);
  if (!title && fields.length === 0) return [];
  const rank = (k) => {
    const i = ORDER.indexOf(k);
    return i < 0 ? ORDER.length : i;
  };
  const sorted = fields.map((f, i) => [f, i])
    .sort((a, b) => rank(a[0][0]) - rank(b[0][0]) || a[1] - b[1]).map(([f]) => f);
  const clip = (s) => (s.length > maxChars ? s.slice(0, Math.max(1, maxChars - 1)) + "…" : s);
  const out = [];
  if (title) out.push(clip(title));
  for (const [k, v] of sorted) out.push(clip(k ? `${k}: ${v}` : v));
  return out;
}
