"""What Apple MPS lacks, emulated on the CPU (no Mac runs these tests).

* float64: every float64 tensor the pack makes on the images' or the model's device must go
  through ``filters.has_float64``. With that check answering "no", nothing the nodes run
  (segment with regions, refine, composite, foreground estimation) may make a float64 tensor,
  except host-side constants built on the CPU by construction.
* the antialiased bilinear kernel (MPS before torch 2.7 raises NotImplementedError): every
  antialiased resize goes through ``layout.resize_bilinear``, which runs it on the CPU there.
  With the CPU marked as such a device, any antialiased resize made elsewhere raises.
"""

from __future__ import annotations

import copy
import logging
import traceback

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from birefnet_core import filters, layout, optimize
from birefnet_core.composite import composite
from birefnet_core.edges import refine_edges
from birefnet_core.foreground import estimate_foreground
from birefnet_core.inference import predict_masks
from birefnet_core.optimize import optimize_for_inference
from birefnet_core.refine import fill_holes, remove_islands
from birefnet_core.temporal import temporal_smooth
from birefnet_core.variants import Architecture
from birefnet_core.weights import build_model

# Functions whose float64 tensors are built from Python numbers on the CPU (never on a device):
# Gaussian taps, and region boxes after `.cpu()`.
HOST_SIDE = {"_gaussian_taps", "_blur_axis", "_boxes_from_coordinates"}


def _innermost_pack_frame():
    frames = [f for f in traceback.extract_stack() if "birefnet_core" in f.filename]
    if not frames:
        return "<test>", "<test>"
    f = frames[-1]
    return f.name, f"{f.filename.split('birefnet_core')[-1]}:{f.lineno} {f.name}"


class MPSRules(TorchDispatchMode):
    """Records ``(op, where)`` for every op that makes a float64 tensor outside
    :data:`HOST_SIDE`, and raises as MPS did for an antialiased resize made anywhere but the
    CPU path of ``layout.resize_bilinear``."""

    def __init__(self):
        super().__init__()
        self.made = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "_upsample_bilinear2d_aa" in str(func):
            name, where = _innermost_pack_frame()
            if name != "_antialiased_on_cpu":
                raise NotImplementedError(f"emulated MPS: no {func} (called at {where})")
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64
               for t in tree_leaves(out)):
            name, where = _innermost_pack_frame()
            if name not in HOST_SIDE:
                self.made.add((str(func), where))
        return out


@pytest.fixture
def mps_like(monkeypatch):
    """The CPU answering as MPS does: no float64, no antialiased resize kernel."""
    monkeypatch.setattr(filters, "has_float64", lambda device: False)
    monkeypatch.setattr(optimize, "has_float64", lambda device: False)
    monkeypatch.setattr(layout, "_NO_ANTIALIAS", {"cpu"})
    assert filters.solve_dtype("cpu") == torch.float32


def test_mps_is_the_device_without_float64():
    assert not filters.has_float64("mps") and filters.solve_dtype("mps") == torch.float32
    assert filters.has_float64("cpu") and filters.has_float64(torch.device("cuda", 0))


def test_image_ops_on_a_device_like_mps(mps_like):
    torch.manual_seed(0)
    image = torch.rand(2, 240, 320, 3)
    small = torch.zeros(2, 60, 80)
    small[:, 15:45, 20:60] = 1
    mask = torch.nn.functional.interpolate(small[:, None], size=(240, 320), mode="bilinear",
                                           align_corners=False)[:, 0]
    with MPSRules() as probe:
        composite(image, small, background="#336699")  # mask enlarged inside, by windows
        composite(image, mask, background=torch.rand(1, 100, 150, 3), despill_strength=0.5,
                  output_alpha=True)
        estimate_foreground(image.permute(0, 3, 1, 2), mask[:, None], working_size=80)
        for mode in ("guided", "matting"):
            refine_edges(mask, image, working_size=80, mode=mode)
        refine_edges(mask, image, working_size=1024)  # not upsampled: the check pass only
        fill_holes(mask, 50)
        remove_islands(mask, 20)
        temporal_smooth(mask, "median", 0.5)
    assert probe.made == set()


def test_segmenting_on_a_device_like_mps(mps_like):
    torch.manual_seed(0)
    net = optimize_for_inference(build_model(Architecture("swin_v1_t")).eval())
    images = torch.rand(2, 96, 128, 3)
    region = torch.zeros(2, 96, 128)
    region[:, 20:70, 30:100] = 1
    with MPSRules() as probe, torch.inference_mode():
        predict_masks(net, images, resolution=(64, 64))
        predict_masks(net, images, resolution=(64, 64), regions=region)
        predict_masks(net, images, resolution=(64, 64),
                      regions=torch.tensor([[8.0, 8.0, 100.0, 80.0]] * 2))
    assert probe.made == set()


def test_a_model_on_a_device_without_float64_is_rewritten_on_the_cpu(monkeypatch):
    """The optimiser's weight algebra is float64: there it runs on the CPU, and the model goes
    back where it was; the result is the same as a rewrite in place."""
    torch.manual_seed(0)
    exact = build_model(Architecture("swin_v1_t")).eval()
    reference = optimize_for_inference(copy.deepcopy(exact))
    moves = []
    model = copy.deepcopy(exact)
    monkeypatch.setattr(optimize, "has_float64", lambda device: False)
    real_cpu, real_to = model.cpu, model.to
    model.cpu = lambda: moves.append("cpu") or real_cpu()
    model.to = lambda *a, **k: moves.append(("to", *a)) or real_to(*a, **k)
    assert optimize_for_inference(model) is model
    assert moves == ["cpu", ("to", torch.device("cpu"))]
    assert model.optimizations == reference.optimizations
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        out, ref = model(x), reference(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_an_antialiased_resize_the_device_lacks_runs_on_the_cpu(monkeypatch, caplog):
    """The first NotImplementedError marks the device type; that resize and every later one
    run on the CPU (one note in the log), with the same result; other errors still raise."""
    monkeypatch.setattr(layout, "_NO_ANTIALIAS", set())
    real = F.interpolate
    calls = []

    def lacking_once(x, *args, **kwargs):
        calls.append(kwargs.get("antialias"))
        if kwargs.get("antialias") and len(calls) == 1:
            raise NotImplementedError("The operator 'aten::_upsample_bilinear2d_aa.out' is not "
                                      "currently implemented for the MPS device.")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", lacking_once)
    x = torch.rand(1, 3, 37, 53)
    expected = real(x, size=(20, 31), mode="bilinear", align_corners=False, antialias=True)
    with caplog.at_level(logging.WARNING, logger="birefnet_core.layout"):
        first = layout.resize_bilinear(x, (20, 31), antialias=True)
        second = layout.resize_bilinear(x, (20, 31), antialias=True)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    assert calls == [True, True, True] and layout._NO_ANTIALIAS == {"cpu"}
    assert [r.getMessage() for r in caplog.records] == [
        "BiRefNet: this torch has no antialiased resize on cpu; those resizes run on the CPU "
        "(torch 2.7 or newer has it)"]
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: (_ for _ in ()).throw(
        NotImplementedError("plain bilinear missing")))
    with pytest.raises(NotImplementedError, match="plain bilinear"):
        layout.resize_bilinear(x, (20, 31))
