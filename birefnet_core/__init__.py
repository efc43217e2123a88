"""birefnet_core: a self-contained, weight-exact BiRefNet library.

Loads every published BiRefNet checkpoint (Hugging Face ``model.safetensors``, release ``.pth``,
fp16 files, RMBG-2.0, paper-era weights), detects its variant from the weights and runs it.
No ComfyUI, transformers or remote code. Masks are float ``[B, H, W]`` with **1 = foreground**.

The torch-free parts (errors, the variant table) are imported eagerly; the rest on first use, so
``import birefnet_core`` stays cheap.
"""

from __future__ import annotations

import importlib

from .errors import BiRefNetError, CancelledError, CheckpointError, InputError, OutOfMemoryError
from .variants import (
    BACKBONES,
    FAMILIES,
    Architecture,
    DecoderGeneration,
    Family,
    PatchOrder,
    family_from_filename,
    get_family,
)

__version__ = "0.1.0"

_LAZY = {
    "BiRefNet": ".model",
    "load_model": ".weights",
    "LoadedModel": ".weights",
    "ModelInfo": ".weights",
    "read_checkpoint": ".weights",
    "filter_checkpoint": ".weights",
    "detect_architecture": ".weights",
    "build_model": ".weights",
    "predict_masks": ".inference",
    "plan_inference": ".plan",
    "InferenceOptions": ".plan",
    "InferencePlan": ".plan",
    "Precision": ".plan",
    "WorkingSize": ".plan",
    "resolve_working_size": ".plan",
    "resolve_precision": ".plan",
    "estimate_memory": ".plan",
    "preprocess": ".inference",
    "postprocess": ".inference",
    "regions_to_boxes": ".inference",
    "download_checkpoint": ".download",
    "refine_edges": ".edges",
    "temporal_smooth": ".temporal",
    "grow_shrink": ".refine",
    "feather": ".refine",
    "estimate_foreground": ".foreground",
    "parse_hex_color": ".composite",
}

__all__ = [
    "BiRefNetError", "CancelledError", "CheckpointError", "InputError", "OutOfMemoryError",
    "BACKBONES", "FAMILIES", "Architecture", "DecoderGeneration", "Family", "PatchOrder",
    "family_from_filename", "get_family", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
