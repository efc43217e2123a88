"""Builds workflows/*.json (UI format) from a spec, using /object_info for sockets and widgets.

Usage: python tests/data/make_workflows.py OBJECT_INFO.json workflows/  (OBJECT_INFO.json: the
/object_info of a ComfyUI running this pack, e.g. saved with curl).

Layout: nodes are stacked in columns (:class:`Column`) with a gap that includes the title bar
(drawn above a node's ``pos``), sized with room for the pack's panels (the loader's model info,
Composite's colour row) and with free canvas below a node whose before/after view appears
after the first run (where a preview follows: the node grows into it), and the saved view
(``extra.ds``) is fitted so that the whole graph shows in a 1280x720 window on the frontends
0.3.64 serves, with either node renderer, at a zoom where the canvas still draws text, and
clear of the buttons the frontend floats over the canvas. ``tests/test_workflows.py`` checks
all of that on the written files.
"""
import json, math, sys, uuid
from pathlib import Path

OI = json.load(open(sys.argv[1]))
OUT = Path(sys.argv[2])
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def specs(t):
    info = OI[t]
    out = []
    for sec in ("required", "optional"):
        for name in (info.get("input_order") or {}).get(sec, list((info["input"].get(sec) or {}))):
            spec = info["input"][sec][name]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 and spec[1] else {}
            if isinstance(spec[0], list):
                opts = dict(opts, options=spec[0])
            out.append((name, kind, opts, sec == "optional"))
    return out


def is_widget(kind, opts):
    return kind in WIDGET_TYPES and not opts.get("forceInput")


class WF:
    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, t, pos, widgets=None, title=None, size=None, color=None, width=300,
             extra=0):
        widgets = dict(widgets or {})
        nid = len(self.nodes) + 1
        inputs, wvals = [], []
        sp = specs(t) if t in OI else []
        for name, kind, opts, optional in sp:
            if not is_widget(kind, opts):
                e = {"name": name, "localized_name": name, "type": kind, "link": None}
                if optional:
                    e["shape"] = 7
                inputs.append(e)
        for name, kind, opts, optional in sp:
            if is_widget(kind, opts):
                inputs.append({"name": name, "localized_name": name, "type": kind,
                               "widget": {"name": name}, "link": None})
                if name in widgets:
                    v = widgets.pop(name)
                elif "default" in opts:
                    v = opts["default"]
                elif kind == "COMBO":
                    v = opts["options"][0]
                else:
                    v = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]
                wvals.append(v)
                if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                    wvals.append(widgets.pop("control_after_generate", "fixed"))
                if opts.get("image_upload") or opts.get("video_upload"):
                    wvals.append("image")
        if t == "Note":
            wvals = [widgets.pop("text")]
        assert not widgets, (t, widgets)
        outputs = []
        if t in OI:
            for i, (ot, on) in enumerate(zip(OI[t]["output"], OI[t]["output_name"])):
                outputs.append({"name": on, "localized_name": on, "type": ot, "links": []})
        nw = sum(1 for i in inputs if "widget" in i)
        ns = max(len(inputs) - nw, len(outputs))
        if size is None:  # what the classic renderer needs, plus room for our panel
            size = [width, 46 + 22 * ns + 24 * len(wvals) + extra]
        n = {"id": nid, "type": t, "pos": list(pos), "size": size, "flags": {},
             "order": 0, "mode": 0, "inputs": inputs, "outputs": outputs,
             "properties": {} if t == "Note" else {"Node name for S&R": t},
             "widgets_values": wvals}
        if title:
            n["title"] = title
        if color:
            n["color"], n["bgcolor"] = color
        self.nodes.append(n)
        return n

    def link(self, src, out, dst, inp):
        if isinstance(out, str):
            out = next(i for i, o in enumerate(src["outputs"]) if o["name"] == out)
        slot = next(i for i, e in enumerate(dst["inputs"]) if e["name"] == inp)
        lid = len(self.links) + 1
        typ = src["outputs"][out]["type"]
        self.links.append([lid, src["id"], out, dst["id"], slot, typ])
        src["outputs"][out]["links"].append(lid)
        src["outputs"][out]["slot_index"] = out
        dst["inputs"][slot]["link"] = lid

    def save(self, name):
        # execution order: topological
        deps = {n["id"]: set() for n in self.nodes}
        for l in self.links:
            deps[l[3]].add(l[1])
        order, done = [], set()
        while len(done) < len(deps):
            for nid in sorted(deps):
                if nid not in done and deps[nid] <= done:
                    order.append(nid); done.add(nid)
        for n in self.nodes:
            n["order"] = order.index(n["id"])
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None if False else []
        wf = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "birefnet-nodes/" + name)), "revision": 0,
              "last_node_id": len(self.nodes), "last_link_id": len(self.links),
              "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
              "extra": {"ds": clear_overlays(self.nodes), "frontendVersion": "1.27.10"},
              "version": 0.4}
        for n in self.nodes:
            n.pop("_grow", None)
        (OUT / name).write_text(json.dumps(wf, indent=2) + "\n")



