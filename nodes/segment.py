"""``BiRefNetSegment``: images -> foreground masks and RGBA cut-outs, under ComfyUI's memory manager."""

from __future__ import annotations

import logging

import torch

from ..birefnet_core.errors import CancelledError
from ..birefnet_core.inference import predict_masks
from ..birefnet_core.layout import check_images, join_alpha
from ..birefnet_core.plan import DYNAMIC_MAX_MEGAPIXELS, InferenceOptions, plan_inference
from . import host
from .loader import CATEGORY, MODEL_TYPE, BiRefNetModel

log = logging.getLogger(__name__)

MASK_CONVENTION = (
    "1 = foreground (like core RemoveBackground); ComfyUI's LoadImage/JoinImageWithAlpha masks "
    "use 1 = transparent — use the rgba output instead of InvertMask.")

# Working sizes offered besides auto/dynamic: every size a published family was trained at, plus
# a few in between. Sides must be multiples of 32. New entries may be added; none removed.
RESOLUTIONS = ("auto", "dynamic", "512x512", "768x768", "1024x1024", "1280x1280", "1536x1536",
               "2048x2048", "2560x1440", "1440x2560")
MAX_BATCH = 256


class BiRefNetSegment:
    DESCRIPTION = (
        "Removes the background with a BiRefNet model: outputs a foreground mask (" +
        MASK_CONVENTION + ") and the image with that mask as alpha (straight, not premultiplied; "
        "save it as PNG). Frames are processed a chunk at a time with a progress bar and can be "
        "cancelled; ComfyUI first makes room for the model on the GPU, offloading other models "
        "as needed. An optional region mask restricts segmentation to the box around its white "
        "pixels (useful to pick one subject); an all-black region means the whole frame.")
    CATEGORY = CATEGORY
    FUNCTION = "segment"
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "rgba")
    OUTPUT_TOOLTIPS = (
        "Foreground mask [B,H,W], 0..1, same size as the images. " + MASK_CONVENTION +
        " Carries the working size it was predicted at, which Refine Mask's working_size "
        "'auto' (-1) reads.",
        "The images as RGBA: RGB unchanged, alpha = the mask (straight alpha). Connect to Save "
        "Image for transparent PNGs.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "A model from Load BiRefNet Model."}),
                "images": ("IMAGE", {
                    "tooltip": "Images or video frames (RGB, grey or RGBA; RGBA alpha is "
                               "ignored). Masks come out at each image's own size."}),
                "resolution": (list(RESOLUTIONS), {
                    "default": "auto",
                    "tooltip": "Working size (WxH) the model sees. auto = what the model's "
                               "family was trained at (1024x1024 for most, 2048x2048 for HR, "
                               "2560x1440 for lite-2K, image size for dynamic models). dynamic "
                               "= each image's size rounded to a multiple of 32, capped by "
                               "max_megapixels. Larger is sharper but slower and needs more "
                               "memory."}),
                "max_megapixels": ("FLOAT", {
                    "default": round(DYNAMIC_MAX_MEGAPIXELS, 2), "min": 0.25, "max": 16.0,
                    "step": 0.1, "round": 0.01,
                    "tooltip": "Pixel cap of the dynamic working size (megapixels), used when "
                               "resolution is dynamic or the model is a dynamic family; larger "
                               "images are scaled down to it before segmentation."}),
                "batch_size": ("INT", {
                    "default": 0, "min": 0, "max": MAX_BATCH,
                    "tooltip": "Frames per chunk on the device. 0 = automatic from free memory; "
                               "halved automatically on out-of-memory. Does not change the "
                               "result."}),
            },
            "optional": {
                "region": ("MASK", {
                    "tooltip": "Optional box guidance: only the bounding box of the white "
                               "(> 0.5) pixels is segmented (with some context around it), the "
                               "mask is 0 outside it. Any size (scaled to the images); one per "
                               "image or one for all; all black = whole frame (LoadImage gives "
                               "that for images without alpha)."}),
            },
        }

    def segment(self, model, images, resolution="auto", max_megapixels=DYNAMIC_MAX_MEGAPIXELS,
                batch_size=0, region=None):
        if not isinstance(model, BiRefNetModel):
            raise TypeError(f"'model' must come from Load BiRefNet Model (BIREFNET_MODEL), got "
                            f"{type(model).__name__}")
        check_images(images)  # before the empty-batch shortcut and loading the model
        out_device = host.intermediate_device()
        batch, height, width = images.shape[:3]
        if batch == 0:
            return (torch.zeros(0, height, width, device=out_device),
                    torch.zeros(0, height, width, 4, device=out_device))
        patcher = model.patcher
        device = patcher.load_device
        options = InferenceOptions(
            resolution=None if resolution == "auto" else resolution,
            precision=(host.auto_precision(device) if model.precision == "auto"
                       else model.precision),
            batch_size=batch_size, max_megapixels=max_megapixels)
        plan = plan_inference(patcher.model, images, options, device, family=model.info.family)
        # ComfyUI adds the weights itself; the plan's figure is one chunk's activations and I/O.
        host.load_on_device(patcher, memory_required=plan.memory_required)

        try:  # the masks carry their working size, which Refine Mask's "auto" reads
            masks = predict_masks(patcher.model, images, plan=plan, regions=region,
                                  on_progress=host.progress(batch), is_cancelled=host.interrupted,
                                  on_note=_note, output_device=out_device)
        except CancelledError:
            host.raise_interrupt()  # ComfyUI's own exception: reported as interrupted
            raise
        return masks, join_alpha(images, masks)


def _note(message: str) -> None:
    log.warning("BiRefNet: %s", message)


NODE_CLASS_MAPPINGS = {"BiRefNetSegment": BiRefNetSegment}
NODE_DISPLAY_NAME_MAPPINGS = {"BiRefNetSegment": "BiRefNet Remove Background"}
