"""``BiRefNetModelLoader``: a weights file -> a ``BIREFNET_MODEL`` under ComfyUI's memory manager."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from ..birefnet_core.plan import Precision
from ..birefnet_core.variants import FAMILIES, PatchOrder
from . import host

log = logging.getLogger(__name__)

MODEL_TYPE = "BIREFNET_MODEL"
CATEGORY = "BiRefNet"
AUTO = "auto"
PRECISIONS = tuple(p.value for p in Precision)  # auto, fp32, fp16, bf16


@dataclass(frozen=True)
class BiRefNetModel:
    """What travels on a ``BIREFNET_MODEL`` wire.

    ``patcher`` is a ``comfy.model_patcher.ModelPatcher`` around the core ``BiRefNet`` module, so
    ComfyUI decides when it sits on the GPU; ``info`` is the core's ``ModelInfo`` (architecture,
    family, parameter count); ``precision`` is the loader's choice (auto/fp32/fp16/bf16).
    """

    patcher: Any
    info: Any
    precision: str = AUTO

    @property
    def model(self):
        """The ``BiRefNet`` module (on whatever device ComfyUI last put it)."""
        return self.patcher.model

    @property
    def family(self):
        return self.info.family

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:  # shown in ComfyUI's debug output
        return f"BiRefNetModel({self.info.name}, precision={self.precision})"


def _clear_caches(module) -> None:
    """After ComfyUI offloads the model: drop caches that may still hold device tensors.

    Runs inside the host's offload (``/free``, or another model needing the memory), on the
    host's prompt-worker thread: an exception here would kill that thread and leave every later
    prompt queued forever, so a failure is logged, never raised."""
    try:
        clear = getattr(module, "clear_caches", None)
        if clear is not None:
            clear()
    except Exception:  # noqa: BLE001 - see the docstring
        log.warning("BiRefNet: could not drop the model's caches after offloading",
                    exc_info=True)


def _family_tooltip() -> str:
    lines = ", ".join(f"{name} = {fam.label}" for name, fam in FAMILIES.items())
    return ("Which published BiRefNet family the file is: sets the working resolution, matting "
            "vs segmentation and the patch order. 'auto' guesses from the file name (HR, 2K, "
            f"512, dynamic, matting, lite, ...). {lines}.")


class BiRefNetModelLoader:
    DESCRIPTION = (
        "Loads a BiRefNet (or RMBG-2.0) weights file from models/birefnet (and core's "
        "models/background_removal). The architecture is read from the weights; the family "
        "(working resolution, matting, patch order) from the file name unless overridden. The "
        "model is handed to ComfyUI's memory manager: it moves to the GPU only while "
        "segmenting and is offloaded when other models need the memory or on 'Unload models'. "
        "The node shows the detected family, backbone, working resolution and size as soon as "
        "a file is selected (read from the file's tensor names and shapes, no weights loaded).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded BiRefNet model, managed by ComfyUI (connect it to BiRefNet "
                       "Remove Background).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (host.list_models(), {
                    "tooltip": "BiRefNet weights file (.safetensors or .pth) from "
                               "models/birefnet or models/background_removal. Refresh (R) after "
                               "adding files."}),
                "precision": (list(PRECISIONS), {
                    "default": AUTO,
                    "tooltip": "Compute precision on the GPU. auto = fp16 wherever ComfyUI "
                               "would use it (masks closest to fp32 of the fast precisions), "
                               "else bf16, else fp32; follows --force-fp32/--force-fp16. On the "
                               "CPU auto is fp32 (bf16 also works there; fp16 falls back to "
                               "fp32). fp32 is exact but slowest and uses the most memory."}),
                "family": ([AUTO, *FAMILIES], {
                    "default": AUTO,
                    "tooltip": _family_tooltip()}),
                "patch_order": ([AUTO, *(p.value for p in PatchOrder)], {
                    "default": AUTO,
                    "advanced": True,
                    "tooltip": "Advanced: how the decoder stacks image patches. auto = the "
                               "family's (split for models before Nov 2024, einops after). A "
                               "wrong order silently degrades masks; change only for renamed "
                               "files whose family cannot be guessed."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        """Replace the combo check with an actionable message (no file / file gone)."""
        try:
            host.model_path(model_name)
        except host.ModelFileError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, model_name, **_):
        return host.file_signature(model_name)

    def load(self, model_name, precision=AUTO, family=AUTO, patch_order=AUTO):
        model, summary = load_birefnet(host.model_path(model_name), precision, family, patch_order)
        return {"ui": {"text": [summary]}, "result": (model,)}


def load_birefnet(path: str, precision: str = AUTO, family: str = AUTO,
                  patch_order: str = AUTO) -> tuple[BiRefNetModel, str]:
    """Load a weights file into a ``BIREFNET_MODEL`` under ComfyUI's memory manager.

    Returns the model and the summary text the node shows.
    """
    from ..birefnet_core.weights import load_model

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    loaded = load_model(path, family=None if family == AUTO else family,
                        patch_order=None if patch_order == AUTO else patch_order, device="cpu",
                        optimize=True)
    patcher = host.make_patcher(loaded.model, on_detach=_clear_caches)
    summary = summary_text(loaded.info, precision)
    log.info("BiRefNet: loaded %s", summary.replace("\n", "; "))
    return BiRefNetModel(patcher, loaded.info, precision), summary


def summary_text(info, precision: str = AUTO) -> str:
    """What the loader node displays: the core's ``ModelInfo.summary()`` plus the precision
    when it is not ``auto`` (the same text after a run and from :data:`INFO_ROUTE`)."""
    text = info.summary()
    return text if precision == AUTO else f"{text}\nprecision: {precision}"


# -- the model info panel, before anything runs ----------------------------------------------
# The frontend asks GET /birefnet/model_info?model_name=...&family=...&patch_order=...&precision=
# whenever the loader's widgets change or a workflow is opened, so the node describes the
# selected file even when its result comes from the cache (then the loader never runs) and
# after a tab switch or reload. Only names from the model list are looked up, and only the
# file's header (safetensors) or pickle structure (tensors land on the meta device) is read.

INFO_ROUTE = "/birefnet/model_info"


@functools.lru_cache(maxsize=32)
def _inspect(path: str, signature: str, family: str, patch_order: str):
    """The ``ModelInfo`` that loading ``path`` would report (cached per file version)."""
    from ..birefnet_core.weights import inspect_model

    del signature  # part of the cache key only: a replaced file is inspected again
    return inspect_model(path, family=family, patch_order=patch_order)


def describe_model_file(model_name: str, family: str = AUTO, patch_order: str = AUTO,
                        precision: str = AUTO) -> str:
    """The loader's summary of a listed model file, without loading its weights.

    Raises ``ModelFileError`` for a name that is not in the model list, ``ValueError`` for an
    option the loader does not offer, ``CheckpointError`` for a file that is no BiRefNet.
    """
    if model_name not in host.list_models():
        raise host.ModelFileError(f"'{model_name}' is not in the BiRefNet model list")
    for name, value, allowed in (("family", family, (AUTO, *FAMILIES)),
                                 ("patch_order", patch_order,
                                  (AUTO, *(p.value for p in PatchOrder))),
                                 ("precision", precision, PRECISIONS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    info = _inspect(host.model_path(model_name), host.file_signature(model_name), family,
                    patch_order)
    return summary_text(info, precision)


async def model_info_route(request):
    """``GET INFO_ROUTE``: ``{"text": summary}``; 404 for an unlisted name, 400 for a bad
    option, 422 with ``{"error": message}`` for a file that is no BiRefNet checkpoint."""
    import asyncio

    from aiohttp import web

    from ..birefnet_core.errors import CheckpointError

    query = request.query
    args = (query.get("model_name", ""), query.get("family", AUTO),
            query.get("patch_order", AUTO), query.get("precision", AUTO))
    try:
        text = await asyncio.get_running_loop().run_in_executor(None, describe_model_file,
                                                                *args)
    except host.ModelFileError as exc:
        return web.json_response({"error": str(exc)}, status=404)
    except CheckpointError as exc:  # before ValueError: it is one too
        return web.json_response({"error": str(exc)}, status=422)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"text": text})


host.add_get_route(INFO_ROUTE, model_info_route)

NODE_CLASS_MAPPINGS = {"BiRefNetModelLoader": BiRefNetModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"BiRefNetModelLoader": "Load BiRefNet Model"}
