"""Issue 17 item 5: the working size flows from Segment to Refine Mask with the mask.

A 512 model's mask refined with a hand-typed 1024 gets no refinement on a 768 px image; with
``working_size = -1`` (auto, the new default) Refine Mask reads the size Segment recorded on
the mask. The model is a random PVT-v2-b0 BiRefNet run at a tiny working size on the CPU.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pack.py, fake_host/

import fake_host  # noqa: E402
from pack import load_pack  # noqa: E402

PACK = load_pack()
from birefnet_pack.birefnet_core import refine as R  # noqa: E402
from birefnet_pack.birefnet_core.edges import refine_edges  # noqa: E402
from birefnet_pack.nodes.loader import BiRefNetModelLoader  # noqa: E402
from birefnet_pack.nodes.refine import BiRefNetRefineMask  # noqa: E402
from birefnet_pack.nodes.segment import BiRefNetSegment  # noqa: E402

CKPT_NAME = "BiRefNet_lite-test.safetensors"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from safetensors.torch import save_file

    from birefnet_pack.birefnet_core.model import BiRefNet
    from birefnet_pack.birefnet_core.variants import Architecture

    torch.manual_seed(0)
    model = BiRefNet(Architecture("pvt_v2_b0"))
    models = tmp_path_factory.mktemp("ws") / "models"
    (models / "birefnet").mkdir(parents=True)
    save_file({k: v.half() if v.is_floating_point() else v
               for k, v in model.state_dict().items()}, str(models / "birefnet" / CKPT_NAME))
    fake_host.install(models)
    try:
        out = BiRefNetModelLoader().load(CKPT_NAME, "fp32", "auto", "auto")
        yield out["result"][0]
    finally:
        fake_host.uninstall()


def _scene(h=96, w=128):
    """An image with a disk of another colour, and the disk's exact alpha."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    a = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2).float().sqrt() < h / 3).float()
    img = a[..., None] * torch.tensor([0.9, 0.3, 0.2]) + (1 - a[..., None]) * 0.15
    return img[None], a[None]


def test_segment_mask_carries_its_working_size(loaded):
    img, _ = _scene()
    mask, _ = BiRefNetSegment().segment(loaded, img, "64x64", 4.19, 0)
    assert R.working_size_of(mask) == (64, 64)
    # With a region, the crop is what was squashed to 64x64: the 48x64 box grown by 10 % a
    # side (5 and 7 px) is 58x78, upsampled 58/64 and 78/64 times, which from the 96x128
    # frame is a 106x105 working size (less upsampling than the whole frame would have had).
    region = torch.zeros(1, 96, 128)
    region[:, 24:72, 32:96] = 1
    mask, _ = BiRefNetSegment().segment(loaded, img, "64x64", 4.19, 0, region=region)
    assert R.working_size_of(mask) == (106, 105)


def test_refine_auto_uses_the_segment_working_size(loaded):
    """Auto refines a 64-px model's mask on a 96x128 image; a hand-typed size at or above the
    image size (the old silent default) leaves it unchanged."""
    img, _ = _scene()
    mask, _ = BiRefNetSegment().segment(loaded, img, "64x64", 4.19, 0)
    node = BiRefNetRefineMask()
    assert BiRefNetRefineMask.INPUT_TYPES()["required"]["working_size"][1]["default"] == -1
    auto, _ = node.refine(mask, guide=img)
    typed_big, _ = node.refine(mask, working_size=1024, guide=img)
    typed_right, _ = node.refine(mask, working_size=64, guide=img)
    assert torch.equal(typed_big, mask)
    assert not torch.equal(auto, mask)
    torch.testing.assert_close(auto, typed_right)
    # The mask is reproduced exactly as refine_edges computes it with the recorded size.
    ref = refine_edges(mask, img, (64, 64), "guided")
    torch.testing.assert_close(auto, ref.clamp(0, 1))


def test_refine_auto_without_a_tag_falls_back_and_says_so(caplog):
    img, a = _scene()
    mask = torch.nn.functional.interpolate(a[:, None], size=(24, 32), mode="bilinear",
                                           antialias=True)
    mask = torch.nn.functional.interpolate(mask, size=(96, 128), mode="bilinear")[:, 0]
    with caplog.at_level(logging.WARNING):
        out, _ = BiRefNetRefineMask().refine(mask, guide=img)
    assert "does not carry" in caplog.text
    assert torch.equal(out, mask)  # fallback 1024 >= the image: nothing to refine
    out0, _ = BiRefNetRefineMask().refine(R.tag_working_size(mask.clone(), 32),
                                          working_size=0, guide=img)
    assert torch.equal(out0, mask)  # 0 still means "the mask has full detail"
