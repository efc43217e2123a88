"""``BiRefNetDownloadModel``: fetch a published checkpoint on request, then load it.

The only node that touches the network, and only when it runs. Files are saved in
``models/birefnet`` under a name that carries the family, so the regular loader recognises them.
"""

from __future__ import annotations

from ..birefnet_core.download import CHECKPOINTS
from . import host
from .loader import AUTO, CATEGORY, MODEL_TYPE, PRECISIONS, load_birefnet


class BiRefNetDownloadModel:
    DESCRIPTION = (
        "Downloads a published BiRefNet checkpoint from Hugging Face into models/birefnet (once; "
        "an existing file is reused without network access) and loads it. Honours HF_ENDPOINT, "
        "HF_TOKEN (RMBG-2.0 is gated) and HF_HUB_OFFLINE; offline, it fails at once with the URL "
        "and folder for a manual download. The download is checked against the size and sha256 "
        "the hub reports.")
    CATEGORY = CATEGORY
    FUNCTION = "download"
    RETURN_TYPES = (MODEL_TYPE, "STRING")
    RETURN_NAMES = ("model", "model_name")
    OUTPUT_TOOLTIPS = (
        "The downloaded model, loaded and managed by ComfyUI like the loader's output.",
        "The file name in models/birefnet (select it in Load BiRefNet Model next time).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (list(CHECKPOINTS), {
                    "default": "general",
                    "tooltip": "Published checkpoint to fetch: " + "; ".join(
                        f"{name} = {ckpt.repo}" for name, ckpt in CHECKPOINTS.items())}),
                "precision": (list(PRECISIONS), {
                    "default": AUTO,
                    "tooltip": "Compute precision, as on Load BiRefNet Model."}),
                "overwrite": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Download again even if the file is already in models/birefnet."}),
            },
        }

    def download(self, checkpoint, precision=AUTO, overwrite=False):
        from ..birefnet_core.download import download_checkpoint

        folder = host.model_dirs()[0]
        update = host.progress(100)
        path = download_checkpoint(
            checkpoint, folder, overwrite=overwrite,
            on_progress=lambda done, total: update(done * 100 // total, 100) if total else None)
        model, summary = load_birefnet(str(path), precision)
        return {"ui": {"text": [summary]}, "result": (model, path.name)}


NODE_CLASS_MAPPINGS = {"BiRefNetDownloadModel": BiRefNetDownloadModel}
NODE_DISPLAY_NAME_MAPPINGS = {"BiRefNetDownloadModel": "BiRefNet Download Model"}
