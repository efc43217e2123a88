"""A small fake ComfyUI host for unit tests of the nodes.

It provides the few host modules the pack touches (``folder_paths``, ``comfy.model_management``,
``comfy.model_patcher``, ``comfy.utils``, ``comfy.patcher_extension``) with the same names,
signatures and observable behaviour as ComfyUI's for what the pack calls, plus recorders so tests
can assert on what the nodes asked of the host. Usage::

    import fake_host
    host = fake_host.install(tmp_path / "models")   # fresh state, modules in sys.modules
    ...                                             # call nodes; inspect host.mm.load_calls ...
    fake_host.uninstall()

Only ``nodes/host.py`` imports these, lazily, so installing the fake after the pack was imported
works.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ("folder_paths", "comfy", "comfy.model_management", "comfy.model_patcher",
           "comfy.utils", "comfy.patcher_extension")


def install(models_dir: str | os.PathLike) -> SimpleNamespace:
    """Put the fake host modules in ``sys.modules`` with fresh state rooted at ``models_dir``."""
    uninstall()
    sys.path.insert(0, HERE)
    try:
        modules = {name: importlib.import_module(name) for name in MODULES}
    finally:
        sys.path.remove(HERE)
    for name, module in modules.items():
        if not os.path.abspath(getattr(module, "__file__", "")).startswith(HERE):
            raise RuntimeError(f"{name} resolved to {module!r}, not the fake host")
    fp = modules["folder_paths"]
    fp.reset(os.fspath(models_dir))
    return SimpleNamespace(folder_paths=fp, mm=modules["comfy.model_management"],
                           model_patcher=modules["comfy.model_patcher"],
                           utils=modules["comfy.utils"])


def uninstall() -> None:
    for name in MODULES:
        sys.modules.pop(name, None)