# -- layout ------------------------------------------------------------------------------------
TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT: the title bar is drawn above a node's pos
GAP = 36  # free space between nodes
IMAGE_GAP = 70  # below nodes with an image preview: Nodes 2.0 draws them up to 15% taller
IMAGE_NODES = {"LoadImage", "LoadVideo", "SaveImage", "PreviewImage", "MaskPreview",
               "SaveVideo"}
COL_GAP = 40  # between columns: room for the links' curves
# Nodes 2.0 draws a workflow saved by the classic renderer 1.2x larger around the top left of
# the nodes' bounds (1.38 rescales the layout, newer frontends a CSS transform), keeping the
# saved view: the view is fitted so that the larger drawing fits too.
VUE_SCALE = 1.2
# The part of a 1280x720 window where the canvas is visible on 1.27 (canvas right of the 40 px
# sidebar, under the 40 px tab bar) and on 1.38 (canvas under a 58 px sidebar and a 38 px tab
# bar), in canvas-element pixels; tests/test_workflows.py checks the same rectangle.
VIEW = (58, 38, 1240, 680)
# What 1.38 floats over the canvas at the top: the Run toolbar (right) and a menu button (left);
# columns under them are moved down.
OVERLAYS = ((930, 38, 1280, 95), (58, 38, 96, 70))
MARGIN = 8
MAX_SCALE = 0.9

# Room for the pack's DOM panels (web/lib/compare.js PANEL, web/birefnet.js model info), on
# top of the height this generator gives a node's own widgets (~30 px more than the classic
# canvas needs, what Nodes 2.0 draws): the panels fill it without empty space.
INFO = 105  # model info: a title and 6 rows of 15 px + margins, less those 30 px
COLOR_ROW = 46  # Composite's colour chip (background_mode "color"): 26 + margins
GROW = 150  # free canvas below a node whose before/after view comes after a run (it grows ~140)


def fit_view(nodes):
    """The ds (scale, offset) that shows every node, title bars included, inside VIEW, drawn
    by either renderer."""
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] - TITLE for n in nodes)
    right = max(n["pos"][0] + n["size"][0] for n in nodes)
    bottom = max(n["pos"][1] + n["size"][1] + n.get("_grow", 0) for n in nodes)
    vx0, vy0, vx1, vy1 = VIEW
    scale = min(MAX_SCALE, (vx1 - vx0 - 2 * MARGIN) / (right - left) / VUE_SCALE,
                (vy1 - vy0 - 2 * MARGIN) / (bottom - top) / VUE_SCALE)
    scale = int(scale * 100) / 100  # round down: the fit holds
    return {"scale": scale,
            "offset": [round((vx0 + MARGIN) / scale - left, 1),
                       round((vy0 + MARGIN) / scale - top, 1)]}


def _screen_rects(nodes, ds):
    """Each node's rectangle on screen (title included) on the canvas and in Nodes 2.0."""
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] - TITLE for n in nodes)
    (ox, oy), s = ds["offset"], ds["scale"]
    for n in nodes:
        x0, y0 = n["pos"][0], n["pos"][1] - TITLE
        x1, y1 = n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1] + n.get("_grow", 0)
        for k in (1.0, VUE_SCALE):
            yield n, k, [(left + (x0 - left) * k + ox) * s, (top + (y0 - top) * k + oy) * s,
                         (left + (x1 - left) * k + ox) * s, (top + (y1 - top) * k + oy) * s]


