// The model summary of the loader node ("BiRefNet <arch.family>\nkey: value\n..."), which the
// server sends after the loader ran and from GET /birefnet/model_info before it ran, parsed
// into the rows the node shows. Pure functions, no DOM.

/** The pack's route that describes a model file without loading it (see nodes/loader.py). */
export const INFO_ROUTE = "/birefnet/model_info";

/** The loader widgets the description depends on, in query order. */
export const INFO_WIDGETS = Object.freeze(["model_name", "family", "patch_order", "precision"]);

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

// Display order and shorter labels; "file" is left out (it is the model_name widget above).
const ROWS = [["family", "family"], ["working resolution", "resolution"],
  ["backbone", "backbone"], ["parameters", "parameters"], ["patch order", "patch order"],
  ["precision", "precision"]];
const HIDDEN = new Set(["file"]);

/**
 * The rows the node shows: {title: "swin_v1_l.general", rows: [[label, value], ...]}, the known
 * fields in a fixed order, then any others as they came. Values are shown whole (the node
 * wraps them); an empty or unparsable text gives {title: "", rows: []}.
 */
export function modelInfoRows(text) {
  const { title, fields } = parseModelInfo(text);
  const byKey = new Map(fields.filter(([k]) => k).map(([k, v]) => [k, v]));
  const rows = [];
  for (const [key, label] of ROWS) {
    if (byKey.has(key)) rows.push([label, byKey.get(key)]);
  }
  const known = new Set([...ROWS.map(([k]) => k), ...HIDDEN]);
  for (const [key, value] of fields) {
    if (!known.has(key)) rows.push([key, value]);
  }
  return { title: title.replace(/^BiRefNet\s+/, ""), rows };
}

/**
 * One line for a node too short for the rows: "swin_v1_l.hr_matting · HR matting (2048²) ·
 * 220.2 M" (title, family, parameter count), or "" for an empty text.
 */
export function modelInfoSummary(text) {
  const { title, rows } = modelInfoRows(text);
  const field = (label) => rows.find(([k]) => k === label)?.[1];
  const params = field("parameters")?.replace(/\s*\(.*\)$/, "");
  return [title, field("family")?.replace(/\s*\[matting\]$/, ""), params]
    .filter(Boolean).join(" · ");
}

/**
 * The query string of INFO_ROUTE for the loader's widget values ({model_name, family, ...}),
 * or null when no model is selected.
 */
export function infoQuery(values) {
  const name = values?.model_name;
  if (typeof name !== "string" || !name || name === "none") return null;
  const params = new URLSearchParams();
  for (const key of INFO_WIDGETS) {
    const value = values[key];
    if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
  }
  return params.toString();
}
