"""Builds workflows/*.json (UI format) from a spec, using /object_info for sockets and widgets.

Usage: python tests/data/make_workflows.py OBJECT_INFO.json workflows/  (OBJECT_INFO.json: the
/object_info of a ComfyUI running this pack, e.g. saved with curl).
"""
import json, sys, uuid
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

    def node(self, t, pos, widgets=None, title=None, size=None, color=None):
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
        if size is None:
            size = [320, 46 + 22 * ns + 24 * len(wvals)]
            if t == "Note":
                size = [360, 200]
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
              "extra": {"ds": {"scale": 0.9, "offset": [40, 60]},
                        "frontendVersion": "1.27.10"},
              "version": 0.4}
        (OUT / name).write_text(json.dumps(wf, indent=2) + "\n")


NOTE = ("#432", "#653")

# (a) remove background -> RGBA PNG ------------------------------------------------------------
w = WF()
img = w.node("LoadImage", (40, 80), {"image": "example.png"}, size=[320, 340])
ld = w.node("BiRefNetModelLoader", (40, 460), {"model_name": "BiRefNet.safetensors"})
seg = w.node("BiRefNetSegment", (420, 220))
save = w.node("SaveImage", (800, 80), {"filename_prefix": "birefnet/rgba"}, size=[360, 400])
prev = w.node("MaskPreview", (800, 520), size=[360, 300])
w.node("Note", (420, 460), {"text": (
    "Remove background -> transparent PNG\n\n"
    "1. Put BiRefNet weights in models/birefnet (e.g. BiRefNet.safetensors from "
    "huggingface.co/ZhengPeng7/BiRefNet, or python -m birefnet_core download general).\n"
    "2. Pick an image in Load Image and queue.\n\n"
    "The rgba output is the image with the mask as straight alpha; Save Image writes it as "
    "an RGBA PNG. Mask: 1 = foreground (no InvertMask needed).\n"
    "The loader shows the detected model (architecture.family, resolution, size).")},
    color=NOTE)
w.link(img, 0, seg, "images"); w.link(ld, 0, seg, "model")
w.link(seg, "rgba", save, "images"); w.link(seg, "mask", prev, "mask")
w.save("birefnet_remove_background.json")

# (b) replace background with a colour and with an image ----------------------------------------
w = WF()
img = w.node("LoadImage", (40, 80), {"image": "example.png"}, title="Load Image (subject)",
             size=[320, 340])
bg = w.node("LoadImage", (40, 560), {"image": "background.png"},
            title="Load Image (new background)", size=[320, 340])
ld = w.node("BiRefNetModelLoader", (40, 440), {"model_name": "BiRefNet.safetensors"})
seg = w.node("BiRefNetSegment", (420, 80))
cc = w.node("BiRefNetComposite", (820, 80), {"background_mode": "color", "color": "#2E86DE",
                                             "output_alpha": False},
            title="BiRefNet Composite (colour)")
ci = w.node("BiRefNetComposite", (820, 460), {"background_mode": "image", "fit": "cover",
                                              "output_alpha": False},
            title="BiRefNet Composite (image)")
sc = w.node("SaveImage", (1200, 80), {"filename_prefix": "birefnet/on_colour"}, size=[360, 360])
si = w.node("SaveImage", (1200, 480), {"filename_prefix": "birefnet/on_image"}, size=[360, 360])
w.node("Note", (420, 360), {"text": (
    "Replace the background\n\n"
    "Top: over a solid colour (click the colour swatch to pick one; #RRGGBBAA gives a "
    "translucent colour when output_alpha is on).\n"
    "Bottom: over another image, fitted with 'fit' (cover = fill and crop).\n\n"
    "foreground_estimation removes the old background's halo from soft edges; despill "
    "removes its colour cast.")}, color=NOTE)
w.link(img, 0, seg, "images"); w.link(ld, 0, seg, "model")
for c in (cc, ci):
    w.link(img, 0, c, "image"); w.link(seg, "mask", c, "mask")
w.link(bg, 0, ci, "background")
w.link(cc, "image", sc, "images"); w.link(ci, "image", si, "images")
w.save("birefnet_replace_background.json")

# (c) video -------------------------------------------------------------------------------------
w = WF()
lv = w.node("LoadVideo", (40, 80), {"file": "example.mp4"}, size=[320, 420])
gv = w.node("GetVideoComponents", (40, 560))
ld = w.node("BiRefNetModelLoader", (400, 80), {"model_name": "BiRefNet_lite.safetensors"})
seg = w.node("BiRefNetSegment", (400, 300))
rf = w.node("BiRefNetRefineMask", (780, 80), {"temporal": "ema", "temporal_strength": 0.5})
cp = w.node("BiRefNetComposite", (1160, 80), {"background_mode": "color", "color": "#00FF00",
                                              "output_alpha": False})
cv = w.node("CreateVideo", (1160, 420))
sv = w.node("SaveVideo", (1540, 80), {"filename_prefix": "video/birefnet"}, size=[360, 420])
w.node("Note", (400, 560), {"text": (
    "Video: remove the background of every frame\n\n"
    "Load Video -> frames -> BiRefNet (frames run in chunks; batch_size 0 = automatic) -> "
    "Refine Mask with temporal 'ema' smoothing (removes flicker, restarts at scene cuts; "
    "the guide is the frames) -> Composite over green -> Create Video at the source fps, "
    "with the source audio -> Save Video (mp4/h264).\n\n"
    "A lite model is much faster for long clips. For a transparent result, save the "
    "composite's RGBA frames with Save Image instead (mp4 has no alpha).")}, color=NOTE)