def clear_overlays(nodes):
    """Fit the view, moving down the columns whose top node an overlay would cover."""
    for _ in range(12):
        ds = fit_view(nodes)
        hit = next(((n, k, r, o) for n, k, r in _screen_rects(nodes, ds) for o in OVERLAYS
                    if r[0] < o[2] and r[2] > o[0] and r[1] < o[3] and r[3] > o[1]), None)
        if hit is None:
            return ds
        n, k, r, o = hit
        dy = math.ceil((o[3] + 4 - r[1]) / (ds["scale"] * k))
        for m in nodes:
            if m["pos"][0] == n["pos"][0]:
                m["pos"][1] += dy
    raise RuntimeError("could not keep the nodes clear of the overlays")


class Column:
    """Nodes stacked top to bottom at x, each title bar GAP below the node above."""

    def __init__(self, wf, x, width=300, y=TITLE):
        self.wf, self.x, self.width, self.y = wf, x, width, y

    @property
    def right(self):
        return self.x + self.width

    def add(self, t, widgets=None, grow=0, **kw):
        """Add a node below the last; ``grow``: free canvas it may grow into (kept out of the
        saved file, checked by the layout tests from the links)."""
        kw.setdefault("width", self.width)
        n = self.wf.node(t, (self.x, self.y), widgets, **kw)
        if grow:
            n["_grow"] = grow
        self.y = (n["pos"][1] + n["size"][1] + grow + TITLE
                  + (IMAGE_GAP if t in IMAGE_NODES else GAP))
        return n


def next_to(col, width=300, gap=COL_GAP):
    return Column(col.wf, col.right + gap, width)


NOTE = ("#432", "#653")


def note(col, text, height):
    return col.add("Note", {"text": text}, color=NOTE, size=[col.width, height])


# (a) remove background -> RGBA PNG ------------------------------------------------------------
w = WF()
c1 = Column(w, 0, 320)
img = c1.add("LoadImage", {"image": "example.png"}, size=[320, 360])
ld = c1.add("BiRefNetModelLoader", {"model_name": "BiRefNet.safetensors"}, extra=INFO)
c2 = next_to(c1, 340, gap=100)  # the model link's curve stays clear of the note
seg = c2.add("BiRefNetSegment", grow=GROW)
note(c2, (
    "Remove background -> transparent PNG\n\n"
    "1. Put BiRefNet weights in models/birefnet (e.g. BiRefNet.safetensors from "
    "huggingface.co/ZhengPeng7/BiRefNet, or python -m birefnet_core download general).\n"
    "2. Pick an image in Load Image and queue.\n\n"
    "rgba is the image with the mask as straight alpha: Save Image writes an RGBA PNG. "
    "Mask: 1 = foreground (no InvertMask needed).\n"
    "The loader shows what the selected file is; after a run, move the pointer across the "
    "before/after view."),
    230)
c3 = next_to(c2, 340, gap=120)  # the mask link's curve stays clear of the note
save = c3.add("SaveImage", {"filename_prefix": "birefnet/rgba"}, size=[340, 350])
prev = c3.add("MaskPreview", size=[340, 260])
w.link(img, 0, seg, "images"); w.link(ld, 0, seg, "model")
w.link(seg, "rgba", save, "images"); w.link(seg, "mask", prev, "mask")
w.save("birefnet_remove_background.json")

# (b) replace background with a colour and with an image ----------------------------------------
# The composites side by side, each result under its composite.
w = WF()
c1 = Column(w, 0)
img = c1.add("LoadImage", {"image": "example.png"}, title="Load Image (subject)",
             size=[300, 330])
bg = c1.add("LoadImage", {"image": "background.png"}, title="Load Image (new background)",
            size=[300, 330])
c2 = next_to(c1)
ld = c2.add("BiRefNetModelLoader", {"model_name": "BiRefNet.safetensors"}, extra=INFO)
seg = c2.add("BiRefNetSegment")
note(c2, (
    "Replace the background\n\n"
    "Left: over a solid colour (click the 'pick colour' chip, or type #RRGGBB; #RRGGBBAA "
    "gives a translucent colour when output_alpha is on).\n"
    "Right: over another image, fitted with 'fit' (cover = fill and crop).\n\n"
    "foreground_estimation removes the old background's halo from soft edges; despill "
    "removes its colour cast."), 200)
c3 = next_to(c2)
cc = c3.add("BiRefNetComposite", {"background_mode": "color", "color": "#2E86DE",
                                  "output_alpha": False},
            title="BiRefNet Composite (colour)", extra=COLOR_ROW, grow=GROW)
