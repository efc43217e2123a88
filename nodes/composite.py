"""``BiRefNetComposite``: cut-out over a transparent, solid-colour or image background."""

from __future__ import annotations

from ..birefnet_core import composite as C, foreground as FG


class BiRefNetComposite:
    DESCRIPTION = (
        "Puts the foreground of an image (where the mask is 1) over a new background: "
        "transparent (RGBA), a solid hex colour, or an image batch (one background for all "
        "frames or one per frame). Estimates the true foreground colours at soft edges so the "
        "old background does not show as a halo, and can despill its colour cast. Output alpha "
        "is straight (not premultiplied).")
    CATEGORY = "BiRefNet"
    FUNCTION = "composite"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("image", "foreground")
    OUTPUT_TOOLTIPS = (
        "The composite [B,H,W,3], or [B,H,W,4] straight RGBA when output_alpha is on "
        "(transparent areas over black in RGB).",
        "Estimated straight foreground colours [B,H,W,3] (the image with the old background "
        "removed from its edges); pair it with the mask as alpha.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The original images (RGB; an alpha channel is "
                                               "ignored)."}),
                "mask": ("MASK", {"tooltip": "Foreground mask, 1 = foreground (BiRefNet's "
                                             "output; invert LoadImage masks). Resized to the "
                                             "image if its size differs; one mask may serve "
                                             "all frames."}),
                "background_mode": (["transparent", "color", "image"], {
                    "default": "transparent",
                    "tooltip": "transparent: RGBA cut-out; color: the hex colour below; image: "
                               "the background input."}),
                "color": ("STRING", {"default": "#00FF00",
                                     "tooltip": "Background colour as #RRGGBB or #RRGGBBAA "
                                                "(AA = opacity)."}),
                "fit": (list(C.FIT_MODES), {
                    "default": "cover",
                    "tooltip": "How a background image of another size is fitted: stretch, "
                               "cover (fill and crop), contain (fit inside, transparent "
                               "borders), center (unscaled)."}),
                "foreground_estimation": (list(FG.FOREGROUND_METHODS), {
                    "default": "multilevel",
                    "tooltip": "Recover clean foreground colours at soft edges (removes halos): "
                               "multilevel (best; allows for the mask's own edge errors, so "
                               "the old background is not painted into the edge), blur_fusion "
                               "(the published method, 90 / 6 px windows), none (raw image "
                               "colours)."}),
                "despill": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                      "tooltip": "Remove the old background's colour cast from "
                                                 "semi-transparent edges (0 = off)."}),
                "output_alpha": ("BOOLEAN", {"default": True,
                                             "tooltip": "On: RGBA output (straight alpha). Off: "
                                                        "RGB (transparent parts over black)."}),
            },
            "optional": {
                "background": ("IMAGE", {"tooltip": "Background image(s) for mode 'image': 1 "
                                                    "for all frames or one per frame; any size "
                                                    "(see fit)."}),
            },
        }

    def composite(self, image, mask, background_mode="transparent", color="#00FF00",
                  fit="cover", foreground_estimation="multilevel", despill=0.0,
                  output_alpha=True, background=None):
        if background_mode == "color":
            bg = color
        elif background_mode == "image":
            if background is None:
                from ..birefnet_core.errors import InputError
                raise InputError("background_mode is 'image' but no background image is "
                                 "connected; connect one or choose 'transparent'/'color'.")
            bg = background
        else:
            bg = "transparent"
        out, fg = C.composite(image, mask, bg, fit=fit, output_alpha=output_alpha,
                              foreground=foreground_estimation, despill_strength=despill,
                              return_foreground=True)
        return (out, fg)


NODE_CLASS_MAPPINGS = {"BiRefNetComposite": BiRefNetComposite}
NODE_DISPLAY_NAME_MAPPINGS = {"BiRefNetComposite": "BiRefNet Composite"}

__all__ = ["BiRefNetComposite", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
