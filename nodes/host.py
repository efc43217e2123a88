"""Every touch of the ComfyUI host, in one place.

The rest of the pack never imports ``comfy.*`` or ``folder_paths``; it calls these functions.
Host modules are imported inside the functions, so importing the pack costs nothing and tests
can inject a fake host (``tests/fake_host``) into ``sys.modules`` before calling a node.

What is used, and since when it exists in ComfyUI (all of it is in 0.3.0 and newer):
``folder_paths`` (model folder registry), ``comfy.model_management`` (devices,
``load_models_gpu``, interrupt flag), ``comfy.model_patcher.ModelPatcher``,
``comfy.utils.ProgressBar``, ``server.PromptServer.instance.routes`` (the web server);
``comfy.patcher_extension`` is optional.
"""

from __future__ import annotations

import os
import sys

MODEL_FOLDER = "birefnet"
"""Our folder under ``models/``; ``extra_model_paths.yaml`` may add more under this key."""

CORE_MODEL_FOLDER = "background_removal"
"""Core ComfyUI's folder for its native background-removal models (registered by newer versions
of ComfyUI; by us on older ones, e.g. 0.3.64)."""

MODEL_EXTENSIONS = frozenset({".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt"})


class ModelFileError(FileNotFoundError):
    """No model file selected, or the selected file is not in any model folder."""


# -- model folders ---------------------------------------------------------------------------

def _folder_paths():
    import folder_paths

    return folder_paths


def register_model_folder() -> None:
    """Add ``models/birefnet`` to ComfyUI's registry, keeping what is already there.

    An entry made earlier (e.g. by ``extra_model_paths.yaml``, which ComfyUI reads before it
    loads custom nodes) keeps its paths; ours is appended. Idempotent, so every host function
    that needs the folder calls it.
    """
    fp = _folder_paths()
    default = os.path.join(fp.models_dir, MODEL_FOLDER)
    entry = fp.folder_names_and_paths.get(MODEL_FOLDER)
    if entry is None:
        fp.folder_names_and_paths[MODEL_FOLDER] = ([default], set(MODEL_EXTENSIONS))
        return
    paths, extensions = entry
    if default not in paths:
        paths.append(default)
    if not extensions:
        # An entry made by extra_model_paths.yaml accepts every file (config.json, README.md...).
        # Restrict it to weight files, keeping the same list of paths.
        if isinstance(extensions, set):
            extensions.update(MODEL_EXTENSIONS)
        else:
            fp.folder_names_and_paths[MODEL_FOLDER] = (paths, set(MODEL_EXTENSIONS))


def register_if_hosted() -> None:
    """At import time: register the folder only when running inside ComfyUI.

    ComfyUI imports ``folder_paths`` before any custom node, so this imports nothing new; outside
    ComfyUI (tests, the CLI) it does nothing, and the host functions register on first use.
    """
    if "folder_paths" in sys.modules and hasattr(sys.modules["folder_paths"], "models_dir"):
        try:
            register_model_folder()
        except Exception:  # never break the host's start-up; we retry on first use
            pass


def _folders() -> list[str]:
    fp = _folder_paths()
    register_model_folder()
    # Hosts that predate core's folder get it too (the README promises it): an entry made by
    # core or by extra_model_paths.yaml is left as it is.
    fp.folder_names_and_paths.setdefault(
        CORE_MODEL_FOLDER,
        ([os.path.join(fp.models_dir, CORE_MODEL_FOLDER)], set(MODEL_EXTENSIONS)))
    return [f for f in (MODEL_FOLDER, CORE_MODEL_FOLDER) if f in fp.folder_names_and_paths]


def model_dirs() -> list[str]:
    """Every directory searched for models, ours first (for messages)."""
    fp = _folder_paths()
    return [p for f in _folders() for p in fp.folder_names_and_paths[f][0]]


def list_models() -> list[str]:
    """Model files in ``birefnet`` and core's ``background_removal`` folders (sorted, unique)."""
    fp = _folder_paths()
    names: set[str] = set()
    for folder in _folders():
        names.update(n for n in fp.get_filename_list(folder)
                     if os.path.splitext(n)[1].lower() in MODEL_EXTENSIONS)
    return sorted(names)


def _where() -> str:
    dirs = model_dirs()
    return ", ".join(dirs) if dirs else "models/birefnet"