w.link(lv, 0, gv, "video")
w.link(gv, "images", seg, "images"); w.link(ld, 0, seg, "model")
w.link(seg, "mask", rf, "mask"); w.link(gv, "images", rf, "guide")
w.link(gv, "images", cp, "image"); w.link(rf, "mask", cp, "mask")
w.link(cp, "image", cv, "images"); w.link(gv, "fps", cv, "fps"); w.link(gv, "audio", cv, "audio")
w.link(cv, 0, sv, "video")
w.save("birefnet_video.json")

# (d) SD inpainting of the background -----------------------------------------------------------
w = WF()
ck = w.node("CheckpointLoaderSimple", (40, 80), {"ckpt_name": "sd-v1-5-inpainting.ckpt"})
img = w.node("LoadImage", (40, 260), {"image": "example.png"}, size=[320, 340])
ld = w.node("BiRefNetModelLoader", (40, 640), {"model_name": "BiRefNet.safetensors"})
seg = w.node("BiRefNetSegment", (400, 560))
inv = w.node("InvertMask", (780, 560))
gm = w.node("GrowMask", (780, 660), {"expand": 8, "tapered_corners": True})
pos = w.node("CLIPTextEncode", (400, 80), {
    "text": "a sunlit beach at golden hour, soft bokeh, professional photo"},
    title="CLIP Text Encode (new background)", size=[360, 180])
neg = w.node("CLIPTextEncode", (400, 300), {"text": "blurry, lowres, text, watermark"},
             title="CLIP Text Encode (negative)", size=[360, 180])
ic = w.node("InpaintModelConditioning", (1160, 300))
ks = w.node("KSampler", (1160, 500), {"seed": 42, "steps": 25, "cfg": 7.0,
                                       "sampler_name": "dpmpp_2m", "scheduler": "karras",
                                       "denoise": 1.0})
vd = w.node("VAEDecode", (1540, 300))
cp = w.node("BiRefNetComposite", (1540, 420), {"background_mode": "image", "fit": "stretch",
                                               "output_alpha": False},
            title="BiRefNet Composite (subject over new background)")
sv = w.node("SaveImage", (1920, 300), {"filename_prefix": "birefnet/inpainted"},
            size=[400, 460])
w.node("Note", (780, 80), {"text": (
    "Stable Diffusion repaints the background, the subject stays untouched\n\n"
    "BiRefNet's mask is 1 = subject, so Invert Mask gives the area to inpaint; Grow Mask "
    "lets SD repaint a few pixels into the subject's edge so the new background meets it "
    "cleanly. Works with inpainting checkpoints (e.g. SD 1.5 inpainting) and, through the "
    "noise mask, with ordinary ones.\n\n"
    "At the end BiRefNet Composite puts the original subject (with clean edge colours) over "
    "the generated image, so the subject keeps its exact pixels.")}, color=NOTE)
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
img = w.node("LoadImage", (40, 80), {"image": "large_photo.jpg"}, size=[320, 340])
canvas = w.node("SolidMask", (40, 460), {"value": 0.0, "width": 1000, "height": 1000},
                title="Solid Mask (canvas = whole image)")
box = w.node("SolidMask", (40, 640), {"value": 1.0, "width": 400, "height": 600},
             title="Solid Mask (box size)")
mc = w.node("MaskComposite", (400, 560), {"x": 300, "y": 200, "operation": "add"},
            title="Mask Composite (box position)")
ld = w.node("BiRefNetModelLoader", (400, 80), {"model_name": "BiRefNet_HR.safetensors"})
seg = w.node("BiRefNetSegment", (400, 300))
rf = w.node("BiRefNetRefineMask", (780, 80), {"working_size": 2048, "fill_holes_px": 0})
cp = w.node("BiRefNetComposite", (1160, 80))
sv = w.node("SaveImage", (1540, 80), {"filename_prefix": "birefnet/box"}, size=[400, 460])
mp = w.node("MaskPreview", (780, 560), size=[320, 320], title="Preview (the box)")
w.node("Note", (1160, 480), {"text": (
    "Box-guided segmentation of a large image\n\n"
    "The box is drawn on a 1000 x 1000 canvas that is stretched over the image, so x, y, "
    "width and height are in thousandths of the image's width/height (here: from 30% to 70% "
    "across, 20% to 80% down). Only the box (plus 10% context) is segmented, at the model's "
    "full working size, so a subject in a large photo keeps its detail; the mask is 0 "
    "outside the box. Instead of the two Solid Masks you can paint over the subject in Load "
    "Image's mask editor and connect its MASK (painted = 1) to 'region'.\n\n"
    "Refine Mask with the full-size image as guide then recovers edge detail above the "
    "working size (set working_size to the model's: 2048 for HR).")}, color=NOTE)
w.link(canvas, 0, mc, "destination"); w.link(box, 0, mc, "source")
w.link(img, 0, seg, "images"); w.link(ld, 0, seg, "model"); w.link(mc, 0, seg, "region")
w.link(seg, "mask", rf, "mask"); w.link(img, 0, rf, "guide")
w.link(img, 0, cp, "image"); w.link(rf, "mask", cp, "mask")
w.link(cp, "image", sv, "images"); w.link(mc, 0, mp, "mask")
w.save("birefnet_box_guided_large_image.json")
print("ok")