sc = c3.add("SaveImage", {"filename_prefix": "birefnet/on_colour"}, size=[300, 270])
c4 = next_to(c3)
ci = c4.add("BiRefNetComposite", {"background_mode": "image", "fit": "cover",
                                  "output_alpha": False},
            title="BiRefNet Composite (image)", grow=GROW)
si = c4.add("SaveImage", {"filename_prefix": "birefnet/on_image"}, size=[300, 270])
w.link(img, 0, seg, "images"); w.link(ld, 0, seg, "model")
for c in (cc, ci):
    w.link(img, 0, c, "image"); w.link(seg, "mask", c, "mask")
w.link(bg, 0, ci, "background")
w.link(cc, "image", sc, "images"); w.link(ci, "image", si, "images")
w.save("birefnet_replace_background.json")

# (c) video -------------------------------------------------------------------------------------
w = WF()
c1 = Column(w, 0)
lv = c1.add("LoadVideo", {"file": "example.mp4"}, size=[300, 260])
gv = c1.add("GetVideoComponents")
note(c1, (
    "Video: remove the background of every frame\n\n"
    "Load Video -> frames -> BiRefNet (frames run in chunks; batch_size 0 = automatic) -> "
    "Refine Mask with temporal 'ema' smoothing (removes flicker, restarts at scene cuts; "
    "the guide is the frames) -> Composite over green -> Create Video at the source fps, "
    "with the source audio -> Save Video (mp4/h264).\n\n"
    "A lite model is much faster for long clips. For a transparent result, save the "
    "composite's RGBA frames with Save Image instead (mp4 has no alpha)."), 260)
c2 = next_to(c1)
ld = c2.add("BiRefNetModelLoader", {"model_name": "BiRefNet_lite.safetensors"}, extra=INFO)
seg = c2.add("BiRefNetSegment")
c3 = next_to(c2)
rf = c3.add("BiRefNetRefineMask", {"temporal": "ema", "temporal_strength": 0.5})
c4 = next_to(c3)
cp = c4.add("BiRefNetComposite", {"background_mode": "color", "color": "#00FF00",
                                  "output_alpha": False}, extra=COLOR_ROW)
cv = c4.add("CreateVideo")
sv = c4.add("SaveVideo", {"filename_prefix": "video/birefnet"}, size=[300, 240])
w.link(lv, 0, gv, "video")
w.link(gv, "images", seg, "images"); w.link(ld, 0, seg, "model")
w.link(seg, "mask", rf, "mask"); w.link(gv, "images", rf, "guide")
w.link(gv, "images", cp, "image"); w.link(rf, "mask", cp, "mask")
w.link(cp, "image", cv, "images"); w.link(gv, "fps", cv, "fps"); w.link(gv, "audio", cv, "audio")
w.link(cv, 0, sv, "video")
w.save("birefnet_video.json")

# (d) SD inpainting of the background -----------------------------------------------------------
w = WF()
c1 = Column(w, 0)
img = c1.add("LoadImage", {"image": "example.png"}, size=[300, 330])
ld = c1.add("BiRefNetModelLoader", {"model_name": "BiRefNet.safetensors"}, extra=INFO)
c2 = next_to(c1)
seg = c2.add("BiRefNetSegment")
inv = c2.add("InvertMask")
gm = c2.add("GrowMask", {"expand": 8, "tapered_corners": True})
note(c2, (
    "Stable Diffusion repaints the background, the subject stays untouched\n\n"
    "BiRefNet's mask is 1 = subject, so Invert Mask gives the area to inpaint; Grow Mask "
    "lets SD repaint a few pixels into the subject's edge so the new background meets it "
    "cleanly. Works with inpainting checkpoints (e.g. SD 1.5 inpainting) and, through the "
    "noise mask, with ordinary ones.\n\n"
    "At the end BiRefNet Composite puts the original subject (with clean edge colours) over "
    "the generated image, so the subject keeps its exact pixels."), 280)
c3 = next_to(c2)
ck = c3.add("CheckpointLoaderSimple", {"ckpt_name": "sd-v1-5-inpainting.ckpt"})
pos = c3.add("CLIPTextEncode", {
    "text": "a sunlit beach at golden hour, soft bokeh, professional photo"},
    title="CLIP Text Encode (new background)", size=[300, 160])