def model_path(name: str | None) -> str:
    """Full path of a listed model file, or a :class:`ModelFileError` that says what to do."""
    if not name or not str(name).strip() or str(name) in ("none", "None"):
        raise ModelFileError(
            "No BiRefNet model selected. Put a BiRefNet weights file (.safetensors or .pth, e.g. "
            f"BiRefNet-general.safetensors or RMBG-2.0's model.safetensors) in {_where()}, then "
            "refresh the browser page (or press R) and choose it in 'model_name'.")
    fp = _folder_paths()
    for folder in _folders():
        path = fp.get_full_path(folder, name)
        if path is not None:
            return path
    raise ModelFileError(
        f"Model file '{name}' was not found in {_where()}: it was moved, renamed or deleted "
        "since the list was made. Refresh the browser page (or press R) and choose an existing "
        "file in 'model_name'.")


def file_signature(name: str | None) -> str:
    """A string that changes when the selected file changes on disk (for ``IS_CHANGED``)."""
    try:
        st = os.stat(model_path(name))
    except (OSError, ValueError):
        return f"missing:{name}"
    return f"{name}:{st.st_size}:{st.st_mtime_ns}"


# -- web server --------------------------------------------------------------------------------

def add_get_route(path: str, handler) -> bool:
    """Serve ``handler`` (an aiohttp coroutine) for ``GET path`` on ComfyUI's web server.

    ComfyUI imports ``server`` and creates ``PromptServer.instance`` before it loads custom
    nodes, and later mirrors every route under ``/api``; outside ComfyUI (tests, the CLI) there
    is no server and this returns False. Nothing is imported here.
    """
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    routes = getattr(instance, "routes", None)
    if routes is None:
        return False
    routes.get(path)(handler)
    return True


# -- devices and memory ----------------------------------------------------------------------

def _mm():
    import comfy.model_management as mm

    return mm


def load_device():
    return _mm().get_torch_device()


def offload_device():
    return _mm().unet_offload_device()


def intermediate_device():
    return _mm().intermediate_device()


def auto_precision(device) -> str:
    """The compute precision on a CUDA ``device`` ("fp16", "bf16" or "fp32") from ComfyUI's
    helpers, which honour ``--force-fp32`` / ``--force-fp16`` and know the GPUs where fp16 is
    slow: fp16 wherever ComfyUI would use it (BiRefNet's masks are ~10x closer to fp32 in fp16
    than in bf16, see benchmarks/RESULTS.md), else bf16, else fp32; "auto" (the core's own
    policy) on other devices or hosts without the helpers."""
    if getattr(device, "type", str(device)) != "cuda":
        return "auto"
    mm = _mm()
    try:
        if mm.should_use_fp16(device):
            return "fp16"
        return "bf16" if mm.should_use_bf16(device) else "fp32"
    except (AttributeError, TypeError):
        return "auto"


def make_patcher(module, on_detach=None):
    """Wrap ``module`` in a ``ModelPatcher`` (load on the torch device, offload like a UNet).

    ``on_detach(module)`` runs after ComfyUI offloads the model (``/free``, or another model
    needing the memory), e.g. to drop per-device caches; skipped on hosts without callbacks.
    """
    from comfy.model_patcher import ModelPatcher

    patcher = ModelPatcher(module, load_device=load_device(), offload_device=offload_device())
    if on_detach is not None:
        try:
            from comfy.patcher_extension import CallbacksMP

            patcher.add_callback(CallbacksMP.ON_DETACH,
                                 lambda p, unpatch_all: on_detach(p.model))
        except (ImportError, AttributeError):
            pass
    return patcher


def load_on_device(patcher, memory_required: int) -> None:
    """Have ComfyUI make room (offloading other models) and put the whole model on its device."""
    _mm().load_models_gpu([patcher], memory_required=int(memory_required), force_full_load=True)


# -- progress and interrupt ------------------------------------------------------------------

def progress(total: int):
    """``update(done, total)`` callback driving a ComfyUI progress bar on the running node."""
    from comfy.utils import ProgressBar

    bar = ProgressBar(max(int(total), 1))

    def update(done: int, total: int | None = None) -> None:
        bar.update_absolute(int(done), None if total is None else max(int(total), 1))

    return update


def interrupted() -> bool:
    """True when the user pressed Cancel (ComfyUI's interrupt flag); does not clear it."""
    return bool(_mm().processing_interrupted())


def raise_interrupt() -> None:
    """Raise ComfyUI's own interrupt exception if the flag is set (ComfyUI then reports the
    run as interrupted, not failed)."""
    _mm().throw_exception_if_processing_interrupted()
