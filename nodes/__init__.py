"""ComfyUI nodes of the pack: thin adapters over ``birefnet_core``.

Each node module defines ``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS``; they are
merged here in a fixed order. Only :mod:`.host` touches ComfyUI, and only inside functions, so
importing this package builds no model and imports no ``comfy`` module.
"""

from __future__ import annotations

import importlib

from . import host

# Node modules, in menu order. One that fails to import raises: a broken node is never silently
# missing.
NODE_MODULES = ("loader", "segment", "refine", "composite", "download")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _name in NODE_MODULES:
    _module = importlib.import_module(f".{_name}", __name__)
    _clash = set(_module.NODE_CLASS_MAPPINGS) & set(NODE_CLASS_MAPPINGS)
    if _clash:
        raise RuntimeError(f"node ids defined twice ({_name}.py): {sorted(_clash)}")
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

# Inside ComfyUI (which imported folder_paths before us), make models/birefnet known at start-up
# so the model library and extra_model_paths.yaml see it; elsewhere this does nothing.
host.register_if_hosted()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