neg = c3.add("CLIPTextEncode", {"text": "blurry, lowres, text, watermark"},
             title="CLIP Text Encode (negative)", size=[300, 160])
c4 = next_to(c3)
ic = c4.add("InpaintModelConditioning")
ks = c4.add("KSampler", {"seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "dpmpp_2m",
                         "scheduler": "karras", "denoise": 1.0})
vd = c4.add("VAEDecode")
c5 = next_to(c4)
cp = c5.add("BiRefNetComposite", {"background_mode": "image", "fit": "stretch",
                                  "output_alpha": False},
            title="BiRefNet Composite (subject over new background)", grow=GROW)
sv = c5.add("SaveImage", {"filename_prefix": "birefnet/inpainted"}, size=[300, 290])
w.link(img, 0, seg, "images"); w.link(ld, 0, seg, "model")
w.link(seg, "mask", inv, "mask"); w.link(inv, 0, gm, "mask")
w.link(ck, "CLIP", pos, "clip"); w.link(ck, "CLIP", neg, "clip")
w.link(pos, 0, ic, "positive"); w.link(neg, 0, ic, "negative")
w.link(ck, "VAE", ic, "vae"); w.link(img, 0, ic, "pixels"); w.link(gm, 0, ic, "mask")
w.link(ck, "MODEL", ks, "model"); w.link(ic, "positive", ks, "positive")
w.link(ic, "negative", ks, "negative"); w.link(ic, "latent", ks, "latent_image")
w.link(ks, 0, vd, "samples"); w.link(ck, "VAE", vd, "vae")
w.link(img, 0, cp, "image"); w.link(seg, "mask", cp, "mask"); w.link(vd, 0, cp, "background")
w.link(cp, "image", sv, "images")
w.save("birefnet_sd_inpaint_background.json")

# (e) box-guided segmentation of a large image ------------------------------------------------
w = WF()
c1 = Column(w, 0)
img = c1.add("LoadImage", {"image": "large_photo.jpg"}, size=[300, 330])
canvas = c1.add("SolidMask", {"value": 0.0, "width": 1000, "height": 1000},
                title="Solid Mask (canvas = whole image)")
box = c1.add("SolidMask", {"value": 1.0, "width": 400, "height": 600},
             title="Solid Mask (box size)")
c2 = next_to(c1)
ld = c2.add("BiRefNetModelLoader", {"model_name": "BiRefNet_HR.safetensors"}, extra=INFO)
mc = c2.add("MaskComposite", {"x": 300, "y": 200, "operation": "add"},
            title="Mask Composite (box position)")
mp = c2.add("MaskPreview", size=[300, 200], title="Preview (the box)")
c3 = next_to(c2)
seg = c3.add("BiRefNetSegment")
note(c3, (
    "Box-guided segmentation of a large image\n\n"
    "The box is drawn on a 1000 x 1000 canvas that is stretched over the image, so x, y, "
    "width and height are in thousandths of the image's width/height (here: from 30% to 70% "
    "across, 20% to 80% down). Only the box (plus 10% context) is segmented, at the model's "
    "full working size, so a subject in a large photo keeps its detail; the mask is 0 "
    "outside the box. Instead of the two Solid Masks you can paint over the subject in Load "
    "Image's mask editor and connect its MASK (painted = 1) to 'region'.\n\n"
    "Refine Mask with the full-size image as guide then recovers edge detail above the "
    "working size (working_size -1 = auto: the size Segment worked at, read from its mask)."), 380)
c4 = next_to(c3)
rf = c4.add("BiRefNetRefineMask", {"working_size": -1, "fill_holes_px": 0})
c5 = next_to(c4)
cp = c5.add("BiRefNetComposite", grow=GROW)
sv = c5.add("SaveImage", {"filename_prefix": "birefnet/box"}, size=[300, 290])
w.link(canvas, 0, mc, "destination"); w.link(box, 0, mc, "source")
w.link(img, 0, seg, "images"); w.link(ld, 0, seg, "model"); w.link(mc, 0, seg, "region")
w.link(seg, "mask", rf, "mask"); w.link(img, 0, rf, "guide")
w.link(img, 0, cp, "image"); w.link(rf, "mask", cp, "mask")
w.link(cp, "image", sv, "images"); w.link(mc, 0, mp, "mask")
w.save("birefnet_box_guided_large_image.json")
print("ok")
