"""One plan per run: ``plan_inference`` decides, ``predict_masks`` and the node only carry it out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from birefnet_core import plan as plan_module
from birefnet_core.errors import InputError
from birefnet_core.inference import predict_masks
from birefnet_core.plan import (
    InferenceOptions,
    estimate_memory,
    plan_inference,
)
from birefnet_core.variants import BACKBONES, FAMILIES


class CountingNet(nn.Module):
    """A 1x1 convolution that records the batch of every call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 1, 1)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.conv(x)


def _frames(b, h=40, w=56, c=3):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(b))


def test_the_plan_holds_every_decision():
    images = _frames(7)
    plan = plan_inference(CountingNet(), images,
                          InferenceOptions(resolution="100x60", batch_size=3, precision="fp16"),
                          family=FAMILIES["hr"])
    assert plan.device == torch.device("cpu")
    assert plan.precision.dtype == torch.float32  # fp16 is not offered on the CPU ...
    assert any("fp16 is not available on cpu" in n for n in plan.notes)  # ... and it says so
    assert plan.working_size.wh == (96, 64)  # the override wins over the family, rounded
    assert any("rounded to 96x64" in n for n in plan.notes)
    assert plan.chunk == 3
    activations = estimate_memory(CountingNet(), (96, 64), torch.float32, 3,
                                  include_weights=False)
    assert plan.memory_required == activations + 3 * 40 * 56 * (3 + 1) * 4
    # a crop of another size gets its own working size only where the policy says so
    assert plan.working_size_for((10, 10)).wh == (96, 64)
    dynamic = plan_inference(CountingNet(), images, InferenceOptions(resolution="dynamic",
                                                                     min_side=0))
    assert dynamic.working_size.wh == (64, 32)
    assert dynamic.working_size_for((64, 200)).wh == (192, 64)


def test_predict_masks_runs_the_plan_it_is_given():
    images = _frames(5)
    plan = plan_inference(CountingNet(), images, InferenceOptions(resolution="64x32",
                                                                  batch_size=2))
    net = CountingNet()
    planned = predict_masks(net, images, plan=plan)
    assert net.batches == [2, 2, 1]
    reference = CountingNet()
    assert torch.equal(planned, predict_masks(reference, images, resolution="64x32",
                                              batch_size=2))
    assert reference.batches == [2, 2, 1]


def test_a_plan_and_loose_options_together_are_refused():
    images = _frames(2)
    plan = plan_inference(CountingNet(), images)
    with pytest.raises(InputError, match="resolution, batch_size given together with a plan"):
        predict_masks(CountingNet(), images, plan=plan, resolution="64x64", batch_size=1)


def test_bad_options_are_refused_before_anything_runs():
    for options, message in ((dict(batch_size=-1), "batch_size must be >= 0"),
                             (dict(region_margin=-0.5), "region_margin must be >= 0"),
                             (dict(resolution="huge"), "not understood"),
                             (dict(max_megapixels=0), "max_megapixels")):
        with pytest.raises(InputError, match=message):
            InferenceOptions(**options)


def test_automatic_chunk_keeps_room_for_weights_not_loaded_yet(monkeypatch):
    """A host plans before it loads the model: with the weights still on the CPU and the run
    on a GPU, the chunk fits in the free memory less the weights. (The free-memory probe is
    replaced, so this runs without a GPU.)"""
    model = nn.Conv2d(3, 1, 1)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    per_frame = estimate_memory(model, (64, 64), torch.float16, 1, include_weights=False)
    monkeypatch.setattr(plan_module, "_free_memory", lambda device: int(
        (5 * per_frame) / 0.8) + 1 + weights)
    images = _frames(40)
    options = InferenceOptions(resolution="64x64")
    on_gpu = plan_inference(model, images, options, device="cuda")
    assert on_gpu.precision.dtype == torch.float16 and on_gpu.chunk == 5
    # the same free memory seen by a run on the model's own device: the weights are in it
    # already, so the whole of it is for frames (fp32 on the CPU, capped at 4 frames there)
    fp32_frame = estimate_memory(model, (64, 64), torch.float32, 1, include_weights=False)
    monkeypatch.setattr(plan_module, "_free_memory", lambda device: int(
        (3 * fp32_frame) / 0.8) + 1 + weights)
    assert plan_inference(model, images, options).chunk == 3
    assert plan_inference(model, images, options, device="cuda").chunk == 4  # fp16 frames


def test_memory_figures_come_from_the_backbone_table(monkeypatch):
    swin_l = estimate_memory("swin_v1_l", (1024, 1024), "fp32", 1)
    assert swin_l == 1024 * 1024 * BACKBONES["swin_v1_l"].activation_bytes_per_pixel
    import dataclasses

    monkeypatch.setitem(BACKBONES, "swin_v1_l", dataclasses.replace(
        BACKBONES["swin_v1_l"], activation_bytes_per_pixel=1000))
    assert estimate_memory("swin_v1_l", (1024, 1024), "fp32", 1) == 1024 * 1024 * 1000


def test_the_plan_reports_the_kernels_chosen_on_its_device(monkeypatch):
    from birefnet_core import kernels

    monkeypatch.setattr(kernels, "_CHOICES", {})
    monkeypatch.setattr(kernels, "_SETTINGS", {"force": {"linear": "plain"}, "cache_dir": None})
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    assert plan_inference(CountingNet(), _frames(1)).kernels == ()
    kernels.select("linear", "cpu", torch.float32, (64, 96), lambda c: None)
    assert plan_inference(CountingNet(), _frames(1)).kernels == ("linear|cpu|float32|64x128=plain",)
