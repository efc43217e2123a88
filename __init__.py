"""BiRefNet for ComfyUI: background removal and dichotomous segmentation.

Clone this repository into ``ComfyUI/custom_nodes/`` and put BiRefNet weights in
``ComfyUI/models/birefnet``. ComfyUI reads the three names below (the V1 node API, ComfyUI 0.3.x
and newer). Importing the pack registers the nodes and nothing else: no model is built, no
network connection is opened, and ``comfy`` is imported only when a node runs.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a lone module, not as a package: pytest does this with the checkout's root
    # when the folder name is not a valid package name (``birefnet-nodes``). There is no host
    # to register with then; ComfyUI always imports the pack as a package.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
