"""Import the repository root as a package, the way ComfyUI imports a custom-node folder.

ComfyUI loads ``custom_nodes/<folder>/__init__.py`` with ``spec_from_file_location`` under a
module name derived from the folder, whatever the folder is called. The pack therefore uses
relative imports only, and tests import it the same way under a fixed name::

    from pack import load_pack
    pack = load_pack()                      # the repo root as package ``birefnet_pack``
    pack.NODE_CLASS_MAPPINGS["BiRefNetSegment"]
    from birefnet_pack.nodes import segment # submodules import normally afterwards

``tests/`` is on ``sys.path`` under pytest (rootdir-relative ``conftest.py``); elsewhere add it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "birefnet_pack"


def load_pack(name: str = PACK_NAME, *, fresh: bool = False) -> ModuleType:
    """Import ``REPO/__init__.py`` as package ``name`` (cached in ``sys.modules``).

    ``fresh=True`` drops ``name`` and its submodules first, so the import runs again (used by
    the import-time tests; other tests should share the cached package).
    """
    if fresh:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
    elif name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
