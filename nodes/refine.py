"""``BiRefNetRefineMask``: clean up a mask and recover its edges from the full-size image."""

from __future__ import annotations

import logging

from ..birefnet_core import edges as E, refine as R, temporal as T
from ..birefnet_core.errors import InputError
from ..birefnet_core.layout import fit_masks, masks_to_b1hw

log = logging.getLogger(__name__)

AUTO = -1  # working_size: read the size the mask was predicted at from the mask
FALLBACK_WORKING_SIZE = 1024  # auto, for a mask that does not carry its working size

MASK_CONVENTION = ("1 = foreground (like core RemoveBackground); ComfyUI's LoadImage masks use "
                   "1 = transparent — invert those first.")


class BiRefNetRefineMask:
    DESCRIPTION = (
        "Refines a foreground mask (" + MASK_CONVENTION + ") in this order: levels, edge "
        "refinement from the full-size guide image (recovers the detail lost when the model "
        "worked at a smaller size, and the segmenter's own blur where the image shows hard "
        "edges under a soft mask), threshold, remove islands, fill holes, grow/shrink, feather, temporal smoothing "
        "across the batch. Also outputs the edge band (dilate minus erode).")
    CATEGORY = "BiRefNet"
    FUNCTION = "refine"
    RETURN_TYPES = ("MASK", "MASK")
    RETURN_NAMES = ("mask", "edge_band")
    OUTPUT_TOOLTIPS = (
        "Refined mask [B,H,W], 0..1, at the guide image's size when a guide is given. " +
        MASK_CONVENTION,
        "The band around the refined mask's edges (1 inside the band), edge_band_width px wide.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mask": ("MASK", {"tooltip": "Mask to refine, 1 = foreground. If a guide image "
                                             "of another size is given, the mask is resized "
                                             "(bilinear) to the image first."}),
                "black_point": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Levels: mask values at or below this "
                                                     "become 0."}),
                "white_point": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Levels: mask values at or above this "
                                                     "become 1."}),
                "edge_refine": (list(E.EDGE_MODES), {
                    "default": "guided",
                    "tooltip": "Edge refinement from the guide image (needs a guide): 'guided' "
                               "is fast (local colour model + fast guided filter); 'matting' "
                               "adds closed-form matting steps in the edge band (cleaner "
                               "edges on flat backgrounds, ~1.5x slower); 'none' skips it."}),
                "working_size": ("INT", {
                    "default": AUTO, "min": AUTO, "max": 8192, "step": 1,
                    "tooltip": "The size the mask was predicted at (the model's working "
                               "resolution). -1 = auto: the size BiRefNet Remove Background "
                               "used, which travels with its mask (connect that mask directly; "
                               "a mask made by another node falls back to "
                               f"{FALLBACK_WORKING_SIZE}). When the image is not larger than this, "
                               "edges are refined only where the mask is measurably softer than "
                               "the image; 0 = assume the mask has full detail (no edge "
                               "refinement)."}),
                "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "If > 0, make the mask binary at this level "
                                                   "(hard edges)."}),
                "remove_islands_px": ("INT", {"default": 0, "min": 0, "max": 10_000_000,
                                              "tooltip": "Remove foreground specks smaller than "
                                                         "this many pixels (0 = off)."}),
                "fill_holes_px": ("INT", {"default": 0, "min": -1, "max": 10_000_000,
                                          "tooltip": "Fill enclosed background holes up to this "
                                                     "many pixels; -1 fills every enclosed hole "
                                                     "(also gaps between arm and body); 0 = off."}),
                "grow_px": ("INT", {"default": 0, "min": -512, "max": 512,
                                    "tooltip": "Grow (positive) or shrink (negative) the mask by "
                                               "this many pixels (near-disk shape)."}),
                "feather_px": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 512.0, "step": 0.5,
                                         "tooltip": "Soften the edges over about this many "
                                                    "pixels."}),
                "temporal": (list(T.TEMPORAL_MODES), {
                    "default": "none",
                    "tooltip": "Video: smooth the mask across the batch ('ema' exponential "
                               "moving average, forward and backward; 'median' windowed median). "
                               "Restarts at scene cuts."}),
                "temporal_strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 0.95,
                                                "step": 0.05,
                                                "tooltip": "EMA: weight of the previous frames "
                                                           "(higher = smoother, more lag)."}),
                "temporal_window": ("INT", {"default": 3, "min": 1, "max": 31, "step": 2,
                                            "tooltip": "Median: number of frames (odd)."}),
                "scene_cut_threshold": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0,
                                                  "step": 0.01,
                                                  "tooltip": "Mean absolute difference between "
                                                             "consecutive frames (of the guide "
                                                             "images, else the masks) that "
                                                             "counts as a cut."}),
                "edge_band_width": ("INT", {"default": 8, "min": 0, "max": 512,
                                            "tooltip": "Width in pixels of the edge_band "
                                                       "output."}),
            },
            "optional": {
                "guide": ("IMAGE", {"tooltip": "The full-size image the mask belongs to; needed "
                                               "for edge refinement and used for scene-cut "
                                               "detection. The mask is resized to its size."}),
            },
        }

    def refine(self, mask, black_point=0.0, white_point=1.0, edge_refine="guided",
               working_size=AUTO, threshold=0.0, remove_islands_px=0, fill_holes_px=0,
               grow_px=0, feather_px=0.0, temporal="none", temporal_strength=0.5,
               temporal_window=3, scene_cut_threshold=0.1, edge_band_width=8, guide=None):
        size = resolve_working_size(mask, working_size)
        m4, _ = masks_to_b1hw(mask)
        m4 = m4.float()
        frames = None
        if guide is not None:
            g = guide.float()
            if g.ndim == 3:
                g = g[None]
            b = max(m4.shape[0], g.shape[0])
            m4 = fit_masks(m4, tuple(g.shape[1:3]), b)
            if g.shape[0] != b:
                if g.shape[0] != 1:
                    raise InputError(f"guide has {g.shape[0]} frames but the mask has "
                                     f"{m4.shape[0]}; pass one guide per mask or a single one.")
                g = g.expand(b, -1, -1, -1)
            frames = g
        m = m4[:, 0]
        if black_point > 0 or white_point < 1:
            m = R.levels(m, black_point, white_point)
        if guide is not None and edge_refine != "none" and size is not None:
            m = E.refine_edges(m, frames, size, edge_refine)
        if threshold > 0:
            m = R.threshold(m, threshold)
        if remove_islands_px > 0:
            m = R.remove_islands(m, remove_islands_px)
        if fill_holes_px != 0:
            m = R.fill_holes(m, max_area=max(0, fill_holes_px))
        if grow_px:
            m = R.grow_shrink(m, grow_px)
        if feather_px > 0:
            m = R.feather(m, feather_px)
        if temporal != "none":
            m = T.temporal_smooth(m, temporal, temporal_strength, temporal_window,
                                  scene_cut_threshold, frames=frames)
        m = m.clamp(0, 1).contiguous()
        band = R.edge_band(m, edge_band_width, level=0.5)
        return (m, band)


def resolve_working_size(mask, working_size: int):
    """The working size for :func:`refine_edges`: ``(H, W)`` or an int, or ``None`` (0: the
    mask has full detail). ``AUTO`` reads the size the segmentation recorded on the mask."""
    if working_size == 0:
        return None
    if working_size > 0:
        return int(working_size)
    tagged = R.working_size_of(mask)
    if tagged is None:
        log.warning("BiRefNet Refine Mask: working_size is auto but the mask does not carry "
                    "the size it was predicted at (connect BiRefNet Remove Background's mask "
                    "directly); assuming %d.", FALLBACK_WORKING_SIZE)
        return FALLBACK_WORKING_SIZE
    return tagged


NODE_CLASS_MAPPINGS = {"BiRefNetRefineMask": BiRefNetRefineMask}
NODE_DISPLAY_NAME_MAPPINGS = {"BiRefNetRefineMask": "BiRefNet Refine Mask"}

__all__ = ["BiRefNetRefineMask", "resolve_working_size", "NODE_CLASS_MAPPINGS",
           "NODE_DISPLAY_NAME_MAPPINGS"]
