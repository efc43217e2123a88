// Which images the compare view shows: the "before" is what fed the node's image input, the
// "after" what a preview/save node downstream of the node's image output displayed. Pure
// helpers over plain data (no DOM, no ComfyUI objects).

/** Per node type: the image input ("before") and the output slots, best first ("after"). */
export const COMPARE_NODES = Object.freeze({
  BiRefNetSegment: Object.freeze({ input: "images", outputs: Object.freeze([1, 0]) }),
  BiRefNetComposite: Object.freeze({ input: "image", outputs: Object.freeze([0, 1]) }),
});

/** The query string of ComfyUI's /view route for one saved-image record, or null. */
export function viewQuery(file) {
  if (!file || typeof file.filename !== "string" || !file.filename) return null;
  const params = new URLSearchParams({
    filename: file.filename,
    type: file.type || "output",
    subfolder: file.subfolder || "",
  });
  return `/view?${params.toString()}`;
}

/** The first image record in an `executed` output ({images: [...]}) or null. */
export function firstImage(output) {
  const images = output && Array.isArray(output.images) ? output.images : [];
  return images.find((f) => f && typeof f.filename === "string" && f.filename) ?? null;
}

/**
 * Rank of an output slot of a compare node for "after" (lower is better), or -1 when the slot
 * is not one the view uses.
 */
export function afterRank(nodeType, slot) {
  const spec = COMPARE_NODES[nodeType];
  return spec ? spec.outputs.indexOf(slot) : -1;
}

/**
 * The image record a file widget names (LoadImage's "image": "name.png", "sub/name.png" or
 * "name.png [output]"; input files by default), or null for anything else.
 */
export function fileFromWidgetValue(value) {
  if (typeof value !== "string" || !value.trim()) return null;
  const m = /^(.*?)(?:\s*\[(input|output|temp)\])?$/.exec(value.trim());
  const path = m[1];
  if (!/\.(png|jpe?g|webp|gif|bmp|tiff?)$/i.test(path)) return null;
  const cut = path.lastIndexOf("/");
  return { filename: path.slice(cut + 1), subfolder: cut >= 0 ? path.slice(0, cut) : "",
    type: m[2] ?? "input" };
}
