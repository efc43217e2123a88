"""The refine and composite nodes, called directly (no ComfyUI needed)."""

from __future__ import annotations

import pytest
import torch

from pack import load_pack


@pytest.fixture(scope="module")
def nodes():
    pack = load_pack()
    import importlib
    r = importlib.import_module(pack.__name__ + ".nodes.refine")
    c = importlib.import_module(pack.__name__ + ".nodes.composite")
    return r, c


def _check_schema(cls):
    spec = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, (_, opts) in spec.get(group, {}).items():
            assert opts.get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert cls.CATEGORY == "BiRefNet" and cls.DESCRIPTION and hasattr(cls, cls.FUNCTION)


def test_registered(nodes):
    r, c = nodes
    assert r.NODE_DISPLAY_NAME_MAPPINGS == {"BiRefNetRefineMask": "BiRefNet Refine Mask"}
    assert c.NODE_DISPLAY_NAME_MAPPINGS == {"BiRefNetComposite": "BiRefNet Composite"}
    _check_schema(r.BiRefNetRefineMask)
    _check_schema(c.BiRefNetComposite)


def test_refine_node_resizes_mask_to_guide(nodes):
    r, _ = nodes
    node = r.BiRefNetRefineMask()
    mask = torch.rand(2, 16, 16)
    guide = torch.rand(2, 64, 48, 3)
    m, band = node.refine(mask, working_size=16, grow_px=1, feather_px=2, fill_holes_px=-1,
                          remove_islands_px=4, temporal="median", guide=guide)
    assert m.shape == band.shape == (2, 64, 48)
    assert 0 <= m.min() and m.max() <= 1


def test_refine_node_without_guide_accepts_4d(nodes):
    r, _ = nodes
    m, band = r.BiRefNetRefineMask().refine(torch.rand(1, 1, 20, 20), threshold=0.5)
    assert m.shape == (1, 20, 20) and set(m.unique().tolist()) <= {0.0, 1.0}


def test_composite_node_modes(nodes):
    _, c = nodes
    node = c.BiRefNetComposite()
    img = torch.rand(2, 24, 32, 3)
    mask = torch.rand(2, 24, 32)
    out, fg = node.composite(img, mask)
    assert out.shape == (2, 24, 32, 4) and fg.shape == (2, 24, 32, 3)
    out, _ = node.composite(img, mask, "color", "#102030", output_alpha=False, despill=0.5)
    assert out.shape == (2, 24, 32, 3)
    out, _ = node.composite(img, mask, "image", fit="contain", background=torch.rand(1, 10, 50, 3))
    assert out.shape == (2, 24, 32, 4)
    with pytest.raises(ValueError, match="no background image"):
        node.composite(img, mask, "image")
    with pytest.raises(ValueError, match="#RRGGBB"):
        node.composite(img, mask, "color", "#XYZ")


def test_nodes_refuse_a_nan_mask_naming_the_frame(nodes):
    """ComfyUI shows the node's error; before, one NaN pixel silently gave a NaN frame."""
    r, c = nodes
    mask = torch.rand(2, 16, 16)
    mask[1, 8, 8] = float("nan")
    with pytest.raises(ValueError, match="mask: frame 1 has 1 NaN"):
        r.BiRefNetRefineMask().refine(mask, feather_px=2.0)
    with pytest.raises(ValueError, match="mask: frame 1 has 1 NaN"):
        c.BiRefNetComposite().composite(torch.rand(2, 16, 16, 3), mask)
    background = torch.rand(1, 8, 8, 3)
    background[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="background: frame 0 has 0 NaN and 1 infinite"):
        c.BiRefNetComposite().composite(torch.rand(2, 16, 16, 3), torch.rand(2, 16, 16),
                                        "image", background=background)
